"""Exactness tests of the diffusion log-prob estimators on a tiny Dream (vocabulary 16, completion 3-4
tokens).

Expectations are computed exactly: every mask subset is enumerated with its probability, and the integral over
the masking rate t uses Gauss-Legendre nodes, which is exact here because P(mask | t) times the estimate is a
polynomial in t of degree <= L - 1. References are computed by independent code (direct forwards per subset,
closed-form Beta integrals, an incremental replay of the commit order).
"""

from __future__ import annotations

import itertools
from fractions import Fraction
from math import comb

import numpy as np
import pytest
import torch

from rl.logprob import (
    MaskPlan,
    completion_logprobs_from_logits,
    completion_loss_mask,
    coupled_plan,
    draw_coupled_masks,
    draw_trajectory_masks,
    masked_logprob,
    trajectory_plan,
    trajectory_stage_ranks,
)

EOS_ID = 14  # tiny Dream of conftest.py: pad = eos = 14, mask = 15
MASK_ID = 15

PROMPT = [3, 7, 1]


def _direct_logprobs(model, prompt: list[int], completion: list[int], masked: set[int]) -> list[float]:
    """log p(o_k | x) at every completion position k, for the canvas with ``masked`` positions masked."""
    noisy = [MASK_ID if k in masked else tok for k, tok in enumerate(completion)]
    ids = torch.tensor([prompt + noisy])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    out = []
    for k, tok in enumerate(completion):
        position = len(prompt) + k
        out.append(float(torch.log_softmax(logits[position - 1], dim=-1)[tok]))
    return out


def _beta_integral(a: Fraction, b: Fraction, p: int, q: int) -> Fraction:
    """Exact integral of t^p (1 - t)^q over [a, b] (binomial expansion)."""
    total = Fraction(0)
    for j in range(q + 1):
        coef = Fraction(comb(q, j) * (-1) ** j)
        total += coef * (b ** (p + j + 1) - a ** (p + j + 1)) / (p + j + 1)
    return total


def _exact_elbo(model, completion: list[int], loss: list[bool], t_min: Fraction, t_max: Fraction) -> float:
    """E_{t~U[a,b]} E_{M~Bern(t)} [(1/t) sum_{k scored} M_k log p(o_k | x_M)], summed in closed form."""
    length = len(completion)
    total = 0.0
    for size in range(1, length + 1):
        weight = _beta_integral(t_min, t_max, size - 1, length - size) / (t_max - t_min)
        for subset in itertools.combinations(range(length), size):
            logps = _direct_logprobs(model, PROMPT, completion, set(subset))
            total += float(weight) * sum(logps[k] for k in subset if loss[k])
    return total


def _coupled_expectation(model, completion: list[int], loss: list[bool], t_min: float, t_max: float) -> float:
    """E[sum_k est_k] of the coupled estimator, by enumerating all masks at Gauss-Legendre nodes of t."""
    length = len(completion)
    nodes, node_weights = np.polynomial.legendre.leggauss(length + 1)
    ts = t_min + (t_max - t_min) * (nodes + 1) / 2
    rows_t, rows_mask, rows_prob = [], [], []
    for t, w in zip(ts, node_weights):
        for bits in itertools.product([False, True], repeat=length):
            prob = np.prod([t if bit else 1 - t for bit in bits])
            rows_t.append(t)
            rows_mask.append(bits)
            rows_prob.append(w / 2 * prob)  # GL weight on [-1, 1] -> density of U[a, b]
    n = len(rows_t)
    t = torch.tensor(rows_t, dtype=torch.float64)
    mask = torch.tensor(rows_mask)
    maskable = torch.ones(n, length, dtype=torch.bool)
    loss_mask = torch.tensor([loss] * n)
    plan = coupled_plan(t, mask, maskable, loss_mask)
    ids = torch.tensor([PROMPT + completion] * n)
    with torch.no_grad():
        est = masked_logprob(model, ids, torch.ones_like(ids), plan, MASK_ID).logp.double()
    return float((est.sum(dim=1) * torch.tensor(rows_prob, dtype=torch.float64)).sum())


