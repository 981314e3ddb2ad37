"""Recipe checks and run-time settings for GRPO through verl (used by ``launch/train_grpo.py``).

Why: verl validates with bare ``assert``s deep inside Ray actors, minutes into a run; a wrong key then shows
up as a stack trace from a worker. :func:`validate_recipe` checks what our integration relies on up front
and raises :class:`RecipeError` with the key to change; :func:`prepare_runtime` applies the settings a
composed recipe needs at run time (CPU shim, estimator settings for the workers, reward module, W&B dirs).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from rl.verl_engine import ENGINE_MODEL_TYPE, ESTIMATOR_ENV, EstimatorConfig
from rl.verl_rollout import AGENT_LOOP_NAME, ROLLOUT_NAME
from rl.worker_record import RUN_DIR_ENV

DEVICES = ("cpu", "cuda")


class RecipeError(ValueError):
    """A recipe/config value the user must change; the message names the key."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise RecipeError(message)


def estimator_config(cfg: DictConfig) -> EstimatorConfig:
    """The ``lockstep.estimator`` group as an :class:`EstimatorConfig` (RecipeError on bad values)."""
    raw = OmegaConf.to_container(cfg.get("lockstep", {}).get("estimator", {}) or {}, resolve=True)
    try:
        config = EstimatorConfig(**raw)  # type: ignore[arg-type]
    except TypeError as error:
        raise RecipeError(f"lockstep.estimator: {error}") from None
    _require(config.name == "coupled", f"lockstep.estimator.name must be 'coupled', got {config.name!r}")
    _require(0.0 <= config.t_min < config.t_max <= 1.0 and abs(config.t_min + config.t_max - 1.0) < 1e-6,
             f"lockstep.estimator.t_min/t_max must satisfy 0 <= t_min < t_max <= 1 and t_min + t_max = 1, "
             f"got {config.t_min}, {config.t_max}")
    return config


def _check_sampler(cfg: DictConfig) -> None:
    """``actor_rollout_ref.rollout.custom.dream`` must build a sampler config (and a lockstep config)."""
    from rl.verl_sampler import DreamSamplerConfig

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
            _require(not unknown, f"actor_rollout_ref.rollout.custom.dream.options: {unknown} are not options of "
                                  f"the {sampler.sampler} sampler ({function.__module__}.{function.__name__})")
        if sampler.sampler == "lockstep":
            from decoding.lockstep import LockstepCfg

            options = {k: v for k, v in sampler.options.items() if k not in ("delimiter", "keep_reasoning_pad")}
            lockstep = LockstepCfg(**options)
            _require(lockstep.r_len + lockstep.a_len < sampler.response_length,
                     f"rollout.custom.dream.options: r_len + a_len ({lockstep.r_len + lockstep.a_len}) must fit in "
                     f"data.max_response_length ({sampler.response_length}) with the delimiter")
    except (TypeError, ValueError) as error:
        if isinstance(error, RecipeError):
            raise
        raise RecipeError(f"actor_rollout_ref.rollout.custom.dream: {error}") from None


def _check_reward(cfg: DictConfig) -> None:
    """``lockstep.reward`` must be valid :class:`rewards.api.RewardConfig` fields."""
    import dataclasses

    from rewards.api import RewardConfig

    raw = OmegaConf.to_container(cfg.get("lockstep", {}).get("reward", {}) or {}, resolve=True) or {}
    known = {f.name for f in dataclasses.fields(RewardConfig)} - {"sandbox"}
    unknown = sorted(set(raw) - known)
    _require(not unknown, f"lockstep.reward: unknown keys {unknown}; known: {sorted(known)}")
    if "test_sets" in raw:
        raw["test_sets"] = tuple(raw["test_sets"])
    try:
        RewardConfig(**raw)
    except (TypeError, ValueError) as error:
        raise RecipeError(f"lockstep.reward: {error}") from None


def _check_model_dir(path: str) -> None:
    root = Path(path)
    _require(root.is_dir(), f"actor_rollout_ref.model.path={path} is not a directory (a Dream checkpoint folder)")
    config_file = root / "config.json"
    _require(config_file.is_file(), f"actor_rollout_ref.model.path={path} has no config.json")
    model_type = json.loads(config_file.read_text()).get("model_type")
    _require(model_type == "Dream", f"actor_rollout_ref.model.path={path} holds model_type {model_type!r}, "
                                    "expected 'Dream'")


