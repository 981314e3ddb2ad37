"""Tests of the masked-diffusion SFT objective (rl/sft.py): exact values on hand cases, shift, masking
rules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from decoding.config import DreamConfig
from decoding.model import DreamModel
from rl.logprob import MaskPlan, masked_logprob
from rl.sft import draw_noise, elbo_nll, masked_diffusion_loss, shifted_token_ce

MASK = 7
VOCAB = 8


class TableLM(nn.Module):
    """A hand-made 'model' whose logits at position i are a fixed function of the token AT position i.

    logits[b, i] = table[input_ids[b, i]]: with the Dream shift, token k is scored by table[x_{k-1}], where
    x_{k-1} is the (possibly masked) input token before it, so the expected loss is computable by hand.
    """

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table.clone())
        self.calls: list[torch.Tensor] = []

    def forward(self, input_ids: torch.Tensor, attention_mask=None, position_ids=None,  # noqa: ANN001
                logits_to_keep=0):  # noqa: ANN001
        self.calls.append(input_ids.clone())
        logits = self.table[input_ids]
        return type("Out", (), {"logits": logits[:, -logits_to_keep:] if logits_to_keep else logits})()


def _table() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(VOCAB, VOCAB, generator=gen)


def test_exact_objective_on_hand_case() -> None:
    table = _table()
    model = TableLM(table)
    # row 0: prompt [1, 2], completion [3, 4, 5]; row 1: prompt [0], completion [2, 6, 1, 3]
    input_ids = torch.tensor([[1, 2, 3, 4, 5], [0, 2, 6, 1, 3]])
    completion = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]], dtype=torch.bool)
    t = torch.tensor([0.5, 0.25])
    # masked: row 0 positions 2 and 4; row 1 position 3. The prompt position 1 is asked but must be ignored.
    noise = torch.tensor([[0, 1, 1, 0, 1], [0, 0, 0, 1, 0]], dtype=torch.bool)
    out = masked_diffusion_loss(model, input_ids, completion, MASK, t=t, noise_mask=noise)

    fed = model.calls[0]
    assert fed.tolist() == [[1, 2, MASK, 4, MASK], [0, 2, 6, MASK, 3]]  # prompt never masked

    logp = torch.log_softmax(table, dim=-1)
    # row 0: token 3 at pos 2 scored by logits at pos 1 (input 2); token 5 at pos 4 by pos 3 (input 4)
    row0 = -(logp[2, 3] + logp[4, 5]) / 0.5 / 3
    # row 1: token 1 at pos 3 scored by logits at pos 2 (input 6)
    row1 = -(logp[6, 1]) / 0.25 / 4
    torch.testing.assert_close(out.per_sequence, torch.stack([row0, row1]))
    torch.testing.assert_close(out.loss, (row0 + row1) / 2)
    torch.testing.assert_close(out.masked_ce, -(logp[2, 3] + logp[4, 5] + logp[6, 1]) / 3)


def test_loss_is_zero_without_masks_and_gradient_flows() -> None:
    model = TableLM(_table())
    input_ids = torch.tensor([[1, 2, 3, 4]])
    completion = torch.tensor([[0, 1, 1, 1]], dtype=torch.bool)
    none = masked_diffusion_loss(model, input_ids, completion, MASK, t=torch.tensor([0.3]),
                                 noise_mask=torch.zeros_like(completion))
    assert float(none.loss.detach()) == 0.0 and math.isnan(float(none.masked_ce))
    full = masked_diffusion_loss(model, input_ids, completion, MASK, t=torch.tensor([1.0]),
                                 noise_mask=completion)
    full.loss.backward()
    assert model.table.grad is not None and float(model.table.grad.abs().sum()) > 0


def test_shifted_ce_alignment() -> None:
    logits = torch.randn(1, 4, VOCAB, generator=torch.Generator().manual_seed(1))
    ids = torch.tensor([[0, 5, 2, 6]])
    ce = shifted_token_ce(logits, ids)
    assert float(ce[0, 0]) == 0.0
    for k in range(1, 4):
        expected = -torch.log_softmax(logits[0, k - 1], dim=-1)[ids[0, k]]
        torch.testing.assert_close(ce[0, k], expected)


def test_draw_noise_respects_completion_and_eps() -> None:
    completion = torch.zeros(512, 6, dtype=torch.bool)
    completion[:, 3:] = True
    gen = torch.Generator().manual_seed(0)
    t, noise = draw_noise(completion, eps=0.2, generator=gen)
    assert bool((t >= 0.2).all()) and bool((t <= 1.0).all())
    assert not bool(noise[:, :3].any())
    # masking frequency follows t: rows with large t are masked more than rows with small t
    high, low = noise[t > 0.8, 3:].float().mean(), noise[t < 0.4, 3:].float().mean()
    assert float(high) > 0.8 and float(low) < 0.4


def test_bad_inputs_raise_clear_errors() -> None:
    model = TableLM(_table())
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match="position 0"):
        masked_diffusion_loss(model, ids, torch.tensor([[1, 1, 1]], dtype=torch.bool), MASK)
    with pytest.raises(ValueError, match="at least one completion"):
        masked_diffusion_loss(model, ids, torch.zeros(1, 3, dtype=torch.bool), MASK)
    with pytest.raises(ValueError, match="both t and noise_mask"):
        masked_diffusion_loss(model, ids, torch.tensor([[0, 1, 1]], dtype=torch.bool), MASK, t=torch.ones(1))
    with pytest.raises(ValueError, match="must match"):
        masked_diffusion_loss(model, ids, torch.tensor([[0, 1]], dtype=torch.bool), MASK)


def _tiny_dream() -> DreamModel:
    torch.manual_seed(0)
    config = DreamConfig(
        vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, mask_token_id=31, pad_token_id=0, rope_theta=1e6,
    )
    return DreamModel(config).eval()


def test_matches_rl_logprob_estimator_on_real_dream() -> None:
    """Same masks, weights 1/t: the SFT loss equals -(sum of weighted per-token log-probs) / |completion|."""
    model = _tiny_dream()
    gen = torch.Generator().manual_seed(3)
    prompt = torch.randint(1, 30, (2, 4), generator=gen)
    completion = torch.randint(1, 30, (2, 5), generator=gen)
    input_ids = torch.cat([prompt, completion], dim=1)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 0] = 0  # row 1 has one left pad
    input_ids[1, 0] = 0
    completion_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    completion_mask[:, 4:] = True
    t = torch.tensor([0.4, 0.9])
    noise = torch.rand(input_ids.shape, generator=gen) < t[:, None]
    noise[:, 4] = True  # at least one masked token per row
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
    ours = masked_diffusion_loss(model, input_ids, completion_mask, 31, attention_mask, position_ids,
                                 t=t, noise_mask=noise)
    masks = (noise & completion_mask)[:, 4:]
    plan = MaskPlan(masks=masks[None], weights=(masks.float() / t[:, None])[None])
    theirs = masked_logprob(model, input_ids, attention_mask, plan, mask_id=31)
    expected = -theirs.logp.sum(dim=1) / 5
    torch.testing.assert_close(ours.per_sequence, expected, rtol=1e-5, atol=1e-6)


def test_elbo_nll_is_deterministic() -> None:
    model = _tiny_dream()
    ids = torch.randint(1, 30, (3, 9), generator=torch.Generator().manual_seed(5))
    completion = torch.zeros_like(ids, dtype=torch.bool)
    completion[:, 4:] = True
    a = elbo_nll(model, ids, completion, 31, n_rates=3, seed=1)
    b = elbo_nll(model, ids, completion, 31, n_rates=3, seed=1)
    assert a == b and a > 0


def test_collate_left_pads_and_aligns_completions() -> None:
    from rl.sft import SFTExample, collate_left_padded

    a = SFTExample((1, 2, 3), (4, 5, 6), (True, False, True))
    b = SFTExample((7,), (8, 9, 10))
    batch = collate_left_padded([a, b], pad_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5, 6], [0, 0, 7, 8, 9, 10]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]]
    assert batch.position_ids[1, 2:].tolist() == [0, 1, 2, 3]
    assert batch.completion_mask.tolist() == [[0, 0, 0, 1, 0, 1], [0, 0, 0, 1, 1, 1]]
    with pytest.raises(ValueError, match="non-empty prompt"):
        SFTExample((), (1,))


def test_lr_schedule_and_config_validation() -> None:
    from rl.sft import SFTConfig, lr_factor

    cfg = SFTConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(100, cfg) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="lr=-1"):
        SFTConfig(lr=-1).validate()


@pytest.mark.slow
def test_short_sft_run_lowers_loss_and_heldout_nll(tiny_dream_dir) -> None:
    """A few dozen steps on demo tasks: training loss falls and the held-out ELBO bound improves."""
    from cpu_demo.tasks import CanvasSpec, generate_demo_tasks, sft_example
    from decoding.checkpoint import load_dream
    from decoding.tokenizer import load_tokenizer
    from rl.sft import SFTConfig, collate_left_padded, train_sft

    tok = load_tokenizer(tiny_dream_dir)
    model = load_dream(tiny_dream_dir, dtype=torch.float32)
    splits = generate_demo_tasks(seed=0, n_train=64, n_heldout=8, operations=["add", "upper", "sum"])
    canvas = CanvasSpec(r_len=24, a_len=36)
    train = [sft_example(tok, t, canvas) for t in splits.train]
    held = collate_left_padded([sft_example(tok, t, canvas) for t in splits.heldout], tok.pad_token_id)
    mask_id = tok.mask_token_id

    def evaluate(step: int) -> dict[str, float]:
        nll = elbo_nll(model, held.input_ids, held.completion_mask, mask_id, held.attention_mask,
                       held.position_ids, n_rates=2, seed=0)
        return {"heldout/nll": nll}

    cfg = SFTConfig(steps=40, batch_size=8, lr=3e-3, warmup_steps=5, log_every=10, seed=0)
    history = train_sft(model, train, cfg, tok.pad_token_id, mask_id, evaluate=evaluate, progress=False)
    losses = [h["train/loss"] for h in history if "train/loss" in h]
    nlls = [h["heldout/nll"] for h in history if "heldout/nll" in h]
    assert [h["step"] for h in history if "heldout/nll" in h] == [0, 40]
    assert losses[-1] < 0.6 * losses[0]
    assert nlls[-1] < 0.6 * nlls[0]


def test_stop_after_ends_early_on_the_longer_schedule() -> None:
    """stop_after=k of an n-step schedule = the weights after step k of the full n-step run."""
    from rl.sft import SFTConfig, SFTExample, train_sft

    examples = [SFTExample((1, 2, 3), (4 + i % 5, 5, 6 + i % 3, 7)) for i in range(12)]
    full = SFTConfig(steps=6, batch_size=4, lr=1e-2, warmup_steps=1, log_every=1, seed=0)
    model = _tiny_dream()
    snapshot: dict[int, list[torch.Tensor]] = {}

    def keep(record: dict, step: int) -> None:
        snapshot[step] = [p.detach().clone() for p in model.parameters()]

    train_sft(model, examples, full, pad_id=0, mask_token_id=31, log=keep, progress=False)
    early_model = _tiny_dream()
    history = train_sft(early_model, examples, SFTConfig(**{**full.__dict__, "stop_after": 3}), pad_id=0,
                        mask_token_id=31, progress=False)
    assert [h["step"] for h in history] == [1, 2, 3]
    for a, b in zip(early_model.parameters(), snapshot[3]):
        torch.testing.assert_close(a.detach(), b)
    assert any(not torch.equal(a, b) for a, b in zip(snapshot[3], snapshot[6]))
    with pytest.raises(ValueError, match="stop_after=7"):
        SFTConfig(steps=6, stop_after=7).validate()
