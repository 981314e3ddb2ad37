"""verl reward function: score a decoded completion with our sandboxed EvalPlus judge (:mod:`rewards`).

Loaded by verl's reward loop from ``reward.custom_reward_function.path`` (this file) and ``.name``
(``compute_score``; ``launch/train_grpo.py`` sets both). verl calls it once per completion inside its
RewardLoopWorker actors with the row's ``data_source`` (``humaneval`` / ``mbpp``), the decoded response,
``reward_model.ground_truth`` (the EvalPlus ``task_id``, see ``launch/prepare_data.py``) and ``extra_info``
(``mini``: score against HumanEval+ Mini).

Contract: returns a dict whose ``score`` is the GRPO reward (:class:`rewards.api.RewardConfig` decides binary
vs pass ratio and the format bonus), plus ``pass_base`` / ``pass_plus`` (1.0 when that test set passed, 0.0
otherwise, -1.0 when it was not run), ``pass_ratio`` and ``reward_latency_s``; verl logs these as reward extras.
Settings come from the recipe group ``lockstep.reward`` (exported as ``$LOCKSTEP_REWARD_CONFIG``). The sandbox
scorer is cached per worker process, so tasks and expected outputs load once.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

DATA_SOURCES = ("humaneval", "mbpp")


def reward_config(mini: bool = False) -> Any:
    """:class:`rewards.api.RewardConfig` from ``$LOCKSTEP_REWARD_CONFIG`` (ValueError on unknown keys)."""
    import dataclasses

    from rewards.api import RewardConfig

    raw = json.loads(os.environ.get("LOCKSTEP_REWARD_CONFIG") or "{}")
    known = {f.name for f in dataclasses.fields(RewardConfig)} - {"sandbox"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"unknown lockstep.reward keys {unknown}; known: {sorted(known)}")
    if "test_sets" in raw:
        raw["test_sets"] = tuple(raw["test_sets"])
    raw["mini"] = bool(mini)
    return RewardConfig(**raw)


def _set_outcome(status: str | None) -> float:
    return -1.0 if status is None else float(status == "pass")


def compute_score(data_source: str, solution_str: str, ground_truth: str, extra_info: dict | None = None,
                  **kwargs: Any) -> dict[str, float]:
    """Reward of one completion (see the module docstring for the returned keys)."""
    from rewards.api import score_batch

    if data_source not in DATA_SOURCES:
        raise ValueError(f"unknown data_source {data_source!r}; expected one of {DATA_SOURCES}")
    mini = bool((extra_info or {}).get("mini", False))
    start = time.perf_counter()
    result = score_batch([(str(ground_truth), solution_str)], dataset=data_source, cfg=reward_config(mini))[0]
    return {
        "score": float(result.reward or 0.0),
        "pass_base": _set_outcome(result.base_status),
        "pass_plus": _set_outcome(result.plus_status),
        "pass_ratio": float(result.pass_ratio),
        "reward_latency_s": time.perf_counter() - start,
    }
