"""Masked-diffusion supervised fine-tuning (SFT) of a Dream model: the objective and a small training loop.

Why: the CPU demo needs a warm start whose held-out pass rate is low but non-zero before GRPO, and users want
the same standard objective for their own warm starts. The objective is the masked-diffusion ELBO used by
Dream/LLaDA SFT: for each sequence draw a masking rate ``t ~ U(eps, 1)``, replace every completion token by
the mask id independently with probability ``t`` (prompt tokens are never masked), and score the clean token
at every masked position with cross-entropy weighted by ``1/t``:

    loss_b = (1 / |C_b|) * sum_{k in C_b, masked} CE(logits_{k-1}, x_k) / t_b,     loss = mean_b loss_b

where ``C_b`` are the completion positions of row ``b``. ``loss_b`` is an upper bound on the per-token
negative log-likelihood of the completion given the prompt. Dream keeps the autoregressive logit shift: the
token at position ``k`` is predicted by the logits at ``k - 1`` (the model does not shift), so position 0 can
never be a completion token. The pad/EOS tail of a fixed-length canvas IS part of the completion here (the
model must learn to fill it with end-of-text); fixed template tokens (lockstep delimiters) are not: leave them
out of ``completion_mask``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


@dataclass
class SFTLoss:
    """Result of :func:`masked_diffusion_loss`.

    ``loss`` (scalar, differentiable) is the batch mean of ``per_sequence [B]``; ``t [B]`` the masking rates
    and ``noise_mask [B, S]`` the masked positions used; ``masked_ce`` the unweighted mean cross-entropy over
    all masked tokens (a readable training signal; NaN when nothing was masked).
    """

    loss: torch.Tensor
    per_sequence: torch.Tensor
    t: torch.Tensor
    noise_mask: torch.Tensor
    masked_ce: torch.Tensor


def shifted_token_ce(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Cross-entropy ``[B, S]`` of each token under Dream's shifted logits (position 0 is 0: unpredictable).

    ``ce[:, k] = -log softmax(logits[:, k - 1])[input_ids[:, k]]`` for ``k >= 1``, computed in float32.
    """
    ce = F.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), input_ids[:, 1:], reduction="none"
    )
    return F.pad(ce, (1, 0), value=0.0)


