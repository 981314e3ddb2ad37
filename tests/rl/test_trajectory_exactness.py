"""Where the trajectory-consistent estimator is exact, and the recipe check that keeps it out of training.

Replaying every stage of a lockstep rollout's commit order scores each token in the context the sampler used;
that equals the log-probability the sampler drew the token with exactly when
:func:`rl.logprob.trajectory_inexact_reasons` finds nothing — and not with a prompt K/V cache or a vocabulary
ban, which the Dream rollout server always applies (so every recipe refuses
``lockstep.estimator.name=trajectory``).
"""

from __future__ import annotations

import pytest
import torch

from decoding.lockstep import LockstepCfg, lockstep_sample
from launch.recipes import RecipeError, recipe_names
from launch.train_grpo import compose_recipe
from rl.logprob import completion_loss_mask, draw_trajectory_masks, masked_logprob, trajectory_inexact_reasons
from rl.verl.config import estimator_config

EOS_ID, MASK_ID = 14, 15  # the tiny Dream of tests/rl/conftest.py

EXACT = dict(mode="gauss_seidel", r_len=4, a_len=5, tau_r=0.3, tau_a=0.3, temperature=1.0, eos_guard=False)


def _replay_error(model, cfg: LockstepCfg, valid_vocab_size: int | None = None) -> float:
    """Largest |estimate - log(sampler's probability)| over the scored tokens of a 4-row rollout."""
    prompts = torch.tensor([[3, 7, 1], [5, 2, 9], [8, 8, 4], [1, 6, 2]])
    result = lockstep_sample(model, prompts, None, cfg, delimiter_ids=[13], mask_token_id=MASK_ID,
                             eos_token_id=EOS_ID, valid_vocab_size=valid_vocab_size,
                             generator=torch.Generator().manual_seed(0))
    start = prompts.shape[1]
    order, completion = result.commit_nfe[:, start:], result.sequences[:, start:]
    scored = completion_loss_mask(completion, EOS_ID, order >= 0)
    plan = draw_trajectory_masks(order, scored, num_draws=64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        estimate = masked_logprob(model, result.sequences, None, plan, MASK_ID).logp
    sampler = result.commit_prob[:, start:].log()
    return float((estimate[scored] - sampler[scored]).abs().max())


def test_exact_where_the_check_finds_nothing(tiny_dream) -> None:
    cfg = LockstepCfg(**EXACT)
    assert trajectory_inexact_reasons(cfg, vocab_ban=False) == []
    assert _replay_error(tiny_dream, cfg) < 1e-5


@pytest.mark.parametrize("change,vocab,reason", [
    ({"use_cache": True}, None, "use_cache"),
    ({}, 12, "vocabulary ban"),
    ({"top_p": 0.5}, None, "top_p"),
])
def test_not_exact_where_the_check_says_so(tiny_dream, change: dict, vocab: int | None, reason: str) -> None:
    cfg = LockstepCfg(**{**EXACT, **change})
    reasons = trajectory_inexact_reasons(cfg, vocab_ban=vocab is not None)
    assert len(reasons) == 1 and reason in reasons[0]
    assert _replay_error(tiny_dream, cfg, valid_vocab_size=vocab) > 1e-3


@pytest.mark.parametrize("recipe", recipe_names("grpo"))
def test_every_recipe_refuses_the_trajectory_estimator_with_its_reasons(recipe: str) -> None:
    cfg = compose_recipe(recipe, ["lockstep.estimator.name=trajectory"])
    with pytest.raises(RecipeError, match="vocabulary ban") as error:
        estimator_config(cfg)
    message = str(error.value)
    assert "use_cache=true" in message and "Use name=coupled" in message and "\n" not in message
    if float(cfg.actor_rollout_ref.rollout.top_p) < 1.0:
        assert "top_p=0.95" in message
