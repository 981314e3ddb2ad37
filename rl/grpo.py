"""GRPO math for a diffusion LM: group advantages, dynamic filtering, the clipped per-token loss and a
small inner-update loop.

Everything is a plain function over tensors so the VERL engine (``rl.verl_*``) and the CPU tests call the same
code. Per-token log-probs are the estimates of :mod:`rl.logprob`, evaluated on ONE mask plan per rollout batch
shared by the old, current and reference policy.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch
from torch import nn

from rl.logprob import MaskPlan, TokenLogProbs, plan_scored_mask


@dataclass
class GRPOConfig:
    """Knobs of the GRPO update (defaults: Dream-Coder's recipe, see notes/rl.md §3).

    ``clip_eps_low`` / ``clip_eps_high``: clip-higher ratio bounds ``[1 - low, 1 + high]``; ``kl_coef``: weight
    of the k3 KL to the reference (0 = no reference pass); ``ppo_epochs``: passes over the batch;
    ``mini_batch_size``: rows per optimizer step; ``micro_batch_size``: rows per forward/backward (gradient
    accumulation); ``max_grad_norm``: clip (None = off); ``adv_eps``: added to the group std;
    ``std_normalize``: divide by the group std (False = Dr.GRPO-style mean-centring only);
    ``filter_groups``: drop groups whose rewards are all equal (zero advantage, DAPO dynamic sampling).
    """

    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.28
    kl_coef: float = 0.0
    ppo_epochs: int = 2
    mini_batch_size: int = 16
    micro_batch_size: int = 4
    max_grad_norm: float | None = 1.0
    adv_eps: float = 1e-6
    std_normalize: bool = True
    filter_groups: bool = True
    shuffle_seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.clip_eps_low < 1.0 or self.clip_eps_high < 0.0:
            raise ValueError(
                f"need 0 <= clip_eps_low < 1 and clip_eps_high >= 0, got {self.clip_eps_low}, {self.clip_eps_high}"
            )
        if self.kl_coef < 0.0:
            raise ValueError(f"kl_coef must be >= 0, got {self.kl_coef}")
        for name in ("ppo_epochs", "mini_batch_size", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    if group_size < 2 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"GRPO needs groups of >= 2 completions laid out contiguously; got {rewards.numel()} rewards "
            f"for group size {group_size}"
        )
    return rewards.float().view(-1, group_size)


def group_advantages(
    rewards: torch.Tensor, group_size: int, eps: float = 1e-6, std_normalize: bool = True
) -> torch.Tensor:
    """GRPO advantages ``(r - mean_g) / (std_g + eps)`` per completion, ``[N]``.

    Rows ``[g * G, (g + 1) * G)`` form group g (the n samples of one prompt). ``std_g`` is the unbiased
    (n - 1) standard deviation, as in VERL's ``compute_grpo_outcome_advantage``.
    """
    grouped = _grouped(rewards, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if std_normalize:
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def informative_groups(rewards: torch.Tensor, group_size: int, atol: float = 1e-9) -> torch.Tensor:
    """``[N]`` bool: rows whose group does NOT have all-equal rewards (those carry zero advantage)."""
    grouped = _grouped(rewards, group_size)
    spread = grouped.max(dim=1).values - grouped.min(dim=1).values
    return (spread > atol).repeat_interleave(group_size)


@dataclass
class GRPOBatch:
    """One rollout batch ready for updates. ``loss_mask [N, L]`` marks scored completion tokens."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    plan: MaskPlan
    advantages: torch.Tensor
    old_logp: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return int(self.input_ids.shape[0])

    def rows(self, index: torch.Tensor) -> GRPOBatch:
        """The batch restricted to rows ``index``."""
        return GRPOBatch(
            input_ids=self.input_ids[index],
            attention_mask=self.attention_mask[index],
            loss_mask=self.loss_mask[index],
            plan=self.plan.select(index),
            advantages=self.advantages[index],
            old_logp=None if self.old_logp is None else self.old_logp[index],
            ref_logp=None if self.ref_logp is None else self.ref_logp[index],
            stats=dict(self.stats),
        )


def make_grpo_batch(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    loss_mask: torch.Tensor,
    plan: MaskPlan,
    rewards: torch.Tensor,
    group_size: int,
    cfg: GRPOConfig,
) -> GRPOBatch:
    """Advantages, dynamic filtering and the token mask for a rollout batch of ``N = prompts * group_size``.

    With ``cfg.filter_groups`` the all-equal groups are dropped (their advantage is 0: they only dilute the
    token mean); ``stats["filtered_fraction"]`` reports the dropped share of rows (log it: it says whether the
    task is too easy or too hard). The token mask is ``loss_mask`` restricted to what ``plan`` scores.
    """
    advantages = group_advantages(rewards, group_size, cfg.adv_eps, cfg.std_normalize)
    keep = informative_groups(rewards, group_size) if cfg.filter_groups else torch.ones_like(advantages).bool()
    grouped = rewards.float().view(-1, group_size)
    stats = {
        "filtered_fraction": 1.0 - keep.float().mean().item(),
        "reward_mean": grouped.mean().item(),
        "advantage_abs_mean": advantages.abs().mean().item(),
        "group_reward_std_mean": grouped.std(dim=1).mean().item(),
    }
    token_mask = loss_mask.bool() & plan_scored_mask(plan).to(loss_mask.device)
    batch = GRPOBatch(input_ids, attention_mask, token_mask, plan, advantages, stats=stats)
    index = keep.nonzero().squeeze(-1)
    return batch.rows(index.to(input_ids.device)) if not bool(keep.all()) else batch


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || ref): ``exp(ref - logp) - (ref - logp) - 1`` (>= 0, unbiased)."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1.0


