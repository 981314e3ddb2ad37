"""GRPO numerics on hand-computed cases, and a behavioural check of the inner-update loop on a tiny Dream."""

from __future__ import annotations

import math

import pytest
import torch

from rl.actor import ActorConfig, DreamActor, LoraSettings
from rl.grpo import (
    GRPOConfig,
    group_advantages,
    grpo_token_loss,
    grpo_update,
    informative_groups,
    k3_kl,
    make_grpo_batch,
)
from rl.logprob import MaskPlan, draw_coupled_masks, masked_logprob


def test_group_advantages_hand_computed() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 1.0])
    adv = group_advantages(rewards, group_size=4, eps=0.0)
    # group 1: mean 0.5, unbiased std sqrt(1/3); group 2: mean 0.625, unbiased std 0.25.
    s = 0.5 / math.sqrt(1.0 / 3.0)
    expected = torch.tensor([s, -s, -s, s, -0.5, -0.5, -0.5, 1.5])
    torch.testing.assert_close(adv, expected)
    centred = group_advantages(rewards, group_size=4, std_normalize=False)
    torch.testing.assert_close(centred, torch.tensor([0.5, -0.5, -0.5, 0.5, -0.125, -0.125, -0.125, 0.375]))
    with pytest.raises(ValueError, match="group size 3"):
        group_advantages(rewards, group_size=3)


def test_filtering_drops_all_equal_groups() -> None:
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    assert informative_groups(rewards, 3).tolist() == [False] * 3 + [True] * 3 + [False] * 3
    n, length = 9, 2
    ids = torch.arange(n * 4).view(n, 4)
    loss_mask = torch.ones(n, length, dtype=torch.bool)
    plan = MaskPlan(torch.ones(1, n, length, dtype=torch.bool), torch.ones(1, n, length))
    batch = make_grpo_batch(ids, torch.ones_like(ids), loss_mask, plan, rewards, 3, GRPOConfig())
    assert batch.num_rows == 3 and torch.equal(batch.input_ids, ids[3:6])
    assert batch.stats["filtered_fraction"] == pytest.approx(2 / 3)
    torch.testing.assert_close(batch.advantages, torch.tensor([-1.0, 2.0, -1.0]) / (math.sqrt(1 / 3) + 1e-6) / 3)
    kept = make_grpo_batch(ids, torch.ones_like(ids), loss_mask, plan, rewards, 3, GRPOConfig(filter_groups=False))
    assert kept.num_rows == 9 and kept.stats["filtered_fraction"] == 0.0


def test_clipped_token_loss_hand_computed() -> None:
    cfg = GRPOConfig(clip_eps_low=0.2, clip_eps_high=0.28)
    old = torch.zeros(2, 3)
    ratios = torch.tensor([[1.5, 1.1, 0.5], [0.5, 0.9, 1.5]])
    logp = ratios.log().clone().requires_grad_(True)
    advantages = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    loss, metrics = grpo_token_loss(logp, old, advantages, mask, cfg)
    # A=+1: min(r, clip(r)) = 1.28 (clipped high), 1.1, 0.5 (below 1-eps: unclipped for A>0)
    # A=-1: min(-r, -clip(r)) = -0.8 (clipped low), -0.9; the third token is masked out.
    assert float(loss.detach()) == pytest.approx(-(1.28 + 1.1 + 0.5 - 0.8 - 0.9) / 5)
    assert float(metrics["clip_high_sum"]) == 1.0 and float(metrics["clip_low_sum"]) == 1.0
    assert float(metrics["tokens"]) == 5.0
    assert float(metrics["ppo_kl_sum"]) == pytest.approx(-float((ratios.log() * mask).sum()), abs=1e-6)
    loss.backward()
    # Clipped tokens get no gradient; unclipped ones -A * r / n.
    expected_grad = torch.tensor([[0.0, -1.1 / 5, -0.5 / 5], [0.0, 0.9 / 5, 0.0]])
    torch.testing.assert_close(logp.grad, expected_grad)


def test_k3_kl_and_kl_term() -> None:
    logp = torch.tensor([[0.0, 0.0, 0.0]])
    ref = torch.tensor([[0.0, math.log(2.0), -math.log(2.0)]])
    torch.testing.assert_close(k3_kl(logp, ref), torch.tensor([[0.0, 1.0 - math.log(2.0), 0.5 + math.log(2.0) - 1.0]]))
    cfg = GRPOConfig(kl_coef=0.1)
    mask = torch.ones(1, 3, dtype=torch.bool)
    with_kl, metrics = grpo_token_loss(logp, logp, torch.tensor([0.0]), mask, cfg, ref_logp=ref)
    assert float(with_kl) == pytest.approx(0.1 * float(k3_kl(logp, ref).mean()))
    assert float(metrics["kl_sum"]) == pytest.approx(float(k3_kl(logp, ref).sum()))


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="clip_eps_low"):
        GRPOConfig(clip_eps_low=1.5)
    with pytest.raises(ValueError, match="ppo_epochs"):
        GRPOConfig(ppo_epochs=0)


PROMPT = [3, 7, 1]
COMPLETIONS = [[2, 9, 5, 11], [6, 1, 8, 4], [12, 3, 3, 7], [5, 5, 10, 2]]


