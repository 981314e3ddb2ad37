"""rl package: GRPO for the Dream diffusion LM trained through verl (the Dream engine, rollout server, reward
adapter and trainer mode of the VERL plugin) and the diffusion log-prob estimators it uses.

The public names below load lazily: ``import rl.verl.plugin`` runs in every VERL worker and should not pay for
the decoding stack unless it uses them.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
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