def draw_noise(
    completion_mask: torch.Tensor, eps: float = 1e-3, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``t [B] ~ U(eps, 1)`` and a Bernoulli(t) mask ``[B, S]`` restricted to ``completion_mask``."""
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    batch = completion_mask.shape[0]
    device = completion_mask.device
    t = eps + (1.0 - eps) * torch.rand(batch, generator=generator, device=device)
    u = torch.rand(completion_mask.shape, generator=generator, device=device)
    return t, (u < t[:, None]) & completion_mask.bool()


def masked_diffusion_loss(
    model: nn.Module,
    input_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    mask_token_id: int,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    eps: float = 1e-3,
    t: torch.Tensor | None = None,
    noise_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> SFTLoss:
    """The masked-diffusion SFT objective (module docstring) on one batch.

    Args:
        model: a Dream model;
            ``model(input_ids, attention_mask=..., position_ids=..., logits_to_keep=k).logits`` is
            ``[B, k, V]`` (the last ``k`` positions) and unshifted.
        input_ids: clean sequences ``[B, S]`` (prompt followed by completion; padding anywhere outside it).
        completion_mask: ``[B, S]`` bool, the completion positions that may be masked and are scored.
        mask_token_id: id written at masked positions.
        attention_mask / position_ids: passed to the model unchanged (left padding: 0 on pads).
        eps: lower bound of ``t`` (avoids huge ``1/t`` weights).
        t, noise_mask: give both to evaluate the objective for a fixed draw (tests, deterministic evaluation);
            ``noise_mask`` is intersected with ``completion_mask``. Otherwise drawn with ``generator``.
    Raises:
        ValueError: shape mismatch, a completion token at position 0, a row without completion tokens, or
            only one of ``t``/``noise_mask`` given.
    """
    completion_mask = completion_mask.bool()
    if completion_mask.shape != input_ids.shape:
        raise ValueError(
            f"completion_mask {tuple(completion_mask.shape)} must match input_ids {tuple(input_ids.shape)}"
        )
    if bool(completion_mask[:, 0].any()):
        raise ValueError("position 0 cannot be a completion token: Dream predicts token k from the logits at "
                         "k - 1")
    n_completion = completion_mask.sum(dim=1)
    if bool((n_completion == 0).any()):
        raise ValueError("every row needs at least one completion token")
    if (t is None) != (noise_mask is None):
        raise ValueError("give both t and noise_mask, or neither")
    if t is None:
        t, noise_mask = draw_noise(completion_mask, eps, generator)
    else:
        t = t.to(device=input_ids.device, dtype=torch.float32)
        noise_mask = noise_mask.bool() & completion_mask
    noisy = torch.where(noise_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    # Only the logits from one position before the first completion token onwards are needed: skip the lm_head
    # (the largest layer of a small model) and the softmax over the prompt.
    first = int(completion_mask.any(dim=0).nonzero()[0])
    keep = input_ids.shape[1] - first + 1
    logits = model(input_ids=noisy, attention_mask=attention_mask, position_ids=position_ids,
                   logits_to_keep=keep).logits
    if logits.shape[1] != keep:
        raise ValueError(f"the model returned {logits.shape[1]} logit positions for logits_to_keep={keep}")
    ce = F.pad(shifted_token_ce(logits, input_ids[:, -keep:])[:, 1:], (first, 0), value=0.0)
    masked_ce_sum = torch.where(noise_mask, ce, torch.zeros_like(ce)).sum(dim=1)
    per_sequence = masked_ce_sum / t / n_completion.float()
    n_masked = noise_mask.sum()
    masked_ce = masked_ce_sum.sum().detach() / n_masked if n_masked > 0 else torch.tensor(float("nan"))
    return SFTLoss(
        loss=per_sequence.mean(), per_sequence=per_sequence, t=t, noise_mask=noise_mask, masked_ce=masked_ce
    )


@torch.no_grad()
def elbo_nll(
    model: nn.Module,
    input_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    mask_token_id: int,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    n_rates: int = 4,
    seed: int = 0,
) -> float:
    """Deterministic estimate of the per-token NLL bound (lower = more likely), for held-out comparisons.

    Averages :func:`masked_diffusion_loss` over the stratified rates ``t = (i + 0.5) / n_rates`` with masks
    drawn from a generator seeded with ``seed``: two models evaluated with the same arguments see identical
    masks.
    """
    completion_mask = completion_mask.bool()
    generator = torch.Generator(device=input_ids.device).manual_seed(seed)
    total = 0.0
    for i in range(n_rates):
        rate = (i + 0.5) / n_rates
        t = torch.full((input_ids.shape[0],), rate, device=input_ids.device)
        u = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
        out = masked_diffusion_loss(
            model, input_ids, completion_mask, mask_token_id, attention_mask, position_ids,
            t=t, noise_mask=u < rate,
        )
        total += float(out.loss)
    return total / n_rates


# --------------------------------------------------------------------------------------------- batching
@dataclass(frozen=True)
class SFTExample:
    """One supervised pair as token ids. ``scored[k]`` says whether completion token k is maskable and scored
    (False for fixed template tokens such as lockstep delimiters); default: every completion token."""

    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]
    scored: tuple[bool, ...] | None = None

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ValueError("an SFT example needs a non-empty prompt (Dream predicts token k from position "
                             "k - 1)")
        if not self.completion_ids:
            raise ValueError("an SFT example needs a non-empty completion")
        if self.scored is not None and len(self.scored) != len(self.completion_ids):
            raise ValueError(f"scored has {len(self.scored)} entries for {len(self.completion_ids)} "
                             "completion tokens")


@dataclass
class SFTBatch:
    """Left-padded batch: ``input_ids``, ``attention_mask`` (0 on pads), ``position_ids`` and
    ``completion_mask`` (the scored completion tokens), all ``[B, S]``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    completion_mask: torch.Tensor


def collate_left_padded(examples: Sequence[SFTExample], pad_id: int) -> SFTBatch:
    """Concatenate prompt + completion per example and left-pad to the longest; positions restart at 0 on the
    first real token (Dream's left-padding rule), so a padded row computes the same as the row alone.

    With equal-length completions (a fixed canvas) the completion occupies the last ``L`` positions of every
    row, the layout used by :mod:`rl.logprob` and the samplers.
    """
    if not examples:
        raise ValueError("cannot collate an empty batch")
    width = max(len(e.prompt_ids) + len(e.completion_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    completion_mask = torch.zeros((len(examples), width), dtype=torch.bool)
    for row, ex in enumerate(examples):
        seq = list(ex.prompt_ids) + list(ex.completion_ids)
        start = width - len(seq)
        input_ids[row, start:] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, start:] = 1
        scored = ex.scored if ex.scored is not None else (True,) * len(ex.completion_ids)
        completion_mask[row, width - len(ex.completion_ids):] = torch.tensor(scored, dtype=torch.bool)
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    return SFTBatch(input_ids, attention_mask, position_ids, completion_mask)


# --------------------------------------------------------------------------------------------- training loop
@dataclass
class SFTConfig:
    """Optimisation settings of :func:`train_sft` (AdamW, linear warm-up then cosine decay to
    ``min_lr_ratio``).

    ``steps`` sets the schedule; ``stop_after`` (optional, <= steps) ends training early on that schedule,
    e.g. a deliberately under-trained warm start taken at step 1000 of a 1500-step run.
    """

    steps: int = 1000
    stop_after: int | None = None
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    eps: float = 1e-3
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate only before the first and after the last step

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad field (user configs come from YAML/command line)."""
        checks = {
            "steps": self.steps >= 1, "batch_size": self.batch_size >= 1, "lr": self.lr > 0,
            "weight_decay": self.weight_decay >= 0, "warmup_steps": self.warmup_steps >= 0,
            "min_lr_ratio": 0 <= self.min_lr_ratio <= 1, "grad_clip": self.grad_clip > 0,
            "eps": 0 < self.eps < 1, "log_every": self.log_every >= 1, "eval_every": self.eval_every >= 0,
            "stop_after": self.stop_after is None or 1 <= self.stop_after <= self.steps,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid SFT settings: {', '.join(f'{n}={getattr(self, n)!r}' for n in bad)}")


def lr_factor(step: int, cfg: SFTConfig) -> float:
    """Multiplier of ``cfg.lr`` at optimizer step ``step`` (0-based)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(cfg.steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _batches(n_examples: int, batch_size: int, generator: torch.Generator) -> Iterator[list[int]]:
    """Endless shuffled epochs of example indices (the last partial batch of an epoch is dropped)."""
    per_epoch = max(n_examples // batch_size, 1)
    while True:
        order = torch.randperm(n_examples, generator=generator).tolist()
        for i in range(per_epoch):
            yield order[i * batch_size : (i + 1) * batch_size]


Evaluate = Callable[[int], dict[str, float]]
Log = Callable[[dict[str, float], int], None]


def train_sft(
    model: nn.Module,
    examples: Sequence[SFTExample],
    cfg: SFTConfig,
    pad_id: int,
    mask_token_id: int,
    evaluate: Evaluate | None = None,
    log: Log | None = None,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train ``model`` in place on ``examples`` with :func:`masked_diffusion_loss`; return the logged records.

    ``evaluate(step)`` (optional) is called before training (step 0), every ``cfg.eval_every`` steps and after
    the last step; its metrics are merged into the record of that step. ``log(record, step)`` receives every
    record (training records every ``cfg.log_every`` steps, averaged over them). Deterministic given
    ``cfg.seed``, the model's initial weights and the examples.
    """
    cfg.validate()
    if not examples:
        raise ValueError("no SFT examples")
    generator = torch.Generator().manual_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    history: list[dict[str, float]] = []

    def emit(record: dict[str, float], step: int) -> None:
        history.append({"step": step, **record})
        if log is not None:
            log(record, step)

    if evaluate is not None:
        model.eval()
        emit(evaluate(0), 0)
    sums = {"loss": 0.0, "masked_ce": 0.0, "grad_norm": 0.0}
    batches = _batches(len(examples), min(cfg.batch_size, len(examples)), generator)
    last = cfg.stop_after or cfg.steps
    bar = tqdm(range(1, last + 1), desc="sft", disable=not progress, dynamic_ncols=True)
    for step in bar:
        model.train()
        batch = collate_left_padded([examples[i] for i in next(batches)], pad_id)
        out = masked_diffusion_loss(
            model, batch.input_ids, batch.completion_mask, mask_token_id, batch.attention_mask,
            batch.position_ids, eps=cfg.eps, generator=generator,
        )
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        sums["loss"] += float(out.loss.detach())
        sums["grad_norm"] += float(grad_norm)
        if not math.isnan(float(out.masked_ce)):
            sums["masked_ce"] += float(out.masked_ce)
        if step % cfg.log_every == 0 or step == last:
            n = cfg.log_every if step % cfg.log_every == 0 else step % cfg.log_every
            record = {f"train/{k}": v / n for k, v in sums.items()}
            record["train/lr"] = scheduler.get_last_lr()[0]
            bar.set_postfix(loss=f"{record['train/loss']:.3f}")
            sums = dict.fromkeys(sums, 0.0)
            if evaluate is not None and (step == last or (cfg.eval_every and step % cfg.eval_every == 0)):
                model.eval()
                record.update(evaluate(step))
            emit(record, step)
        elif evaluate is not None and cfg.eval_every and step % cfg.eval_every == 0:
            model.eval()
            emit(evaluate(step), step)
    model.eval()
    return history
