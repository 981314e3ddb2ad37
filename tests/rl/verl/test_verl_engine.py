"""Dream engine layout and coupling: jagged verl micro-batches <-> dense estimator batches (no Ray, no
verl)."""

from __future__ import annotations

import pytest
import torch

from rl.logprob import masked_logprob
from rl.verl.engine import (
    EstimatorConfig,
    build_dense_batch,
    draw_row_plans,
    row_seed,
    scatter_to_jagged,
)

EOS_ID = 14  # tiny Dream of tests/rl/conftest.py: pad = eos = 14, mask = 15
MASK_ID = 15


def _rows() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    prompts = [torch.tensor([1, 2, 3]), torch.tensor([4, 5]), torch.tensor([6, 7, 8, 9])]
    responses = [torch.tensor([10, 11]), torch.tensor([12, 13, 3, EOS_ID]), torch.tensor([2])]
    return prompts, responses


def test_dense_batch_right_aligns_responses_and_marks_them() -> None:
    prompts, responses = _rows()
    ids, mask, positions, window = build_dense_batch(prompts, responses, pad_id=0)
    assert window == 4
    assert ids.tolist() == [[0, 1, 2, 3, 10, 11], [4, 5, 12, 13, 3, EOS_ID], [0, 6, 7, 8, 9, 2]]
    assert mask.tolist() == [[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]]
    assert positions.tolist() == [[False, False, True, True], [True, True, True, True],
                                  [False, False, False, True]]


def test_scatter_puts_token_k_at_slot_prompt_len_plus_k_minus_1() -> None:
    prompts, responses = _rows()
    values = torch.tensor([[0.0, 0.0, 1.0, 2.0], [3.0, 4.0, 5.0, 6.0], [0.0, 0.0, 0.0, 7.0]])
    nested = scatter_to_jagged(values, [3, 2, 4], [2, 4, 1])
    assert [t.tolist() for t in nested.unbind()] == [
        [0.0, 0.0, 1.0, 2.0, 0.0],
        [0.0, 3.0, 4.0, 5.0, 6.0, 0.0],
        [0.0, 0.0, 0.0, 7.0, 0.0],
    ]


def test_scatter_keeps_gradients() -> None:
    values = torch.ones(1, 2, requires_grad=True)
    nested = scatter_to_jagged(values * 3.0, [2], [2])
    nested.values().sum().backward()
    assert values.grad.tolist() == [[3.0, 3.0]]


def test_row_masks_depend_only_on_the_row() -> None:
    """Old/new/ref passes see the same masks even when verl regroups rows into other micro-batches."""
    prompts, responses = _rows()
    config = EstimatorConfig(seed=3)
    _, _, positions, _ = build_dense_batch(prompts, responses, pad_id=0)
    full = draw_row_plans(prompts, responses, positions, config)
    _, _, single_positions, _ = build_dense_batch(prompts[1:2], responses[1:2], pad_id=0)
    single = draw_row_plans(prompts[1:2], responses[1:2], single_positions, config)
    assert torch.equal(full.masks[:, 1], single.masks[:, 0])
    assert torch.equal(full.weights[:, 1], single.weights[:, 0])
    # complementary pair over exactly the response tokens; prompt tokens in the window are never masked
    assert torch.equal(full.masks[0] | full.masks[1], positions)
    assert not bool((full.masks[0] & full.masks[1]).any())
    assert row_seed(prompts[0], responses[0], 3) != row_seed(prompts[0], responses[0], 4)


