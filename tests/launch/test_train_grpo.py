"""launch/train_grpo.py: recipe composition and validation, torchrun rank handling, parquet data prep."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]

from launch.prepare_data import split_tasks, write_parquet_files  # noqa: E402
from launch.recipes import RecipeError  # noqa: E402
from launch.train_grpo import compose_recipe, split_recipe, strip_torchrun_env  # noqa: E402
from rl.verl.config import prepare_runtime, validate_recipe  # noqa: E402

RECIPES = ("demo", "humaneval", "mbpp")
# the demo recipe values the validation cases below rely on (recipes/demo.yaml is tuned independently)
DEMO_PINS = ("actor_rollout_ref.model.lora_rank=8", "data.max_response_length=24", "data.train_batch_size=2",
             "actor_rollout_ref.actor.ppo_mini_batch_size=2",
             "actor_rollout_ref.rollout.custom.dream.sampler=lockstep",
             "actor_rollout_ref.rollout.custom.dream.options.r_len=4",
             "actor_rollout_ref.rollout.custom.dream.options.a_len=12")


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "launch" / "train_grpo.py"), *args], cwd=ROOT,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def recipes() -> dict:
    """Every GRPO recipe, composed as a user would run it (the 7B recipes need the model folder named)."""
    model = {"demo": [], "humaneval": ["actor_rollout_ref.model.path=/models/Dream"],
             "mbpp": ["actor_rollout_ref.model.path=/models/Dream"]}
    return {name: compose_recipe(name, model[name]) for name in RECIPES}


def test_every_recipe_composes_on_verls_trainer_config_and_validates(recipes) -> None:
    for name, cfg in recipes.items():
        validate_recipe(cfg, check_files=False)
        assert cfg.algorithm.adv_estimator == "grpo", name
        assert cfg.actor_rollout_ref.rollout.name == "dream", name
        assert cfg.actor_rollout_ref.model.model_type == "dllm", name
        assert "critic" in cfg and "transfer_queue" in cfg  # verl's own groups are layered underneath


def _leaves(node, prefix=""):
    from omegaconf import OmegaConf

    tree = OmegaConf.to_container(node, resolve=False) if not isinstance(node, dict) else node
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_the_7b_recipes_share_one_base_and_differ_only_in_the_benchmark(recipes) -> None:
    humaneval, mbpp = _leaves(recipes["humaneval"]), _leaves(recipes["mbpp"])
    differing = sorted(k for k in humaneval.keys() | mbpp.keys() if humaneval.get(k) != mbpp.get(k))
    assert differing == ["lockstep.data.val", "lockstep.run_dir", "trainer.experiment_name"]
    assert (humaneval["lockstep.data.val"], mbpp["lockstep.run_dir"]) == ("humaneval", "runs/mbpp")
    with pytest.raises(RecipeError, match="unknown recipe '_grpo_7b'"):  # a shared base is not a recipe
        split_recipe(["recipe=_grpo_7b"])


def test_verl_accepts_the_composed_recipes(recipes) -> None:
    """verl's own dataclass conversion of the groups its workers build (fails on wrong/unknown values)."""
    from verl.utils.config import omega_conf_to_dataclass

    for cfg in recipes.values():
        actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
        rollout = omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)
        assert actor.clip_ratio_high > actor.clip_ratio_low  # clip-higher
        assert rollout.calculate_log_probs is False


@pytest.mark.parametrize("override,message", [
    ("algorithm.adv_estimator=gae", "algorithm.adv_estimator must be 'grpo'"),
    ("actor_rollout_ref.rollout.name=vllm", "rollout.name must be 'dream'"),
    ("actor_rollout_ref.rollout.n=1", "rollout.n (group size) must be >= 2"),
    ("actor_rollout_ref.rollout.calculate_log_probs=true", "calculate_log_probs must be false"),
    ("data.train_batch_size=3", "must be a positive multiple"),
    ("lockstep.estimator.t_min=0.1", "t_min + t_max = 1"),
    ("+lockstep.estimator.bogus=1", "lockstep.estimator"),
    ("actor_rollout_ref.model.lora.merge=true", "lora.merge must be false"),
    ("actor_rollout_ref.rollout.load_format=dummy", "load_format must not be 'dummy'"),
    ("+actor_rollout_ref.rollout.custom.dream.stepz=3", "unknown rollout.custom.dream keys"),
    ("actor_rollout_ref.rollout.custom.dream.sampler=fast", "are not options of the fast sampler"),
    ("actor_rollout_ref.rollout.custom.dream.options.r_len=30", "must fit in data.max_response_length"),
    ("actor_rollout_ref.rollout.custom.dream.options.tau_r=2", "actor_rollout_ref.rollout.custom.dream: "),
    ("lockstep.reward.reward=sometimes", "lockstep.reward: reward must be"),
    ("+lockstep.reward.rewrd=1", "lockstep.reward: unknown keys"),
])
def test_bad_values_raise_recipe_errors_naming_the_key(override, message) -> None:
    cfg = compose_recipe("demo", [*DEMO_PINS, override])
    with pytest.raises(RecipeError, match=re.escape(message)):
        validate_recipe(cfg, check_files=False)