def test_logit_shift_hand_built() -> None:
    # 2 prompt + 3 completion tokens, vocabulary 4: logits row j strongly predicts token (j + 1) % 4.
    logits = torch.full((1, 5, 4), -3.0)
    for j in range(5):
        logits[0, j, (j + 1) % 4] = 3.0
    completion = torch.tensor([[2, 3, 1]])  # at absolute positions 2, 3, 4
    logp, entropy = completion_logprobs_from_logits(logits, completion, with_entropy=True)
    expected = torch.stack([torch.log_softmax(logits[0, j - 1], -1)[tok]
                            for j, tok in zip((2, 3, 4), (2, 3, 1))])
    torch.testing.assert_close(logp[0], expected)
    # Rows 1 and 2 predict tokens 2 and 3 (likely); row 3 predicts 0, not 1 (unlikely). Reading the logits
    # unshifted (rows 2, 3, 4 predicting 3, 0, 1) would give the opposite pattern.
    assert logp[0, 0] > -0.1 and logp[0, 1] > -0.1 and logp[0, 2] < -5.0
    rows = torch.log_softmax(logits[0, 1:4], dim=-1)
    assert entropy is not None
    torch.testing.assert_close(entropy[0], -(rows.exp() * rows).sum(dim=-1))
    with pytest.raises(ValueError, match="at least one prompt token"):
        completion_logprobs_from_logits(logits[:, :3], completion)