def test_delimiter_is_never_masked_and_runs_after_a_stop_are_context_only() -> None:
    """The lockstep delimiter (``fixed_start``) stays visible in both coupled passes and carries no weight;
    tokens outside the scored mask (runs after a stop) are masked in exactly one pass like any generated
    token, but carry no weight either; a response without the delimiter where the layout puts it is
    refused."""
    prompts, responses = _rows()
    responses = [torch.tensor([10, 7, 8, 11]), torch.tensor([12, 7, 8, 3]), torch.tensor([2, 7, 8, EOS_ID])]
    config = EstimatorConfig(seed=3, fixed_start=1,
                             fixed_text="unused here: fixed_ids are the delimiter's ids")
    _, _, positions, window = build_dense_batch(prompts, responses, pad_id=0)
    scored = [torch.tensor([1, 0, 0, 1]), torch.tensor([1, 0, 0, 1]), torch.tensor([1, 0, 0, 0])]
    plan = draw_row_plans(prompts, responses, positions, config, scored, fixed_ids=[7, 8])
    fixed = torch.zeros(3, window, dtype=torch.bool)
    fixed[:, 1:3] = True
    assert not bool(plan.masks[:, fixed].any()) and not bool((plan.weights[:, fixed] != 0).any())
    # the EOS run of row 2 is masked ...
    assert torch.equal(plan.masks[0] | plan.masks[1], positions & ~fixed)
    assert not bool((plan.weights[:, 2, 3] != 0).any())  # ... but never scored
    assert torch.equal((plan.weights != 0).any(0), torch.stack(scored).bool())
    with pytest.raises(ValueError, match="response_mask has 3 entries"):
        draw_row_plans(prompts, responses, positions, config, [scored[0], torch.ones(3), scored[2]],
                       fixed_ids=[7, 8])
    with pytest.raises(ValueError, match="not the lockstep delimiter"):
        draw_row_plans(prompts, responses, positions, config, scored, fixed_ids=[7, 9])


def test_masks_are_fresh_every_step_and_identical_within_one() -> None:
    """The global step salts the masks: a row scored again at a later step gets new estimator noise, while
    every pass of one step (old policy, reference, update: each calls draw_row_plans with that step) sees the
    same."""
    prompts, responses = _rows()
    config = EstimatorConfig(seed=3)
    _, _, positions, _ = build_dense_batch(prompts, responses, pad_id=0)
    plans = {step: draw_row_plans(prompts, responses, positions, config, step=step) for step in range(1, 9)}
    again = draw_row_plans(prompts, responses, positions, config, step=4)
    assert torch.equal(plans[4].masks, again.masks) and torch.equal(plans[4].weights, again.weights)
    # row 1: 4 tokens, 16 possible masks
    distinct = {tuple(plans[step].masks[0, 1].tolist()) for step in plans}
    assert len(distinct) > 3
    assert len({float(plans[step].weights.max()) for step in plans}) == len(plans)  # a fresh t every step
    assert row_seed(prompts[0], responses[0], 3, step=1) != row_seed(prompts[0], responses[0], 3, step=2)


def test_dense_estimate_matches_each_row_alone(tiny_dream) -> None:
    """Left padding and shorter responses in a micro-batch do not change a row's per-token estimate."""
    prompts, responses = _rows()
    config = EstimatorConfig(seed=0)
    ids, mask, positions, _ = build_dense_batch(prompts, responses, pad_id=EOS_ID)
    plan = draw_row_plans(prompts, responses, positions, config)
    with torch.no_grad():
        batched = masked_logprob(tiny_dream, ids, mask, plan, MASK_ID).logp
        jagged = scatter_to_jagged(batched, [3, 2, 4], [2, 4, 1])
        for row, (prompt, response) in enumerate(zip(prompts, responses)):
            row_ids, row_mask, row_positions, _ = build_dense_batch([prompt], [response], pad_id=EOS_ID)
            row_plan = draw_row_plans([prompt], [response], row_positions, config)
            alone = masked_logprob(tiny_dream, row_ids, row_mask, row_plan, MASK_ID).logp[0]
            slots = jagged.unbind()[row][len(prompt) - 1: len(prompt) - 1 + len(response)]
            torch.testing.assert_close(slots, alone, rtol=1e-4, atol=1e-5)
            assert bool((alone != 0).all())  # every response token is scored in one of the two passes
