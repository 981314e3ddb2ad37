"""MAD accuracy on the fixture with hand-computed numbers (see the comments for each value)."""

from __future__ import annotations

import numpy as np
import pytest

from evals.persona.data import holdout_items
from evals.persona.metric import (
    Cell,
    assign_decile,
    build_cells,
    decile_edges,
    mad_accuracy,
    modal_predictions,
    random_predictions,
    summarise,
)
from evals.persona.parse import parse_answer
from evals.persona.tasks import RANGE_TABLE

# Model completions per (pid, qid); truth -> retest in comments, accuracy after "=>".
COMPLETIONS = {
    ("1", "QID9_1"): "1",  # t1 r1 => 1
    ("1", "QID157"): "5",  # t3 r5 => 1 - 2/5 = 0.6
    ("1", "QID198"): "[1, 1, 1]",  # t[1,2,1] r[1,1,1] => 1, 0, 1
    ("1", "QID154"): "45",  # t30 r40 => 1 - 15/100 = 0.85
    ("1", "QID181"): "15",  # t10 r12 => 1 - 5/20 = 0.75
    ("1", "QID164"): "30",  # t12 (decile 1) r20 (3); 30 -> decile 5 => 1 - 4/9
    ("2", "QID9_1"): "The answer is 1",  # unparseable
    ("2", "QID158"): "```json\n4\n```",  # t4 r4 => 1
    ("2", "QID198"): "[2, 2]",  # wrong length: unparseable (3 cells)
    ("2", "QID154"): "70",  # t70 r70 => 1
    ("2", "QID181"): "25",  # out of 0-20: unparseable
    ("2", "QID166"): "50",  # t45 (7) r50 (8); 50 -> 8 => 8/9
    ("3", "QID9_1"): "2",  # t1 r2 => 0
    ("3", "QID157"): '"1"',  # t1 r2 => 1
    ("3", "QID198"): "[1,1,2]",  # t[1,1,2] r[1,1,2] => 1, 1, 1
    ("3", "QID164"): "3.5",  # t25 (4) r18 (2); 3.5 -> 1 => 6/9
    ("17", "QID9_1"): "2",  # t2 r2 => 1
    ("17", "QID158"): "6.0",  # float for an option: unparseable
    ("17", "QID198"): "[2,2,2]",  # t[1,2,2] r[2,2,2] => 0, 1, 1
    ("17", "QID154"): "[10]",  # t20 r10 => 0.9
    ("17", "QID181"): "20",  # t20 r15 => 1
    ("17", "QID166"): "1000",  # t60 (10) r65 (10); -> 10 => 1
}


@pytest.fixture(scope="module")
def cells(fixture_respondents):
    items = [i for r in fixture_respondents for i in holdout_items(r)]
    assert {(i.pid, i.qid) for i in items} == set(COMPLETIONS)
    answers = {(i.pid, i.qid): parse_answer(COMPLETIONS[(i.pid, i.qid)], i) for i in items}
    return build_cells(fixture_respondents, items, answers)


def test_mad_accuracy_examples():
    assert mad_accuracy(5, 3, RANGE_TABLE["QID157"]) == pytest.approx(0.6)  # range 1-6
    assert mad_accuracy(2, 1, RANGE_TABLE["QID9_1"]) == 0.0  # binary miss
    assert mad_accuracy(1, 1, RANGE_TABLE["QID9_1"]) == 1.0


def test_decile_edges_from_pooled_wave13_answers(fixture_respondents):
    # africa pool (QID164 + QID166 truths) = [12, 25, 45, 60]; numpy linear percentiles 10..90
    edges = decile_edges(fixture_respondents)
    assert np.allclose(edges["anchoring_africa"], [15.9, 19.8, 23.7, 29, 35, 41, 46.5, 51, 55.5])
    assert [assign_decile(v, edges["anchoring_africa"]) for v in (12, 15.9, 16, 45, 60, 1e9)] == [
        1,
        1,
        2,
        7,
        10,
        10,
    ]


def test_cells_and_coverage(cells):
    assert len(cells) == 30  # 8 + 8 + 6 + 8 valid cells
    missing = sorted((c.pid, c.column) for c in cells if c.pred is None)
    assert missing == [
        ("17", "QID158"),
        ("2", "QID181"),
        ("2", "QID198_1"),
        ("2", "QID198_2"),
        ("2", "QID198_3"),
        ("2", "QID9_1"),
    ]
    # a failed item is never filled from anything: not from the truth, not from the retest
    assert all(c.pred is None for c in cells if c.pid == "2" and c.column.startswith("QID198"))
    anchors = {(c.pid, c.column): (c.truth, c.retest, c.pred) for c in cells if c.task == "anchoring"}
    assert anchors == {
        ("1", "QID164"): (1, 3, 5),
        ("2", "QID166"): (7, 8, 8),
        ("3", "QID164"): (4, 2, 1),
        ("17", "QID166"): (10, 10, 10),
    }


