"""verl reward function: score a decoded completion with our sandboxed EvalPlus judge (:mod:`rewards`).

Loaded by verl's reward loop from ``reward.custom_reward_function.path`` (this file) and ``.name``
(``compute_score``; ``launch/train_grpo.py`` sets both). verl calls it once per completion inside its
RewardLoopWorker actors with the row's ``data_source``, the decoded response, ``reward_model.ground_truth``
and ``extra_info`` (rows written by ``launch/prepare_data.py``):

* a code-RL corpus (``acecode``, ... ``corpora.CORPUS_NAMES``; training rows): the ground truth is the row's
  tests, ``rewards.code_tests.CodeTests`` as JSON, scored by ``rewards.code_tests.score_code_tests``;
* ``humaneval`` / ``mbpp`` (validation rows): the ground truth is the EvalPlus ``task_id``
  (``extra_info.mini``: HumanEval+ Mini);
* ``demo``: ``extra_info.demo_spec``, the generator settings of the synthetic demo tasks, which are
  regenerated once per worker process and scored on their own tests, base set only.

``extra_info`` may also hold, merged in by verl from the rollout's extra fields, ``lockstep_reward_text``: the
rollout's text of the completion (R text + delimiter + A text, each cut at its first stop), scored instead of
verl's decode of the whole canvas, whose runs after the stop tokens are context only.

Contract: returns a dict whose ``score`` is the GRPO reward (:class:`rewards.api.RewardConfig` decides binary
vs pass ratio and the format bonus), plus ``pass_base`` / ``pass_plus`` (1.0 when that test set passed, 0.0
otherwise, -1.0 when it was not run), ``pass_ratio`` and ``reward_latency_s``; verl logs these as reward
extras. Settings come from the recipe group ``lockstep.reward`` (exported as ``$LOCKSTEP_REWARD_CONFIG``). The
sandbox scorer is cached per worker process, so tasks and expected outputs load once; unless
``lockstep.reward.workers`` is set, its sandbox pool gets the worker's share of the node's CPUs
(:func:`sandbox_workers`).
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

from corpora.specs import CORPUS_NAMES

DATA_SOURCES = ("humaneval", "mbpp", "demo", *CORPUS_NAMES)
# Reward workers (verl's RewardLoopWorker actors) per node, exported by rl/verl/config.py:prepare_runtime.
REWARD_WORKERS_ENV = "LOCKSTEP_REWARD_WORKERS_PER_NODE"


def sandbox_workers(cpu_count: int | None, reward_workers_per_node: int) -> int:
    """Sandbox processes of one reward worker: its share of the node's CPUs (at least 1).

    Why: every reward worker keeps its own sandbox pool, and a pool defaults to one process per CPU; with
    verl's 8 reward workers per node that was 8 x cpu_count() sandbox zygotes competing for the same cores.
    """
    return max(1, (cpu_count or 1) // max(1, reward_workers_per_node))
# extra field of a rollout row (rl/rollout_decoding.py sets it, verl merges it into extra_info): the rollout's
# own text
REWARD_TEXT_FIELD = "lockstep_reward_text"


def reward_fields(raw: dict[str, Any]) -> dict[str, Any]:
    """A recipe's ``lockstep.reward`` mapping as :class:`rewards.api.RewardConfig` keyword arguments.

    ValueError naming the unknown keys (``sandbox`` is not settable from a recipe); lists become tuples. The
    launcher's recipe check (``rl/verl/config.py``) and the reward workers both read the mapping through here.
    """
    import dataclasses

    from rewards.api import RewardConfig

    known = {f.name for f in dataclasses.fields(RewardConfig)} - {"sandbox"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"unknown keys {unknown}; known: {sorted(known)}")
    fields = dict(raw)
    if "test_sets" in fields:
        fields["test_sets"] = tuple(fields["test_sets"])
    return fields


def reward_config(mini: bool = False) -> Any:
    """:class:`rewards.api.RewardConfig` from ``$LOCKSTEP_REWARD_CONFIG`` (ValueError on unknown keys)."""
    from rewards.api import RewardConfig

    try:
        raw = reward_fields(json.loads(os.environ.get("LOCKSTEP_REWARD_CONFIG") or "{}"))
    except ValueError as error:
        raise ValueError(f"lockstep.reward: {error}") from None
    raw["mini"] = bool(mini)
    # lockstep.reward.workers unset: a share of the node, not a whole node each
    if raw.get("workers") is None:
        raw["workers"] = sandbox_workers(os.cpu_count(), int(os.environ.get(REWARD_WORKERS_ENV) or 1))
    return RewardConfig(**raw)


def _set_outcome(status: str | None) -> float:
    return -1.0 if status is None else float(status == "pass")


def _score_demo(task_id: str, solution_str: str, extra_info: dict) -> Any:
    """Score against the demo task's own tests; one cached scorer holds every task of the row's spec."""
    import dataclasses

    from cpu_demo.tasks import tasks_from_json
    from rewards.api import score_batch

    spec_json = extra_info.get("demo_spec")
    if not spec_json:
        raise ValueError("a demo row needs extra_info.demo_spec (write the data with launch/prepare_data.py)")
    tasks = tasks_from_json(str(spec_json))
    if task_id not in tasks:
        raise ValueError(f"demo task {task_id!r} is not generated by demo_spec {spec_json}")
    cfg = dataclasses.replace(reward_config(), test_sets=("base",))  # demo tasks have one test set
    return score_batch([(task_id, solution_str)], cfg=cfg, tasks=_reward_tasks(str(spec_json)))[0]


@functools.lru_cache(maxsize=4)
def _reward_tasks(spec_json: str) -> tuple[Any, ...]:
    from cpu_demo.tasks import reward_task, tasks_from_json

    return tuple(reward_task(t) for t in tasks_from_json(spec_json).values())


@functools.lru_cache(maxsize=4096)
def _code_tests(ground_truth: str) -> Any:
    from rewards.code_tests import CodeTests

    return CodeTests.from_json(ground_truth)


def _score_corpus_row(solution_str: str, ground_truth: str) -> Any:
    """Score against the row's own tests (the JSON ``launch/prepare_data.py`` put in the ground truth)."""
    from rewards.code_tests import score_code_tests

    return score_code_tests([(solution_str, _code_tests(str(ground_truth)))], cfg=reward_config())[0]


