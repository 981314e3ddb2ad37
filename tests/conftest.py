"""Suite-wide pytest configuration: GPU tests skip cleanly where CUDA is absent; no test leaks environment."""

from __future__ import annotations

import os

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _restore_environ():
    """Entry points configure their own process environment by design (``rl.config.prepare_runtime`` exports
    ``WANDB_DIR``, ``VERL_PLATFORM``, ...); a test that calls them in-process must not redirect later tests'
    subprocesses (e.g. their W&B runs) to its temporary directory."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def tiny_dream_dir(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random-init Dream checkpoint in the real HF layout (sharded safetensors + tokenizer), fp32.

    Built once per test session by :func:`decoding.tiny.make_tiny_dream` (seed 0; hidden 64, 2 layers,
    4 heads, 2 KV heads; ~1.5k-token code BPE; vocab_size 1664 > tokenizer size 1541).
    """
    from decoding.tiny import make_tiny_dream

    return make_tiny_dream(tmp_path_factory.mktemp("tiny-dream") / "tiny-dream", seed=0)
