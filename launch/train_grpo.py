"""Train Dream with GRPO through verl: ``python launch/train_grpo.py recipe=<name> [key=value ...]``.

Why this launcher: verl is ONE driver process plus Ray workers (it is not SPMD). This script composes
``recipes/<recipe>.yaml`` (a Hydra config layered on verl's ``ppo_trainer``) with command-line overrides,
validates it with clear errors (:mod:`rl.verl.config`), prepares the parquet prompts and, for the demo, a tiny
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

logger = logging.getLogger("train_grpo")

from launch.recipes import RecipeError, quiet_verl_imports  # noqa: E402
from rl.verl.worker_record import PROCESS_GROUP_VARS  # noqa: E402

quiet_verl_imports()  # before anything imports verl: a one-line error must not follow a dozen import warnings

# What torchrun exports to its ranks, and what the driver does with each before Ray copies its environment
# into every worker. Removed: the process-group variables (verl's workers form their own groups: a leaked
# MASTER_ADDR/PORT or RANK would join torchrun's group) and every TORCHELASTIC_* variable — with
# TORCHELASTIC_USE_AGENT_STORE=True a worker's init_process_group waits forever for torchrun's agent store
# (the hang this list exists for). OMP_NUM_THREADS=1 is torchrun's default for N ranks sharing a node; verl's
# workers size their own thread pools, so it is removed when it is torchrun's "1" (a user's other value
# stays). Kept: TORCH_NCCL_ASYNC_ERROR_HANDLING (a failed NCCL collective aborts instead of hanging).
TORCHRUN_VARS = PROCESS_GROUP_VARS
TORCHRUN_PREFIXES = ("TORCHELASTIC_",)
TORCHRUN_DEFAULT_THREADS = "1"


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


HELP = """usage: python launch/train_grpo.py recipe=<{recipes}> [key=value ...]

