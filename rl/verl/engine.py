"""Dream actor engine for verl 0.9.1: FSDP(2) training whose per-token log-prob is our diffusion estimator.

Why: verl's LM engine scores a response with one causal forward (log p(o_k | o_<k)); a masked diffusion LM has
no such likelihood. This engine keeps everything of verl's FSDP engine (sharding, LoRA via peft, optimizer,
checkpointing, micro-batching) and replaces only ``forward_step``: the per-token log-prob is the coupled
complementary-mask estimate of :func:`rl.logprob.masked_logprob` (``docs/rl.md``, "Coupled complementary
masks").

Contracts (verl 0.9.1):

* selected with ``actor_rollout_ref.model.model_type=dllm``; the reference policy inherits it (with LoRA the
  reference is the same module with adapters disabled, so it uses the same estimator);
* input micro-batches are jagged (no padding): ``input_ids`` = prompt + response per row, ``prompts`` and
  ``responses`` give the split; output ``log_probs`` and ``entropy`` are nested tensors laid out like
  ``input_ids`` with slot j-1 scoring token j (verl slices the response with that shift);
* **two masks** (``docs/rl.md``, Masks and salts): a response is the lockstep canvas exactly as decoded;
  verl's ``response_mask`` is the *scored* mask (each block's content through its first stop, set by our agent
  loop), so verl's loss and token-mean use only those tokens; every other response token is *context*. The
  estimator masks every generated token (the runs after the stops included) and never the delimiter, whose
  position it knows from the rollout's layout (``EstimatorConfig.fixed_start``/``fixed_text``);
* **coupling and fresh noise**: the mask plan of a row is a pure function of (prompt ids, response ids,
  estimator seed, global step). verl's old-policy, current-policy and reference passes of one step see
  identical masks — the PPO ratio is exactly 1 before the first update — without storing masks in verl's
  TransferQueue, while every step draws fresh masks (a string sampled again later is not scored with frozen
  noise). The step reaches the engine as the non-tensor field ``lockstep_estimator_step`` set by our trainer
  mode (:mod:`rl.verl.trainer`); it is restored with ``global_steps`` on resume, so resumed runs stay
  bit-exact.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import torch

from rl.verl.trainer import ESTIMATOR_STEP_KEY
from rl.verl.worker_record import record_worker

ENGINE_MODEL_TYPE = "dllm"
ESTIMATOR_ENV = "LOCKSTEP_ESTIMATOR"


@dataclass(frozen=True)
class EstimatorConfig:
    """Settings of the log-prob estimator (recipe group ``lockstep.estimator``).

    ``t_min``/``t_max``: masking-rate interval of the coupled pair (symmetric around 1/2); ``seed``: salt of
    the per-row mask seeds, together with the global step (change it to redraw all masks); ``mask_token_id``:
    None = the tokenizer's mask token. ``fixed_start``/``fixed_text``: where the lockstep delimiter sits in
    every response (``r_len``) and its text; filled in from the rollout's options by
    :func:`rl.verl.config.estimator_config` (None: no fixed tokens, every response token was generated).
    """

    name: str = "coupled"
    t_min: float = 0.2
    t_max: float = 0.8
    seed: int = 0
    mask_token_id: int | None = None
    fixed_start: int | None = None
    fixed_text: str | None = None

    def to_env(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_env(cls) -> EstimatorConfig:
        raw = os.environ.get(ESTIMATOR_ENV)
        return cls(**json.loads(raw)) if raw else cls()


def row_seed(prompt_ids: torch.Tensor, response_ids: torch.Tensor, salt: int, step: int = 0) -> int:
    """Deterministic 63-bit seed of one (prompt, response) pair at one global step: the same row gets the same
    masks in every pass of a step and fresh masks at every other step."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"{int(salt)}:{int(step)}".encode())
    digest.update(prompt_ids.detach().to("cpu", torch.int64).numpy().tobytes())
    digest.update(b"|")
    digest.update(response_ids.detach().to("cpu", torch.int64).numpy().tobytes())
    return int.from_bytes(digest.digest(), "little") & ((1 << 63) - 1)


