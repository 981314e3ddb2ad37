"""Dream rollout backend for verl 0.9.1: server actor, rollout replica and weight-sync adapter
(``docs/rl.md``).

Why: verl's rollout backends (vLLM, SGLang, TRT-LLM) cannot serve a masked diffusion LM, and its HF rollout is
dead code in 0.9.1. verl's agent loop sends one ``generate`` request per sample to a *server actor*; ours
queues concurrent requests and decodes them as one batch with :mod:`rl.rollout_decoding` (lockstep R/A
rollouts through decoding's fast path), which is what makes diffusion rollouts affordable.

Pieces (all registered by :func:`register`):

* :class:`DreamRolloutServer` — Ray actor holding a Dream copy (+ peft LoRA adapter when training LoRA);
  ``generate(request_id, prompt_ids=..., sampling_params=...) -> TokenOutput`` with ``token_ids`` the decoded
  canvas, ``extra_fields`` carrying ``global_steps`` (the v1 trainer needs it), the scored mask, the reward
  text (:mod:`rl.rollout_decoding`) and rollout metrics.
* :class:`DreamReplica` — ``RolloutReplica`` that starts one server per replica on the node (and GPU) of the
  replica's first training worker; selected by ``actor_rollout_ref.rollout.name=dream``.
* :class:`DreamRolloutAdapter` — the worker-side ``BaseRollout``: pushes LoRA adapter tensors (or, for full
  fine-tuning, all weights) from the training engine to its server after every update.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import ray
import torch

from rl.verl.rollout_fit import DEVICE_ENV, fit_to_gpu, release_cache, rollout_device

logger = logging.getLogger(__name__)

ROLLOUT_NAME = "dream"
_SERVER_NAME = "lockstep_dream_server_{replica_rank}"


@dataclass
class _Request:
    prompt_ids: list[int]
    sampling_params: dict[str, Any]
    future: asyncio.Future = field(repr=False)
    sample_key: tuple = ()  # (dataset index, sample number in its group); () if the request carries none


SAMPLE_KEY_ARG = "lockstep_sample_key"
# Delay each rollout request by a random 0..N seconds (a robustness check: a step's batches, and so the run,
# must not depend on when its requests arrive; tests/rl/verl/test_verl_e2e.py resumes a run with it set).
JITTER_ENV = "LOCKSTEP_ROLLOUT_JITTER_S"
AGENT_LOOP_NAME = "dream_single_turn"


def canonical_order(requests: list[_Request]) -> list[_Request]:
    """The row order a batch is decoded in: by prompt (length, ids), ties broken by the sample key.

    Why: the agent loop submits a step's requests concurrently, so their arrival order changes from run to
    run, and the n samples of one prompt are identical requests. Decoding rows in arrival order hands the same
    set of completions to the samples of a group in a different order in every run — a permutation that
    changes the trainer's micro-batches and float rounding, so a resumed run does not reproduce the
    uninterrupted one. verl's stock agent loop sends no stable sample identity (random request ids; its
    ``priority`` is dropped for non-vLLM servers and not even assigned by the v1 trainer), so our agent loop
    (:func:`register`, ``dream_single_turn``) sends (dataset index, sample number) as ``lockstep_sample_key``.
    """
    return sorted(requests, key=lambda r: (len(r.prompt_ids), r.prompt_ids, r.sample_key))


class DreamRolloutServer:
    """Serves diffusion rollouts for one replica; wrapped with ``ray.remote`` by :class:`DreamReplica`.

    Requests are queued until the rows the trainer announced for the step have arrived (:meth:`expect_rows`;
    without an announcement, e.g. validation: until none arrived for ``batch_wait_s``); the queue is then
    decoded in canonical order (:func:`canonical_order`) in batches of at most ``max_batch`` rows, grouped by
    sampling parameters. Counting, not timing, is what makes a step's batches independent of machine load.
    Weights: the base model is loaded from ``model.path`` at start; training updates arrive through
    :meth:`update_weights` (adapter tensors + ``peft_config``, or full state dicts).
    """

    def __init__(self, rollout_config: Any, model_config: Any, replica_rank: int) -> None:
        from rl.rollout_decoding import DreamSamplerConfig, load_rollout_model
        from rl.verl.worker_record import record_worker

        record_worker(f"rollout{replica_rank}")
        self.rollout_config = rollout_config
        self.replica_rank = replica_rank
        custom = dict((rollout_config.custom or {}).get("dream", {}) or {})
        self.sampler_config = DreamSamplerConfig.from_dict(custom,
                                                           response_length=rollout_config.response_length)
        self.device = rollout_device(os.environ.get(DEVICE_ENV))
        self.model, self.tokenizer = load_rollout_model(
            _model_path(model_config), dtype=rollout_config.dtype, device=self.device,
            trust_remote_code=bool(model_config.get("trust_remote_code", False)),
        )
        if self.device == "cuda":
            self.sampler_config = fit_to_gpu(self.sampler_config, self.model,
                                             int(rollout_config.prompt_length),
                                             f"rollout server {replica_rank}")
        self.global_steps: int | None = None
        self._gif_steps: set[int] = set()
        self.seed = int(rollout_config.seed) + 1000 * replica_rank
        self._queue: list[_Request] = []
        self._expected = 0  # rows announced by the trainer and not yet taken into a batch
        self._wakeup = asyncio.Event()  # set by every arrival
        self._worker_task: asyncio.Task | None = None

    # ---- generation ----------------------------------------------------------------------------------------
    async def generate(self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any],
                       **kwargs: Any) -> Any:
        """Queue one prompt; resolves to a ``TokenOutput`` once its batch is decoded.

        ``kwargs["lockstep_sample_key"]`` (sent by our agent loop) fixes the sample's row in the decode batch
        (:func:`canonical_order`); the other keyword arguments (multi-modal data) are unused.
        """
        if self._worker_task is None or self._worker_task.done():
            self._worker_task = asyncio.get_running_loop().create_task(self._serve_forever())
        future = asyncio.get_running_loop().create_future()
        key = kwargs.get(SAMPLE_KEY_ARG)
        self._queue.append(_Request(list(prompt_ids), dict(sampling_params), future,
                                    tuple(int(k) for k in key) if key is not None else ()))
        self._wakeup.set()
        return await future

    def expect_rows(self, rows: int) -> None:
        """Announce that ``rows`` more requests are on their way (called by the ``lockstep`` trainer mode
        before it dispatches a training step, :mod:`rl.verl.trainer`): the server decodes once they are all
        queued, however long a busy machine takes to deliver them."""
        self._expected += int(rows)

    async def _serve_forever(self) -> None:
        while True:
            await self._wakeup.wait()
            await self._settle()
            self._wakeup.clear()
            while self._queue:
                batch = self._take_batch()
                try:
                    outputs = await asyncio.to_thread(self._decode, batch)
                except Exception as error:  # surface decode errors to every waiting agent loop
                    for request in batch:
                        if not request.future.done():
                            request.future.set_exception(error)
                    continue
                for request, output in zip(batch, outputs):
                    if not request.future.done():
                        request.future.set_result(output)

    async def _settle(self) -> None:
        """Wait until the announced rows are queued (:meth:`expect_rows`), or, with none announced, until no
        request arrived for ``batch_wait_s``. Decoding a step's requests together is both faster and
        reproducible; which rows share a batch (and its seed) must not depend on how fast they arrived, which
        under machine load a quiet period cannot promise. No early start once ``max_batch`` rows are queued:
        :meth:`_take_batch` must cut the *whole* step in canonical order, or the cut would depend on which
        requests happened to arrive first. An announced step whose rows stop arriving for ``expect_timeout_s``
        is decoded as it is, with a warning (its batches are then not reproducible)."""
        config = self.sampler_config
        while not (self._expected and len(self._queue) >= self._expected):
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(),
                                       config.expect_timeout_s if self._expected else config.batch_wait_s)
            except TimeoutError:
                if self._expected:
                    logger.warning("Dream rollout server %d: %d of %d announced requests arrived in %.0f s; "
                                   "decoding them now (this step's batches are not reproducible)",
                                   self.replica_rank, len(self._queue), self._expected,
                                   config.expect_timeout_s)
                    self._expected = len(self._queue)
                return

    def _take_batch(self) -> list[_Request]:
        key = _sampling_key(self._queue[0].sampling_params)
        # canonical order before the max_batch cut: which rows share a batch (and its seed) and their order
        # are a function of the queued rows, not of their arrival order
        batch = canonical_order([r for r in self._queue if _sampling_key(r.sampling_params) == key])
        batch = batch[: self.sampler_config.max_batch]
        self._expected = max(0, self._expected - len(batch))
        taken = {id(r) for r in batch}
        self._queue = [r for r in self._queue if id(r) not in taken]
        return batch

    def _decode(self, batch: list[_Request]) -> list[Any]:
        from verl.workers.rollout.replica import TokenOutput

        from rl.rollout_decoding import SCORED_MASK_FIELD, block_spans, sample_batch
        from rl.verl.reward import REWARD_TEXT_FIELD

        seed = _batch_seed(self.seed, self.global_steps or 0, [r.prompt_ids for r in batch])
        start = time.perf_counter()
        try:
            result = sample_batch(self.model, self.tokenizer, [r.prompt_ids for r in batch],
                                  batch[0].sampling_params, self.sampler_config, seed=seed)
        finally:
            release_cache(self.device)
        elapsed = time.perf_counter() - start
        self._maybe_save_gif(result)
        total_tokens = sum(len(ids) for ids in result.completions)
        outputs = []
        for row, token_ids in enumerate(result.completions):
            extra = {"global_steps": self.global_steps if self.global_steps is not None else 0,
                     "rollout_seconds": elapsed, "rollout_batch_size": len(batch),
                     "rollout_tokens_per_s": total_tokens / max(elapsed, 1e-9)}
            extra.update(result.row_extras[row])
            extra[SCORED_MASK_FIELD] = list(result.scored_masks[row])
            # verl's response_length/* count the whole canvas; this is what the loss sees
            extra["rollout/scored_tokens"] = float(sum(result.scored_masks[row]))
            extra[REWARD_TEXT_FIELD] = result.reward_texts[row]
            span = result.fixed_spans[row] if result.fixed_spans else None
            # finished = the (answer) block holds a stop token
            last_block = block_spans(len(token_ids), span)[-1]
            finished = any(t in result.stop_ids for t in token_ids[last_block[0]:last_block[1]])
            outputs.append(TokenOutput(token_ids=token_ids, log_probs=None,
                                       stop_reason="completed" if finished else "length", extra_fields=extra))
        return outputs

    def _maybe_save_gif(self, result: Any) -> None:
        config, step = self.sampler_config, self.global_steps or 0
        if (result.trace is None or self.replica_rank != 0 or config.gif_every <= 0 or step % config.gif_every
                or step in self._gif_steps):
            return
        from rl.rollout_decoding import save_fill_gif

        self._gif_steps.add(step)
        save_fill_gif(result.trace, self.tokenizer, str(config.gif_dir), step)

    # ---- weights -------------------------------------------------------------------------------------------
    def update_weights(self, named_tensors: dict[str, torch.Tensor], peft_config: dict | None,
                       global_steps: int | None) -> int:
        """Install new trained weights; returns how many tensors were applied.

        With ``peft_config`` the tensors are LoRA adapter weights (peft state-dict names): the adapter is
        created on first use and overwritten afterwards. Without it they are full model weights.
        """
        from rl.rollout_decoding import apply_weights

        self.model = apply_weights(self.model, named_tensors, peft_config)
        if global_steps is not None:
            self.global_steps = int(global_steps)
        return len(named_tensors)

    def set_global_steps(self, global_steps: int) -> None:
        self.global_steps = int(global_steps)

    def get_server_address(self) -> str:
        return f"{ray.util.get_node_ip_address()}:dream{self.replica_rank}"

    # ---- lifecycle hooks the replica fans out to: a Dream server keeps weights resident, no KV cache -------
    async def wake_up(self, tags: list[str] | None = None) -> None:
        return None

    async def sleep(self, tags: list[str] | None = None) -> None:
        return None

    async def clear_kv_cache(self) -> None:
        return None

    async def release_kv_cache(self) -> None:
        return None

    async def resume_kv_cache(self) -> None:
        return None

    async def abort_all_requests(self, reject_request: bool = False) -> dict[str, Any]:
        return {"aborted_count": 0, "request_ids": []}

    async def resume_generation(self) -> None:
        return None

    async def start_profile(self, **kwargs: Any) -> None:
        return None

    async def stop_profile(self) -> None:
        return None


def _batch_seed(base: int, global_steps: int, prompts: list[list[int]]) -> int:
    """Seed of one decode batch: a function of the run seed, the weights version and the batch's prompts, so a
    resumed run redraws the same rollouts as an uninterrupted one."""
    digest = hashlib.blake2b(repr((base, global_steps, prompts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _model_path(model_config: Any) -> str:
    """Local checkpoint folder from verl's model config (a DictConfig or an ``HFModelConfig``)."""
    local = model_config.get("local_path") if hasattr(model_config, "get") else None
    return str(local or getattr(model_config, "local_path", None) or model_config.path)