Train Dream with GRPO through verl. The recipe (recipes/<name>.yaml, layered on verl's ppo_trainer config) is
composed by Hydra with the key=value overrides (keys verl does not define need a leading '+'), validated, and
run by verl's driver. SFT recipes ({sft}) run with launch/train_sft.py instead.

Key overrides (all keys: docs/training.md):
  actor_rollout_ref.model.path=DIR          Dream checkpoint folder (HF layout); required for humaneval/mbpp
  lockstep.run_dir=DIR                      outputs: data/, checkpoints/, wandb/, config.yaml
  actor_rollout_ref.rollout.n=N             GRPO group size (>= 2)
  data.train_batch_size=N                   prompts per step
  trainer.total_training_steps=N            steps to run (null: total_epochs over the data)
  trainer.save_freq=N                       checkpoint every N steps
  trainer.resume_mode=auto|disable|resume_path  (+ trainer.resume_from_path=.../global_step_<k>)
  trainer.device=cpu|cuda  trainer.n_gpus_per_node=N  trainer.nnodes=N

Exit status: 0 done, 2 bad recipe or override (one line on stderr, nothing written).
"""


def usage() -> str:
    from launch.recipes import recipe_names

    return HELP.format(recipes="|".join(recipe_names("grpo")), sft=", ".join(recipe_names("sft")))


def split_recipe(argv: list[str]) -> tuple[str, list[str]]:
    """(recipe name, remaining Hydra overrides) from ``recipe=<name> key=value ...``.

    A missing recipe, an SFT/eval recipe or an argument that is not ``key=value`` raise RecipeError (exit 2);
    ``--help`` is answered by :func:`main` before this runs.
    """
    from launch.recipes import check_recipe, recipe_names

    recipe, overrides = None, []
    for arg in argv:
        if arg.startswith("recipe="):
            recipe = arg.split("=", 1)[1]
        elif "=" not in arg and not arg.startswith(("~", "+")):
            raise RecipeError(f"arguments are recipe=<name> and key=value overrides, got {arg!r} "
                              "(see --help)")
        else:
            overrides.append(arg)
    if not recipe:
        raise RecipeError(f"missing recipe=<{'|'.join(recipe_names('grpo'))}> (see --help)")
    check_recipe(recipe, "grpo")
    return recipe, overrides


def compose_recipe(recipe: str, overrides: list[str]):  # -> DictConfig
    """Hydra-compose ``recipes/<recipe>.yaml`` (layered on verl's ``ppo_trainer``) with ``overrides``."""
    from launch.recipes import compose, recipe_names

    if not (RECIPES_DIR / f"{recipe}.yaml").is_file():
        raise RecipeError(f"unknown recipe {recipe!r}; GRPO recipes: {', '.join(recipe_names('grpo'))}")
    return compose(recipe, overrides)


def resolve_model_path(cfg) -> Path:  # cfg: DictConfig
    """Make ``actor_rollout_ref.model.path`` absolute (every Ray worker must find it); writes nothing."""
    model_path = Path(str(cfg.actor_rollout_ref.model.path)).expanduser()
    if not model_path.is_absolute() and not model_path.exists() and (PROJECT_ROOT / model_path).exists():
        # shipped assets (recipes/assets/...) from any working directory
        model_path = PROJECT_ROOT / model_path
    if model_path.exists():
        cfg.actor_rollout_ref.model.path = str(model_path.resolve())
    return model_path


def prompt_token_counter(model_path: Path):  # -> Callable[[list[dict]], int]
    """Chat messages -> prompt tokens with the model's tokenizer and chat template, as verl's overlong-prompt
    filter counts them (so the rows the corpus report counts as too long are the rows verl would drop)."""
    from transformers import AutoTokenizer

    import decoding  # noqa: F401 - registers DreamTokenizer, which the hub folder's tokenizer_config names

    tokenizer = AutoTokenizer.from_pretrained(str(model_path))

    def count(messages: list[dict]) -> int:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        # transformers 5 returns a BatchEncoding
        return len(ids["input_ids"] if hasattr(ids, "keys") else ids)

    return count


def corpus_selection(data):  # data: DictConfig (lockstep.data) -> corpora.CorpusSelection
    """The training corpus a recipe names (``lockstep.data.corpus`` and its keys, docs/training.md)."""
    from corpora import CorpusSelection

    files = data.get("data_files") or ()
    files = (files,) if isinstance(files, str) else tuple(str(f) for f in files)
    return CorpusSelection(str(data.corpus), files, data.get("revision"),
                           hard_subset=bool(data.get("hard_subset", True)),
                           max_rows=int(data.get("max_rows") or 0), evalplus_dir=data.get("evalplus_dir"))


def prepare_inputs(cfg) -> None:  # cfg: DictConfig
    """Create what the recipe asks for and is missing: a tiny Dream (demo) and the parquet prompt files."""
    from omegaconf import OmegaConf

    from launch.prepare_data import DATASETS, write_corpus_files, write_parquet_files

    model_path = resolve_model_path(cfg)
    if cfg.lockstep.get("tiny_model", False) and not (model_path / "config.json").is_file():
        from decoding.tiny import make_tiny_dream

        make_tiny_dream(model_path, seed=int(cfg.data.get("seed") or 0))
        logger.info("wrote a tiny random Dream to %s", model_path)
    data = cfg.lockstep.get("data", {})
    train_file = Path(str(cfg.data.train_files))
    if train_file.is_file():
        return
    if data.get("corpus"):
        write_corpus_files(corpus_selection(data), str(data.get("val") or "humaneval"), train_file.parent,
                           count_tokens=prompt_token_counter(Path(str(cfg.actor_rollout_ref.model.path))),
                           max_prompt_tokens=int(cfg.data.max_prompt_length),
                           evalplus_dir=data.get("evalplus_dir"))
        logger.info("wrote parquet prompts to %s (drop counts: corpus_report.json)", train_file.parent)
    elif data.get("dataset"):
        if str(data.dataset) in DATASETS:
            logger.warning("lockstep.data.dataset=%s trains on the benchmark's own tasks: its scores then "
                           "measure memorisation (recipes train on lockstep.data.corpus)", data.dataset)
        demo = data.get("demo")  # demo task generator settings (cpu_demo.tasks.DemoTaskSpec fields)
        write_parquet_files(str(data.dataset), train_file.parent, int(data.get("train_tasks", 0)),
                            int(data.get("val_tasks", 0)), data.get("evalplus_dir"),
                            demo=OmegaConf.to_container(demo, resolve=True) if demo else None)
        logger.info("wrote parquet prompts to %s", train_file.parent)


def verl_validate(cfg) -> None:  # cfg: DictConfig
    """verl's own checks of ``main_ppo.main`` (device, batch sizes, ...), as RecipeError."""
    import contextlib
    import io

    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    from rl.verl.plugin import ensure_registered

    ensure_registered()
    auto_set_device(cfg)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # verl prints a line per check it passes
            validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg),
                            use_critic=need_critic(cfg))
    except (AssertionError, ValueError, TypeError) as error:
        raise RecipeError(f"verl rejected the config: {error}") from None