def test_missing_files_are_reported(tmp_path) -> None:
    cfg = compose_recipe("demo",
                         [f"lockstep.run_dir={tmp_path}", f"actor_rollout_ref.model.path={tmp_path}/model"])
    with pytest.raises(RecipeError, match="model.path"):
        validate_recipe(cfg, check_files=True)


def test_unknown_recipe_and_bad_override_are_recipe_errors() -> None:
    with pytest.raises(RecipeError, match="unknown recipe 'nope'"):
        compose_recipe("nope", [])
    with pytest.raises(RecipeError, match="cannot compose"):
        compose_recipe("demo", ["trainer.no_such_key=1"])
    assert split_recipe(["recipe=demo", "a=1"]) == ("demo", ["a=1"])


def test_cpu_runtime_settings_and_worker_environment(tmp_path, monkeypatch) -> None:
    for name in ("VERL_PLATFORM", "LOCKSTEP_ESTIMATOR", "WANDB_MODE", "WANDB_DIR", "LOCKSTEP_REWARD_CONFIG",
                 "TQ_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    cfg = compose_recipe("demo", [f"lockstep.run_dir={tmp_path}"])
    prepare_runtime(cfg, ROOT)
    env = cfg.ray_kwargs.ray_init.runtime_env.env_vars
    assert env.VERL_PLATFORM == "cpu" and os.environ["VERL_PLATFORM"] == "cpu"
    assert cfg.ray_kwargs.ray_init.num_gpus == 1  # the fake GPU slot verl's resource pools need
    assert cfg.transfer_queue.backend.SimpleStorage.num_data_storage_units == 1
    assert '"t_min": 0.2' in env.LOCKSTEP_ESTIMATOR
    assert env.WANDB_MODE == "offline" and str(tmp_path) == env.WANDB_DIR
    assert cfg.reward.custom_reward_function.path == str(ROOT / "rl" / "verl" / "reward.py")
    assert cfg.actor_rollout_ref.rollout.agent.default_agent_loop == "dream_single_turn"  # stable sample keys
    import psutil  # TransferQueue warns on every put/get when its thread count exceeds the physical cores

    assert 1 <= int(env.TQ_NUM_THREADS) <= min(8, psutil.cpu_count(logical=False))


def test_joining_an_existing_ray_cluster_declares_no_resources(tmp_path, monkeypatch) -> None:
    """With ``RAY_ADDRESS`` (set by the Slurm script) verl's ``ray.init()`` joins that cluster, which refuses
    resource counts: the CPU shim's Ray slots are not applied and explicit ones are a clear error."""
    for name in ("VERL_PLATFORM", "LOCKSTEP_ESTIMATOR", "WANDB_MODE", "WANDB_DIR", "LOCKSTEP_REWARD_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    cfg = compose_recipe("demo", [f"lockstep.run_dir={tmp_path}"])
    prepare_runtime(cfg, ROOT)
    assert cfg.ray_kwargs.ray_init.num_cpus is None and cfg.ray_kwargs.ray_init.get("num_gpus") is None
    assert cfg.actor_rollout_ref.rollout.agent.num_workers == 1  # the rest of the CPU shim still applies
    cfg = compose_recipe("humaneval", [f"lockstep.run_dir={tmp_path}", "ray_kwargs.ray_init.num_cpus=32"])
    with pytest.raises(RecipeError, match=r"ray_kwargs.ray_init.num_cpus must be null when joining"):
        prepare_runtime(cfg, ROOT)
    monkeypatch.setenv("RAY_ADDRESS", "local")  # Ray's spelling for "start a new local cluster"
    cfg = compose_recipe("demo", [f"lockstep.run_dir={tmp_path}"])
    prepare_runtime(cfg, ROOT)
    assert cfg.ray_kwargs.ray_init.num_cpus == 16


def test_torchrun_ranks_other_than_zero_exit_cleanly_without_driving() -> None:
    result = _run(["recipe=demo"], env={"RANK": "3", "LOCAL_RANK": "3", "WORLD_SIZE": "8"})
    assert result.returncode == 0
    assert "global rank 3" in result.stderr and "exits" in result.stderr


def test_torchrun_variables_are_removed_before_ray_copies_the_environment() -> None:
    """What torchrun 2.x exports to rank 0 (captured from a real run); the user's own variables stay."""
    torchrun = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0",
                "GROUP_WORLD_SIZE": "1", "ROLE_RANK": "0", "ROLE_NAME": "default", "ROLE_WORLD_SIZE": "2",
                "MASTER_ADDR": "localhost", "MASTER_PORT": "38989", "OMP_NUM_THREADS": "1",
                "TORCHELASTIC_RUN_ID": "4a60", "TORCHELASTIC_USE_AGENT_STORE": "True",
                "TORCHELASTIC_MAX_RESTARTS": "0", "TORCHELASTIC_RESTART_COUNT": "0",
                "TORCHELASTIC_ERROR_FILE": "/tmp/x/attempt",
                "TORCHELASTIC_SIGNALS_TO_HANDLE": "SIGTERM,SIGINT",
                "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"}
    environ = {**torchrun, "PATH": "/usr/bin", "WANDB_MODE": "offline"}
    removed = strip_torchrun_env(environ)
    assert environ == {"PATH": "/usr/bin", "WANDB_MODE": "offline", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"}
    assert set(removed) == set(torchrun) - {"TORCH_NCCL_ASYNC_ERROR_HANDLING"}
    user = {"OMP_NUM_THREADS": "1", "RANK": "0"}  # plain python: not torchrun's, nothing to remove
    assert strip_torchrun_env(user) == [] and user == {"OMP_NUM_THREADS": "1", "RANK": "0"}
    mine = {**torchrun, "OMP_NUM_THREADS": "8"}  # a user's own thread count survives torchrun
    strip_torchrun_env(mine)
    assert mine["OMP_NUM_THREADS"] == "8"


def test_bad_recipe_exits_2_with_a_message_and_no_traceback() -> None:
    result = _run(["recipe=demo", "actor_rollout_ref.rollout.n=1"], env={"RANK": "0"})
    assert result.returncode == 2
    assert "error: actor_rollout_ref.rollout.n (group size) must be >= 2" in result.stderr
    assert "Traceback" not in result.stderr


def test_prepare_data_writes_verl_rows(tmp_path) -> None:
    train, val = write_parquet_files("humaneval_mini", tmp_path, train_tasks=3, val_tasks=2)
    train_rows, val_rows = pd.read_parquet(train), pd.read_parquet(val)
    assert len(train_rows) == 3 and len(val_rows) == 2
    row = train_rows.iloc[0]
    assert row["data_source"] == "humaneval"
    assert row["reward_model"]["ground_truth"] == "HumanEval/0"
    assert row["prompt"][0]["role"] == "user" and "has_close_elements" in row["prompt"][0]["content"]
    assert bool(row["extra_info"]["mini"]) is True
    assert set(val_rows["reward_model"].map(lambda r: r["ground_truth"])) == {"HumanEval/162",
                                                                              "HumanEval/163"}
    with pytest.raises(RecipeError, match="leaves no training task"):
        split_tasks(list(range(3)), 0, 3)
    with pytest.raises(RecipeError, match="unknown dataset"):
        write_parquet_files("nope", tmp_path)


# ------------------------------------------------------------------------- user mistakes: one line, no writes
def truncated_copy(source: Path, target: Path) -> Path:
    """A copy of the Dream folder ``source`` whose ``model.safetensors`` lost its second half (a cut
    download)."""
    import shutil

    shutil.copytree(source, target)
    weights = target / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    return target


SHARED_DREAM = ROOT.parent / "shared" / "data" / "dream-v0-instruct-7b"  # the hub folder without its weights


def test_mistakes_exit_2_with_one_line_before_anything_is_written(tmp_path, capsys) -> None:
    from launch.train_grpo import main

    run_dir = tmp_path / "run"
    demo = ROOT / "recipes" / "assets" / "demo_warmstart"
    cases = [
        (["recipe=demo", "actor_rollout_ref.rollout.n=two"],
         "actor_rollout_ref.rollout.n (group size) must be an integer, got 'two'"),
        (["recipe=demo", "trainer.total_training_steps=-3"],
         "trainer.total_training_steps must be an integer >= 1 (or null), got -3"),
        (["recipe=demo_sft"], "recipe=demo_sft is an SFT recipe: run it with python launch/train_sft.py"),
        (["recipe=demo", f"actor_rollout_ref.model.path={truncated_copy(demo, tmp_path / 'cut')}"],
         f"{tmp_path / 'cut' / 'model.safetensors'} is truncated"),
        (["recipe=demo", "trainer.resume_mode=sometimes"], "trainer.resume_mode must be one of"),
        (["recipe=demo", "nonsense"], "arguments are recipe=<name> and key=value overrides, got 'nonsense'"),
    ]
    if SHARED_DREAM.is_dir():  # config + tokenizer, no weights
        cases.append((["recipe=humaneval", f"actor_rollout_ref.model.path={SHARED_DREAM}"],
                      "has no weights: model.safetensors.index.json lists missing shards"))
    for argv, message in cases:
        assert main([*argv, f"lockstep.run_dir={run_dir}"]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, (argv, err)
        assert not run_dir.exists(), argv


def test_model_path_not_set_names_the_key_not_verls_default(tmp_path) -> None:
    """The 7B recipes leave model.path to the user; verl's placeholder default must not leak into the
    message, and no prompt data may be written before the error (the run dir is relative to the cwd)."""
    result = subprocess.run([sys.executable, str(ROOT / "launch" / "train_grpo.py"), "recipe=humaneval"],
                            cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr == ("error: actor_rollout_ref.model.path is not set: pass "
                             "actor_rollout_ref.model.path=<Dream checkpoint folder>, e.g. "
                             "Dream-v0-Instruct-7B\n")
    assert list(tmp_path.iterdir()) == []


def test_help_lists_only_grpo_recipes() -> None:
    result = _run(["--help"])
    assert result.returncode == 0 and result.stderr == ""
    assert "recipe=<demo|humaneval|mbpp>" in result.stdout and "launch/train_sft.py" in result.stdout


def test_truncated_checkpoint_picked_by_auto_resume_names_the_file_and_an_earlier_step(tmp_path) -> None:
    """verl's auto-resume would load the latest step inside a Ray worker and fail there with a stack trace;
    the launcher checks the files first and names the step to resume from instead (verl's resume_path
    keys)."""
    import torch

    from launch.train_grpo import main

    run_dir = tmp_path / "run"
    checkpoints = run_dir / "checkpoints"
    for step in (1, 2, 3):
        actor = checkpoints / f"global_step_{step}" / "actor"
        actor.mkdir(parents=True)
        for name in ("model", "optim", "extra_state"):
            torch.save({"step": step, "w": torch.zeros(256)}, actor / f"{name}_world_size_1_rank_0.pt")
        torch.save({"position": step}, actor.parent / "data.pt")
    (checkpoints / "latest_checkpointed_iteration.txt").write_text("3")
    broken = checkpoints / "global_step_3" / "actor" / "model_world_size_1_rank_0.pt"
    os.truncate(broken, broken.stat().st_size - 100)
    (checkpoints / "global_step_2" / "data.pt").write_bytes(b"")  # step 2 is damaged too
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    result = _run(["recipe=demo", f"lockstep.run_dir={run_dir}", "trainer.resume_mode=auto"])
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert f"cannot resume from {checkpoints / 'global_step_3'}" in result.stderr
    assert f"{broken} is truncated or corrupt" in result.stderr
    assert ("trainer.resume_mode=resume_path trainer.resume_from_path="
            f"{checkpoints / 'global_step_1'}") in result.stderr
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before  # no data/ written
    # the advice works: resuming from the named step passes the check (and fails only later, on purpose here)
    from rl.verl.config import check_resume

    cfg = compose_recipe("demo", [f"lockstep.run_dir={run_dir}", "trainer.resume_mode=resume_path",
                                  f"trainer.resume_from_path={checkpoints / 'global_step_1'}"])
    check_resume(cfg)
    assert main(["recipe=demo", f"lockstep.run_dir={run_dir}", "trainer.resume_mode=resume_path",
                 f"trainer.resume_from_path={checkpoints / 'global_step_2'}"]) == 2
