"""rl package: GRPO for the Dream diffusion LM (actor wrapper, diffusion log-prob estimators, GRPO math,
and the VERL plugin).

The public names below load lazily: ``import rl.verl_plugin`` runs in every VERL worker and should not pay for
peft or the decoding stack unless it uses them.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ActorConfig": "rl.actor",
    "DreamActor": "rl.actor",
    "LoraSettings": "rl.actor",
    "Rollout": "rl.actor",
    "RolloutConfig": "rl.actor",
    "left_pad": "rl.actor",
    "shard_fsdp2": "rl.actor",
    "GRPOBatch": "rl.grpo",
    "GRPOConfig": "rl.grpo",
    "group_advantages": "rl.grpo",
    "grpo_token_loss": "rl.grpo",
    "grpo_update": "rl.grpo",
    "informative_groups": "rl.grpo",
    "k3_kl": "rl.grpo",
    "make_grpo_batch": "rl.grpo",
    "MaskPlan": "rl.logprob",
    "TokenLogProbs": "rl.logprob",
    "completion_loss_mask": "rl.logprob",
    "coupled_plan": "rl.logprob",
    "draw_coupled_masks": "rl.logprob",
    "draw_trajectory_masks": "rl.logprob",
    "masked_logprob": "rl.logprob",
    "plan_scored_mask": "rl.logprob",
    "trajectory_plan": "rl.logprob",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rl' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
