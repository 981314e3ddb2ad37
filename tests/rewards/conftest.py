"""Shared fixtures: a small caller-supplied task set, one warm EvalPlusScorer over a real bubblewrap pool, and
the warm code-RL scorer (``code_scorer``) of the corpus test formats."""

from __future__ import annotations

from pathlib import Path

import pytest

from rewards.api import EvalPlusScorer, RewardConfig
from rewards.code_judge import CodeScorer
from rewards.sandbox import SandboxConfig
from rewards.tasks import Task

SECRET_REF = "def f(x):\n    return (x * 7919 + 13) % 1000003\n"
FLOAT_REF = "def g(x):\n    return x / 3\n"
BIG_REF = "def h(n):\n    return [i / 7 for i in range(n)]\n"


def secret_tasks() -> list[Task]:
    """'secret': an output nobody guesses without computing it. 'floaty': float outputs (atol oracle)."""
    return [
        Task(task_id="secret", prompt="def f(x):\n", entry_point="f", base_inputs=[[i] for i in range(5)],
             plus_inputs=[[10**6 + 7], [123456789]], reference_solution=SECRET_REF),
        Task(task_id="floaty", prompt="def g(x):\n", entry_point="g", base_inputs=[[1], [2], [10]],
             plus_inputs=[[7]], reference_solution=FLOAT_REF),
        # float lists whose records (~40 KB of JSON value each) are far larger than one pipe page
        Task(task_id="bigfloat", prompt="def h(n):\n", entry_point="h", base_inputs=[[2000], [2100]],
             plus_inputs=[[2200]], reference_solution=BIG_REF),
    ]


@pytest.fixture(scope="session")
def scorer(tmp_path_factory: pytest.TempPathFactory):
    with EvalPlusScorer(secret_tasks(), cfg=_cfg(2, str(tmp_path_factory.mktemp("expected")))) as s:
        yield s


def _cfg(workers: int, cache: str) -> RewardConfig:
    return RewardConfig.rl(workers=workers, sample_time_cap_s=2.0, min_time_limit_s=0.5,
                           on_infra_error="mark", completion_format="solution", cache_dir=cache,
                           sandbox=SandboxConfig(isolation="bwrap", memory_bytes=1024**3, max_retries=1))


@pytest.fixture(scope="session")
def scorer1(tmp_path_factory: pytest.TempPathFactory):
    """One worker: jobs run back to back on the same zygote, in submission order (for cross-job attacks)."""
    with EvalPlusScorer(secret_tasks(), cfg=_cfg(1, str(tmp_path_factory.mktemp("expected1")))) as s:
        yield s


@pytest.fixture(scope="session")
def evalplus_data(shared_data_dir) -> Path:
    """``../shared/data/evalplus`` (skips where absent, fails in CI: tests/conftest.py ``shared_data``)."""
    return shared_data_dir("evalplus")


@pytest.fixture(scope="session")
def cache_env(tmp_path_factory: pytest.TempPathFactory):
    """Point the expected-output cache at a session temp dir (hermetic; computed once per session)."""
    import os

    old = os.environ.get("LOCKSTEP_CACHE_DIR")
    os.environ["LOCKSTEP_CACHE_DIR"] = str(tmp_path_factory.mktemp("lockstep-cache"))
    yield os.environ["LOCKSTEP_CACHE_DIR"]
    if old is None:
        os.environ.pop("LOCKSTEP_CACHE_DIR", None)
    else:
        os.environ["LOCKSTEP_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def secret_task_list() -> list[Task]:
    return secret_tasks()


def open_code_scorer(reward: str = "binary") -> CodeScorer:
    """A code-RL scorer over 2 real bubblewrap workers with short caps (the corpus format tests)."""
    cfg = RewardConfig.rl(workers=2, reward=reward, sample_time_cap_s=3.0, on_infra_error="mark",
                          sandbox=SandboxConfig(isolation="bwrap", memory_bytes=1024**3, max_retries=1))
    return CodeScorer(cfg)


@pytest.fixture(scope="module")
def code_scorer():
    scorer = open_code_scorer()
    yield scorer
    scorer.close()


@pytest.fixture(scope="module")
def pass_ratio_code_scorer():
    """Pass-ratio rewards: AceCode's stored pass rates are fractions of asserts passed."""
    scorer = open_code_scorer(reward="pass_ratio")
    yield scorer
    scorer.close()
