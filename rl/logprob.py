"""Per-token log-probability estimators for a masked diffusion LM (Dream).

A diffusion LM has no tractable sequence likelihood, so GRPO's per-token ratio uses *estimates*. Both
estimators here are expressed as a :class:`MaskPlan`: ``P`` masked forward passes, each with a boolean mask
over the completion (positions replaced by the mask id) and per-position weights. The per-token estimate is

    est_k = sum_p weights[p, k] * log p_theta(o_k | x_p),     x_p = (prompt, o with masks[p] set to <mask>).

Positions with zero weight in every pass are *unscored*; estimates are defined given that a token is scored,
and the GRPO loss averages over scored tokens only (:func:`plan_scored_mask`). Exactness against enumerated
masks is proven in ``tests/rl/test_logprob.py``; derivations are in the docstrings of :func:`coupled_plan`
and :func:`trajectory_plan` and in ``docs/rl.md`` (RL estimators).

A plan is drawn ONCE per rollout batch (it is plain tensors, so it can be stored in the batch) and the same
plan is reused for the old, current and reference policy: their per-token estimates then differ only through
the parameters, and the PPO ratio is exactly 1 before the first update.

Layout contract (VERL-style): ``input_ids [B, S]`` is the left-padded prompt followed by the completion
canvas, which occupies the LAST ``L`` positions (``L`` = ``plan.masks.shape[-1]``); ``attention_mask [B, S]``
is 0 on left padding. Dream keeps the autoregressive logit shift: the token at absolute position ``j`` is
predicted by the logits at ``j - 1`` (the model itself does not shift), so the completion needs at least one
prompt token.

Masks vs. loss: ``maskable`` marks completion positions that were generated (fixed delimiters of a lockstep
canvas are not); ``loss_mask`` marks the positions that are scored: maskable positions up to and including
the first end-of-text of each contiguous generated segment (see :func:`completion_loss_mask`). The pad/EOS
tail after it is masked like any generated token but carries zero weight, so it never enters the loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from decoding.model import padding_position_ids

TrajectoryScore = Literal["committed", "masked"]


@dataclass
class MaskPlan:
    """Masked passes of a log-prob estimate: ``masks [P, B, L]`` bool and ``weights [P, B, L]`` float."""

    masks: torch.Tensor
    weights: torch.Tensor

    def __post_init__(self) -> None:
        if self.masks.dim() != 3 or self.masks.shape != self.weights.shape:
            raise ValueError(
                f"MaskPlan needs masks and weights of the same shape [P, B, L], got "
                f"{tuple(self.masks.shape)} and {tuple(self.weights.shape)}"
            )
        if self.masks.dtype != torch.bool:
            raise ValueError(f"MaskPlan.masks must be bool, got {self.masks.dtype}")

    @property
    def completion_length(self) -> int:
        return int(self.masks.shape[-1])

    def select(self, rows: torch.Tensor | slice) -> MaskPlan:
        """The plan restricted to batch rows ``rows`` (for mini-/micro-batching)."""
        return MaskPlan(self.masks[:, rows], self.weights[:, rows])

    def to(self, device: torch.device | str) -> MaskPlan:
        return MaskPlan(self.masks.to(device), self.weights.to(device))


@dataclass
class TokenLogProbs:
    """Per-token estimates ``logp [B, L]`` (0 where unscored) and, if asked for, ``entropy [B, L]``."""

    logp: torch.Tensor
    entropy: torch.Tensor | None = None


def completion_loss_mask(
    completion_ids: torch.Tensor,
    eos_id: int,
    maskable: torch.Tensor | None = None,
    keep_first_eos: bool = True,
) -> torch.Tensor:
    """Positions of the completion that enter the loss: ``[B, L]`` bool.

    Why: Dream fills the whole canvas, so the end of every answer is a run of end-of-text (= pad) tokens that
    would dominate a token-mean loss. Decoded text stops at the first end-of-text, so everything after it in a
    segment is irrelevant to the reward and excluded. A *segment* is a maximal run of contiguous ``maskable``
    positions (a lockstep canvas has a Reasoning and an Answer segment split by fixed delimiters, each with
    its own tail). ``keep_first_eos`` keeps the terminating end-of-text in the loss so the policy learns to
    stop.
    """
    if completion_ids.dim() != 2:
        raise ValueError(f"completion_ids must be [B, L], got shape {tuple(completion_ids.shape)}")
    if maskable is None:
        maskable = torch.ones_like(completion_ids, dtype=torch.bool)
    maskable = maskable.bool()
    eos = (completion_ids == eos_id) & maskable
    eos_int = eos.long()
    count = torch.cumsum(eos_int, dim=1) - eos_int  # end-of-text tokens strictly before each position
    previous = torch.nn.functional.pad(maskable[:, :-1], (1, 0), value=False)
    segment_start = maskable & ~previous
    base = torch.where(segment_start, count, torch.zeros_like(count))
    base = torch.cummax(base, dim=1).values  # count is non-decreasing, so the latest start wins
    eos_before = count - base
    in_tail = eos_before > 0
    if not keep_first_eos:
        in_tail = in_tail | eos
    return maskable & ~in_tail


def completion_logprobs_from_logits(
    logits: torch.Tensor, completion_ids: torch.Tensor, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``log p(o_k)`` for the completion at the end of the sequence, with Dream's logit shift.

    ``logits [B, S, V]`` come straight from the model (no shift inside); the completion token at absolute
    position ``S - L + k`` is predicted by ``logits[:, S - L + k - 1]``. Computed in float32.
    """
    length = completion_ids.shape[1]
    seq_len = logits.shape[1]
    if seq_len <= length:
        raise ValueError(
            f"the sequence ({seq_len} positions) must hold at least one prompt token before the "
            f"{length}-token completion: Dream predicts token j from the logits at j - 1"
        )
    shifted = logits[:, seq_len - length - 1 : seq_len - 1].float()
    log_norm = torch.logsumexp(shifted, dim=-1)
    picked = shifted.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    logp = picked - log_norm
    entropy = None
    if with_entropy:
        probs = torch.softmax(shifted, dim=-1)
        entropy = log_norm - (probs * shifted).sum(dim=-1)
    return logp, entropy


