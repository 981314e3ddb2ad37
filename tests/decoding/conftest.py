"""Fixtures of the decoding tests: the tiny Dream loaded in fp32 and its tokenizer (session-scoped)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

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


@pytest.fixture
def run_bench() -> Callable[[str, list[str], Path], dict]:
    """Run ``python bench/<name>.py ARGS --json OUT`` as a user does (its sibling imports need that); the
    report."""
    root = Path(__file__).resolve().parents[2]

    def run(name: str, args: list[str], out: Path) -> dict:
        subprocess.run([sys.executable, str(root / "bench" / f"{name}.py"), *args, "--json", str(out)],
                       cwd=root, check=True, capture_output=True, timeout=600)
        return json.loads(out.read_text())

    return run