def build_dense_batch(prompts: list[torch.Tensor], responses: list[torch.Tensor], pad_id: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Left-pad prompt+response rows so every response ends at the last column.

    Returns ``input_ids [B, S]``, ``attention_mask [B, S]``, ``response_positions [B, L]`` (bool: which of the
    last ``L = max response length`` columns hold a response token of that row) and ``L``. Shorter responses
    leave prompt tokens inside the window; they are marked non-maskable, so the estimator never scores them.
    """
    lengths = [int(p.numel() + r.numel()) for p, r in zip(prompts, responses)]
    width = max(lengths)
    window = max(int(r.numel()) for r in responses)
    device = prompts[0].device
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
    attention_mask = torch.zeros_like(input_ids)
    response_positions = torch.zeros(len(prompts), window, dtype=torch.bool, device=device)
    for row, (prompt, response) in enumerate(zip(prompts, responses)):
        sequence = torch.cat([prompt, response]).long()
        input_ids[row, width - sequence.numel():] = sequence
        attention_mask[row, width - sequence.numel():] = 1
        response_positions[row, window - response.numel():] = True
    return input_ids, attention_mask, response_positions, window


def generated_mask(response: torch.Tensor, fixed_start: int | None, fixed_ids: list[int]) -> torch.Tensor:
    """Bool ``[L]``: the response tokens the sampler generated (all but the fixed delimiter at
    ``fixed_start``).

    Raises ValueError when the delimiter is not where the layout says: the rollout and the estimator disagree
    on the canvas, and scoring would mask tokens the sampler never chose.
    """
    generated = torch.ones(int(response.numel()), dtype=torch.bool)
    if fixed_start is None or not fixed_ids:
        return generated
    end = fixed_start + len(fixed_ids)
    found = response.detach().to("cpu").reshape(-1)[fixed_start:end].tolist()
    if found != list(fixed_ids):
        raise ValueError(f"the response holds {found} at positions [{fixed_start}, {end}), not the lockstep "
                         f"delimiter {list(fixed_ids)}: the rollout's canvas and lockstep.estimator disagree")
    generated[fixed_start:end] = False
    return generated


def draw_row_plans(prompts: list[torch.Tensor], responses: list[torch.Tensor],
                   response_positions: torch.Tensor, config: EstimatorConfig,
                   response_masks: list[torch.Tensor] | None = None, *,
                   fixed_ids: list[int] | None = None, step: int = 0) -> Any:
    """The coupled mask plan of a micro-batch, drawn row by row from :func:`row_seed` generators.

    Two masks per row: *generated* (:func:`generated_mask`: masked in one of the two passes) and *scored*
    (``response_masks``, verl's per-row ``response_mask``: weight != 0; default = generated). The delimiter
    (``config.fixed_start``, tokens ``fixed_ids``) is never masked nor scored; the model sees it in every
    pass, as when decoding. Runs after a block's first stop are masked like any generated token but carry no
    weight.
    """
    from rl.logprob import MaskPlan, draw_coupled_masks

    window = response_positions.shape[1]
    masks = torch.zeros(2, len(prompts), window, dtype=torch.bool)
    weights = torch.zeros(2, len(prompts), window, dtype=torch.float32)
    for row, (prompt, response) in enumerate(zip(prompts, responses)):
        # drawn over the row's own response only, so the masks do not depend on the micro-batch's window
        generator = torch.Generator(device="cpu").manual_seed(row_seed(prompt, response, config.seed, step))
        maskable = generated_mask(response, config.fixed_start, list(fixed_ids or [])).reshape(1, -1)
        scored = maskable
        if response_masks is not None:
            scored = response_masks[row].detach().to("cpu").bool().reshape(1, -1)
            if scored.shape[1] != response.numel():
                raise ValueError(f"row {row}: response_mask has {scored.shape[1]} entries for a "
                                 f"{response.numel()}-token response")
            scored = scored & maskable
        plan = draw_coupled_masks(maskable, scored, t_min=config.t_min, t_max=config.t_max,
                                  generator=generator)
        masks[:, row, window - response.numel():] = plan.masks[:, 0]
        weights[:, row, window - response.numel():] = plan.weights[:, 0].float()
    device = response_positions.device
    return MaskPlan(masks=masks.to(device), weights=weights.to(device))


def scatter_to_jagged(values: torch.Tensor, prompt_lens: list[int], response_lens: list[int]) -> torch.Tensor:
    """Window values ``[B, L]`` (responses right-aligned) -> nested ``[B, j]`` laid out like prompt+response.

    Response token k of a row (absolute position p + k) is written to slot p + k - 1 (verl's shifted layout).
    """
    window = values.shape[1]
    pieces = []
    for row, (p, r) in enumerate(zip(prompt_lens, response_lens)):
        pieces += [values.new_zeros(p - 1), values[row, window - r:], values.new_zeros(1)]
    lengths = torch.tensor([0] + [p + r for p, r in zip(prompt_lens, response_lens)], device=values.device)
    return torch.nested.nested_tensor_from_jagged(torch.cat(pieces), lengths.cumsum(0))


def _build_engine_class() -> type:
    from verl.utils.device import get_device_id, get_device_name
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead
    from verl.workers.engine.utils import detach_tree

    class DreamDiffusionEngine(FSDPEngineWithLMHead):
        """verl FSDP engine for Dream: loads our model class, scores responses with the diffusion
        estimator."""

        def _build_module(self) -> torch.nn.Module:
            import decoding  # noqa: F401  (Dream in the HF Auto registry of this worker)

            # verl's loader only accepts its own model types; Dream loads through the same AutoModel path.
            self.model_config.model_type = "language_model"
            try:
                module = super()._build_module()
            finally:
                self.model_config.model_type = ENGINE_MODEL_TYPE
            if hasattr(module, "reset_rope"):
                module.reset_rope()
            record_worker("engine")
            return module

        def save_checkpoint(self, local_path: str, hdfs_path: str | None = None, global_step: int = 0,
                            max_ckpt_to_keep: int | None = None, **kwargs: Any) -> None:
            """verl's checkpoint (sharded model/optimizer/scheduler/RNG) plus weights our tools load
            directly."""
            super().save_checkpoint(local_path, hdfs_path=hdfs_path, global_step=global_step,
                                    max_ckpt_to_keep=max_ckpt_to_keep, **kwargs)
            export_weights(self.module, local_path, str(self.model_config.local_path))

        def _estimator(self) -> EstimatorConfig:
            if not hasattr(self, "_estimator_config"):
                self._estimator_config = EstimatorConfig.from_env()
                if self._estimator_config.name != "coupled":
                    raise ValueError(f"unknown lockstep.estimator.name {self._estimator_config.name!r}")
            return self._estimator_config

        def _fixed_ids(self) -> list[int]:
            text = self._estimator().fixed_text
            return self.model_config.tokenizer.encode(text, add_special_tokens=False) if text else []

        def _mask_token_id(self) -> int:
            configured = self._estimator().mask_token_id
            if configured is not None:
                return int(configured)
            tokenizer = self.model_config.tokenizer
            mask_id = getattr(tokenizer, "mask_token_id", None)
            if mask_id is None:
                raise ValueError("the tokenizer has no mask token: set lockstep.estimator.mask_token_id")
            return int(mask_id)

        def forward_step(self, micro_batch: Any, loss_function: Any, forward_only: bool) -> tuple[Any, dict]:
            from verl.utils import tensordict_utils as tu

            from rl.logprob import masked_logprob

            device_name = get_device_name()
            micro_batch = micro_batch.to(get_device_id())
            prompts = list(micro_batch["prompts"].unbind())
            responses = list(micro_batch["responses"].unbind())
            pad_id = int(tu.get_non_tensor_data(data=micro_batch, key="pad_token_id", default=0))
            input_ids, attention_mask, positions, _ = build_dense_batch(prompts, responses, pad_id)
            response_masks = list(micro_batch["response_mask"].unbind()) if "response_mask" in micro_batch \
                else None
            step = tu.get_non_tensor_data(data=micro_batch, key=ESTIMATOR_STEP_KEY, default=None)
            if step is None:
                raise ValueError(f"micro-batch without {ESTIMATOR_STEP_KEY}: the Dream engine salts its "
                                 "masks with the global step, which trainer.v1.trainer_mode=lockstep "
                                 "provides (rl/verl/trainer.py)")
            plan = draw_row_plans(prompts, responses, positions, self._estimator(), response_masks,
                                  fixed_ids=self._fixed_ids(), step=int(step))
            calculate_entropy = tu.get_non_tensor_data(data=micro_batch, key="calculate_entropy",
                                                       default=False)

            autocast_dtype = getattr(self, "_autocast_dtype", torch.bfloat16)
            autocast = (nullcontext() if autocast_dtype == torch.float32
                        else torch.autocast(device_type=device_name, dtype=autocast_dtype))
            with autocast:
                estimate = masked_logprob(self.module, input_ids, attention_mask, plan, self._mask_token_id(),
                                          with_entropy=bool(calculate_entropy))
            prompt_lens = [int(p.numel()) for p in prompts]
            response_lens = [int(r.numel()) for r in responses]
            model_output = {"log_probs": scatter_to_jagged(estimate.logp, prompt_lens, response_lens)}
            entropy = estimate.entropy if estimate.entropy is not None else torch.zeros_like(estimate.logp)
            model_output["entropy"] = scatter_to_jagged(entropy.detach(), prompt_lens, response_lens)

            if loss_function is not None:
                loss, metrics = loss_function(model_output=model_output, data=micro_batch,
                                              dp_group=self.get_data_parallel_group())
            else:
                if not forward_only:
                    raise RuntimeError("a training step needs a loss function")
                loss, metrics = torch.tensor(1.0, device=device_name), {}
            return loss, {"model_output": detach_tree(model_output), "loss": loss.detach().item(),
                          "metrics": metrics}

    return DreamDiffusionEngine


def export_weights(module: torch.nn.Module, local_path: str, base_model_path: str) -> str:
    """Write HF/peft weights next to verl's sharded checkpoint; returns the folder written (rank 0 only
    writes).

    LoRA: ``<local_path>/lora_adapter/`` (``adapter_config.json`` + ``adapter_model.safetensors``, peft
    layout, ``base_model_name_or_path`` = the base Dream folder), loadable with
    ``PeftModel.from_pretrained(decoding.load_dream(base), folder)``. Full fine-tuning:
    ``<local_path>/huggingface/model.safetensors`` next to the config/tokenizer verl already saves there, so
    the folder loads with ``decoding.load_dream``. ``huggingface/`` stays a valid hub-style Dream folder
    (:func:`decoding.checkpoint.sync_remote_code`: the base folder's remote code and ``auto_map`` if it has
    them, else none, never verl's copy of our module). Collective: every rank must call it (gathers FSDP
    shards).
    """
    import os

    from safetensors.torch import save_file
    from verl.utils.fsdp_utils import collect_lora_params, get_fsdp_full_state_dict

    from decoding.checkpoint import sync_remote_code

    unwrapped = getattr(module, "_fsdp_wrapped_module", module)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    if hasattr(unwrapped, "peft_config"):
        state = collect_lora_params(module, layered_summon=False, base_sync_done=True)
        folder = os.path.join(local_path, "lora_adapter")
        if rank == 0:
            os.makedirs(folder, exist_ok=True)
            config = unwrapped.peft_config["default"]
            config.base_model_name_or_path = base_model_path
            config.save_pretrained(folder)
            save_file({k: v.detach().cpu().contiguous() for k, v in state.items()},
                      os.path.join(folder, "adapter_model.safetensors"))
    else:
        state = get_fsdp_full_state_dict(module, offload_to_cpu=True, rank0_only=True)
        folder = os.path.join(local_path, "huggingface")
        if rank == 0:
            os.makedirs(folder, exist_ok=True)
            save_file({k: v.detach().cpu().contiguous() for k, v in state.items()},
                      os.path.join(folder, "model.safetensors"))
    if rank == 0:  # verl wrote config/tokenizer there, with an auto_map and a copy of our model module
        sync_remote_code(os.path.join(local_path, "huggingface"), base_model_path)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    return folder


DreamDiffusionEngine: type | None = None


def register() -> None:
    """Register the Dream engine as model_type ``dllm`` for fsdp/fsdp2 on cuda and cpu (idempotent)."""
    global DreamDiffusionEngine
    from verl.workers.engine.base import EngineRegistry

    if DreamDiffusionEngine is None:
        DreamDiffusionEngine = _build_engine_class()
    registered = EngineRegistry._engines.get(ENGINE_MODEL_TYPE, {}).get("fsdp2", {})
    devices = [device for device in ("cuda", "cpu") if device not in registered]
    if devices:
        EngineRegistry.register(model_type=ENGINE_MODEL_TYPE, backend=["fsdp", "fsdp2"], device=devices)(
            DreamDiffusionEngine
        )