def test_hand_computed_accuracies(cells):
    m = summarise(cells, seed=0)
    assert m["cells"] == {"valid": 30, "with_prediction": 24, "coverage": 0.8}
    dropped, strict = m["dropped"], m["strict"]
    expected_dropped = {
        "pricing": 2 / 3,
        "framing": 2.6 / 3,
        "probability matching": 7 / 9,
        "base rate": 2.75 / 3,
        "sunk cost": 0.875,
        "anchoring": 28 / 36,
    }
    expected_strict = {
        "pricing": 0.5,
        "framing": 0.65,
        "probability matching": 7 / 12,
        "base rate": 2.75 / 3,
        "sunk cost": 1.75 / 3,
        "anchoring": 28 / 36,
    }
    for task, value in expected_dropped.items():
        assert dropped["per_task"][task]["model"] == pytest.approx(value), task
    for task, value in expected_strict.items():
        assert strict["per_task"][task]["model"] == pytest.approx(value), task
    assert dropped["overall"]["model"] == pytest.approx(np.mean(list(expected_dropped.values())))  # 0.813426
    assert strict["overall"]["model"] == pytest.approx(np.mean(list(expected_strict.values())))  # 0.668519
    assert dropped["n_cells"] == 24 and strict["n_cells"] == 30 and strict["n_tasks"] == 6
    assert strict["per_task"]["probability matching"]["n_cells"] == 12
    assert dropped["per_task"]["framing"]["n_respondents"] == 3


def test_human_retest_ceiling(cells):
    m = summarise(cells, seed=0)
    retest_strict = {
        "pricing": 0.5,
        "framing": 0.8,
        "probability matching": 0.75,
        "base rate": 2.8 / 3,
        "sunk cost": 0.8,
        "anchoring": 31 / 36,
    }
    for task, value in retest_strict.items():
        assert m["strict"]["per_task"][task]["retest"] == pytest.approx(value), task
    assert m["strict"]["overall"]["retest"] == pytest.approx(4.644444 / 6, abs=1e-6)
    # on the dropped cells only: sunk cost keeps pids 1 and 17 => (0.9 + 0.75) / 2
    assert m["dropped"]["per_task"]["sunk cost"]["retest"] == pytest.approx(0.825)
    assert m["dropped"]["per_task"]["framing"]["model_over_retest"] == pytest.approx((2.6 / 3) / 0.8)


def test_per_respondent_summary(cells):
    # dropped: pid1 mean of 6 task means = 4.422222/6; pid2 (framing 1, base 1, anchoring 8/9);
    # pid3 (0, 1, 1, 6/9); pid17 (1, 2/3, 0.9, 1, 1) => mean over pids = 0.82
    summary = summarise(cells, seed=0)["dropped"]["per_respondent"]["model"]
    assert summary["n"] == 4 and summary["mean"] == pytest.approx(0.82)


def test_seeded_random_baseline_is_exact():
    cells = [
        Cell("b", "QID157", "framing", 3, 3, None),
        Cell("a", "QID9_1", "pricing", 1, 1, None),
        Cell("a", "QID164", "anchoring", 4, 4, None),
    ]
    rng = np.random.default_rng(7)  # draws follow (pid, column) order: a/QID164, a/QID9_1, b/QID157
    draws = [float(rng.integers(1, 11)), float(rng.integers(1, 3)), float(rng.integers(1, 7))]
    assert random_predictions(cells, seed=7) == [draws[2], draws[1], draws[0]]
    assert random_predictions(cells, seed=7) == random_predictions(cells, seed=7)


def test_modal_predictor_and_ties(cells):
    modal = dict(((c.pid, c.column), p) for c, p in zip(cells, modal_predictions(cells)))
    assert modal[("3", "QID9_1")] == 1.0  # truths 1, 2, 1, 2: tie -> smallest
    assert modal[("1", "QID198_2")] == 2.0  # truths 2, 2, 1, 2


def test_per_column_and_item_correlation(cells):
    strict = summarise(cells, seed=0)["strict"]
    col = strict["per_column"][
        "QID198_2"
    ]  # truths 2, 2, 1, 2 (pids 1, 2, 3, 17); preds 1, -, 1, 2 => 0, 0, 1, 1
    assert col["n"] == 4 and col["model"] == pytest.approx(2 / 4) and col["task"] == "probability matching"
    # model pairs (pred, truth) = (1, 2), (1, 1), (2, 2) => Pearson r = 0.5; retest (1,2),(2,2),(1,1),(2,2)
    assert col["model_corr"] == pytest.approx(0.5)
    assert col["retest_corr"] == pytest.approx(np.corrcoef([1, 2, 1, 2], [2, 2, 1, 2])[0, 1])
    assert strict["per_column"]["QID157"]["model_corr"] is None  # only two respondents saw this arm
