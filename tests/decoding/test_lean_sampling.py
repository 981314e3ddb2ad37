"""The commit step's memory-lean sampler gives the reference sampler's tokens and confidences (exact small
cases).

Reference = what the decoders ran before: ban/penalty on a full copy of the block's logits,
``logits[masked]``, then :func:`decoding.sampling.sample_tokens` (sorted top-p). Lean =
:func:`decoding.sampling.sample_masked_rows` (chunks, in-place filters, top-p within top-k). Same generator
seed -> same draws.
"""

from __future__ import annotations

import pytest
import torch

import decoding.sampling as sampling
from decoding.sampling import (
    chunk_rows,
    invalid_token_mask,
    sample_masked_rows,
    sample_tokens,
    top_p_logits,
    top_p_logits_lean,
)

MASK_ID = 40


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("first_k", [1, 4, 256])
def test_top_p_within_top_k_keeps_exactly_the_sorted_nucleus(top_p: float, first_k: int) -> None:
    logits = torch.randn(12, 50, generator=torch.Generator().manual_seed(3)) * 3
    expected = top_p_logits(logits, top_p)
    lean = top_p_logits_lean(logits.clone(), top_p, first_k=first_k)
    assert torch.equal(lean, expected)


def test_top_p_hand_case() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    low = torch.finfo(torch.float32).min
    kept = top_p_logits_lean(probs.log(), 0.7, first_k=1)  # 0.5 < 0.7 <= 0.8: the first two are kept
    assert kept[0, :2].tolist() == probs.log()[0, :2].tolist() and kept[0, 2:].tolist() == [low, low]


def _reference(logits, masked, vocab_size, generator, **kw):
    banned = invalid_token_mask(logits, MASK_ID, vocab_size) if vocab_size else logits
    return sample_tokens(banned[masked], generator=generator, **kw)


def _ban(vocab_size):
    def adjust(rows):
        rows[..., vocab_size:] = float("-inf")
        rows[..., MASK_ID] = float("-inf")
        return rows
    return adjust


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.0])
@pytest.mark.parametrize(("top_p", "top_k"), [(None, None), (0.9, None), (None, 5), (0.8, 7)])
@pytest.mark.parametrize("flags", [{}, {"margin_confidence": True}, {"neg_entropy": True}])
@pytest.mark.parametrize("vocab_size", [None, 44])
def test_lean_sampler_equals_the_reference(monkeypatch, temperature, top_p, top_k, flags, vocab_size) -> None:
    monkeypatch.setattr(sampling, "CHUNK_MIN_ELEMENTS", 3 * 48)  # force chunks of 3 rows
    source = torch.Generator().manual_seed(11)
    logits = torch.randn(3, 5, 48, generator=source) * 2
    masked = torch.rand(3, 5, generator=source) < 0.7
    kw = dict(temperature=temperature, top_p=top_p, top_k=top_k, **flags)
    conf_ref, x0_ref = _reference(logits, masked, vocab_size, torch.Generator().manual_seed(5), **kw)
    before = logits.clone()
    conf, x0 = sample_masked_rows(logits, masked, _ban(vocab_size) if vocab_size else None,
                                  torch.Generator().manual_seed(5), **kw)
    assert torch.equal(logits, before)  # the block's logits are never written
    assert torch.equal(x0, x0_ref)
    torch.testing.assert_close(conf, conf_ref, rtol=0, atol=0)
    if vocab_size:
        assert not bool((x0 >= vocab_size).any()) and not bool((x0 == MASK_ID).any())


def test_chunk_sizes() -> None:
    vocab = 1000
    assert chunk_rows(5, vocab, 64 * 1000) == 5  # floor of 2**20 elements: small blocks in one chunk
    # an eighth of the block
    assert chunk_rows(10_000, vocab, 10_000 * vocab) == (10_000 * vocab // 8) // vocab
    assert chunk_rows(10**6, 152_064, 10**6 * 152_064) == (1 << 26) // 152_064  # capped at 2**26 elements
    assert chunk_rows(3, 10**9, 3 * 10**9) == 1  # at least one row


def test_no_masked_rows() -> None:
    conf, x0 = sample_masked_rows(torch.randn(2, 3, 8), torch.zeros(2, 3, dtype=torch.bool))
    assert conf.shape == (0,) and x0.shape == (0,)
