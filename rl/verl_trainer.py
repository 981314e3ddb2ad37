"""verl trainer mode ``lockstep``: verl's synchronous GRPO trainer plus our per-step metrics.

Why: verl 0.9.1 logs reward extras (pass rates, reward latency) only for validation and never looks at the
rollout server's ``extra_fields`` (rollout throughput, decoder steps). Selecting
``trainer.v1.trainer_mode=lockstep`` keeps the training loop exactly verl's ``sync`` trainer and adds, every
step, the means of those per-sample fields to the metrics verl sends to its loggers (console, W&B):

* ``reward/pass_base``, ``reward/pass_plus`` (fraction of samples passing each EvalPlus test set; samples where a
  set was not run are left out), ``reward/pass_ratio``, ``reward/latency_s``;
* ``rollout/tokens_per_s``, ``rollout/batch_seconds``, ``rollout/batch_size`` and the sampler's own counters
  (``rollout/nfe``, ``rollout/steps``, ...);
* ``rollout/lockstep_fill``: the lockstep canvas-fill GIF the rollout server saves every
  ``rollout.custom.dream.gif_every`` steps (W&B only).
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

import numpy as np

TRAINER_MODE = "lockstep"
REWARD_KEYS = {"pass_base": "reward/pass_base", "pass_plus": "reward/pass_plus", "pass_ratio": "reward/pass_ratio",
               "reward_latency_s": "reward/latency_s"}
ROLLOUT_KEYS = {"rollout_tokens_per_s": "rollout/tokens_per_s", "rollout_seconds": "rollout/batch_seconds",
                "rollout_batch_size": "rollout/batch_size"}


def lockstep_metrics(extra_fields: list[Any]) -> dict[str, float]:
    """Per-step means of the reward extras and rollout fields of one batch's samples (see module docstring)."""
    values: dict[str, list[float]] = defaultdict(list)
    for fields in extra_fields:
        if not isinstance(fields, dict):
            continue
        reward = fields.get("reward_extra_info") or {}
        for key, name in REWARD_KEYS.items():
            value = reward.get(key)
            if value is None or (key in ("pass_base", "pass_plus") and float(value) < 0.0):
                continue  # -1: that test set was not run for this sample
            values[name].append(float(value))
        for key, value in fields.items():
            if key in ROLLOUT_KEYS:
                values[ROLLOUT_KEYS[key]].append(float(value))
            elif key.startswith("rollout/") and isinstance(value, int | float):
                values[key].append(float(value))
    return {name: float(np.mean(v)) for name, v in values.items() if v}


def fill_gif_path(gif_dir: str | None, weights_version: int) -> str | None:
    """The GIF the rollout server saved for rollouts made with ``weights_version`` (None if there is none)."""
    if not gif_dir:
        return None
    path = os.path.join(gif_dir, f"fill_step{weights_version}.gif")
    return path if os.path.isfile(path) else None


def register() -> None:
    """Register the ``lockstep`` trainer mode with verl (idempotent)."""
    import transfer_queue as tq
    from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY, register_trainer
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

    if TRAINER_MODE in TRAINER_REGISTRY:
        return

    class LockstepTrainer(PPOTrainerSync):
        """verl's sync GRPO trainer; adds :func:`lockstep_metrics` to every step's metrics."""

        def _compute_metrics(self, batch: Any, metrics: dict, timing_raw: dict, global_steps: int,
                             epoch: int) -> Any:
            result = super()._compute_metrics(batch, metrics, timing_raw, global_steps=global_steps, epoch=epoch)
            data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["extra_fields"])
            metrics.update(lockstep_metrics(list(data.pop("extra_fields").tolist())))
            self._log_fill_gif(global_steps)
            return result

        def _log_fill_gif(self, global_steps: int) -> None:
            """Send the rollout server's canvas-fill GIF of this step (weights version ``global_steps - 1``) to W&B."""
            dream = (self.config.actor_rollout_ref.rollout.get("custom") or {}).get("dream") or {}
            gif = fill_gif_path(dream.get("gif_dir"), global_steps - 1)
            if gif is None:
                return
            import wandb

            if wandb.run is not None:
                wandb.log({"rollout/lockstep_fill": wandb.Image(gif)}, step=global_steps)

    register_trainer(TRAINER_MODE)(LockstepTrainer)
