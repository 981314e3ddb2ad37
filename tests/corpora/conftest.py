"""Fixtures of the corpora tests: the schema-exact offline corpus fixtures (../shared/data/code_rl) by corpus
name, and a private cache folder so the AceCode hard-subset cache of one test never answers another."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURE_FILES = {
    "acecode": "acecode87k.sample.parquet",
    "kodcode-light": "kodcode_light_rl_10k.sample.parquet",
    "kodcode-v1": "kodcode_v1.sample.parquet",
    "deepcoder-lcbv5": "deepcoder_preview.lcbv5.sample.parquet",
    "deepcoder-primeintellect": "deepcoder_preview.primeintellect.sample.parquet",
    "deepcoder-taco": "deepcoder_preview.taco.sample.parquet",
    "primeintellect": "primeintellect_genverse.sample.json",
    "dream-coder": "dream_coder_rl_17k.sample.parquet",
}


@pytest.fixture(scope="session")
def code_rl_dir(shared_data_dir) -> Path:
    return shared_data_dir("code_rl")


@pytest.fixture
def fixture_file(code_rl_dir):
    """corpus name -> the path of its offline fixture."""
    return lambda corpus: code_rl_dir / FIXTURE_FILES[corpus]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("LOCKSTEP_CACHE_DIR", str(cache))
    return cache