def test_completion_loss_mask_per_segment() -> None:
    e = EOS_ID
    # R segment [0..4], fixed delimiter at 5, A segment [6..9]; a never-EOS row, and a mid-EOS row.
    ids = torch.tensor(
        [
            [4, 5, e, e, e, 9, 6, e, e, e],
            [4, 5, 6, 7, 8, 9, 6, 7, 8, 2],
            [e, 5, e, 7, 8, 9, e, e, 8, 2],
        ]
    )
    maskable = torch.ones_like(ids, dtype=torch.bool)
    maskable[:, 5] = False
    got = completion_loss_mask(ids, EOS_ID, maskable)
    expected = torch.tensor(
        [
            [1, 1, 1, 0, 0, 0, 1, 1, 0, 0],
            [1, 1, 1, 1, 1, 0, 1, 1, 1, 1],
            [1, 0, 0, 0, 0, 0, 1, 0, 0, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(got, expected)
    strict = completion_loss_mask(ids, EOS_ID, maskable, keep_first_eos=False)
    assert torch.equal(strict, expected & (ids != EOS_ID))


def test_coupled_pair_covers_every_maskable_token_once() -> None:
    generator = torch.Generator().manual_seed(0)
    maskable = torch.rand(64, 12, generator=generator) > 0.2
    loss_mask = maskable & (torch.rand(64, 12, generator=generator) > 0.3)
    plan = draw_coupled_masks(maskable, loss_mask, generator=generator)
    first, second = plan.masks
    assert torch.equal(first | second, maskable)
    assert not bool((first & second).any())
    assert torch.equal((plan.weights != 0).any(dim=0), loss_mask)
    scored_weight = plan.weights.sum(dim=0)[loss_mask]
    assert bool((scored_weight >= 0.5 / 0.8 - 1e-6).all()) and bool((scored_weight <= 0.5 / 0.2 + 1e-6).all())
    with pytest.raises(ValueError, match="t_min \\+ t_max == 1"):
        draw_coupled_masks(maskable, loss_mask, t_min=0.1, t_max=0.8)
    with pytest.raises(ValueError, match="subset of maskable"):
        draw_coupled_masks(maskable & False, loss_mask)


@pytest.mark.parametrize("completion", [[2, 9, 5], [6, 1, 8, EOS_ID]])
def test_coupled_expectation_equals_exact_elbo(tiny_dream, completion: list[int]) -> None:
    """t ~ U(0, 1): the coupled estimate's expectation is the masked-diffusion ELBO of the scored tokens."""
    loss = completion_loss_mask(torch.tensor([completion]), EOS_ID, keep_first_eos=False)[0].tolist()
    expectation = _coupled_expectation(tiny_dream, completion, loss, 0.0, 1.0)
    exact = _exact_elbo(tiny_dream, completion, loss, Fraction(0), Fraction(1))
    assert expectation == pytest.approx(exact, rel=1e-5, abs=1e-5)
    # The ELBO differs from the naive "all masked" score, so the comparison has teeth.
    all_masked = sum(lp for lp, keep in zip(_direct_logprobs(tiny_dream, PROMPT, completion,
                                                             set(range(len(completion)))), loss) if keep)
    assert abs(exact - all_masked) > 1e-3


def test_coupled_truncated_t_expectation_equals_truncated_elbo(tiny_dream) -> None:
    completion = [2, 9, 5, 11]
    loss = [True] * 4
    expectation = _coupled_expectation(tiny_dream, completion, loss, 0.2, 0.8)
    exact = _exact_elbo(tiny_dream, completion, loss, Fraction(1, 5), Fraction(4, 5))
    assert expectation == pytest.approx(exact, rel=1e-5, abs=1e-5)


def test_same_plan_same_logprob_and_padding_invariance(tiny_dream) -> None:
    generator = torch.Generator().manual_seed(1)
    ids = torch.tensor([[EOS_ID, EOS_ID, 3, 7, 1, 2, 9, 5, 11], [4, 4, 3, 7, 1, 2, 9, 5, 11]])
    attention = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1], [1] * 9])
    loss = torch.ones(2, 4, dtype=torch.bool)
    plan = draw_coupled_masks(loss, loss, generator=generator)
    plan = MaskPlan(plan.masks[:, :1].expand(2, 2, 4).clone(), plan.weights[:, :1].expand(2, 2, 4).clone())
    with torch.no_grad():
        first = masked_logprob(tiny_dream, ids, attention, plan, MASK_ID, with_entropy=True)
        second = masked_logprob(tiny_dream, ids, attention, plan, MASK_ID)
        unpadded = masked_logprob(tiny_dream, ids[:1, 2:], attention[:1, 2:],
                                  plan.select(slice(0, 1)), MASK_ID)
    assert torch.equal(first.logp, second.logp)  # old == new on a shared plan: ratio exactly 1
    torch.testing.assert_close(first.logp[0], unpadded.logp[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(first.logp[0], first.logp[1])  # a different prompt changes the estimate
    assert first.entropy is not None and bool((first.entropy > 0).all())


# ---------------------------------------------------------------- trajectory estimator
E = EOS_ID
TRAJ_COMPLETION = [2, 9, 12, 5, E, E]
TRAJ_COMMIT = [0, 2, -1, 0, 1, 3]  # position 2 is a fixed delimiter; positions 0 and 3 committed together
TRAJ_LOSS = [True, True, False, True, True, False]  # the second EOS is the tail


def _replay(model, stages_to_score: str) -> dict[int, list[float]]:
    """Incremental replay: start from the masked canvas, reveal stage by stage; log p per token per stage."""
    canvas = [MASK_ID if c >= 0 else tok for tok, c in zip(TRAJ_COMPLETION, TRAJ_COMMIT)]
    seen: dict[int, list[float]] = {k: [] for k in range(len(canvas))}
    for stage in sorted({c for c in TRAJ_COMMIT if c >= 0}):
        masked = {k for k, tok in enumerate(canvas) if tok == MASK_ID}
        logps = _direct_logprobs(model, PROMPT, TRAJ_COMPLETION, masked)
        for k in masked:
            if stages_to_score == "masked" or TRAJ_COMMIT[k] == stage:
                seen[k].append(logps[k])
        for k, c in enumerate(TRAJ_COMMIT):
            if c == stage:
                canvas[k] = TRAJ_COMPLETION[k]
    return seen


def _trajectory_batch():
    commit = torch.tensor([TRAJ_COMMIT])
    loss = torch.tensor([TRAJ_LOSS])
    ids = torch.tensor([PROMPT + TRAJ_COMPLETION])
    return commit, loss, ids


def test_trajectory_ranks_and_merge() -> None:
    commit = torch.tensor([[5, 9, -1, 5, 7, 20], [-1, -1, -1, -1, -1, -1]])
    ranks, stages = trajectory_stage_ranks(commit)
    assert ranks.tolist() == [[0, 2, -1, 0, 1, 3], [-1] * 6] and stages.tolist() == [4, 0]
    merged, merged_stages = trajectory_stage_ranks(commit, merge=2)
    assert merged.tolist()[0] == [0, 1, -1, 0, 0, 1] and merged_stages.tolist() == [2, 0]


@pytest.mark.parametrize("score", ["committed", "masked"])
def test_trajectory_estimate_matches_replay(tiny_dream, score: str) -> None:
    commit, loss, ids = _trajectory_batch()
    ranks, num_stages = trajectory_stage_ranks(commit)
    reference = _replay(tiny_dream, score)
    # Enumerate every single-stage draw (uniform): collect each scored token's estimate.
    seen: dict[int, list[float]] = {k: [] for k in range(len(TRAJ_COMPLETION))}
    for stage in range(int(num_stages[0])):
        plan = trajectory_plan(ranks, num_stages, loss, torch.tensor([[stage]]), score)
        assert torch.equal(plan.masks[0, 0], (ranks[0] >= stage))
        with torch.no_grad():
            est = masked_logprob(tiny_dream, ids, torch.ones_like(ids), plan, MASK_ID).logp[0]
        for k in torch.nonzero(plan.weights[0, 0]).flatten().tolist():
            seen[k].append(float(est[k]))
    for k, keep in enumerate(TRAJ_LOSS):
        if not keep:
            assert seen[k] == []
            continue
        # committed: each token is scored at exactly its own stage, with its exact replay log-prob;
        # masked: conditional on being scored, the mean is the replay mean over stages <= its own.
        assert len(seen[k]) == len(reference[k])
        assert np.mean(seen[k]) == pytest.approx(np.mean(reference[k]), abs=1e-5)
    # All stages at once: a deterministic estimate equal to the replay's token-by-token values.
    full = draw_trajectory_masks(commit, loss, num_draws=10, score=score,
                                 generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        est = masked_logprob(tiny_dream, ids, torch.ones_like(ids), full, MASK_ID).logp[0]
    for k, keep in enumerate(TRAJ_LOSS):
        expected = np.mean(reference[k]) if keep else 0.0
        assert float(est[k]) == pytest.approx(expected, abs=1e-5)


def test_trajectory_rejects_scoring_fixed_positions() -> None:
    commit, loss, _ = _trajectory_batch()
    with pytest.raises(ValueError, match="never masked"):
        draw_trajectory_masks(commit, torch.ones_like(loss))


def test_trajectory_estimate_of_a_real_lockstep_rollout_is_the_sampler_probability(tiny_dream) -> None:
    """A Gauss-Seidel lockstep rollout (maskgit_plus, temperature 1, no cache, left-padded rows): replaying
    every stage of its commit order scores each token in the context the sampler drew it in, so the estimate
    is the log of the probability it was drawn with (``commit_prob``); the fixed delimiter is neither masked
    nor scored."""
    from decoding.lockstep import LockstepCfg, lockstep_sample
    from decoding.tokenizer import left_pad

    ids, attention = left_pad([[3, 7, 1], [5, 2]], EOS_ID, "cpu")
    ids, attention = ids.repeat_interleave(3, 0), attention.repeat_interleave(3, 0)
    cfg = LockstepCfg(mode="gauss_seidel", r_len=4, a_len=3, tau_r=0.3, tau_a=0.3, temperature=1.0,
                      eos_guard=False, use_cache=False)
    result = lockstep_sample(tiny_dream, ids, attention, cfg, delimiter_ids=(13,), mask_token_id=MASK_ID,
                             eos_token_id=EOS_ID, generator=torch.Generator().manual_seed(0))
    prompt_len = result.layout.prompt_len
    sequences = result.sequences
    assert sequences.shape == (6, 3 + 4 + 1 + 3) and sequences[:, prompt_len + 4].eq(13).all()
    commit = result.commit_nfe[:, prompt_len:]
    maskable = commit >= 0
    assert maskable[:, 4].eq(False).all() and int(maskable.sum()) == 6 * 7
    scored = completion_loss_mask(sequences[:, prompt_len:], EOS_ID, maskable)
    full_attention = torch.cat([attention, attention.new_ones(6, sequences.shape[1] - prompt_len)], 1)
    plan = draw_trajectory_masks(commit, scored, num_draws=64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        estimate = masked_logprob(tiny_dream, sequences, full_attention, plan, MASK_ID).logp
    expected = result.commit_prob[:, prompt_len:][scored].log()
    torch.testing.assert_close(estimate[scored], expected, atol=1e-5, rtol=1e-5)