def _sampling_key(params: dict[str, Any]) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in params.items()))


def _build_replica_class() -> type:
    from verl.utils.device import get_device_name, get_resource_name
    from verl.workers.rollout.replica import RolloutReplica

    class DreamReplica(RolloutReplica):
        """One Dream server per replica, co-located with the replica's first training worker."""

        async def launch_servers(self) -> None:
            if not self.workers:
                raise RuntimeError("Dream rollout runs in hybrid mode only "
                                   "(actor_rollout_ref.hybrid_engine=True).")
            node_id, accelerator = await self.workers[0].__ray_call__.remote(
                _worker_placement, get_resource_name())
            env_vars = {}
            # the task runner has no GPU itself: decide from the platform, pin the server to the worker's GPU
            if accelerator is not None and get_device_name() == "cuda":
                env_vars = {"CUDA_VISIBLE_DEVICES": str(accelerator),
                            "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}
            server_cls = ray.remote(DreamRolloutServer)
            server = server_cls.options(
                scheduling_strategy=ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
                    node_id=node_id, soft=False),
                runtime_env={"env_vars": env_vars},
                name=_SERVER_NAME.format(replica_rank=self.replica_rank),
                max_concurrency=self.max_concurrency,
                num_cpus=0,
            ).remote(rollout_config=self.config, model_config=self.model_config,
                     replica_rank=self.replica_rank)
            self.servers = [server]
            self._server_handle = server
            self._server_address = await server.get_server_address.remote()

    return DreamReplica


