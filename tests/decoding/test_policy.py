"""Commit policy primitives on exact small cases (threshold, cap, top-1 fallback, schedule, EOS guard)."""

from __future__ import annotations

import math

import pytest
import torch

from decoding.policy import (
    CommitRule,
    decide_block,
    end_guard,
    fill_cap,
    raw_threshold,
    schedule_counts,
    select_top,
    tail_after_end,
    threshold_counts,
)

MASK = 99


def peaked_logits(tokens: list[int], probs: list[float], vocab: int = 8) -> torch.Tensor:
    """Logits [1, W, vocab] whose softmax puts ``probs[i]`` on ``tokens[i]`` and spreads the rest evenly."""
    rows = []
    for tok, p in zip(tokens, probs):
        row = torch.full((vocab,), math.log((1 - p) / (vocab - 1)))
        row[tok] = math.log(p)
        rows.append(row)
    return torch.stack(rows)[None]


def test_fill_cap_and_threshold_counts_exact() -> None:
    assert fill_cap(torch.tensor([0, 1, 3, 10]), 0.5).tolist() == [0, 1, 1, 5]
    score = torch.tensor([[0.95, 0.5, 0.92, 0.99], [0.1, 0.2, 0.3, 0.4], [0.95, 0.95, 0.95, 0.95]])
    cand = torch.tensor([[True, True, True, True], [True, True, False, False], [False] * 4])
    counts = threshold_counts(score, cand, 0.9, cap=torch.tensor([2, 4, 4]))
    assert counts.tolist() == [2, 1, 0]  # capped at 2; top-1 fallback; no candidate -> nothing


def test_select_top_picks_highest_candidates() -> None:
    score = torch.tensor([[0.3, 0.9, 0.8, 0.95], [0.5, 0.6, 0.7, 0.1]])
    cand = torch.tensor([[True, True, True, False], [True, True, True, True]])
    commit = select_top(score, cand, torch.tensor([2, 0]))
    assert commit.tolist() == [[False, True, True, False], [False] * 4]


def test_schedule_counts_match_dream_float32_rule() -> None:
    n = torch.tensor([8, 3, 0])
    # timesteps = linspace(1, 1e-3, 5): step 0 keeps s/t = 0.75025 -> int(8 * 0.24975) = 1,
    # int(3 * 0.24975) = 0
    assert schedule_counts(n, 0, 4).tolist() == [1, 0, 0]
    assert schedule_counts(n, 3, 4).tolist() == [8, 3, 0]  # last step: everything left
    t = torch.linspace(1, 1e-3, 5)
    assert schedule_counts(n, 1, 4).tolist() == (n.float() * (1 - t[2] / t[1])).long().tolist()


def test_raw_threshold_scales() -> None:
    assert raw_threshold(0.9, "maskgit_plus") == 0.9
    assert raw_threshold(0.5, "entropy") == pytest.approx(math.log(0.5))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        raw_threshold(1.5, "maskgit_plus")


def test_end_guard_allows_end_only_at_frontier() -> None:
    eos = torch.tensor([7])
    masked = torch.tensor([[False, True, True, True], [True, True, True, True]])
    x0 = torch.tensor([[0, 7, 7, 3], [7, 7, 7, 7]])
    logits = torch.zeros(2, 4, 8)
    logits[1, 0, 5] = 3.0  # row 1: best non-end token at the frontier is 5
    cand, x0_out = end_guard(x0, masked, logits, eos, min_frontier=1)
    # row 0: frontier = 1 >= min 1 -> the end there is allowed; the end at 2 is not; the content at 3 is
    assert cand[0].tolist() == [False, True, False, True]
    # row 1: everything predicts the end, frontier 0 < min 1 -> greedy non-end token forced at the frontier
    assert cand[1].tolist() == [True, False, False, False]
    assert x0_out[1, 0].item() == 5 and torch.equal(x0_out[0], x0[0])


def test_tail_after_end_pads_masked_suffix_only() -> None:
    x = torch.tensor([[1, 7, MASK, 4, MASK, MASK], [1, MASK, MASK, MASK, MASK, MASK]])
    ended = torch.tensor([[True, False, False], [False, False, False]])  # window [1, 4): the end at 1
    tail = tail_after_end(x, ended, 1, 6, MASK)
    assert tail.tolist() == [[False, True, False, True, True], [False] * 5]


def test_decide_block_threshold_cap_and_fallback() -> None:
    x = torch.tensor([[5, MASK, MASK, MASK, 2]])
    logits = peaked_logits([1, 2, 3], [0.95, 0.5, 0.93])
    dec = decide_block(x, logits, 1, 4, CommitRule(threshold=0.9), MASK)
    assert dec.commit.tolist() == [[True, False, True]] and dec.x0.tolist() == [[1, 2, 3]]
    capped = decide_block(x, logits, 1, 4, CommitRule(threshold=0.9, max_fill_frac=0.34), MASK)
    assert capped.commit.tolist() == [[True, False, False]]  # cap = floor(3 * 0.34) = 1, the most confident
    low = decide_block(x, peaked_logits([1, 2, 3], [0.3, 0.5, 0.4]), 1, 4, CommitRule(threshold=0.9), MASK)
    assert low.commit.tolist() == [[False, True, False]]  # nothing clears tau: top-1 fallback
    assert torch.allclose(low.prob[0], torch.tensor([0.3, 0.5, 0.4]))


def test_decide_block_forced_first_and_entropy_scale() -> None:
    x = torch.tensor([[5, MASK, MASK]])
    logits = peaked_logits([1, 2], [0.2, 0.99])
    dec = decide_block(x, logits, 1, 3, CommitRule(threshold=1.0), MASK, force_first=True)
    assert dec.commit.tolist() == [[True, False]] and dec.prob[0, 0].item() == pytest.approx(0.2)
    both = decide_block(x, logits, 1, 3, CommitRule(threshold=0.9), MASK, force_first=True)
    assert both.commit.tolist() == [[True, True]]  # the forced start plus the position over tau
    ent = decide_block(x, logits, 1, 3, CommitRule(alg="entropy", threshold=0.9), MASK)
    assert ent.commit.tolist() == [[False, True]]
    p = torch.softmax(logits[0, 1], -1)
    assert ent.prob[0, 1].item() == pytest.approx(math.exp((p * torch.log(p + 1e-10)).sum().item()), rel=1e-5)
