"""verl trainer mode ``lockstep``: verl's synchronous GRPO trainer plus our per-step metrics.

Why: verl 0.9.1 logs reward extras (pass rates, reward latency) only for validation and never looks at the
rollout server's ``extra_fields`` (rollout throughput, decoder steps), and it orders a step's rows by reward
completion time. Selecting ``trainer.v1.trainer_mode=lockstep`` keeps the training loop exactly verl's
``sync`` trainer, puts each step's rows in a canonical order (:func:`canonical_row_order`, for exact resume)
and adds, every step, the means of those per-sample fields to the metrics verl sends to its loggers
(console, W&B); it also hands the Dream engine the global step that salts its coupled masks
(``lockstep_estimator_step``, :mod:`rl.verl.engine`):

* ``reward/pass_base``, ``reward/pass_plus`` (fraction of the step's samples that pass each configured
  EvalPlus test set, ``lockstep.reward.test_sets``; a sample whose tests never ran — no extractable code — did
  not pass), ``reward/pass_ratio``, ``reward/latency_s``;
* ``rollout/tokens_per_s``, ``rollout/batch_seconds``, ``rollout/batch_size`` and the sampler's own counters
  (``rollout/nfe``, ``rollout/steps``, ...);
* ``filter/*``: dynamic filtering (DAPO) of groups whose rewards are all equal, with whole-batch refills
  (:mod:`rl.verl.filter`; ``algorithm.filter_groups``), and the zero-advantage fraction of every step;
* ``rollout/lockstep_fill``: the lockstep canvas-fill GIF the rollout server saves every
  ``rollout.custom.dream.gif_every`` steps (W&B only).
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

import numpy as np

TRAINER_MODE = "lockstep"
# non-tensor field: the global step the Dream engine salts masks with
ESTIMATOR_STEP_KEY = "lockstep_estimator_step"
PASS_KEYS = {"base": ("pass_base", "reward/pass_base"), "plus": ("pass_plus", "reward/pass_plus")}
REWARD_KEYS = {"pass_ratio": "reward/pass_ratio", "reward_latency_s": "reward/latency_s"}
ROLLOUT_KEYS = {"rollout_tokens_per_s": "rollout/tokens_per_s", "rollout_seconds": "rollout/batch_seconds",
                "rollout_batch_size": "rollout/batch_size"}


def lockstep_metrics(extra_fields: list[Any],
                     test_sets: tuple[str, ...] = ("base", "plus")) -> dict[str, float]:
    """Per-step means of the reward extras and rollout fields of one batch's samples (see module docstring).

    ``pass_base``/``pass_plus`` extras are 1.0 (passed), 0.0 (failed) or -1.0 (not run); the pass rate of a
    configured set counts every scored sample, so "not run" is "not passed".
    """
    values: dict[str, list[float]] = defaultdict(list)
    for fields in extra_fields:
        if not isinstance(fields, dict):
            continue
        reward = fields.get("reward_extra_info") or {}
        for test_set in test_sets:
            key, name = PASS_KEYS[test_set]
            if reward.get(key) is not None:
                values[name].append(float(float(reward[key]) == 1.0))
        for key, name in REWARD_KEYS.items():
            if reward.get(key) is not None:
                values[name].append(float(reward[key]))
        for key, value in fields.items():
            if key in ROLLOUT_KEYS:
                values[ROLLOUT_KEYS[key]].append(float(value))
            elif key.startswith("rollout/") and isinstance(value, int | float):
                values[key].append(float(value))
    return {name: float(np.mean(v)) for name, v in values.items() if v}


def canonical_row_order(indices: list[Any], keys: list[str]) -> list[int]:
    """Permutation that sorts a step's rows by (dataset index, sample number, output number).

    verl's replay buffer hands the trainer a step's rows in the order their rewards finished (TransferQueue
    insertion order), which changes from run to run; rows with equal lengths then keep that order through
    verl's length balancing. A canonical order makes micro-batches, float rounding and hence every metric of
    a step reproducible (exact resume). Keys are verl's ``{uid}_{session}_{output}``.
    """
    def sort_key(row: int) -> tuple[int, int, int]:
        parts = str(keys[row]).rsplit("_", 2)
        tail = (int(parts[1]), int(parts[2])) if len(parts) == 3 and parts[1].isdigit() \
            and parts[2].isdigit() else (0, 0)
        return (int(indices[row]), *tail)

    return sorted(range(len(keys)), key=sort_key)


def _as_list(values: Any, length: int) -> list[Any]:
    """A TransferQueue field as a list: a stack of per-row values, or one value shared by all rows."""
    if hasattr(values, "tolist"):
        values = values.tolist()
    if isinstance(values, list | tuple):
        return list(values)
    data = getattr(values, "data", values)  # NonTensorData: the same value for every row
    return [data] * length


def fill_gif_path(gif_dir: str | None, weights_version: int) -> str | None:
    """The GIF the rollout server saved for rollouts made with ``weights_version`` (None if there is none)."""
    if not gif_dir:
        return None
    path = os.path.join(gif_dir, f"fill_step{weights_version}.gif")
    return path if os.path.isfile(path) else None


def announce_rows(replicas: list[Any], rows: int) -> None:
    """Tell the Dream server how many requests the step about to be dispatched sends it.

    Only with one rollout replica: verl spreads requests over several replicas by load, so no replica knows
    its share in advance (there, batches form by the ``batch_wait_s`` quiet period and exact reproduction
    holds only while a step's requests arrive within it)."""
    import ray

    server = getattr(replicas[0], "_server_handle", None) if len(replicas) == 1 else None
    if server is not None:
        ray.get(server.expect_rows.remote(rows))


def register() -> None:
    """Register the ``lockstep`` trainer mode with verl (idempotent)."""
    import transfer_queue as tq
    from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY, register_trainer
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

    from rl.verl.filter import build_buffer_class, filter_settings

    if TRAINER_MODE in TRAINER_REGISTRY:
        return

    class LockstepTrainer(PPOTrainerSync):
        """verl's sync GRPO trainer; adds :func:`lockstep_metrics` to every step's metrics."""

        def _compute_metrics(self, batch: Any, metrics: dict, timing_raw: dict, global_steps: int,
                             epoch: int) -> Any:
            result = super()._compute_metrics(batch, metrics, timing_raw, global_steps=global_steps,
                                              epoch=epoch)
            data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id,
                                   select_fields=["extra_fields"])
            test_sets = tuple((self.config.get("lockstep", {}).get("reward", {}) or {}).get("test_sets")
                              or ("base", "plus"))
            metrics.update(lockstep_metrics(list(data.pop("extra_fields").tolist()), test_sets))
            self._log_fill_gif(global_steps)
            return result

        def _build_replay_buffer(self) -> Any:
            """verl's replay buffer with our round-based dynamic filtering (:mod:`rl.verl.filter`), unless the
            recipe names a custom sampler (``trainer.v1.sampler.custom_sampler``)."""
            sampler = self.config.trainer.v1.sampler
            custom = sampler.get("custom_sampler", None)
            if custom is not None and custom.get("path") and custom.get("name"):
                return super()._build_replay_buffer()
            enabled, max_rounds = filter_settings(self.config)
            return build_buffer_class()(
                trainer_mode=self.trainer_mode,
                trainer_config=self.config.trainer.v1.get(self.trainer_mode, {}),
                max_off_policy_threshold=sampler.max_off_policy_threshold,
                max_off_policy_strategy=sampler.max_off_policy_strategy,
                sampler_kwargs=sampler.sampler_kwargs, refill_fn=self._add_prompts_to_generate,
                filter_enabled=enabled, max_rounds=max_rounds)

        # the Dream engine salts its coupled masks with the global step (rl/verl/engine.py): the same step for
        # the old-policy, reference and update passes of a batch, fresh masks every step, restored on resume
        def _compute_old_log_prob(self, batch: Any, metrics: dict) -> Any:
            batch.extra_info[ESTIMATOR_STEP_KEY] = int(self.global_steps)
            return super()._compute_old_log_prob(batch, metrics)

        def _compute_ref_log_prob(self, batch: Any, metrics: dict) -> Any:
            batch.extra_info[ESTIMATOR_STEP_KEY] = int(self.global_steps)
            return super()._compute_ref_log_prob(batch, metrics)

        def _update_actor(self, batch: Any, metrics: dict) -> Any:
            batch.extra_info[ESTIMATOR_STEP_KEY] = int(self.global_steps)
            return super()._update_actor(batch, metrics)

        def _submit_batch_to_rollout(self, batch: Any) -> int:
            """verl's dispatch, after announcing the step's rows to the Dream server: it decodes them as one
            reproducible batch however slowly a busy machine delivers them (:func:`announce_rows`)."""
            n = int(self.config.actor_rollout_ref.rollout.n)
            # per-prompt n: rows unknown here, the quiet period decides (TensorDict has no `in`)
            if "__rollout_n__" not in batch.keys():  # noqa: SIM118
                announce_rows(self.llm_server_manager.get_replicas(), len(batch) * n)
            return super()._submit_batch_to_rollout(batch)

        def _balance_batch(self, batch: Any, metrics: dict, logging_prefix: str = "global_seqlen",
                           keep_minibatch: bool = False) -> Any:
            """verl's dp length balancing, applied to the rows in :func:`canonical_row_order`."""
            data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["index"])
            batch.reorder(canonical_row_order(_as_list(data.pop("index"), len(batch.keys)), list(batch.keys)))
            return super()._balance_batch(batch, metrics, logging_prefix=logging_prefix,
                                          keep_minibatch=keep_minibatch)

        def _log_fill_gif(self, global_steps: int) -> None:
            """Send the rollout server's canvas-fill GIF of this step (weights version ``global_steps - 1``)
            to W&B."""
            dream = (self.config.actor_rollout_ref.rollout.get("custom") or {}).get("dream") or {}
            gif = fill_gif_path(dream.get("gif_dir"), global_steps - 1)
            if gif is None:
                return
            import wandb

            if wandb.run is not None:
                wandb.log({"rollout/lockstep_fill": wandb.Image(gif)}, step=global_steps)

    register_trainer(TRAINER_MODE)(LockstepTrainer)


