"""Which recipe in ``recipes/`` belongs to which entry point (GRPO, SFT, evaluation).

Why: ``recipes/`` holds GRPO recipes (layered on verl's ``ppo_trainer``), SFT recipes and, under ``eval/``,
evaluation recipes. Each launcher must offer and accept only its own kind: an SFT recipe given to
``train_grpo.py`` composes into a config verl cannot read and failed with a stack trace. The kind is read from
the recipe itself (its Hydra ``defaults`` and top-level sections), not from its file name.

It also holds what every launcher shares: :class:`RecipeError` (the one error a user mistake in a command
line, recipe or model folder raises; launchers print it as one ``error:`` line and exit 2) and :func:`compose`
(the one Hydra compose call). Files whose name starts with ``_`` are shared bases (``recipes/_grpo_7b.yaml``),
not recipes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
ENTRY_POINTS = {"grpo": "launch/train_grpo.py", "sft": "launch/train_sft.py",
                "eval": "launch/eval_checkpoint.py"}
SFT_SECTIONS = {"model", "tasks", "train", "eval"}
LABELS = {"grpo": ("a GRPO", "GRPO"), "sft": ("an SFT", "SFT"), "eval": ("an evaluation", "evaluation")}


class RecipeError(ValueError):
    """A command-line, recipe or data setting the user must change; the message names the key."""


def compose(recipe: str, overrides: list[str]) -> Any:  # -> DictConfig
    """Hydra-compose ``recipes/<recipe>.yaml`` with ``overrides``; a Hydra/OmegaConf error becomes
    RecipeError."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(RECIPES_DIR), version_base=None):
            return hydra_compose(config_name=recipe, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as error:
        raise RecipeError(f"cannot compose recipe {recipe!r}: {' '.join(str(error).split())}") from None


def quiet_verl_imports() -> None:
    """Silence what importing verl prints in a process that only composes/validates a recipe.

    verl announces every optional engine it lacks (``UserWarning: megatron engine is not available``, five of
    them) and, without a GPU, logs that it falls back to the ``nvidia`` platform; a launcher's one-line error
    would otherwise come after a dozen lines of that. Ray workers (which configure their own platform) are not
    affected.
    """
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=r".* engine is not available", category=UserWarning)
    # a filter, not a level: verl sets its loggers' levels when its modules are imported
    logging.getLogger("verl.plugin.platform.platform_manager").addFilter(
        lambda record: record.levelno >= logging.ERROR)


def recipe_kind(name: str) -> str | None:
    """``grpo`` | ``sft`` | ``eval`` for ``recipes/<name>.yaml``, ``None`` when it does not exist or is
    neither."""
    name = name.removesuffix(".yaml")
    if Path(name).name.startswith("_"):  # a shared base (recipes/_grpo_7b.yaml), not a recipe
        return None
    path = RECIPES_DIR / f"{name}.yaml"
    if not path.is_file():
        return None
    if path.parent.name == "eval":
        return "eval"
    return _kind_of_file(path)


def _kind_of_file(path: Path, depth: int = 0) -> str | None:
    """The kind from the file's ``defaults`` (followed into its ``_`` bases) and top-level sections."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return None
    defaults = raw.get("defaults") or []
    if any(entry == "ppo_trainer" or (isinstance(entry, dict) and "ppo_trainer" in entry)
           for entry in defaults):
        return "grpo"
    if set(raw) >= SFT_SECTIONS:
        return "sft"
    bases = [RECIPES_DIR / f"{entry}.yaml" for entry in defaults
             if isinstance(entry, str) and entry.startswith("_")
             and entry != "_self_"]
    for base in bases:
        if depth < 4 and base.is_file() and (kind := _kind_of_file(base, depth + 1)):
            return kind
    return None


def recipe_names(kind: str) -> list[str]:
    """Names (as given to ``recipe=``) of every recipe of ``kind``."""
    paths = RECIPES_DIR.glob("eval/*.yaml") if kind == "eval" else RECIPES_DIR.glob("*.yaml")
    names = [f"eval/{p.stem}" if kind == "eval" else p.stem for p in paths if not p.stem.startswith("_")]
    return sorted(n for n in names if recipe_kind(n) == kind)


def check_recipe(name: str, kind: str) -> None:
    """RecipeError with the recipes of ``kind`` (and the right entry point for another kind) unless ``name``
    fits."""
    found = recipe_kind(name)
    if found == kind:
        return
    available = ", ".join(recipe_names(kind))
    if found is None:
        raise RecipeError(f"unknown recipe {name!r}; {LABELS[kind][1]} recipes: {available}")
    raise RecipeError(f"recipe={name} is {LABELS[found][0]} recipe: run it with python {ENTRY_POINTS[found]} "
                     f"recipe={name} ({ENTRY_POINTS[kind].rsplit('/', 1)[1]} takes {available})")
