"""Which decoder checkpoint evaluation uses: by default the one the run trained with.

Why: GRPO trains the policy on what its rollout decoded (the lockstep R/A canvas with the run's delimiter,
block lengths, thresholds, commit order). Evaluating the checkpoint with another decoder, or with other
lockstep settings, measures a policy that was never trained. ``generation.sampler=rollout`` (the default of
``recipes/eval/_defaults.yaml``) reads the run's saved config — ``<run>/config.yaml``, written by
``launch/train_grpo.py`` next to ``<run>/checkpoints/global_step_N``, or ``run_config=PATH`` — and decodes
with its rollout's sampler and options; only the sampling settings (``temperature``, ``top_p``, ``top_k``)
come from the evaluation's ``generation.<sampler>`` block (greedy by default, evalplus's pass@1 protocol; for
lockstep every non-null key of ``generation.lockstep`` wins over the run's, so a user can still change one).
Without a run config (a bare model) it decodes with the lockstep defaults of ``decoding/lockstep.py``
(``LockstepCfg`` and ``DEFAULT_DELIMITER``: the canvas the code recipes train with). ``generation.compare``
(default ``[plain]``) lists further samplers evaluated after it, each one more row per checkpoint in the run's
results table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from evals.results import STEP_DIR, run_root

ROLLOUT = "rollout"
RUN_CONFIG_FILE = "config.yaml"  # launch/train_grpo.py: <lockstep.run_dir>/config.yaml
# rollout sampler -> eval sampler
EVAL_SAMPLER_OF = {"lockstep": "lockstep", "fast": "fast", "diffusion": "plain"}
SAMPLING_KEYS = ("temperature", "top_p", "top_k")


def find_run_config(checkpoint: str, explicit: str | None) -> Path | None:
    """The training config of the checkpoint's run: ``explicit`` (ValueError if missing), else
    ``<run>/config.yaml`` of the nearest ``global_step_N`` folder of ``checkpoint``, else None."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ValueError(f"run_config={explicit} does not exist "
                             "(the run's config.yaml, see docs/evaluation.md)")
        return path
    resolved = Path(checkpoint).expanduser().resolve()
    for folder in (resolved, *resolved.parents):
        if STEP_DIR.match(folder.name):
            path = run_root(folder) / RUN_CONFIG_FILE
            return path if path.is_file() else None
    return None


def rollout_decoder(run_config: Path) -> tuple[str, dict[str, Any], str | None]:
    """(eval sampler, its settings, lockstep delimiter) of a training run's rollout
    (ValueError if unreadable)."""
    try:
        run = OmegaConf.load(run_config)
        rollout = run.actor_rollout_ref.rollout
        dream = OmegaConf.to_container(rollout.custom.dream, resolve=True)
        response_length = int(rollout.response_length)
    except Exception as error:  # noqa: BLE001 - any unreadable/foreign config is one clear line
        raise ValueError(f"{run_config} holds no Dream rollout settings "
                         "(actor_rollout_ref.rollout.custom.dream): "
                         f"{' '.join(str(error).split())[:200]}") from None
    sampler = str(dream.get("sampler", "fast"))
    if sampler not in EVAL_SAMPLER_OF:
        raise ValueError(f"{run_config}: unknown rollout sampler {sampler!r}")
    options = dict(dream.get("options") or {})
    delimiter = None
    if sampler == "lockstep":
        from decoding.lockstep import resolve_options

        options, delimiter = resolve_options(options)
    else:
        options.setdefault("max_new_tokens", response_length)
    return EVAL_SAMPLER_OF[sampler], options, delimiter


def resolve_decoder(cfg: DictConfig) -> str:
    """Turn ``generation.sampler=rollout`` into a concrete sampler in place; returns where its settings came
    from.

    Also fills ``generation.delimiter`` (null = ``decoding.lockstep.DEFAULT_DELIMITER``). Other samplers are
    left as configured (their delimiter default filled likewise).
    """
    from decoding.lockstep import DEFAULT_DELIMITER

    gen = cfg.generation
    source = "the recipe"
    with open_dict(cfg):
        if gen.sampler == ROLLOUT:
            run_config = find_run_config(str(cfg.checkpoint), cfg.get("run_config"))
            if run_config is None:
                sampler, options, delimiter = "lockstep", {}, None
                source = "decoding/lockstep.py defaults (no run config found)"
            else:
                sampler, options, delimiter = rollout_decoder(run_config)
                source = f"the run's rollout ({run_config})"
            own = {k: v for k, v in OmegaConf.to_container(gen.get(sampler) or {}, resolve=True).items()
                   if v is not None and (sampler == "lockstep" or k in SAMPLING_KEYS)}
            options.update(own)
            gen.sampler = sampler
            gen[sampler] = options
            gen.delimiter = delimiter
        if gen.sampler == "lockstep" and gen.get("delimiter") is None:
            gen.delimiter = DEFAULT_DELIMITER
    return source


def compare_argvs(cfg: DictConfig, argv: list[str]) -> list[list[str]]:
    """Command lines of the ``generation.compare`` evaluations: the same run with each other sampler."""
    extra = [str(s) for s in (cfg.generation.get("compare") or []) if str(s) != cfg.generation.sampler]
    return [[*argv, f"generation.sampler={sampler}", "generation.compare=[]"] for sampler in extra]
