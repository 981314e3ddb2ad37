"""Checkpoint evaluation decodes with the decoder the run trained with (its saved config), the plain sampler
second; without a run config it uses the lockstep defaults of decoding/lockstep.py, the same ones training
uses."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[3]

from decoding.lockstep import DEFAULT_DELIMITER, LockstepCfg, resolve_options  # noqa: E402
from evals.code.decoder import compare_argvs  # noqa: E402
from evals.code.run import sample_settings, sampler_kwargs  # noqa: E402
from launch.eval_checkpoint import compose_config  # noqa: E402
from launch.eval_checkpoint import main as eval_main  # noqa: E402
from launch.train_grpo import compose_recipe  # noqa: E402


def _training_run(root: Path, recipe: str, overrides: tuple[str, ...] = ()) -> tuple[Path, dict]:
    """A run folder as launch/train_grpo.py leaves it: <run>/config.yaml (+ the checkpoint's folder)."""
    cfg = compose_recipe(recipe, [f"lockstep.run_dir={root}", *overrides])
    root.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, root / "config.yaml")
    (root / "checkpoints" / "global_step_5").mkdir(parents=True, exist_ok=True)
    return root / "checkpoints" / "global_step_5", OmegaConf.to_container(
        cfg.actor_rollout_ref.rollout.custom.dream, resolve=True)


@pytest.mark.parametrize("recipe", ["humaneval", "demo"])
def test_a_runs_checkpoint_is_evaluated_with_its_rollout_decoder(tmp_path: Path, recipe: str) -> None:
    checkpoint, dream = _training_run(tmp_path / "run", recipe)
    argv = ["recipe=eval/humaneval", f"checkpoint={checkpoint}"]
    cfg = compose_config(argv)
    # recipe nulls = decoding/lockstep.py defaults
    trained, trained_delimiter = resolve_options(dream["options"])
    assert cfg.generation.sampler == "lockstep" and "config.yaml" in cfg.generation.decoder_source
    # greedy pass@1, the run's decoder otherwise
    assert sampler_kwargs(cfg) == {**trained, "temperature": 0.0}
    # the very canvas the rollout decoded: defaults (r_len/a_len/delimiter) come from the same dataclass
    assert LockstepCfg(**sampler_kwargs(cfg)) == dataclasses.replace(LockstepCfg(**trained), temperature=0.0)
    assert cfg.generation.delimiter == trained_delimiter == DEFAULT_DELIMITER
    assert sample_settings(cfg)["sampler"] == "lockstep"
    assert compare_argvs(cfg, argv) == [[*argv, "generation.sampler=plain", "generation.compare=[]"]]
    plain = compose_config(compare_argvs(cfg, argv)[0])
    assert plain.generation.sampler == "plain" and compare_argvs(plain, argv) == []
    # the eval's sampling settings apply
    warm = compose_config([*argv, "generation.lockstep.temperature=1.0"])
    assert sampler_kwargs(warm)["temperature"] == 1.0 and sampler_kwargs(warm)["mode"] == trained["mode"]
    longer = compose_config([*argv, "generation.lockstep.a_len=64"])  # a non-null key the user sets wins
    assert sampler_kwargs(longer) == {**trained, "temperature": 0.0, "a_len": 64}


def test_a_bare_model_is_evaluated_with_the_training_defaults(tiny_dream_dir: Path) -> None:
    cfg = compose_config(["recipe=eval/mbpp", f"checkpoint={tiny_dream_dir}"])
    assert cfg.generation.sampler == "lockstep" and "decoding/lockstep.py" in cfg.generation.decoder_source
    assert sampler_kwargs(cfg) == {"temperature": 0.0}
    assert cfg.generation.delimiter == DEFAULT_DELIMITER
    trained = compose_recipe("mbpp", [])  # what recipe=mbpp trains with: the same LockstepCfg defaults
    options = resolve_options(OmegaConf.to_container(trained.actor_rollout_ref.rollout.custom.dream.options,
                                                     resolve=True))[0]
    lockstep = LockstepCfg(**sampler_kwargs(cfg))
    assert (lockstep.r_len, lockstep.a_len) == (LockstepCfg(**options).r_len, LockstepCfg(**options).a_len)


def test_a_missing_run_config_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert eval_main(["recipe=eval/humaneval", f"checkpoint={tmp_path}",
                      f"run_config={tmp_path / 'nope.yaml'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: run_config=") and err.count("\n") == 1


@pytest.mark.slow
def test_evaluation_writes_a_rollout_decoder_row_and_a_plain_row(tiny_dream_dir: Path,
                                                                  tmp_path: Path) -> None:
    """Real run on a tiny Dream in a run folder trained with a small lockstep canvas: two rows, the lockstep
    one decoded the run's canvas (R text + the training delimiter + A text, the training prompt), then
    plain."""
    options = ("actor_rollout_ref.rollout.custom.dream.options.r_len=4",
               "actor_rollout_ref.rollout.custom.dream.options.a_len=12")
    checkpoint, _ = _training_run(tmp_path / "run", "demo", options)
    shutil.rmtree(checkpoint)
    shutil.copytree(tiny_dream_dir, checkpoint / "actor" / "huggingface")
    results = tmp_path / "results"
    assert eval_main(["recipe=eval/humaneval", f"checkpoint={checkpoint}", "dataset.mini=true",
                      "dataset.limit=1", "generation.plain.max_new_tokens=16", "generation.plain.steps=4",
                      "device=cpu", f"output_root={tmp_path / 'eval'}", f"results_dir={results}",
                      "scoring.k=[1]"]) == 0
    rows = [json.loads(line) for line in (results / "results.jsonl").read_text().splitlines()]
    assert [row["eval_name"].split("-")[1] for row in rows] == ["lockstep", "plain"]
    (generated,) = [json.loads(line) for line in
                    (Path(rows[0]["output_dir"]) / "generations.rank0.jsonl").read_text().splitlines()]
    # the training prompt (no "[R]" assistant prefix): the completion opens with the R text,
    # then the delimiter
    assert generated["completion"].startswith(generated["reasoning"] + DEFAULT_DELIMITER)
    assert generated["num_tokens"] <= 4 + 12  # the run's canvas (R 4, A 12), not the 128 + 320 default