def close_wandb() -> None:
    """Finish W&B's service connection now, while this process is still alive.

    Why: verl's ``Tracking.finish`` ends the run but leaves wandb's service process up; wandb then tears the
    connection down in an ``atexit`` hook, which in a Ray actor runs after Ray has already stopped the service
    process, and prints a ``ConnectionResetError: Connection lost`` traceback at the end of every run.
    ``wandb.teardown()`` closes it cleanly and unregisters that hook.
    """
    import sys

    if "wandb" not in sys.modules:
        return
    import wandb

    try:
        wandb.teardown()
    except (Exception, SystemExit) as error:  # never turn a finished run into a failure over logging
        print(f"wandb teardown failed: {error!r}", file=sys.stderr)


def _quiet_pprint(*args: Any, **kwargs: Any) -> None:
    """Stands in for the ``pprint`` of verl's task runner, which prints the whole config (~1,000 lines)."""


def task_runner_class() -> Any:
    """verl's ``TaskRunnerV1`` Ray actor with two changes, for ``run_ppo(cfg, task_runner_class=...)``.

    * it does not print the whole resolved config at start-up (the launcher saves it as
      ``<run_dir>/config.yaml`` and logs where): verl's ``TaskRunnerV1.run`` calls the global ``pprint`` of
      its module, which is replaced by a no-op in the actor process (in the globals ``run`` actually sees:
      Ray ships the class by value, with its own copy of them);
    * W&B is closed inside the actor after the run (:func:`close_wandb`).
    """
    import ray
    from verl.trainer import main_ppo

    base = main_ppo.TaskRunnerV1.__ray_metadata__.modified_class.__mro__[1]  # the class under @ray.remote

    class LockstepTaskRunner(base):
        def run(self, config: Any) -> Any:
            super().run.__func__.__globals__["pprint"] = _quiet_pprint
            try:
                return super().run(config)
            finally:
                close_wandb()

    return ray.remote(LockstepTaskRunner)
