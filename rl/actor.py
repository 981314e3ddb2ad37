"""The Dream actor: our decoding model wrapped for RL (LoRA or full fine-tuning, reference policy, FSDP2).

Why a wrapper: the same model serves three roles in GRPO — the trained policy, the frozen old policy (a no-grad
pass before the update) and the reference for the KL term. With LoRA the reference is the base model with the
adapters disabled, so there is no second copy of 7B weights; with full fine-tuning a frozen copy is kept only
when asked for (``keep_reference_copy``: KL on).

Contracts:

* :meth:`DreamActor.logprob` evaluates a :class:`rl.logprob.MaskPlan` on the *active* module (the policy, or the
  reference inside :meth:`DreamActor.reference`); wrap it in ``torch.no_grad()`` for old/ref passes.
* LoRA dropout defaults to 0: with dropout the old/new passes differ and the first-step ratio is no longer 1.
* :func:`shard_fsdp2` applies ``torch.distributed.fsdp.fully_shard`` to each decoder layer, then to the root,
  on an existing process group (gloo on CPU works, one rank included).
* Adapters are saved in the peft/HF format (``adapter_config.json`` + ``adapter_model.safetensors``), loadable
  with ``peft.PeftModel.from_pretrained`` on top of :func:`decoding.load_dream`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from rl.logprob import (
    MaskPlan,
    TokenLogProbs,
    TrajectoryScore,
    completion_loss_mask,
    draw_coupled_masks,
    draw_trajectory_masks,
    masked_logprob,
)

if TYPE_CHECKING:
    from decoding.lockstep import LockstepCfg
    from decoding.lockstep_trace import LockstepResult

DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32}


@dataclass
class LoraSettings:
    """peft LoRA knobs: ``target_modules`` is a list of module names or ``"all-linear"`` (never ``lm_head``)."""

    rank: int = 16
    alpha: int = 32
    target_modules: Sequence[str] | str = "all-linear"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.rank < 1 or self.alpha <= 0:
            raise ValueError(f"LoRA needs rank >= 1 and alpha > 0, got rank={self.rank}, alpha={self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")


@dataclass
class ActorConfig:
    """``lora=None`` means full fine-tuning. ``param_dtype``: dtype of the base weights (``bfloat16`` on GPU;
    LoRA adapters stay float32). ``keep_reference_copy``: full fine-tuning only, keep a frozen copy as the
    KL reference."""

    lora: LoraSettings | None = field(default_factory=LoraSettings)
    gradient_checkpointing: bool = True
    param_dtype: str = "bfloat16"
    keep_reference_copy: bool = False

    def __post_init__(self) -> None:
        if self.param_dtype not in DTYPES:
            raise ValueError(f"param_dtype must be one of {sorted(DTYPES)}, got {self.param_dtype!r}")
        if self.keep_reference_copy and self.lora is not None:
            raise ValueError("keep_reference_copy is for full fine-tuning; with LoRA the reference is the base model")


class DreamActor:
    """Policy wrapper around a :class:`decoding.model.DreamModel` (see the module docstring)."""

    def __init__(self, model: nn.Module, cfg: ActorConfig | None = None) -> None:
        self.cfg = cfg or ActorConfig()
        config = getattr(model, "config", None)
        if config is None or getattr(config, "mask_token_id", None) is None:
            raise ValueError("DreamActor needs a Dream model whose config names mask_token_id")
        self.mask_token_id = int(config.mask_token_id)
        self.pad_token_id = int(config.pad_token_id)
        model = model.to(DTYPES[self.cfg.param_dtype])
        if self.cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self._reference_copy: nn.Module | None = None
        if self.cfg.lora is None:
            if self.cfg.keep_reference_copy:
                self._reference_copy = copy.deepcopy(model).eval().requires_grad_(False)
            self.module: nn.Module = model
        else:
            self.module = _wrap_lora(model, self.cfg.lora)
        self._active: nn.Module = self.module

    @classmethod
    def from_pretrained(
        cls, path: str | Path, cfg: ActorConfig | None = None, device: str | torch.device = "cpu",
        adapter_dir: str | Path | None = None,
    ) -> DreamActor:
        """Load a Dream checkpoint directory (and optionally a saved adapter) as an actor."""
        from decoding import load_dream

        cfg = cfg or ActorConfig()
        actor = cls(load_dream(path, dtype=DTYPES[cfg.param_dtype], device=device), cfg)
        if adapter_dir is not None:
            actor.load_adapter(adapter_dir)
        return actor

    @property
    def base_model(self) -> nn.Module:
        """The underlying Dream model (with LoRA layers injected when LoRA is on)."""
        return self.module.get_base_model() if self.cfg.lora is not None else self.module

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]

    def logprob(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, plan: MaskPlan, with_entropy: bool = False
    ) -> TokenLogProbs:
        """Per-token estimates of the active policy on ``plan`` (see :func:`rl.logprob.masked_logprob`)."""
        return masked_logprob(self._active, input_ids, attention_mask, plan, self.mask_token_id, with_entropy)

    @contextmanager
    def reference(self) -> Iterator[None]:
        """Inside the block, :meth:`logprob` (and :attr:`active_module`) use the reference policy."""
        if self.cfg.lora is not None:
            with self.module.disable_adapter():
                yield
            return
        if self._reference_copy is None:
            raise RuntimeError(
                "full fine-tuning has no reference policy unless ActorConfig.keep_reference_copy=True (needed for KL)"
            )
        self._active = self._reference_copy
        try:
            yield
        finally:
            self._active = self.module

    @property
    def active_module(self) -> nn.Module:
        return self._active

    @torch.no_grad()
    def rollout(self, prompts: Sequence[Sequence[int]], n: int, cfg: RolloutConfig, tokenizer=None) -> Rollout:
        """``n`` lockstep R/A samples per prompt (rows ``[i * n, (i + 1) * n)`` belong to prompt i).

        ``prompts`` are token ids (chat template already applied). Runs the current policy (adapters on) in
        eval mode through :func:`decoding.lockstep.lockstep_sample`, then restores the training mode.
        """
        from decoding.lockstep import lockstep_sample

        if n < 1 or not prompts:
            raise ValueError(f"rollout needs at least one prompt and n >= 1, got {len(prompts)} prompts, n={n}")
        if n > 1 and cfg.lockstep.temperature <= 0.0:
            raise ValueError("n > 1 samples per prompt need lockstep.temperature > 0 (greedy samples are identical)")
        device = next(self.module.parameters()).device
        input_ids, attention_mask = left_pad(prompts, self.pad_token_id, device)
        input_ids = input_ids.repeat_interleave(n, 0)
        attention_mask = attention_mask.repeat_interleave(n, 0)
        was_training = self.module.training
        self.module.eval()
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
        try:
            result = lockstep_sample(
                self._active, input_ids, attention_mask, cfg.lockstep, delimiter_ids=cfg.delimiter_ids,
                mask_token_id=self.mask_token_id, eos_token_id=self.pad_token_id, generator=generator,
                valid_vocab_size=cfg.valid_vocab_size, progress=cfg.progress,
            )
        finally:
            self.module.train(was_training)
        return _rollout_from_result(result, attention_mask, n, self.pad_token_id, tokenizer)

    def train(self, mode: bool = True) -> DreamActor:
        self.module.train(mode)
        return self

    def save(self, out_dir: str | Path) -> Path:
        """Adapter only (peft format) under LoRA, else the full model in the HF Dream layout."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.module.save_pretrained(out)
        return out

    def load_adapter(self, adapter_dir: str | Path) -> None:
        """Load adapter weights saved by :meth:`save` into this actor's LoRA layers (same settings)."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        if self.cfg.lora is None:
            raise ValueError("load_adapter needs a LoRA actor (ActorConfig.lora is None)")
        weights = Path(adapter_dir) / "adapter_model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"{adapter_dir} holds no adapter_model.safetensors (not a peft adapter dir)")
        result = set_peft_model_state_dict(self.module, load_file(str(weights)))
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"adapter in {adapter_dir} does not match this actor's LoRA layers: {unexpected[:4]}")


@dataclass
class RolloutConfig:
    """Lockstep rollout settings: the decoder knobs, the R/A delimiter ids, a seed for every random draw,
    ``valid_vocab_size`` (ban ids beyond the tokenizer and the mask id) and a progress bar switch."""

    lockstep: LockstepCfg = field(default_factory=lambda: _default_lockstep())
    delimiter_ids: tuple[int, ...] = ()
    seed: int = 0
    valid_vocab_size: int | None = None
    progress: bool = False


def _default_lockstep() -> LockstepCfg:
    from decoding.lockstep import LockstepCfg

    return LockstepCfg(temperature=1.0)


@dataclass
class Rollout:
    """Rollout batch in the layout of :mod:`rl.logprob`: completion = the last ``L`` positions of ``input_ids``.

    ``commit_order [N, L]`` is the decoder's ``commit_nfe`` (index of the forward whose logits chose each token;
    -1 = fixed delimiter): the order the trajectory estimator replays. ``commit_prob [N, L]``: the decoder's
    confidence at commit (nan = never masked); with ``alg="maskgit_plus"``, temperature 1 and no top-p/top-k
    it is the probability the sampler drew the token with. ``maskable``: generated positions;
    ``loss_mask``: scored positions (R and A each up to their first end-of-text). ``answer_ids``/``reasoning_ids``
    are the A/R blocks; ``answers``/``reasonings`` their texts when a tokenizer was given.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    maskable: torch.Tensor
    loss_mask: torch.Tensor
    commit_order: torch.Tensor
    commit_prob: torch.Tensor
    answer_ids: torch.Tensor
    reasoning_ids: torch.Tensor
    group_size: int
    metrics: dict[str, float]
    answers: list[str] | None = None
    reasonings: list[str] | None = None

    def draw_plan(
        self, estimator: str = "coupled", *, generator: torch.Generator | None = None, t_min: float = 0.2,
        t_max: float = 0.8, num_draws: int = 1, merge: int = 1, score: TrajectoryScore = "committed",
    ) -> MaskPlan:
        """The batch's mask plan (draw once, reuse for old/new/ref): ``coupled`` or ``trajectory``."""
        if estimator == "coupled":
            return draw_coupled_masks(
                self.maskable.cpu(), self.loss_mask.cpu(), t_min=t_min, t_max=t_max, generator=generator
            )
        if estimator == "trajectory":
            return draw_trajectory_masks(
                self.commit_order.cpu(), self.loss_mask.cpu(), num_draws=num_draws, merge=merge, score=score,
                generator=generator,
            )
        raise ValueError(f"estimator must be 'coupled' or 'trajectory', got {estimator!r}")


