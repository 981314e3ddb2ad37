"""Ray actors that spread scoring over a cluster: one :class:`EvalPlusScorer` (with its own local sandbox
pool) per actor.

Each actor reserves ``cpus_per_actor`` CPUs and runs that many sandbox workers, so Ray's scheduler places
reward work on nodes with free cores and it does not compete with the trainer's own CPU budget. Results come
back in input order; an actor that dies is replaced and its chunk re-run (infrastructure failure, never a
score).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from .api import EvalPlusScorer, RewardConfig, RewardResult
from .tasks import Task


class _ScorerActor:
    def __init__(self, dataset: str | None, cfg: RewardConfig, tasks: list[Task] | None) -> None:
        self.scorer = EvalPlusScorer(tasks, dataset=dataset, cfg=cfg)

    def score(self, items: list[tuple[str, str]]) -> list[RewardResult]:
        return self.scorer.score(items)

    def isolation(self) -> str:
        return self.scorer.isolation


class RayRewardPool:
    """``num_actors`` Ray actors, each a EvalPlusScorer with ``cpus_per_actor`` sandbox workers.

    Requires ``ray.init()`` to have been called (or a cluster address); the CPUs are reserved through Ray.
    """

    def __init__(self, dataset: str | None = "humaneval", cfg: RewardConfig | None = None, *,
                 num_actors: int = 2, cpus_per_actor: int = 1,
                 tasks: dict[str, Task] | Sequence[Task] | None = None, max_actor_restarts: int = 2) -> None:
        import ray

        if not ray.is_initialized():
            raise RuntimeError("call ray.init() before creating a RayRewardPool")
        if num_actors < 1 or cpus_per_actor < 1:
            raise ValueError("num_actors and cpus_per_actor must be >= 1")
        self._ray = ray
        self.cfg = dataclasses.replace(cfg or RewardConfig(), workers=cpus_per_actor, progress=False,
                                       on_infra_error="mark")
        self._tasks = list(tasks.values()) if isinstance(tasks, dict) else (list(tasks) if tasks else None)
        self._dataset = None if self._tasks else dataset
        self._actor_cls = ray.remote(num_cpus=cpus_per_actor, max_restarts=max_actor_restarts,
                                     max_task_retries=max_actor_restarts)(_ScorerActor)
        self.actors = [self._actor_cls.remote(self._dataset, self.cfg, self._tasks)
                       for _ in range(num_actors)]

    def score(self, items: Sequence[tuple[str, str]]) -> list[RewardResult]:
        """Split items round-robin over the actors and reassemble them in input order."""
        items = list(items)
        n = len(self.actors)
        chunks = [items[a::n] for a in range(n)]
        refs = [(a, actor.score.remote(chunk)) for a, (actor, chunk) in enumerate(zip(self.actors, chunks))
                if chunk]
        outs = self._ray.get([r for _, r in refs])
        results: list[Any] = [None] * len(items)
        for (a, _), out in zip(refs, outs):
            results[a::n] = out
        return results

    def isolation(self) -> list[str]:
        return self._ray.get([a.isolation.remote() for a in self.actors])

    def shutdown(self) -> None:
        for a in self.actors:
            self._ray.kill(a)
        self.actors = []
