"""Dynamic filtering (DAPO) for the ``lockstep`` trainer mode: groups whose rewards are all equal leave the
batch, and whole refill batches replace them, so every step trains on ``data.train_batch_size`` informative
groups.

Why our own: a GRPO group whose n rewards are identical has advantage 0 on every token; it adds nothing to the
gradient and only dilutes the token mean. verl 0.9.1's replay buffers filter such groups
(``algorithm.filter_groups``) but refill as groups happen to finish — a few prompts per 2 s poll,
timing-dependent — which defeats the Dream rollout server's one-batch-per-step design (``rl/verl/rollout.py``:
announced rows, one reproducible batch) and makes a step depend on machine load. Here a step proceeds in
*rounds*: wait until every dispatched prompt is scored, classify the finished groups, and if fewer than
``train_batch_size`` are informative, dispatch exactly the missing number of prompts as one batch (announced
to the server like the step's first batch) and repeat. The decision depends only on rewards, never on timing,
so runs and resumed runs stay reproducible.

Contract (recipe keys are verl's): ``algorithm.filter_groups.enable`` turns filtering on; ``metric`` must be
``reward`` (the sum of each sample's reward); ``max_num_gen_batches`` caps the rounds of a step (first batch
included; 0 = no cap). When the cap is reached, the batch is completed with uninformative groups, earliest
round first, then by dataset index, and ``filter/kept_uninformative_groups`` says how many. Every step logs
(also with filtering off) ``filter/zero_advantage_fraction`` (share of the trained groups whose rewards are
all equal: zero advantage), ``filter/uninformative_fraction`` (share of all generated groups that were),
``filter/refill_rounds`` and ``filter/generated_groups``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class GroupOutcome:
    """One finished prompt group: verl's uid, the round that generated it, its dataset index and its
    rewards."""

    uid: str
    round: int
    index: int
    rewards: tuple[float, ...]

    @property
    def informative(self) -> bool:
        """Rewards not all equal: GRPO's normalised advantage is non-zero for at least one sample."""
        return len(self.rewards) > 1 and any(r != self.rewards[0] for r in self.rewards[1:])


@dataclass
class FilterDecision:
    """Either ``refill > 0`` prompts to dispatch as one batch, or the ``selected`` uids (the step's batch) and
    the ``dropped`` uids to clear, with the step's filter metrics."""

    refill: int = 0
    selected: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


def decide(groups: list[GroupOutcome], batch_size: int, rounds: int, enabled: bool, max_rounds: int = 0
           ) -> FilterDecision:
    """The filter's decision after ``rounds`` generation rounds produced ``groups`` (see the module
    docstring).

    Without filtering, the first ``batch_size`` groups are selected. With filtering, informative groups are
    selected; while fewer than ``batch_size`` exist and the round cap (``max_rounds``, 0 = none) allows, the
    decision is to refill exactly the shortfall.
    """
    if batch_size < 1 or rounds < 1:
        raise ValueError(f"need batch_size >= 1 and rounds >= 1, got {batch_size}, {rounds}")
    ordered = sorted(groups, key=lambda g: (g.round, g.index, g.uid))
    informative = [g for g in ordered if g.informative]
    if enabled:
        shortfall = batch_size - len(informative)
        if shortfall > 0 and (max_rounds <= 0 or rounds < max_rounds):
            return FilterDecision(refill=shortfall)
        chosen = informative[:batch_size]
        chosen += [g for g in ordered if not g.informative][: batch_size - len(chosen)]
    else:
        if len(ordered) < batch_size:  # failed groups (no samples) are replaced, as verl does
            return FilterDecision(refill=batch_size - len(ordered))
        chosen = ordered[:batch_size]
    if len(chosen) < batch_size:
        raise ValueError(f"{len(groups)} finished groups cannot fill a batch of {batch_size}")
    chosen_uids = {g.uid for g in chosen}
    kept_uninformative = sum(not g.informative for g in chosen)
    metrics = {
        "filter/zero_advantage_fraction": kept_uninformative / batch_size,
        "filter/uninformative_fraction": sum(not g.informative for g in groups) / max(len(groups), 1),
        "filter/refill_rounds": float(rounds - 1),
        "filter/generated_groups": float(len(groups)),
        "filter/kept_uninformative_groups": float(kept_uninformative if enabled else 0),
    }
    return FilterDecision(selected=[g.uid for g in chosen],
                          dropped=[g.uid for g in ordered if g.uid not in chosen_uids], metrics=metrics)


