"""Fixtures for the rl/ tests: a real (tiny, randomly initialised) Dream with a 16-token vocabulary.

A tiny vocabulary keeps every forward cheap, so the estimator tests can enumerate all masks exactly.
"""

from __future__ import annotations

import pytest
import torch

from decoding.config import DreamConfig
from decoding.model import DreamModel

TINY_VOCAB = 16
MASK_ID = 15
EOS_ID = 14


def build_tiny_dream(seed: int = 0, vocab_size: int = TINY_VOCAB) -> DreamModel:
    """A 2-layer Dream (hidden 32) with large init so that log-probs depend visibly on the context."""
    config = DreamConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.3, rope_theta=10000.0,
        mask_token_id=MASK_ID, pad_token_id=EOS_ID, bos_token_id=EOS_ID, eos_token_id=EOS_ID,
    )
    torch.manual_seed(seed)
    return DreamModel(config).float().eval()


@pytest.fixture(scope="session")
def tiny_dream() -> DreamModel:
    return build_tiny_dream()


@pytest.fixture(scope="session")
def tiny_dream_factory():
    """``build(seed=0) -> DreamModel``: a fresh tiny Dream for tests that train it."""
    return build_tiny_dream


@pytest.fixture(autouse=True)
def _single_intra_op_thread():
    """Tiny-model matmuls are ~30x slower with 2 OpenMP threads on a loaded 2-core box (spin-waits)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