def left_pad(
    prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids [B, P]`` left-padded with ``pad_id`` and the 0/1 ``attention_mask``; empty prompts rejected."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompt {row} is empty: Dream predicts token j from position j - 1")
        ids[row, width - len(prompt) :] = torch.as_tensor(list(prompt), dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    return ids.to(device), mask.to(device)


def _rollout_from_result(result: LockstepResult, attention_mask: torch.Tensor, n: int, eos_id: int,
                         tokenizer) -> Rollout:
    layout = result.layout
    prompt_len = layout.prompt_len
    full_mask = torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], layout.total - prompt_len)], 1)
    completion = result.sequences[:, prompt_len:]
    order = result.commit_nfe[:, prompt_len:]
    maskable = order >= 0
    loss_mask = completion_loss_mask(completion, eos_id, maskable)
    metrics = dict(result.metrics())
    metrics["rollout/scored_tokens_mean"] = loss_mask.sum(-1).float().mean().item()
    metrics["rollout/answer_tokens_mean"] = completion_loss_mask(result.answer_ids, eos_id).sum(-1).float().mean().item()
    answers = reasonings = None
    if tokenizer is not None:
        reasonings, answers = result.texts(tokenizer)
    return Rollout(
        input_ids=result.sequences, attention_mask=full_mask, maskable=maskable, loss_mask=loss_mask,
        commit_order=order, commit_prob=result.commit_prob[:, prompt_len:], answer_ids=result.answer_ids, reasoning_ids=result.reasoning_ids, group_size=n,
        metrics=metrics, answers=answers, reasonings=reasonings,
    )