def filter_settings(config: Any) -> tuple[bool, int]:
    """(enabled, max rounds) from ``algorithm.filter_groups``; only the ``reward`` metric is supported."""
    groups = config.algorithm.get("filter_groups", None) or {}
    enabled = bool(groups.get("enable", False))
    if enabled and str(groups.get("metric", "reward")) != "reward":
        raise ValueError(f"algorithm.filter_groups.metric must be 'reward' (got {groups.get('metric')!r})")
    return enabled, int(groups.get("max_num_gen_batches", 0) or 0)


def build_buffer_class() -> type:
    """verl's replay buffer for our trainer mode with :func:`decide` as its training-batch sampler."""
    import time

    import transfer_queue as tq
    from verl.trainer.ppo.v1.replay_buffer import KVBatchMeta, ReplayBufferAsync

    class GroupFilterBuffer(ReplayBufferAsync):
        """Samples training batches in rounds (module docstring); validation batches as verl does."""

        def __init__(self, *args: Any, filter_enabled: bool = False, max_rounds: int = 0,
                     **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.filter_enabled = filter_enabled
            self.max_rounds = max_rounds

        def _outcomes(self, partition_id: str, uids: set[str],
                      round_of: dict[str, int]) -> list[GroupOutcome]:
            keys = sorted(key for key in self.partitions[partition_id] if key.split("_")[0] in uids)
            if not keys:
                return []
            from rl.verl.trainer import _as_list

            data = tq.kv_batch_get(keys=keys, partition_id=partition_id, select_fields=["rm_scores", "index"])
            indices = _as_list(data.pop("index"), len(keys))
            rewards: dict[str, list[float]] = {}
            index_of: dict[str, int] = {}
            for key, score, index in zip(keys, list(data["rm_scores"]), indices):
                uid = key.split("_")[0]
                rewards.setdefault(uid, []).append(float(score.sum().item()))
                index_of[uid] = int(index)
            return [GroupOutcome(uid, round_of[uid], index_of[uid], tuple(values))
                    for uid, values in rewards.items()]

        def sample(self, global_steps: int, partition_id: str, batch_size: int) -> tuple[Any, dict]:
            if partition_id == "val":
                return super().sample(global_steps, partition_id, batch_size)
            rounds, round_of = 1, {}
            while True:
                self._sync_metadata_from_transfer_queue()
                if self.pending_keys[partition_id] or self.running_keys[partition_id]:
                    time.sleep(min(self.poll_interval, 0.2))
                    continue
                finished = set(self.finished_keys[partition_id])
                for uid in finished:
                    round_of.setdefault(uid, rounds)
                decision = decide(self._outcomes(partition_id, finished, round_of), batch_size, rounds,
                                  self.filter_enabled, self.max_rounds)
                if decision.refill == 0:
                    break
                self._clear_groups(partition_id, set(self.failure_keys[partition_id]))
                self.refill_fn(decision.refill)  # one batch: announced to the Dream server, decoded together
                rounds += 1
            failed = set(self.failure_keys[partition_id])
            self._clear_groups(partition_id, set(decision.dropped) | failed)
            snapshot = dict(self.partitions[partition_id])
            batch: KVBatchMeta = self._materialize_batch(partition_id, decision.selected, snapshot)
            return batch, dict(decision.metrics)

    return GroupFilterBuffer
