"""Fixtures of the persona-eval tests: the invented Twin-2K-500 fixture loaded once per session."""

from __future__ import annotations

import pytest

from evals.persona.data import load_respondents


@pytest.fixture(scope="session")
def fixture_respondents():
    respondents, _ = load_respondents(fixture=True, need_summary=True)
    return respondents
