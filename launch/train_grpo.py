"""Train Dream with GRPO through verl: ``python launch/train_grpo.py recipe=<name> [key=value ...]``.

Why this launcher: verl is ONE driver process plus Ray workers (it is not SPMD). This script composes
``recipes/<recipe>.yaml`` (a Hydra config layered on verl's ``ppo_trainer``) with command-line overrides,
validates it with clear errors (:mod:`rl.config`), prepares the parquet prompts and, for the demo, a tiny
random Dream, then runs verl's own driver (``run_ppo`` + ``TaskRunnerV1``) exactly as
``python -m verl.trainer.main_ppo`` would.

``torchrun --nproc_per_node 8 launch/train_grpo.py recipe=humaneval`` works too: only global rank 0 drives
(verl's Ray workers take the GPUs); every other rank logs why and exits 0. Exit codes: 0 success, 2 bad
recipe/config (message on stderr, no stack trace).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RECIPES_DIR = PROJECT_ROOT / "recipes"
# What torchrun exports to its ranks, and what the driver does with each before Ray copies its environment into
# every worker. Removed: the process-group variables (verl's workers form their own groups: a leaked
# MASTER_ADDR/PORT or RANK would join torchrun's group) and every TORCHELASTIC_* variable — with
# TORCHELASTIC_USE_AGENT_STORE=True a worker's init_process_group waits forever for torchrun's agent store
# (the hang this list exists for). OMP_NUM_THREADS=1 is torchrun's default for N ranks sharing a node; verl's
# workers size their own thread pools, so it is removed when it is torchrun's "1" (a user's other value stays).
# Kept: TORCH_NCCL_ASYNC_ERROR_HANDLING (a failed NCCL collective aborts instead of hanging).
TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                 "ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
TORCHRUN_PREFIXES = ("TORCHELASTIC_",)
TORCHRUN_DEFAULT_THREADS = "1"

logger = logging.getLogger("train_grpo")

if str(PROJECT_ROOT) not in sys.path:  # `python launch/train_grpo.py` from anywhere
    sys.path.insert(0, str(PROJECT_ROOT))


def driver_rank() -> int:
    """Global rank under torchrun (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)


def strip_torchrun_env(environ: dict[str, str] | os._Environ = os.environ) -> list[str]:
    """Remove what torchrun exported (see ``TORCHRUN_VARS``) so Ray workers see the user's environment.

    Returns the names removed. A no-op outside torchrun (no ``TORCHELASTIC_RUN_ID``), so a user's own
    ``OMP_NUM_THREADS=1`` under plain ``python`` stays.
    """
    if "TORCHELASTIC_RUN_ID" not in environ:
        return []
    removed = [name for name in list(environ)
               if name in TORCHRUN_VARS or name.startswith(TORCHRUN_PREFIXES)]
    if environ.get("OMP_NUM_THREADS") == TORCHRUN_DEFAULT_THREADS:
        removed.append("OMP_NUM_THREADS")
    for name in removed:
        environ.pop(name, None)
    return sorted(removed)


def split_recipe(argv: list[str]) -> tuple[str, list[str]]:
    """(recipe name, remaining Hydra overrides) from ``recipe=<name> key=value ...``."""
    recipe, overrides = None, []
    for arg in argv:
        if arg.startswith("recipe="):
            recipe = arg.split("=", 1)[1]
        else:
            overrides.append(arg)
    if not recipe:
        available = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
        raise SystemExit(f"usage: train_grpo.py recipe=<{'|'.join(available)}> [key=value ...]")
    return recipe, overrides


def compose_recipe(recipe: str, overrides: list[str]):  # -> DictConfig
    """Hydra-compose ``recipes/<recipe>.yaml`` (layered on verl's ``ppo_trainer``) with ``overrides``."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from rl.config import RecipeError

    if not (RECIPES_DIR / f"{recipe}.yaml").is_file():
        available = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
        raise RecipeError(f"unknown recipe {recipe!r}; available: {available}")
    try:
        with initialize_config_dir(config_dir=str(RECIPES_DIR), version_base=None):
            return compose(config_name=recipe, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as error:
        raise RecipeError(f"cannot compose recipe {recipe!r}: {error}") from None


def prepare_inputs(cfg) -> None:  # cfg: DictConfig
    """Create what the recipe asks for and is missing: a tiny Dream (demo) and the parquet prompt files."""
    from omegaconf import OmegaConf

    from launch.prepare_data import write_parquet_files

    model_path = Path(str(cfg.actor_rollout_ref.model.path))
    if not model_path.is_absolute() and not model_path.exists() and (PROJECT_ROOT / model_path).exists():
        model_path = PROJECT_ROOT / model_path  # shipped assets (recipes/assets/...) from any working directory
    if model_path.exists():
        cfg.actor_rollout_ref.model.path = str(model_path.resolve())  # every Ray worker must find it
    if cfg.lockstep.get("tiny_model", False) and not (model_path / "config.json").is_file():
        from decoding.tiny import make_tiny_dream

        make_tiny_dream(model_path, seed=int(cfg.data.get("seed") or 0))
        logger.info("wrote a tiny random Dream to %s", model_path)
    data = cfg.lockstep.get("data", {})
    train_file = Path(str(cfg.data.train_files))
    if data.get("dataset") and not train_file.is_file():
        demo = data.get("demo")  # demo task generator settings (rl.demo_tasks.DemoTaskSpec fields)
        write_parquet_files(str(data.dataset), train_file.parent, int(data.get("train_tasks", 0)),
                            int(data.get("val_tasks", 0)), data.get("evalplus_dir"),
                            demo=OmegaConf.to_container(demo, resolve=True) if demo else None)
        logger.info("wrote parquet prompts to %s", train_file.parent)


def build_config(argv: list[str]):  # -> DictConfig
    """Compose, prepare inputs, apply run-time settings and validate (RecipeError on any user mistake)."""
    from rl.config import prepare_runtime, validate_recipe

    recipe, overrides = split_recipe(argv)
    cfg = compose_recipe(recipe, overrides)
    validate_recipe(cfg, check_files=False)
    # absolute, so that every Ray worker (whatever its working directory) finds the run's files
    cfg.lockstep.run_dir = str(Path(str(cfg.lockstep.run_dir)).resolve())
    prepare_inputs(cfg)
    prepare_runtime(cfg, PROJECT_ROOT)
    validate_recipe(cfg, check_files=True)
    return cfg


def run_driver(cfg) -> None:  # cfg: DictConfig
    """verl's ``main_ppo.main`` body: device check, verl's own config validation, then the Ray driver."""
    from verl.trainer.main_ppo import TaskRunnerV1, run_ppo
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    from rl.config import RecipeError
    from rl.verl_plugin import ensure_registered

    ensure_registered()
    auto_set_device(cfg)
    try:
        validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    except (AssertionError, ValueError) as error:
        raise RecipeError(f"verl rejected the config: {error}") from None
    run_ppo(cfg, task_runner_class=TaskRunnerV1)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    rank = driver_rank()
    if rank != 0:
        logger.info("global rank %d: verl runs one driver (global rank 0) that starts Ray workers on all GPUs; "
                    "this rank has nothing to do and exits", rank)
        return 0
    removed = strip_torchrun_env()
    if removed:
        logger.info("launched by torchrun: rank 0 drives verl; removed torchrun's %s from the environment the "
                    "Ray workers inherit", ", ".join(removed))
    from launch.prepare_data import DataError
    from rl.config import RecipeError

    try:
        cfg = build_config(list(sys.argv[1:] if argv is None else argv))
        run_driver(cfg)
    except (RecipeError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