def plan_scored_mask(plan: MaskPlan) -> torch.Tensor:
    """Completion positions that some pass of ``plan`` scores: ``[B, L]`` bool (the GRPO token mask)."""
    return (plan.weights != 0).any(dim=0)


def masked_logprob(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    plan: MaskPlan,
    mask_id: int,
    with_entropy: bool = False,
) -> TokenLogProbs:
    """Evaluate a :class:`MaskPlan`: one forward per pass, weighted per-token log-probs summed over passes.

    ``model`` follows :class:`decoding.model.DreamModel`'s forward (``logits_to_keep`` is used so the LM head
    only runs on the ``L + 1`` positions that predict the completion). Differentiable w.r.t. the model's
    parameters (wrap in ``torch.no_grad()`` for old/ref passes). Passes with all-zero weights still run:
    under FSDP every rank must issue the same forwards, whatever its
    rows. ``entropy`` (if requested) is the predictive entropy at each scored
    position, averaged over the passes that score it (0 elsewhere); VERL logs it as an exploration proxy.
    """
    batch, length = input_ids.shape[0], plan.completion_length
    if plan.masks.shape[1] != batch:
        raise ValueError(f"plan has {plan.masks.shape[1]} rows but input_ids has {batch}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    position_ids = padding_position_ids(attention_mask)
    completion = input_ids[:, -length:]
    plan = plan.to(input_ids.device)
    total = torch.zeros(batch, length, device=input_ids.device, dtype=torch.float32)
    entropy_sum = torch.zeros_like(total) if with_entropy else None
    scored_count = torch.zeros_like(total)
    for masks, weights in zip(plan.masks, plan.weights):
        noisy = input_ids.clone()
        noisy[:, -length:] = torch.where(masks, torch.full_like(completion, mask_id), completion)
        logits = model(
            input_ids=noisy, attention_mask=attention_mask, position_ids=position_ids,
            logits_to_keep=length + 1
        ).logits
        logp, entropy = completion_logprobs_from_logits(logits, completion, with_entropy)
        scored = weights != 0
        total = total + torch.where(scored, weights.float() * logp, torch.zeros_like(logp))
        scored_count = scored_count + scored.float()
        if entropy_sum is not None and entropy is not None:
            entropy_sum = entropy_sum + torch.where(scored, entropy, torch.zeros_like(entropy))
    mean_entropy = None
    if entropy_sum is not None:
        mean_entropy = entropy_sum / scored_count.clamp(min=1.0)
    return TokenLogProbs(logp=total, entropy=mean_entropy)


def coupled_plan(
    t: torch.Tensor, mask: torch.Tensor, maskable: torch.Tensor, loss_mask: torch.Tensor
) -> MaskPlan:
    """The complementary pair for given masking rates ``t [B]`` and masks ``mask [B, L]``.

    Pass 1 masks ``mask`` (rate t) with weight ``1 / (2 t)``; pass 2 masks its complement within ``maskable``
    (rate 1 - t) with weight ``1 / (2 (1 - t))``. Every maskable token is masked in exactly one pass.

    Expectation (t ~ U[a, 1 - a], mask ~ Bernoulli(t) per maskable position): substituting u = 1 - t in the
    second pass (the t-law is symmetric and the complement is Bernoulli(1 - t)) shows both passes have the
    same expectation, so  E[est_k] = E_{t ~ U[a, 1-a]} E_M[ (1/t) M_k log p(o_k | x_M) ]  =: e_k, the token's
    term of the masked-diffusion ELBO (linear schedule) restricted to t in [a, 1 - a]. With a = 0,
    sum_k e_k is exactly the ELBO  log p(o) >= E_t E_M[(1/t) sum_k M_k log p(o_k | x_M)]  (infinite variance,
    hence the default truncation a = 0.2 of DiffuCoder). Note the factor 1/2: at t = 1/2 the weight is 1.
    """
    mask = mask.bool() & maskable.bool()
    complement = maskable.bool() & ~mask
    scored = loss_mask.bool()
    t_col = t.float().unsqueeze(-1)
    w_first = torch.where(mask & scored, 0.5 / t_col, torch.zeros_like(t_col))
    w_second = torch.where(complement & scored, 0.5 / (1.0 - t_col), torch.zeros_like(t_col))
    return MaskPlan(masks=torch.stack([mask, complement]), weights=torch.stack([w_first, w_second]))


def draw_coupled_masks(
    maskable: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    t_min: float = 0.2,
    t_max: float = 0.8,
    generator: torch.Generator | None = None,
) -> MaskPlan:
    """Draw t ~ U[t_min, t_max] per row and a Bernoulli(t) mask over ``maskable``: see :func:`coupled_plan`.

    Draw once per rollout batch and keep the returned tensors with the batch. The interval must be symmetric
    (``t_min + t_max == 1``) for the two passes to share one expectation, and inside (0, 1). Random numbers
    come from ``generator`` on its own device (a CPU generator works for CUDA inputs); the plan lives on
    ``maskable``'s device.
    """
    if not 0.0 <= t_min < t_max <= 1.0 or abs(t_min + t_max - 1.0) > 1e-6:
        raise ValueError(
            f"coupled masks need 0 <= t_min < t_max <= 1 with t_min + t_max == 1, got [{t_min}, {t_max}]"
        )
    if maskable.shape != loss_mask.shape or maskable.dim() != 2:
        raise ValueError("maskable and loss_mask must both be [B, L]")
    if bool((loss_mask.bool() & ~maskable.bool()).any()):
        raise ValueError("loss_mask must be a subset of maskable: a scored token has to be maskable")
    batch = maskable.shape[0]
    draw_device = generator.device if generator is not None else maskable.device
    u = torch.rand(batch, generator=generator, device=draw_device, dtype=torch.float64)
    t = (t_min + (t_max - t_min) * u).clamp(1e-6, 1 - 1e-6)
    mask = torch.rand(maskable.shape, generator=generator, device=draw_device,
                      dtype=torch.float64) < t[:, None]
    return coupled_plan(t.to(maskable.device), mask.to(maskable.device), maskable, loss_mask)


def trajectory_stage_ranks(commit_step: torch.Tensor, merge: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense per-row rank of each position's commit step, grouped ``merge`` ranks at a time.

    Returns ``ranks [B, L]`` (0-based, -1 where ``commit_step < 0``: never masked) and ``num_stages [B]``.
    Merging (TraceRL's ``shrink``) trades exactness for fewer distinct contexts: tokens of one merged stage
    are all scored with each other masked.
    """
    if merge < 1:
        raise ValueError(f"merge must be >= 1, got {merge}")
    ranks = torch.full_like(commit_step, -1, dtype=torch.long)
    num_stages = torch.zeros(commit_step.shape[0], dtype=torch.long, device=commit_step.device)
    for row in range(commit_step.shape[0]):
        committed = commit_step[row] >= 0
        if not bool(committed.any()):
            continue
        _, inverse = torch.unique(commit_step[row][committed], sorted=True, return_inverse=True)
        grouped = inverse // merge
        ranks[row, committed] = grouped
        num_stages[row] = int(grouped.max()) + 1
    return ranks, num_stages


def trajectory_plan(
    ranks: torch.Tensor,
    num_stages: torch.Tensor,
    loss_mask: torch.Tensor,
    stages: torch.Tensor,
    score: TrajectoryScore = "committed",
) -> MaskPlan:
    """Plan for chosen trajectory stages ``stages [D, B]`` (-1 = no pass for that row).

    Pass d masks every position committed at stage >= ``stages[d]``: the canvas exactly as the sampler saw it
    when it committed stage ``stages[d]``. Estimates are defined *given that a token is scored* (weight != 0);
    the GRPO loss averages over scored tokens, so no stage-sampling factor enters the per-token ratio.

    * ``score="committed"`` (default): score the tokens committed AT the stage, weight 1. For a scored token k
      of stage r_k, est_k = log p(o_k | x^(r_k)) exactly. Summed over all stages, sum_k est_k is the exact
      log-likelihood of the sampled tokens given the recorded commit order: the sampler drew the tokens of
      stage s independently from p(. | x^(s)) (a block/any-order autoregressive factorisation). The
      masked-diffusion ELBO is this quantity averaged over uniformly random orders; here the order is the one
      the rollout used, so the ratio is that of the probabilities that produced the sample (temperature 1,
      no top-p). Stages are drawn uniformly, so K_b * sum_k est_k (K_b stages, one draw) is an unbiased
      estimate of that log-likelihood; with all stages chosen (D >= K_b) every token is scored exactly.
    * ``score="masked"``: score every still-masked scored token; a token scored by c_k of the chosen passes
      gets weight 1 / c_k. Stages are a uniform random subset, so given that it is scored,
      E[est_k] = mean over s in {0..r_k} of log p(o_k | x^(s)): an ELBO-like average over the noisier
      contexts of the trajectory in which token k was still masked (more tokens per pass).
    """
    if score not in ("committed", "masked"):
        raise ValueError(f"score must be 'committed' or 'masked', got {score!r}")
    if bool((loss_mask.bool() & (ranks < 0)).any()):
        raise ValueError("loss_mask includes positions that were never masked (commit_step < 0)")
    if bool((stages >= num_stages.unsqueeze(0)).any()):
        raise ValueError("a chosen stage is beyond the row's number of stages")
    scored = loss_mask.bool()
    active = (stages >= 0).unsqueeze(-1)  # [D, B, 1]
    chosen = stages.unsqueeze(-1)  # [D, B, 1]
    masks = (ranks.unsqueeze(0) >= chosen) & (ranks.unsqueeze(0) >= 0) & active
    if score == "committed":
        hits = (ranks.unsqueeze(0) == chosen) & scored.unsqueeze(0) & active
        weights = hits.float()
    else:
        hits = masks & scored.unsqueeze(0)
        count = hits.sum(dim=0, keepdim=True).clamp(min=1).float()
        weights = hits.float() / count
    return MaskPlan(masks=masks, weights=weights)


def draw_trajectory_masks(
    commit_step: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    num_draws: int = 1,
    merge: int = 1,
    score: TrajectoryScore = "committed",
    generator: torch.Generator | None = None,
) -> MaskPlan:
    """Draw ``num_draws`` stages per row (uniform, without replacement) of the lockstep commit trace.

    ``commit_step [B, L]`` is the step at which each completion position was committed (-1: never masked,
    e.g. fixed R/A delimiters); ties are tokens committed together. See :func:`trajectory_plan` for what the
    estimate means. Draw once per rollout batch, like :func:`draw_coupled_masks`.
    """
    if num_draws < 1:
        raise ValueError(f"num_draws must be >= 1, got {num_draws}")
    if commit_step.shape != loss_mask.shape or commit_step.dim() != 2:
        raise ValueError("commit_step and loss_mask must both be [B, L]")
    ranks, num_stages = trajectory_stage_ranks(commit_step, merge)
    stages = torch.full((num_draws, commit_step.shape[0]), -1, dtype=torch.long, device=commit_step.device)
    for row, count in enumerate(num_stages.tolist()):
        if count == 0:
            continue
        picked = torch.randperm(count, generator=generator)[: min(num_draws, count)]
        stages[: picked.numel(), row] = picked.to(stages.device)
    return trajectory_plan(ranks, num_stages, loss_mask, stages, score)


def trajectory_inexact_reasons(lockstep: object, *, vocab_ban: bool) -> list[str]:
    """Why :func:`draw_trajectory_masks` estimates would NOT equal the log-probs the sampler drew with.

    ``lockstep`` is a :class:`decoding.lockstep.LockstepCfg` (the rollout's settings, temperature and
    top-p/top-k included); ``vocab_ban``: the rollout passed ``valid_vocab_size`` (the Dream rollout server
    always does). The estimate replays each stage with a fresh full forward and scores ``log_softmax`` over
    the whole vocabulary at temperature 1; it is exact only when the sampler drew every scored token from
    exactly that distribution on exactly that canvas (``docs/rl.md``, Trajectory-consistent estimator). Empty
    list = exact, up to the end-of-text guard's rare stuck-frontier fallback (a greedy, not sampled, token)
    and float rounding.
    """
    reasons = []
    if getattr(lockstep, "use_cache", False):
        reasons.append("use_cache=true (the sampler reused a stale prompt K/V; measured 0.16-0.18 nats/token "
                       "off)")
    if vocab_ban:
        reasons.append("the vocabulary ban (the sampler renormalised over the tokenizer's ids without the "
                       "mask id)")
    top_p, top_k = getattr(lockstep, "top_p", None), getattr(lockstep, "top_k", None)
    if (top_p is not None and top_p < 1.0) or (top_k is not None and top_k > 0):
        reasons.append(f"top_p={top_p} / top_k={top_k} (the sampler drew from a truncated distribution)")
    if float(getattr(lockstep, "temperature", 1.0)) != 1.0:
        reasons.append(f"temperature={getattr(lockstep, 'temperature', None)} (the estimator scores "
                       "temperature 1)")
    if getattr(lockstep, "eos_penalty", 0.0):
        reasons.append("eos_penalty (the sampler shifted the end-of-text logit)")
    if getattr(lockstep, "early_exit", None) is not None:
        reasons.append("early_exit (bulk commits from an earlier forward's proposals)")
    return reasons
