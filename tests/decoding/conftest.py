"""Fixtures of the decoding tests: the tiny Dream loaded in fp32 and its tokenizer (session-scoped)."""

from __future__ import annotations

import pytest
import torch

from decoding import DreamModel, load_dream
from decoding.tokenizer import load_tokenizer

# The tiny model is far too small for intra-op parallelism: on the shared 2-core CI box extra threads only
# oversubscribe (a 16-step generate went from 0.6 s to 15 s under load).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model(tiny_dream_dir) -> DreamModel:
    return load_dream(tiny_dream_dir, dtype=torch.float32)


@pytest.fixture(scope="session")
def tiny_tok(tiny_dream_dir):
    return load_tokenizer(tiny_dream_dir)
