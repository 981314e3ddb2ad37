"""Recipe checks and run-time settings for GRPO through verl (used by ``launch/train_grpo.py``).

Why: verl validates with bare ``assert``s deep inside Ray actors, minutes into a run; a wrong key then shows
up as a stack trace from a worker. :func:`validate_recipe` checks what our integration relies on up front
and raises :class:`RecipeError` with the key to change; :func:`prepare_runtime` applies the settings a
composed recipe needs at run time (CPU shim, estimator settings for the workers, reward module, W&B dirs).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from launch.recipes import RecipeError  # the launchers' one user-mistake error (exit 2)
from rl.verl.engine import ENGINE_MODEL_TYPE, ESTIMATOR_ENV, EstimatorConfig
from rl.verl.reward import REWARD_WORKERS_ENV, reward_fields
from rl.verl.rollout import AGENT_LOOP_NAME, ROLLOUT_NAME
from rl.verl.rollout_fit import DEVICE_ENV
from rl.verl.trainer import TRAINER_MODE
from rl.verl.worker_record import RUN_DIR_ENV

DEVICES = ("cpu", "cuda")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise RecipeError(message)


def _int(cfg: DictConfig, key: str, minimum: int | None = None, allow_none: bool = False,
         what: str = "") -> int | None:
    """The integer at ``key`` (RecipeError naming the key for text, floats, bools or values below
    ``minimum``)."""
    value = OmegaConf.select(cfg, key)
    if value is None and allow_none:
        return None
    ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok and isinstance(value, str):  # ${...} interpolations resolve to text
        ok = value.strip().lstrip("-").isdigit()
    if not ok or (minimum is not None and int(value) < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        extra = " (or null)" if allow_none else ""
        raise RecipeError(f"{key}{f' ({what})' if what else ''} must be an integer{bound}{extra}, got "
                          f"{value!r}")
    return int(value)


# verl's ppo_trainer default for actor_rollout_ref.model.path: a recipe's `path: ???` does not replace it when
# Hydra merges the recipe over verl's config, so "not set" shows up as this value
VERL_DEFAULT_MODEL_PATH = "~/models/deepseek-llm-7b-chat"
MODEL_PATH_HINT = "pass actor_rollout_ref.model.path=<Dream checkpoint folder>, e.g. Dream-v0-Instruct-7B"


def estimator_config(cfg: DictConfig) -> EstimatorConfig:
    """The ``lockstep.estimator`` group as an :class:`EstimatorConfig` (RecipeError on bad values)."""
    raw = OmegaConf.to_container(cfg.get("lockstep", {}).get("estimator", {}) or {}, resolve=True)
    try:
        config = EstimatorConfig(**raw)  # type: ignore[arg-type]
    except TypeError as error:
        raise RecipeError(f"lockstep.estimator: {error}") from None
    if config.name == "trajectory":
        raise RecipeError(refuse_trajectory(cfg))
    _require(config.name == "coupled", f"lockstep.estimator.name must be 'coupled', got {config.name!r}")
    _require(0.0 <= config.t_min < config.t_max <= 1.0 and abs(config.t_min + config.t_max - 1.0) < 1e-6,
             f"lockstep.estimator.t_min/t_max must satisfy 0 <= t_min < t_max <= 1 and t_min + t_max = 1, "
             f"got {config.t_min}, {config.t_max}")
    _require(config.fixed_start is None and config.fixed_text is None,
             "lockstep.estimator.fixed_start/fixed_text are set from the rollout's lockstep options; leave "
             "them out")
    return dataclasses.replace(config, **rollout_layout(cfg))


def refuse_trajectory(cfg: DictConfig) -> str:
    """Why ``lockstep.estimator.name=trajectory`` is refused: the reasons its estimate would not be the
    sampler's log-prob for this recipe's rollout (:func:`rl.logprob.trajectory_inexact_reasons`); the Dream
    rollout server always bans invalid ids, so no training rollout qualifies and the estimator is not wired
    into the engine."""
    from decoding.lockstep import LockstepCfg
    from rl.logprob import trajectory_inexact_reasons

    rollout = cfg.actor_rollout_ref.rollout
    dream = OmegaConf.to_container(rollout.get("custom") or {}, resolve=True) or {}
    from decoding.lockstep import resolve_options

    options = resolve_options(dict((dream.get("dream") or {}).get("options") or {}))[0]
    top_p, top_k = rollout.get("top_p"), rollout.get("top_k")
    options.update(temperature=float(rollout.get("temperature", 1.0)),
                   top_p=None if top_p is None or float(top_p) >= 1.0 else float(top_p),
                   top_k=None if top_k is None or int(top_k) <= 0 else int(top_k))
    try:
        reasons = trajectory_inexact_reasons(LockstepCfg(**options), vocab_ban=True)
    except (TypeError, ValueError):
        reasons = ["a rollout that is not a valid lockstep decoder"]
    return ("lockstep.estimator.name=trajectory is not available for training: its estimate equals the "
            "sampler's log-prob only without use_cache, vocabulary ban, top-p/top-k, eos_penalty and "
            f"early_exit, at temperature 1 (docs/rl.md); this recipe's rollout has {'; '.join(reasons)}. Use "
            "name=coupled")


def rollout_layout(cfg: DictConfig) -> dict[str, Any]:
    """Where the rollout puts fixed tokens in every response: the lockstep delimiter right after the R block
    (``fixed_start = r_len``, ``fixed_text`` = the delimiter); none for the other samplers."""
    from decoding.lockstep import LockstepCfg, resolve_options

    dream = OmegaConf.to_container(cfg.actor_rollout_ref.rollout.get("custom") or {}, resolve=True) or {}
    dream = dict(dream.get("dream") or {})
    if dream.get("sampler", "fast") != "lockstep":
        return {"fixed_start": None, "fixed_text": None}
    kwargs, delimiter = resolve_options(dict(dream.get("options") or {}))
    return {"fixed_start": int(kwargs.get("r_len", LockstepCfg.r_len)), "fixed_text": delimiter}


def _check_sampler(cfg: DictConfig) -> None:
    """``actor_rollout_ref.rollout.custom.dream`` must build a sampler config (and a lockstep config)."""
    from rl.rollout_decoding import DreamSamplerConfig

    rollout = cfg.actor_rollout_ref.rollout
    custom = OmegaConf.to_container(rollout.get("custom") or {}, resolve=True) or {}
    try:
        sampler = DreamSamplerConfig.from_dict(dict(custom.get("dream") or {}),
                                               response_length=int(rollout.response_length))
        if sampler.sampler in ("fast", "diffusion"):
            import inspect

            from decoding.fast import fast_generate
            from decoding.generate import diffusion_generate

            function = fast_generate if sampler.sampler == "fast" else diffusion_generate
            accepted = set(inspect.signature(function).parameters)
            unknown = sorted(set(sampler.options) - accepted)
            _require(not unknown, f"actor_rollout_ref.rollout.custom.dream.options: {unknown} are not "
                                  f"options of the {sampler.sampler} sampler "
                                  f"({function.__module__}.{function.__name__})")
        if sampler.sampler == "lockstep":
            from decoding.lockstep import LockstepCfg, resolve_options

            lockstep = LockstepCfg(**resolve_options(sampler.options)[0])
            _require(lockstep.r_len + lockstep.a_len < sampler.response_length,
                     f"rollout.custom.dream.options: r_len + a_len ({lockstep.r_len + lockstep.a_len}) must "
                     f"fit in data.max_response_length ({sampler.response_length}) with the delimiter")
    except (TypeError, ValueError) as error:
        if isinstance(error, RecipeError):
            raise
        raise RecipeError(f"actor_rollout_ref.rollout.custom.dream: {error}") from None


def _check_reward(cfg: DictConfig) -> None:
    """``lockstep.reward`` must be valid :class:`rewards.api.RewardConfig` fields."""
    from rewards.api import RewardConfig

    raw = OmegaConf.to_container(cfg.get("lockstep", {}).get("reward", {}) or {}, resolve=True) or {}
    try:
        RewardConfig(**reward_fields(raw))
    except (TypeError, ValueError) as error:
        raise RecipeError(f"lockstep.reward: {error}") from None


def _check_data(cfg: DictConfig) -> None:
    """``lockstep.data``: a known, judged training corpus with a benchmark to validate on, and existing local
    files (checked before anything is written; the rows themselves are read by the data preparation)."""
    data = cfg.get("lockstep", {}).get("data", {}) or {}
    if not data.get("corpus"):
        return
    from corpora import CorpusError, check_judged

    _require(not data.get("dataset"),
             f"lockstep.data: set corpus ({data.corpus}) or dataset ({data.get('dataset')}), not both")
    try:
        check_judged(str(data.corpus))
    except CorpusError as error:
        raise RecipeError(f"lockstep.data.corpus: {error}") from None
    benchmarks = ("humaneval", "humaneval_mini", "mbpp")
    _require(data.get("val") in benchmarks, f"lockstep.data.val must be one of {benchmarks} (the benchmark "
                                            f"validated on), got {data.get('val')!r}")
    files = data.get("data_files") or []
    for file in [files] if isinstance(files, str) else list(files):
        _require(Path(str(file)).expanduser().is_file(), f"lockstep.data.data_files: {file} does not exist")
    _int(cfg, "lockstep.data.max_rows", minimum=0, allow_none=True)


def check_model_dir(path: str) -> None:
    """RecipeError unless ``path`` is a Dream checkpoint folder with complete weight files (headers only)."""
    from decoding.integrity import check_dream_weights

    root = Path(path)
    _require(root.is_dir(),
             f"actor_rollout_ref.model.path={path} is not a directory (a Dream checkpoint folder)")
    config_file = root / "config.json"
    _require(config_file.is_file(), f"actor_rollout_ref.model.path={path} has no config.json")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except json.JSONDecodeError as error:
        raise RecipeError(f"actor_rollout_ref.model.path={path}: config.json is not valid JSON "
                          f"({error})") from None
    _require(model_type == "Dream", f"actor_rollout_ref.model.path={path} holds model_type {model_type!r}, "
                                    "expected 'Dream'")
    try:
        check_dream_weights(root)
    except ValueError as error:
        raise RecipeError(f"actor_rollout_ref.model.path: {error}") from None


RESUME_MODES = ("auto", "disable", "resume_path")
TRACKER_FILE = "latest_checkpointed_iteration.txt"  # verl.utils.checkpoint.get_checkpoint_tracker_filename


def _step_of(folder: Path) -> int:
    tail = folder.name.rsplit("global_step_", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def checkpoint_problem(step_dir: Path) -> str | None:
    """Why verl could not resume from ``global_step_<k>`` (a missing or truncated file), or None if it can."""
    from decoding.integrity import check_safetensors, check_torch_file

    actor = step_dir / "actor"
    if not actor.is_dir():
        return f"{actor} does not exist"
    model_files = sorted(actor.glob("model_world_size_*_rank_*.pt"))
    if not model_files:
        return f"{actor} holds no model_world_size_*_rank_*.pt"
    try:
        for file in [*sorted(actor.glob("*.pt")),
                     *([step_dir / "data.pt"] if (step_dir / "data.pt").exists() else [])]:
            check_torch_file(file)
        for file in sorted(actor.glob("*/*.safetensors")):
            check_safetensors(file)
        for file in [*actor.glob("*.json"), *step_dir.glob("transfer_queue/**/*.json")]:
            try:
                json.loads(file.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise ValueError(f"{file} is truncated or corrupt ({error})") from None
    except ValueError as error:
        return str(error)
    return None


def check_resume(cfg: DictConfig) -> None:
    """RecipeError when the checkpoint verl would resume from is missing or damaged, naming the file and an
    earlier intact step to resume from instead (verl would otherwise fail inside a Ray worker)."""
    trainer = cfg.trainer
    mode = trainer.resume_mode
    if mode == "disable":
        return
    if mode == "resume_path":
        raw = trainer.get("resume_from_path")
        _require(isinstance(raw, str) and "global_step_" in raw,
                 "trainer.resume_mode=resume_path needs "
                 f"trainer.resume_from_path=<checkpoints>/global_step_<k>, got {raw!r}")
        step_dir = Path(raw).resolve()
        _require(step_dir.is_dir(), f"trainer.resume_from_path={raw} does not exist")
        how = f"trainer.resume_from_path={raw}"
    else:
        root = Path(str(trainer.default_local_dir)).resolve()
        tracker = root / TRACKER_FILE
        if not tracker.is_file():
            return  # verl starts from scratch
        text = tracker.read_text().strip()
        _require(text.isdigit(), f"{tracker} is corrupt (holds {text[:20]!r}); set "
                                 "trainer.resume_mode=resume_path "
                                 f"trainer.resume_from_path={root}/global_step_<k> or "
                                 "trainer.resume_mode=disable")
        step_dir = root / f"global_step_{text}"
        if not step_dir.is_dir():
            return  # verl prints "Checkpoint does not exist" and starts from scratch
        how = f"trainer.resume_mode=auto (latest step in {tracker})"
    problem = checkpoint_problem(step_dir)
    if problem is None:
        return
    earlier = sorted((p for p in step_dir.parent.glob("global_step_*")
                      if 0 <= _step_of(p) < _step_of(step_dir)),
                     key=_step_of, reverse=True)
    good = next((p for p in earlier if checkpoint_problem(p) is None), None)
    advice = ("resume from an earlier step with trainer.resume_mode=resume_path "
              f"trainer.resume_from_path={good}"
              if good is not None else "no earlier intact checkpoint exists")
    raise RecipeError(f"cannot resume from {step_dir} ({how}): {problem}; {advice}, or start over with "
                      "trainer.resume_mode=disable")


def validate_recipe(cfg: DictConfig, check_files: bool = True) -> None:
    """Raise :class:`RecipeError` if the composed config cannot run our GRPO integration.

    ``check_files=False`` skips the model/data file checks (used before the files are prepared).
    """
    arr = cfg.actor_rollout_ref
    path = None if OmegaConf.is_missing(arr.model, "path") else arr.model.path
    _require(path not in (None, "", VERL_DEFAULT_MODEL_PATH),
             f"actor_rollout_ref.model.path is not set: {MODEL_PATH_HINT}")
    _require(cfg.algorithm.adv_estimator == "grpo",
             f"algorithm.adv_estimator must be 'grpo', got {cfg.algorithm.adv_estimator!r}")
    _require(cfg.trainer.device in DEVICES,
             f"trainer.device must be one of {DEVICES}, got {cfg.trainer.device!r}")
    trainer_mode = OmegaConf.select(cfg, "trainer.v1.trainer_mode")
    _require(trainer_mode == TRAINER_MODE, f"trainer.v1.trainer_mode must be '{TRAINER_MODE}' (it hands the "
                                           "Dream engine the global step that salts its masks), got "
                                           f"{trainer_mode!r}")
    _require(arr.rollout.name == ROLLOUT_NAME,
             f"actor_rollout_ref.rollout.name must be '{ROLLOUT_NAME}' (verl's vLLM/SGLang cannot serve "
             "Dream)")
    _require(arr.model.model_type == ENGINE_MODEL_TYPE,
             f"actor_rollout_ref.model.model_type must be '{ENGINE_MODEL_TYPE}' (the Dream diffusion engine)")
    _int(cfg, "actor_rollout_ref.rollout.n", what="group size")
    _require(int(arr.rollout.n) >= 2, f"actor_rollout_ref.rollout.n (group size) must be >= 2 for GRPO, "
                                      f"got {arr.rollout.n}")
    for key in ("actor_rollout_ref.rollout.tensor_model_parallel_size", "actor_rollout_ref.model.lora_rank",
                "data.train_batch_size", "actor_rollout_ref.actor.ppo_mini_batch_size",
                "data.max_response_length", "data.max_prompt_length", "trainer.save_freq",
                "trainer.test_freq", "trainer.nnodes", "trainer.n_gpus_per_node"):
        _int(cfg, key)
    _int(cfg, "trainer.total_epochs", minimum=1)
    _int(cfg, "trainer.total_training_steps", minimum=1, allow_none=True)
    _int(cfg, "actor_rollout_ref.actor.ppo_epochs", minimum=1)
    _require(cfg.trainer.resume_mode in RESUME_MODES,
             f"trainer.resume_mode must be one of {RESUME_MODES}, got {cfg.trainer.resume_mode!r}")
    _require(not arr.rollout.calculate_log_probs,
             "actor_rollout_ref.rollout.calculate_log_probs must be false (a denoiser has no sampling "
             "log-prob)")
    _require(not arr.model.use_remove_padding,
             "actor_rollout_ref.model.use_remove_padding must be false for Dream")
    _require(int(arr.rollout.tensor_model_parallel_size) == 1,
             "actor_rollout_ref.rollout.tensor_model_parallel_size must be 1 (one Dream server per GPU)")
    _require("dummy" not in str(arr.rollout.load_format),
             "actor_rollout_ref.rollout.load_format must not be 'dummy': the Dream server loads the base "
             "weights from model.path itself (use 'auto')")
    _require(int(arr.model.lora_rank) >= 0,
             "actor_rollout_ref.model.lora_rank must be >= 0 (0 = full fine-tuning)")
    if int(arr.model.lora_rank) > 0:
        _require(not arr.model.lora.get("merge", False),
                 "actor_rollout_ref.model.lora.merge must be false: only adapters are synced to the rollout")
    batch, mini = int(cfg.data.train_batch_size), int(arr.actor.ppo_mini_batch_size)
    _require(batch > 0 and mini > 0 and batch % mini == 0,
             f"data.train_batch_size ({batch}) must be a positive multiple of "
             f"actor_rollout_ref.actor.ppo_mini_batch_size ({mini})")
    _require(int(cfg.data.max_response_length) > 0, "data.max_response_length must be > 0")
    estimator_config(cfg)
    _check_filter(cfg)
    _check_sampler(cfg)
    _check_reward(cfg)
    _check_data(cfg)
    if check_files:
        check_model_dir(str(arr.model.path))
        check_resume(cfg)
        for key in ("train_files", "val_files"):
            files = cfg.data[key]
            files = [files] if isinstance(files, str) else list(files)
            for file in files:
                _require(Path(file).is_file(),
                         f"data.{key}: {file} does not exist (see launch/prepare_data.py)")


def check_device(cfg: DictConfig) -> None:
    """``trainer.device=cuda`` on a machine without a CUDA GPU is a mistake (verl would start and the rollout
    server would find no GPU): one line, before anything is written."""
    import torch

    _require(cfg.trainer.device != "cuda" or torch.cuda.is_available(),
             "trainer.device=cuda but torch finds no CUDA GPU on this machine: run on a GPU node "
             "(and a CUDA build of torch), or pass trainer.device=cpu for a CPU run")


def _check_filter(cfg: DictConfig) -> None:
    """Dynamic filtering (``algorithm.filter_groups``, rl/verl/filter.py): metric ``reward``, a round cap >=
    0, and the ``lockstep`` trainer mode that implements it."""
    from rl.verl.filter import filter_settings

    try:
        _, max_rounds = filter_settings(cfg)
    except (ValueError, TypeError) as error:
        raise RecipeError(str(error)) from None
    # filtering's whole-batch refills (rl/verl/filter.py) also need trainer.v1.trainer_mode=lockstep, which
    # validate_recipe requires of every recipe
    _require(max_rounds >= 0,
             f"algorithm.filter_groups.max_num_gen_batches must be >= 0 (0 = no cap), got {max_rounds}")


RAY_LOCAL_ONLY_KEYS = ("ray_kwargs.ray_init.num_cpus", "ray_kwargs.ray_init.num_gpus")


def joins_ray_cluster() -> str | None:
    """The address of the existing Ray cluster the driver will join (``$RAY_ADDRESS``), or None.

    verl's driver calls ``ray.init()`` without an address; Ray then connects to ``$RAY_ADDRESS`` when it is
    set (``auto`` = the cluster started on this node by ``ray start``; ``local`` starts a new one). This is
    how multi-node runs work: the Slurm script starts the Ray head and workers and exports ``RAY_ADDRESS``.
    """
    address = os.environ.get("RAY_ADDRESS", "").strip()
    return address if address and address != "local" else None


def _set(cfg: DictConfig, key: str, value: Any) -> None:
    OmegaConf.update(cfg, key, value, merge=True, force_add=True)


def prepare_runtime(cfg: DictConfig, project_root: Path) -> None:
    """Apply run-time settings in place and export the environment the Ray workers need.

    * ``trainer.device=cpu``: ``VERL_PLATFORM=cpu`` + the CPU shim's settings (fake GPU slot, gloo, ...);
    * ``trainer.device`` -> ``$LOCKSTEP_DEVICE`` (the rollout server refuses to fall back to CPU when it says
      ``cuda``); reward workers per node -> ``$LOCKSTEP_REWARD_WORKERS_PER_NODE`` (each one's sandbox pool
      gets its share of the node's CPUs, rl/verl/reward.py);
    * ``rollout.agent.default_agent_loop``: verl's single-turn loop -> ours (reproducible rollouts, exact
      resume);
    * ``$RAY_ADDRESS`` set (:func:`joins_ray_cluster`): no Ray resource counts (Ray rejects them when
      joining);
    * estimator settings -> ``$LOCKSTEP_ESTIMATOR`` (read by the Dream engine in every worker);
    * reward function -> ``rl/verl/reward.py:compute_score`` unless the recipe names another one;
    * W&B offline by default, files under ``lockstep.run_dir``;
    * ``TQ_NUM_THREADS`` (TransferQueue's torch threads per put/get, default 8) at most the physical cores:
      above them TransferQueue logs a warning on every call (~11k lines in a CPU demo log).
    """
    import psutil

    from rl.verl.cpu import CPU_SETTINGS

    env: dict[str, str] = {ESTIMATOR_ENV: estimator_config(cfg).to_env(), DEVICE_ENV: str(cfg.trainer.device)}
    nodes = max(1, int(cfg.trainer.get("nnodes", 1) or 1))
    env[REWARD_WORKERS_ENV] = str(max(1, -(-int(cfg.reward.get("num_workers", 1) or 1) // nodes)))
    env["TQ_NUM_THREADS"] = os.environ.get("TQ_NUM_THREADS") \
        or str(min(8, psutil.cpu_count(logical=False) or 1))
    cluster = joins_ray_cluster()
    with open_dict(cfg):
        if cfg.trainer.device == "cpu":
            env["VERL_PLATFORM"] = "cpu"
            for key, value in CPU_SETTINGS.items():
                if not (cluster and key in RAY_LOCAL_ONLY_KEYS):  # an existing cluster declares its own slots
                    _set(cfg, key, value)
        if cluster:
            ray_init = cfg.get("ray_kwargs", {}).get("ray_init", {}) or {}
            for key in RAY_LOCAL_ONLY_KEYS:
                _require(ray_init.get(key.rsplit(".", 1)[1]) is None,
                         f"{key} must be null when joining the existing Ray cluster RAY_ADDRESS={cluster} "
                         "(Ray refuses resource counts when connecting; declare them with `ray start`)")
        # our agent loop sends each sample's (dataset index, sample number) to the Dream server, which pins
        # the sample's completion to it: runs and resumed runs reproduce (rl/verl/rollout.py: canonical_order)
        if cfg.actor_rollout_ref.rollout.agent.default_agent_loop == "single_turn_agent":
            _set(cfg, "actor_rollout_ref.rollout.agent.default_agent_loop", AGENT_LOOP_NAME)
        if not cfg.reward.custom_reward_function.get("path"):
            _set(cfg, "reward.custom_reward_function.path", str(project_root / "rl" / "verl" / "reward.py"))
            _set(cfg, "reward.custom_reward_function.name", "compute_score")
        run_dir = Path(str(cfg.lockstep.run_dir)).resolve()
        env.setdefault("WANDB_MODE", os.environ.get("WANDB_MODE", "offline"))
        env.setdefault("WANDB_DIR", os.environ.get("WANDB_DIR", str(run_dir)))
        env[RUN_DIR_ENV] = str(run_dir)  # each worker records what it sees there (rl/verl/worker_record.py)
        env["LOCKSTEP_REWARD_CONFIG"] = json.dumps(
            OmegaConf.to_container(cfg.lockstep.get("reward", {}) or {}, resolve=True))
        for key, value in env.items():
            os.environ[key] = value
            _set(cfg, f"ray_kwargs.ray_init.runtime_env.env_vars.{key}", value)