def _wrap_lora(model: nn.Module, lora: LoraSettings) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    targets = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
    config = LoraConfig(
        r=lora.rank, lora_alpha=lora.alpha, target_modules=targets, lora_dropout=lora.dropout, bias="none"
    )
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        raise ValueError(f"LoRA target_modules {targets!r} do not match the model: {err}") from err


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder blocks (``DreamModel._no_split_modules`` classes), in order, through any peft wrapping."""
    names = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError("no decoder layers found (expected modules named in _no_split_modules, e.g. DreamDecoderLayer)")
    return layers


def shard_fsdp2(
    model: nn.Module,
    mesh: object | None = None,
    param_dtype: torch.dtype | None = None,
    reduce_dtype: torch.dtype | None = torch.float32,
    reshard_after_forward: bool = True,
) -> nn.Module:
    """FSDP2-shard ``model`` in place: each decoder layer, then the root (embeddings, norm, head).

    ``mesh``: a 1-D ``DeviceMesh`` (default: the whole default process group). ``param_dtype``: compute dtype
    of the all-gathered parameters (``torch.bfloat16`` for bf16 mixed precision; None keeps the stored dtype);
    gradients are reduced in ``reduce_dtype``. Needs ``torch.distributed`` initialised (gloo on CPU).
    """
    import torch.distributed as dist
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if not dist.is_initialized():
        raise RuntimeError("shard_fsdp2 needs an initialised process group (torch.distributed.init_process_group)")
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    return model