def grpo_token_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    token_mask: torch.Tensor,
    cfg: GRPOConfig,
    ref_logp: torch.Tensor | None = None,
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped per-token GRPO loss, token-mean over ``token_mask``; returns ``(loss, metrics)``.

    ``loss = -sum_k min(r_k A, clip(r_k, 1 - eps_low, 1 + eps_high) A) / n + kl_coef * sum_k k3_k / n`` with
    ``r_k = exp(logp_k - old_logp_k)``, ``A`` the row's advantage and ``n = normalizer`` (default: the number
    of masked-in tokens; pass the mini-batch total when accumulating micro-batches so the sum of the
    micro-batch losses is the mini-batch token mean). Metrics are token sums (``*_sum``) plus ``tokens``.
    """
    mask = token_mask.float()
    n = float(normalizer) if normalizer is not None else float(mask.sum().clamp(min=1.0).item())
    log_ratio = (logp - old_logp) * mask
    ratio = torch.exp(log_ratio)
    adv = advantages.float().unsqueeze(-1).expand_as(ratio)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - cfg.clip_eps_low, 1.0 + cfg.clip_eps_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    loss = (per_token * mask).sum() / n
    with torch.no_grad():
        high = (adv > 0) & (ratio > 1.0 + cfg.clip_eps_high) & token_mask
        low = (adv < 0) & (ratio < 1.0 - cfg.clip_eps_low) & token_mask
        metrics = {
            "pg_loss_sum": (per_token * mask).sum(),
            "ppo_kl_sum": (-log_ratio * mask).sum(),
            "clip_high_sum": high.float().sum(),
            "clip_low_sum": low.float().sum(),
            "tokens": mask.sum(),
        }
    if ref_logp is not None and cfg.kl_coef > 0.0:
        kl = k3_kl(logp, ref_logp) * mask
        loss = loss + cfg.kl_coef * kl.sum() / n
        metrics["kl_sum"] = kl.detach().sum()
    return loss, metrics


class PolicyActor(Protocol):
    """What :func:`grpo_update` needs from an actor (``rl.actor.DreamActor`` implements it)."""

    def logprob(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, plan: MaskPlan, with_entropy: bool = False
    ) -> TokenLogProbs: ...

    def reference(self) -> AbstractContextManager[None]: ...

    def trainable_parameters(self) -> list[nn.Parameter]: ...


def _chunks(index: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    for start in range(0, index.numel(), size):
        yield index[start : start + size]


@torch.no_grad()
def batch_logprob(actor: PolicyActor, batch: GRPOBatch, micro_batch_size: int, reference: bool = False) -> torch.Tensor:
    """Per-token estimates of the whole batch without gradients (old policy, or reference if asked)."""
    parts = []
    for rows in _chunks(torch.arange(batch.num_rows), micro_batch_size):
        sub = batch.rows(rows)
        if reference:
            with actor.reference():
                parts.append(actor.logprob(sub.input_ids, sub.attention_mask, sub.plan).logp)
        else:
            parts.append(actor.logprob(sub.input_ids, sub.attention_mask, sub.plan).logp)
    return torch.cat(parts)


def grpo_update(
    actor: PolicyActor, batch: GRPOBatch, optimizer: torch.optim.Optimizer, cfg: GRPOConfig
) -> dict[str, float]:
    """Run ``cfg.ppo_epochs`` passes of mini-batch updates over ``batch``; returns averaged metrics.

    Old (and, with ``kl_coef > 0``, reference) log-probs are computed once on the batch's mask plan unless the
    batch already carries them (VERL computes them in its own stages). Because the plan is shared, the
    ratio on the very first mini-batch is exactly 1 (``ppo_kl == 0``) as long as the forward is deterministic
    (no dropout). Single-process loop: under data parallelism the token-mean normaliser is per rank (the VERL
    engine aggregates its own loss). Metrics: ``pg_loss``, ``ppo_kl``, ``clip_frac`` (+ ``_low``/``_high``), ``kl``,
    ``grad_norm`` (mean over steps), ``first_ppo_kl``, ``optimizer_steps``.
    """
    if batch.num_rows == 0:
        raise ValueError("empty GRPO batch (every group was filtered out?): skip the update instead")
    if batch.old_logp is None:
        batch = replace(batch, old_logp=batch_logprob(actor, batch, cfg.micro_batch_size))
    if cfg.kl_coef > 0.0 and batch.ref_logp is None:
        batch = replace(batch, ref_logp=batch_logprob(actor, batch, cfg.micro_batch_size, reference=True))
    generator = torch.Generator().manual_seed(cfg.shuffle_seed)
    params = actor.trainable_parameters()
    sums: dict[str, float] = {}
    grad_norms: list[float] = []
    first_kl: float | None = None
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(batch.num_rows, generator=generator)
        for mini in _chunks(order, cfg.mini_batch_size):
            # No data-dependent skipping: under FSDP every rank must run the same forwards and steps.
            tokens = max(float(batch.loss_mask[mini].sum().item()), 1.0)
            optimizer.zero_grad(set_to_none=True)
            step_sums: dict[str, float] = {}
            for micro in _chunks(mini, cfg.micro_batch_size):
                sub = batch.rows(micro)
                new = actor.logprob(sub.input_ids, sub.attention_mask, sub.plan)
                loss, metrics = grpo_token_loss(
                    new.logp, sub.old_logp, sub.advantages, sub.loss_mask, cfg, sub.ref_logp, normalizer=tokens
                )
                loss.backward()
                for key, value in metrics.items():
                    step_sums[key] = step_sums.get(key, 0.0) + float(value)
            if first_kl is None:
                first_kl = step_sums["ppo_kl_sum"] / tokens
            norm = _clip_gradients(params, cfg.max_grad_norm)
            grad_norms.append(norm)
            optimizer.step()
            for key, value in step_sums.items():
                sums[key] = sums.get(key, 0.0) + value
    return _summarise(sums, grad_norms, first_kl)


def _clip_gradients(params: list[nn.Parameter], max_norm: float | None) -> float:
    with_grad = [p for p in params if p.grad is not None]
    if not with_grad:
        return 0.0
    limit = max_norm if max_norm is not None else math.inf
    return float(torch.nn.utils.clip_grad_norm_(with_grad, limit))


def _summarise(sums: dict[str, float], grad_norms: list[float], first_kl: float | None) -> dict[str, float]:
    tokens = max(sums.get("tokens", 0.0), 1.0)
    out = {
        "pg_loss": sums.get("pg_loss_sum", 0.0) / tokens,
        "ppo_kl": sums.get("ppo_kl_sum", 0.0) / tokens,
        "clip_frac_high": sums.get("clip_high_sum", 0.0) / tokens,
        "clip_frac_low": sums.get("clip_low_sum", 0.0) / tokens,
        "grad_norm": sum(grad_norms) / max(len(grad_norms), 1),
        "optimizer_steps": float(len(grad_norms)),
        "first_ppo_kl": 0.0 if first_kl is None else first_kl,
    }
    out["clip_frac"] = out["clip_frac_high"] + out["clip_frac_low"]
    if "kl_sum" in sums:
        out["kl"] = sums["kl_sum"] / tokens
    return out