def build_config(argv: list[str]):  # -> DictConfig
    """Compose, validate everything, then prepare inputs (RecipeError on any user mistake).

    Every check runs before anything is written: the run directory, the parquet prompts and a tiny model
    (``lockstep.tiny_model``) are created only once the recipe, the overrides, the model folder (including
    its weight files) and the checkpoint an auto-resume would load have been checked.
    """
    from rl.verl.config import check_device, check_model_dir, check_resume, prepare_runtime, validate_recipe

    recipe, overrides = split_recipe(argv)
    cfg = compose_recipe(recipe, overrides)
    validate_recipe(cfg, check_files=False)
    # absolute, so that every Ray worker (whatever its working directory) finds the run's files
    cfg.lockstep.run_dir = str(Path(str(cfg.lockstep.run_dir)).resolve())
    model_path = resolve_model_path(cfg)
    if not (cfg.lockstep.get("tiny_model", False) and not (model_path / "config.json").is_file()):
        check_model_dir(str(cfg.actor_rollout_ref.model.path))
    check_device(cfg)
    prepare_runtime(cfg, PROJECT_ROOT)
    check_resume(cfg)
    verl_validate(cfg)
    prepare_inputs(cfg)
    validate_recipe(cfg, check_files=True)
    return cfg


def run_driver(cfg) -> None:  # cfg: DictConfig
    """Keep the full config in ``<run_dir>/config.yaml`` (verl would print it, ~1,000 lines), then run verl's
    Ray driver with our task runner (:func:`rl.verl.trainer.task_runner_class`)."""
    from omegaconf import OmegaConf
    from verl.trainer.main_ppo import run_ppo

    from rl.verl.trainer import task_runner_class

    config_file = Path(str(cfg.lockstep.run_dir)) / "config.yaml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, config_file, resolve=True)
    logger.info("full config (recipe + overrides + verl defaults): %s", config_file)
    run_ppo(cfg, task_runner_class=task_runner_class())


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    rank = driver_rank()
    if rank != 0:
        logger.info("global rank %d: verl runs one driver (global rank 0) that starts Ray workers on all "
                    "GPUs; this rank has nothing to do and exits", rank)
        return 0
    args = list(sys.argv[1:] if argv is None else argv)
    if any(arg in ("-h", "--help") for arg in args):  # before importing verl (seconds)
        print(usage())
        return 0
    removed = strip_torchrun_env()
    if removed:
        logger.info("launched by torchrun: rank 0 drives verl; removed torchrun's %s from the environment "
                    "the Ray workers inherit", ", ".join(removed))
    try:
        cfg = build_config(args)
        run_driver(cfg)
    except RecipeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
