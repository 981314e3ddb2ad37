"""Commit policy of diffusion decoding: which masked positions to fill this step, from their logits.

Shared by the block fast path (:mod:`decoding.fast`) and the lockstep R/A decoder (:mod:`decoding.lockstep`),
on top of the sampling core of ``diffusion_generate`` (:func:`decoding.sampling.sample_tokens`):

* threshold rule (Fast-dLLM / D2F): commit every masked position whose probability-scale confidence clears
  ``threshold``, at most ``max_fill_frac`` of the block's masks, and always the most confident one (so a block
  of ``W`` positions finishes within ``W`` steps);
* Dream's linear schedule count (:func:`schedule_counts`), for equivalence with the reference sampler;
* the end-of-text guard (:func:`end_guard`) against trailing EOS floods, and :func:`tail_after_end`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .sampling import sample_masked_rows

ALGS = ("maskgit_plus", "topk_margin", "entropy")


# --------------------------------------------------------------------------------------------- scoring
def raw_threshold(tau: float, alg: str) -> float:
    """A threshold ``tau`` in (0, 1] on the score scale of ``alg`` (entropy: ``exp(-H) >= tau`` i.e.
    ``-H >= log tau``).

    Keeping every threshold on a probability-like scale lets one ``tau`` mean "about this sure" for every alg.
    """
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"thresholds live in (0, 1], got {tau}")
    return math.log(tau) if alg == "entropy" else tau


def prob_scale(score: torch.Tensor, alg: str) -> torch.Tensor:
    """Map a score of ``alg`` to (0, 1] (inverse of :func:`raw_threshold`), for traces and metrics."""
    return score.exp() if alg == "entropy" else score


# --------------------------------------------------------------------------------------------- policy
@dataclass(frozen=True)
class CommitRule:
    """How one block decides its commits from its logits (shared by the fast path and the lockstep decoder).

    ``threshold`` is on the probability scale (see :func:`raw_threshold`); ``max_fill_frac`` caps the commits
    of a step to that fraction of the block's masked positions (at least 1); ``end_ids`` non-empty turns on
    the end-of-text guard (:func:`end_guard`) with ``min_content`` generated tokens before an end token;
    ``eos_penalty`` is subtracted from the logit of ``penalty_id`` before scoring (Dream-Coder's knob);
    ``valid_vocab_size`` (opt-in) bans the mask id and ids beyond the tokenizer (:func:`invalid_token_mask`).
    """

    alg: str = "maskgit_plus"
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    threshold: float = 0.9
    max_fill_frac: float = 1.0
    end_ids: tuple[int, ...] = ()
    min_content: int = 0
    eos_penalty: float = 0.0
    penalty_id: int | None = None
    valid_vocab_size: int | None = None

    def __post_init__(self) -> None:
        if self.alg not in ALGS:
            raise ValueError(f"alg must be one of {ALGS}, got {self.alg!r}")
        raw_threshold(self.threshold, self.alg)
        if not 0.0 < self.max_fill_frac <= 1.0:
            raise ValueError(f"max_fill_frac must be in (0, 1], got {self.max_fill_frac}")
        if self.eos_penalty and self.penalty_id is None:
            raise ValueError("eos_penalty needs penalty_id (the end-of-text id)")


@dataclass
class BlockDecision:
    """One step of one block ``[lo, hi)``: ``commit`` (bool), ``x0`` (proposed ids), ``prob``
    (probability-scale confidence, -inf where not masked) and ``ended`` (end token committed), all
    ``[B, hi - lo]``."""

    commit: torch.Tensor
    x0: torch.Tensor
    prob: torch.Tensor
    ended: torch.Tensor


def fill_cap(n_masked: torch.Tensor, max_fill_frac: float) -> torch.Tensor:
    """Most commits allowed in a block this step: ``max(1, floor(max_fill_frac * n_masked))`` (0 if none
    masked)."""
    cap = torch.floor(n_masked.to(torch.float64) * max_fill_frac).long().clamp(min=1)
    return torch.where(n_masked > 0, cap, torch.zeros_like(cap))


def threshold_counts(
    score: torch.Tensor, candidates: torch.Tensor, threshold: float, cap: torch.Tensor
) -> torch.Tensor:
    """Per-row commit count: candidates with ``score >= threshold``, at most ``cap``, at least 1 if any
    candidate."""
    n_over = (candidates & (score >= threshold)).sum(-1)
    n = torch.minimum(n_over, cap)
    return torch.where(candidates.any(-1), n.clamp(min=1), torch.zeros_like(n))


def schedule_counts(n_masked: torch.Tensor, step: int, steps: int, eps: float = 1e-3) -> torch.Tensor:
    """Dream's linear remasking count per row: ``int(n_masked * (1 - s/t))``, all remaining at the last step.

    ``t, s`` = ``linspace(1, eps, steps + 1)[step], [step + 1]`` in float32, as the reference sampler.
    """
    if step >= steps - 1:
        return n_masked.clone()
    timesteps = torch.linspace(1, eps, steps + 1, device=n_masked.device)
    t, s = timesteps[step], timesteps[step + 1]
    return (n_masked.to(torch.float32) * (1 - s / t)).long()


def select_top(score: torch.Tensor, candidates: torch.Tensor, n_commit: torch.Tensor) -> torch.Tensor:
    """Bool mask of the ``n_commit[b]`` highest-score candidates of each row of ``score [B, W]``."""
    commit = torch.zeros_like(candidates)
    k_max = int(n_commit.max().item()) if n_commit.numel() else 0
    if k_max == 0:
        return commit
    ranked = score.masked_fill(~candidates, float("-inf"))
    idx = ranked.topk(k_max, dim=-1).indices
    keep = torch.arange(k_max, device=score.device)[None, :] < n_commit[:, None]
    commit.scatter_(1, idx, keep)
    return commit & candidates


def end_guard(
    x0: torch.Tensor,
    masked: torch.Tensor,
    logits: torch.Tensor,
    end_ids: torch.Tensor,
    min_frontier: int = 0,
    adjust: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """End-of-text guard for one block: an end token may only be committed at the block's *frontier*.

    Why: in threshold decoding trailing ``<|endoftext|>`` gets confident early and floods the tail, truncating
    the answer. The frontier is the leftmost masked position of the row's block; an end prediction there is
    allowed only if the frontier index (within the block) is ``>= min_frontier`` (minimum content). Masked
    positions predicting an end token elsewhere are not candidates this step. A row with masks but no
    candidate gets its frontier decided greedily among non-end tokens (progress guarantee: it is then the
    row's only candidate, so the top-1 rule commits it; its score stays the position's confidence).

    Args: ``x0``, ``masked`` ``[B, W]``; ``logits [B, W, V]`` (the block's shifted logits);
    ``end_ids`` 1-D ids; ``adjust``: the in-place penalty/ban the sampler applied to its copy of the logits.
    Returns ``(candidates, x0)`` (x0 changed only at fallback frontiers).
    """
    width = masked.shape[1]
    col = torch.arange(width, device=masked.device)[None, :]
    frontier = torch.where(masked, col, width).min(-1).values
    is_end = torch.isin(x0, end_ids)
    end_ok = (col == frontier[:, None]) & (frontier >= min_frontier)[:, None]
    candidates = masked & (~is_end | end_ok)
    stuck = masked.any(-1) & ~candidates.any(-1)
    if bool(stuck.any()):
        rows = stuck.nonzero().squeeze(-1)
        cols = frontier[rows]
        front_logits = logits[rows, cols].clone()
        front_logits = (adjust(front_logits) if adjust is not None else front_logits).float()
        front_logits[:, end_ids] = float("-inf")
        x0, candidates = x0.clone(), candidates.clone()
        x0[rows, cols] = front_logits.argmax(-1).to(x0.dtype)
        candidates[rows, cols] = True
    return candidates, x0


def tail_after_end(x: torch.Tensor, ended: torch.Tensor, lo: int, region_end: int,
                   mask_token_id: int) -> torch.Tensor:
    """Masked positions of ``x[:, lo:region_end]`` right of the first end token in ``ended [B, W]`` (rel. to
    lo).

    Text after end-of-text is discarded by every Dream decoder, so the guard pads it at once (the caller
    writes the pad id and records the step) instead of spending steps on out-of-distribution tokens.
    """
    width = region_end - lo
    first_end = torch.where(ended, torch.arange(ended.shape[1], device=x.device)[None, :],
                            width).min(-1).values
    col = torch.arange(width, device=x.device)[None, :]
    return (x[:, lo:region_end] == mask_token_id) & (col > first_end[:, None])


def _logit_adjustment(rule: CommitRule, mask_token_id: int, vocab: int
                      ) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """In-place edit of copied logit rows: the end-of-text penalty, then the vocabulary ban
    (:func:`decoding.sampling.invalid_token_mask`'s values), or None when the rule asks for neither."""
    if not rule.eos_penalty and rule.valid_vocab_size is None:
        return None

    def adjust(rows: torch.Tensor) -> torch.Tensor:
        if rule.eos_penalty:
            rows[..., rule.penalty_id] -= rule.eos_penalty
        if rule.valid_vocab_size is not None:
            if rule.valid_vocab_size < vocab:
                rows[..., rule.valid_vocab_size:] = float("-inf")
            if mask_token_id < vocab:
                rows[..., mask_token_id] = float("-inf")
        return rows

    return adjust


def decide_block(
    x: torch.Tensor,
    logits: torch.Tensor,
    lo: int,
    hi: int,
    rule: CommitRule,
    mask_token_id: int,
    *,
    n_commit: torch.Tensor | None = None,
    commit_all: bool = False,
    force_first: bool = False,
    content_offset: int = 0,
    generator: torch.Generator | None = None,
) -> BlockDecision:
    """Score the masked positions of ``x[:, lo:hi]`` from ``logits [B, hi-lo, V]`` and pick this step's
    commits.

    Default: threshold rule of ``rule`` (cap + top-1 fallback). ``n_commit [B]`` overrides the count (schedule
    policy: top-n by score, no threshold); ``commit_all`` commits every masked position (last step);
    ``force_first`` always commits position ``lo`` if masked (Fast-dLLM block start). ``content_offset`` =
    tokens generated before ``lo`` (for ``rule.min_content``); ``generator`` drives token sampling. Never
    touches unmasked positions.
    """
    masked = x[:, lo:hi] == mask_token_id
    x0 = torch.full_like(x[:, lo:hi], mask_token_id)
    score = torch.full(masked.shape, float("-inf"), device=x.device)
    adjust = _logit_adjustment(rule, mask_token_id, logits.shape[-1])
    if bool(masked.any()):
        conf, tok = sample_masked_rows(logits, masked, adjust, generator, temperature=rule.temperature,
                                       top_p=rule.top_p, top_k=rule.top_k,
                                       margin_confidence=rule.alg == "topk_margin",
                                       neg_entropy=rule.alg == "entropy")
        x0[masked] = tok.to(x0.dtype)
        score[masked] = conf.float()
    candidates = masked
    if rule.end_ids and not commit_all and n_commit is None:
        end_ids = torch.tensor(rule.end_ids, device=x.device)
        candidates, x0 = end_guard(x0, masked, logits, end_ids, max(0, rule.min_content - content_offset),
                                   adjust)
    prob = prob_scale(score, rule.alg).masked_fill(~masked, float("-inf"))
    if force_first:  # clears any threshold and outranks everything; its recorded prob stays the real one
        score = score.clone()
        score[:, 0] = torch.where(candidates[:, 0], float("inf"), score[:, 0])
    if commit_all:
        n_commit = masked.sum(-1)
    elif n_commit is None:
        cap = fill_cap(masked.sum(-1), rule.max_fill_frac)
        n_commit = threshold_counts(score, candidates, raw_threshold(rule.threshold, rule.alg), cap)
    commit = select_top(score, candidates, n_commit)
    ended = commit & torch.isin(x0, torch.tensor(rule.end_ids, device=x.device)) if rule.end_ids \
        else commit & False
    return BlockDecision(commit=commit, x0=x0, prob=prob, ended=ended)