def compute_score(data_source: str, solution_str: str, ground_truth: str, extra_info: dict | None = None,
                  **kwargs: Any) -> dict[str, float]:
    """Reward of one completion (see the module docstring for the returned keys)."""
    from rewards.api import score_batch

    if data_source not in DATA_SOURCES:
        raise ValueError(f"unknown data_source {data_source!r}; expected one of {DATA_SOURCES}")
    mini = bool((extra_info or {}).get("mini", False))
    # the Dream rollout's own text of the completion (R text + delimiter + A text, each block cut at its first
    # stop): verl decodes the whole canvas, whose runs after the stops are context, not text the user reads
    solution_str = str((extra_info or {}).get(REWARD_TEXT_FIELD) or solution_str)
    start = time.perf_counter()
    if data_source in CORPUS_NAMES:
        result = _score_corpus_row(solution_str, ground_truth)
    elif data_source == "demo":
        result = _score_demo(str(ground_truth), solution_str, extra_info or {})
    else:
        result = score_batch([(str(ground_truth), solution_str)], dataset=data_source,
                             cfg=reward_config(mini))[0]
    return {
        "score": float(result.reward or 0.0),
        "pass_base": _set_outcome(result.base_status),
        "pass_plus": _set_outcome(result.plus_status),
        "pass_ratio": float(result.pass_ratio),
        "reward_latency_s": time.perf_counter() - start,
    }