def _tiny_batch(group_rewards: list[float], cfg: GRPOConfig, seed: int = 0):
    ids = torch.tensor([PROMPT + c for c in COMPLETIONS])
    loss_mask = torch.ones(len(COMPLETIONS), 4, dtype=torch.bool)
    plan = draw_coupled_masks(loss_mask, loss_mask, generator=torch.Generator().manual_seed(seed))
    batch = make_grpo_batch(ids, torch.ones_like(ids), loss_mask, plan, torch.tensor(group_rewards), 4, cfg)
    return ids, loss_mask, batch


def _mean_elbo(actor: DreamActor, ids: torch.Tensor, loss_mask: torch.Tensor, draws: int = 8) -> torch.Tensor:
    """Per-completion coupled estimate averaged over fresh mask draws (not the training plan)."""
    generator = torch.Generator().manual_seed(123)
    total = torch.zeros(ids.shape[0])
    with torch.no_grad():
        for _ in range(draws):
            plan = draw_coupled_masks(loss_mask, loss_mask, generator=generator)
            total += masked_logprob(actor.base_model, ids, None, plan, actor.mask_token_id).logp.sum(dim=1)
    return total / draws


@pytest.mark.parametrize("kl_coef", [0.0, 0.05])
def test_inner_updates_raise_logprob_of_positive_completion(tiny_dream_factory, kl_coef: float) -> None:
    torch.manual_seed(0)
    actor = DreamActor(tiny_dream_factory(seed=0), ActorConfig(lora=LoraSettings(rank=8, alpha=16), param_dtype="float32"))
    cfg = GRPOConfig(ppo_epochs=4, mini_batch_size=2, micro_batch_size=1, kl_coef=kl_coef, clip_eps_high=0.28)
    ids, loss_mask, batch = _tiny_batch([1.0, 0.0, 0.0, 0.0], cfg)
    before = _mean_elbo(actor, ids, loss_mask)
    optimizer = torch.optim.Adam(actor.trainable_parameters(), lr=2e-2)
    actor.train()
    metrics = grpo_update(actor, batch, optimizer, cfg)
    after = _mean_elbo(actor, ids, loss_mask)
    assert metrics["first_ppo_kl"] == 0.0  # shared plan: the first ratio is exactly 1
    assert metrics["optimizer_steps"] == 8.0 and metrics["grad_norm"] > 0.0
    assert 0.0 <= metrics["clip_frac"] <= 1.0
    assert after[0] > before[0] + 1.0  # the positively-advantaged completion became more likely
    assert (after[1:] - before[1:]).mean() < 0.0  # the others, on average, less likely
    if kl_coef > 0:
        assert metrics["kl"] > 0.0


def test_update_rejects_empty_batch(tiny_dream_factory) -> None:
    actor = DreamActor(tiny_dream_factory(), ActorConfig(lora=LoraSettings(rank=2, alpha=4), param_dtype="float32"))
    cfg = GRPOConfig()
    _, _, batch = _tiny_batch([1.0, 1.0, 1.0, 1.0], cfg)
    assert batch.num_rows == 0
    with pytest.raises(ValueError, match="empty GRPO batch"):
        grpo_update(actor, batch, torch.optim.SGD(actor.trainable_parameters(), lr=0.1), cfg)


@pytest.mark.parametrize("estimator", ["trajectory", "coupled"])
def test_rollout_to_update_end_to_end(tiny_dream_factory, estimator: str) -> None:
    """Lockstep rollout -> rewards -> filtered batch with one plan -> inner updates: the rewarded answers gain."""
    from decoding.lockstep import LockstepCfg
    from rl.actor import RolloutConfig

    torch.manual_seed(0)
    actor = DreamActor(tiny_dream_factory(seed=1), ActorConfig(lora=LoraSettings(rank=8, alpha=16), param_dtype="float32"))
    lockstep = LockstepCfg(mode="jacobi", r_len=3, a_len=3, tau_r=0.5, tau_a=0.5, temperature=1.0, eos_guard=False)
    rollout_cfg = RolloutConfig(lockstep=lockstep, delimiter_ids=(13,), seed=0, valid_vocab_size=15)
    rollout = actor.rollout([[3, 7, 1], [5, 2]], n=4, cfg=rollout_cfg)
    rewards = (rollout.answer_ids[:, 0] % 2 == 0).float()  # a rule on the tokens, varied within groups
    plan = rollout.draw_plan(estimator, num_draws=2, generator=torch.Generator().manual_seed(0))
    cfg = GRPOConfig(ppo_epochs=3, mini_batch_size=4, micro_batch_size=2)
    batch = make_grpo_batch(rollout.input_ids, rollout.attention_mask, rollout.loss_mask, plan, rewards, 4, cfg)
    assert batch.num_rows == 8 and batch.stats["filtered_fraction"] == 0.0
    with torch.no_grad():
        before = actor.logprob(batch.input_ids, batch.attention_mask, batch.plan).logp.sum(dim=1)
    optimizer = torch.optim.Adam(actor.trainable_parameters(), lr=2e-2)
    actor.train()
    metrics = grpo_update(actor, batch, optimizer, cfg)
    with torch.no_grad():
        after = actor.logprob(batch.input_ids, batch.attention_mask, batch.plan).logp.sum(dim=1)
    assert metrics["first_ppo_kl"] == 0.0 and math.isfinite(metrics["pg_loss"])
    gain = after - before
    assert gain[batch.advantages > 0].mean() > gain[batch.advantages < 0].mean() + 0.5
