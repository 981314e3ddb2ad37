"""Tests that need ../shared/data skip where it is absent, but fail in CI (CI=true), where it always
exists."""

from __future__ import annotations

import pytest


def test_missing_shared_data_fails_in_ci_and_skips_elsewhere(shared_data_dir, monkeypatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no-such-folder not found"):
        shared_data_dir("no-such-folder")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        shared_data_dir("no-such-folder")
    assert (shared_data_dir("evalplus") / "HumanEvalPlus-Mini.jsonl.gz").is_file()