def _worker_placement(worker: Any, resource_name: str) -> tuple[str, str | None]:
    context = ray.get_runtime_context()
    ids = context.get_accelerator_ids().get(resource_name) or [None]
    return context.get_node_id(), ids[0]


def load_replica_class() -> type:
    """Loader for ``RolloutReplicaRegistry``: builds :class:`DreamReplica` on first call.

    The class subclasses verl's ``RolloutReplica``; like every verl base class here it is imported inside a
    function, not at module load, so importing this module does not import verl (:func:`register` does).
    """
    global DreamReplica
    if DreamReplica is None:
        DreamReplica = _build_replica_class()
    return DreamReplica


DreamReplica: type | None = None


def _adapter_base() -> type:
    from verl.workers.rollout.base import BaseRollout

    return BaseRollout


class DreamRolloutAdapter(_adapter_base()):  # type: ignore[misc]
    """Worker-side rollout handle: syncs trained weights to this rank's Dream server.

    With rollout tensor parallelism 1 (the only layout Dream needs) every training rank owns one replica, so
    replica rank = global rank and each rank pushes to ``lockstep_dream_server_<rank>``.
    """

    def __init__(self, config: Any, model_config: Any, device_mesh: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, model_config, device_mesh, *args, **kwargs)
        tp = int(self.config.tensor_model_parallel_size)
        rank = int(os.environ.get("RANK", 0))
        self.replica_rank = rank // tp
        self.is_leader = rank % tp == 0
        self.sleep_level = 1
        self._server: Any = None

    def _server_handle(self) -> Any:
        if self._server is None:
            self._server = ray.get_actor(_SERVER_NAME.format(replica_rank=self.replica_rank))
        return self._server

    async def resume(self, tags: list[str]) -> None:
        return None

    async def release(self) -> None:
        return None

    async def update_weights(self, weights: Iterable[tuple[str, torch.Tensor]],
                             wire_format: str = "named_tensors", **kwargs: Any) -> None:
        """Materialise the (small, for LoRA) weights on CPU and push them to the server in one call."""
        if wire_format != "named_tensors":
            raise ValueError(f"Dream rollout supports wire_format='named_tensors' only, got {wire_format!r}")
        named = {name: _to_local_cpu(tensor) for name, tensor in weights}
        if not self.is_leader:
            return
        peft_config = kwargs.get("peft_config")
        await self._server_handle().update_weights.remote(named, peft_config, kwargs.get("global_steps"))