def validate_recipe(cfg: DictConfig, check_files: bool = True) -> None:
    """Raise :class:`RecipeError` if the composed config cannot run our GRPO integration.

    ``check_files=False`` skips the model/data file checks (used before the files are prepared).
    """
    arr = cfg.actor_rollout_ref
    _require(not OmegaConf.is_missing(arr.model, "path"),
             "actor_rollout_ref.model.path is not set: pass actor_rollout_ref.model.path=<Dream checkpoint folder>")
    _require(cfg.algorithm.adv_estimator == "grpo",
             f"algorithm.adv_estimator must be 'grpo', got {cfg.algorithm.adv_estimator!r}")
    _require(cfg.trainer.device in DEVICES, f"trainer.device must be one of {DEVICES}, got {cfg.trainer.device!r}")
    _require(arr.rollout.name == ROLLOUT_NAME,
             f"actor_rollout_ref.rollout.name must be '{ROLLOUT_NAME}' (verl's vLLM/SGLang cannot serve Dream)")
    _require(arr.model.model_type == ENGINE_MODEL_TYPE,
             f"actor_rollout_ref.model.model_type must be '{ENGINE_MODEL_TYPE}' (the Dream diffusion engine)")
    _require(int(arr.rollout.n) >= 2, f"actor_rollout_ref.rollout.n (group size) must be >= 2 for GRPO, "
                                      f"got {arr.rollout.n}")
    _require(not arr.rollout.calculate_log_probs,
             "actor_rollout_ref.rollout.calculate_log_probs must be false (a denoiser has no sampling log-prob)")
    _require(not arr.model.use_remove_padding, "actor_rollout_ref.model.use_remove_padding must be false for Dream")
    _require(int(arr.rollout.tensor_model_parallel_size) == 1,
             "actor_rollout_ref.rollout.tensor_model_parallel_size must be 1 (one Dream server per GPU)")
    _require("dummy" not in str(arr.rollout.load_format),
             "actor_rollout_ref.rollout.load_format must not be 'dummy': the Dream server loads the base weights "
             "from model.path itself (use 'auto')")
    _require(int(arr.model.lora_rank) >= 0, "actor_rollout_ref.model.lora_rank must be >= 0 (0 = full fine-tuning)")
    if int(arr.model.lora_rank) > 0:
        _require(not arr.model.lora.get("merge", False),
                 "actor_rollout_ref.model.lora.merge must be false: only adapters are synced to the rollout")
    batch, mini = int(cfg.data.train_batch_size), int(arr.actor.ppo_mini_batch_size)
    _require(batch > 0 and mini > 0 and batch % mini == 0,
             f"data.train_batch_size ({batch}) must be a positive multiple of "
             f"actor_rollout_ref.actor.ppo_mini_batch_size ({mini})")
    _require(int(cfg.data.max_response_length) > 0, "data.max_response_length must be > 0")
    estimator_config(cfg)
    _check_sampler(cfg)
    _check_reward(cfg)
    if check_files:
        _check_model_dir(str(arr.model.path))
        for key in ("train_files", "val_files"):
            files = cfg.data[key]
            files = [files] if isinstance(files, str) else list(files)
            for file in files:
                _require(Path(file).is_file(), f"data.{key}: {file} does not exist (see launch/prepare_data.py)")


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
    * ``rollout.agent.default_agent_loop``: verl's single-turn loop -> ours (reproducible rollouts, exact resume);
    * ``$RAY_ADDRESS`` set (:func:`joins_ray_cluster`): no Ray resource counts (Ray rejects them when joining);
    * estimator settings -> ``$LOCKSTEP_ESTIMATOR`` (read by the Dream engine in every worker);
    * reward function -> ``rl/verl_reward.py:compute_score`` unless the recipe names another one;
    * W&B offline by default, files under ``lockstep.run_dir``.
    """
    from rl.verl_cpu import CPU_SETTINGS

    env: dict[str, str] = {ESTIMATOR_ENV: estimator_config(cfg).to_env()}
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
        # our agent loop sends each sample's (dataset index, sample number) to the Dream server, which pins the
        # sample's completion to it: runs and resumed runs reproduce (rl/verl_rollout.py: canonical_order)
        if cfg.actor_rollout_ref.rollout.agent.default_agent_loop == "single_turn_agent":
            _set(cfg, "actor_rollout_ref.rollout.agent.default_agent_loop", AGENT_LOOP_NAME)
        if not cfg.reward.custom_reward_function.get("path"):
            _set(cfg, "reward.custom_reward_function.path", str(project_root / "rl" / "verl_reward.py"))
            _set(cfg, "reward.custom_reward_function.name", "compute_score")
        run_dir = Path(str(cfg.lockstep.run_dir)).resolve()
        env.setdefault("WANDB_MODE", os.environ.get("WANDB_MODE", "offline"))
        env.setdefault("WANDB_DIR", os.environ.get("WANDB_DIR", str(run_dir)))
        env[RUN_DIR_ENV] = str(run_dir)  # each worker records what it sees there (rl/worker_record.py)
        env["LOCKSTEP_REWARD_CONFIG"] = json.dumps(
            OmegaConf.to_container(cfg.lockstep.get("reward", {}) or {}, resolve=True))
        for key, value in env.items():
            os.environ[key] = value
            _set(cfg, f"ray_kwargs.ray_init.runtime_env.env_vars.{key}", value)
