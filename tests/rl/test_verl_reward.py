"""verl's reward hook: our compute_score runs the real sandboxed EvalPlus judge (HumanEval+ Mini)."""

from __future__ import annotations

import json

import pytest

from rl.verl_reward import compute_score, reward_config

SOLUTION = """Here is the function.
```python
def has_close_elements(numbers, threshold):
    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for j, b in enumerate(numbers) if i != j)
```"""
WRONG = """```python
def has_close_elements(numbers, threshold):
    return False
```"""


@pytest.fixture(autouse=True)
def _reward_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCKSTEP_REWARD_CONFIG", json.dumps({"reward": "binary", "test_sets": ["base", "plus"]}))


def test_correct_wrong_and_unparsable_completions() -> None:
    good = compute_score("humaneval", SOLUTION, "HumanEval/0", {"mini": True})
    assert good["score"] == 1.0 and good["pass_base"] == 1.0 and good["pass_plus"] == 1.0
    assert good["pass_ratio"] == 1.0 and good["reward_latency_s"] >= 0.0
    wrong = compute_score("humaneval", WRONG, "HumanEval/0", {"mini": True})
    assert wrong["score"] == 0.0 and wrong["pass_ratio"] < 1.0
    garbage = compute_score("humaneval", "def (:", "HumanEval/0", {"mini": True})
    assert garbage["score"] == 0.0 and garbage["pass_base"] == -1.0  # no code: no test set ran


def test_bad_settings_and_sources_are_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="unknown data_source"):
        compute_score("gsm8k", SOLUTION, "HumanEval/0")
    monkeypatch.setenv("LOCKSTEP_REWARD_CONFIG", json.dumps({"rewrd": "binary"}))
    with pytest.raises(ValueError, match="unknown lockstep.reward keys"):
        reward_config()
    monkeypatch.setenv("LOCKSTEP_REWARD_CONFIG", json.dumps({"reward": "pass_ratio", "test_sets": ["base"]}))
    config = reward_config(mini=True)
    assert config.reward == "pass_ratio" and config.test_sets == ("base",) and config.mini