def _to_local_cpu(tensor: torch.Tensor) -> torch.Tensor:
    if hasattr(tensor, "full_tensor"):
        tensor = tensor.full_tensor()
    return tensor.detach().to("cpu").contiguous()


class _SampleKeyedClient:
    """verl's LLM server client for one sample: adds the sample's key to its ``generate`` requests.

    The request id gets the key too, so that under ``rollout.full_determinism`` (request-id routing, where the
    stock id is ``det-<priority>`` and the v1 trainer assigns no priority) requests still spread over
    replicas.
    """

    def __init__(self, client: Any, sample_key: tuple[int, int]) -> None:
        self._client = client
        self._sample_key = sample_key

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def generate(self, request_id: str, **kwargs: Any) -> Any:
        index, session = self._sample_key
        jitter = float(os.environ.get(JITTER_ENV, "0") or 0)
        if jitter > 0:  # fault injection: requests of a step arrive spread out, as on a loaded machine
            await asyncio.sleep(random.uniform(0.0, jitter))
        return await self._client.generate(request_id=f"{request_id}-{index}-{session}",
                                           **{SAMPLE_KEY_ARG: self._sample_key}, **kwargs)


def sample_key(sample_fields: dict[str, Any]) -> tuple[int, int]:
    """(dataset index, sample number within its GRPO group) of an agent-loop sample (stable across runs)."""
    return int(sample_fields.get("index", 0) or 0), int(sample_fields.get("session_id", 0) or 0)


