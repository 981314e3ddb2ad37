"""Per-question answer validation: accepted shapes and the failures that must stay failures."""

from __future__ import annotations

import pytest

from evals.persona.data import holdout_items
from evals.persona.parse import parse_answer


@pytest.fixture(scope="module")
def items(fixture_respondents):
    by_pid = {r.pid: r for r in fixture_respondents}
    return {i.qid: i for i in holdout_items(by_pid["1"])}


@pytest.mark.parametrize(
    ("qid", "text", "expected"),
    [
        ("QID157", "5", {"QID157": 5.0}),
        ("QID157", '"2"', {"QID157": 2.0}),
        ("QID157", "```json\n4\n```", {"QID157": 4.0}),
        ("QID157", "```\n6\n```", {"QID157": 6.0}),
        ("QID198", "[1, 2, 2]", {"QID198_1": 1.0, "QID198_2": 2.0, "QID198_3": 2.0}),
        ("QID154", "37.5", {"QID154_1": 37.5}),
        ("QID154", '["40"]', {"QID154_1": 40.0}),
        ("QID181", " 0 ", {"QID181": 0.0}),
        ("QID164", "1200", {"QID164": 1200.0}),  # decile columns: any finite number
    ],
)
def test_valid_answers(items, qid, text, expected):
    parsed = parse_answer(text, items[qid])
    assert parsed.ok and parsed.values == expected and parsed.error is None


@pytest.mark.parametrize(
    ("qid", "text", "reason"),
    [
        ("QID157", "5 because they are cautious", "JSON"),  # trailing prose
        ("QID157", "", "JSON"),
        ("QID157", "7", "outside"),
        ("QID157", "0", "outside"),
        ("QID157", "2.0", "option number"),  # float for an option
        ("QID157", "[2]", "option number"),
        ("QID157", "true", "option number"),
        ("QID198", "[1, 2]", "list of 3"),
        ("QID198", "[1, 2, 3]", "1..2"),
        ("QID198", '{"Answers": [1, 1, 1]}', "list of 3"),
        ("QID154", "101", "out of range"),
        ("QID154", '"lots"', "numbers"),
        ("QID181", "[5]", "single number"),
        ("QID181", "21", "out of range"),
        ("QID9_1", "Yes", "JSON"),
    ],
)
def test_invalid_answers_stay_missing(items, qid, text, reason):
    parsed = parse_answer(text, items[qid])
    assert not parsed.ok and parsed.values is None
    assert reason in parsed.error