def _single_turn_base() -> type:
    from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop

    return SingleTurnAgentLoop


def apply_scored_mask(response_mask: list[int], scored: list[int] | None) -> list[int]:
    """``response_mask`` restricted to the scored positions the rollout reported (positions past the reported
    mask, cut by the response length or absent, keep their value).

    Why: verl's loss, token-mean and advantages use ``response_mask``; the completion is the whole decoded
    canvas, but only each block's content through its first stop is scored (``rl/rollout_decoding.py``). The
    delimiter and the runs after the stops stay in the response as context; our engine (:mod:`rl.verl.engine`)
    still masks the runs in its estimator passes and never masks the delimiter.
    """
    if scored is None:
        return list(response_mask)
    return [m if i >= len(scored) else int(m) * int(scored[i]) for i, m in enumerate(response_mask)]


class DreamSingleTurnAgentLoop(_single_turn_base()):  # type: ignore[misc]
    """verl's single-turn agent loop whose requests carry the sample's key (see :func:`canonical_order`) and
    whose response mask is the rollout's scored mask (:func:`apply_scored_mask`)."""

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> Any:
        from rl.rollout_decoding import SCORED_MASK_FIELD

        self.server_manager = _SampleKeyedClient(self.server_manager, sample_key(kwargs))
        output = await super().run(sampling_params, **kwargs)
        scored = output.extra_fields.pop(SCORED_MASK_FIELD, None)
        output.response_mask = apply_scored_mask(output.response_mask, scored)
        return output


def register() -> None:
    """Register the ``dream`` rollout with verl (replica registry + the module-private adapter registry), the
    ``dream_single_turn`` agent loop (selected by ``rollout.agent.default_agent_loop``) and Dream's model type
    with verl's Continuous Token builder table."""
    from verl.experimental.agent_loop.agent_loop import register as register_agent_loop
    from verl.utils.tokenizer import continuous_token_wiring
    from verl.workers.rollout import base as rollout_base
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    # Dream is text-only: verl's default Continuous Token builder is the one it falls back to anyway, but
    # without this entry it logs that fallback as a warning for every rollout sample (~2.5k lines per demo)
    continuous_token_wiring._MODEL_TYPE_TO_FAMILY.setdefault(
        "dream", continuous_token_wiring.ContinuousTokenModelFamily.DEFAULT)
    RolloutReplicaRegistry.register(ROLLOUT_NAME, load_replica_class)
    rollout_base._ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = f"{__name__}.DreamRolloutAdapter"
    register_agent_loop(AGENT_LOOP_NAME)(DreamSingleTurnAgentLoop)
