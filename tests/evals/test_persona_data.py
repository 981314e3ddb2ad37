"""Loader, schema parsing and leakage guards on the invented fixture."""

from __future__ import annotations

import json

import pytest

from evals.persona.data import (
    FIXTURE_SUMMARY,
    FIXTURE_WAVE_SPLIT,
    LeakageError,
    PersonaDataError,
    decode_json_field,
    holdout_items,
    iter_questions,
    question_columns,
    respondents_from_rows,
)
from evals.persona.fixtures.build_fixture import build_rows, jsonl
from evals.persona.tasks import RANGE_TABLE, TASKS, holdout_qids


def test_committed_fixture_matches_its_builder():
    wave, summary = build_rows()
    assert FIXTURE_WAVE_SPLIT.read_text() == jsonl(wave)
    assert FIXTURE_SUMMARY.read_text() == jsonl(summary)


def test_range_table_covers_the_17_tasks():
    assert len(TASKS) == 17 and {s.task for s in RANGE_TABLE.values()} == set(TASKS)
    assert RANGE_TABLE["QID157"].span == 5 and RANGE_TABLE["QID9_40"].span == 1
    assert RANGE_TABLE["QID164"].transform == "decile_group" and "QID163" not in RANGE_TABLE
    assert {"QID9_1", "QID287", "QID291"} <= holdout_qids() and "QID9" not in holdout_qids()


def test_fixture_truth_and_retest(fixture_respondents):
    by_pid = {r.pid: r for r in fixture_respondents}
    assert sorted(by_pid) == ["1", "17", "2", "3"]
    one = by_pid["1"]
    assert one.truth["QID157"] == 3.0 and one.retest["QID157"] == 5.0
    assert one.truth["QID158"] is None  # unseen between-subject arm, present with empty answers
    assert [one.truth[f"QID198_{i}"] for i in (1, 2, 3)] == [1.0, 2.0, 1.0]
    assert one.truth["QID154_1"] == 30.0 and one.retest["QID154_1"] == 40.0
    three = by_pid["3"]
    assert "QID158" not in three.truth  # unseen arm absent altogether
    assert three.truth["QID181"] is None  # "about 12" is not a number: dropped, not wrong
    assert three.retest["QID154_1"] is None
    assert by_pid["17"].persona_summary is None and by_pid["2"].persona_summary.startswith("The following")


def test_holdout_items_skip_blank_arms_and_unscored(fixture_respondents):
    by_pid = {r.pid: r for r in fixture_respondents}
    asked = {pid: [i.qid for i in holdout_items(r)] for pid, r in by_pid.items()}
    assert asked["1"] == ["QID9_1", "QID157", "QID198", "QID154", "QID181", "QID164"]
    assert asked["2"] == ["QID9_1", "QID158", "QID198", "QID154", "QID181", "QID166"]
    assert asked["3"] == ["QID9_1", "QID157", "QID198", "QID164"]  # no retest slider, no numeric sunk cost
    matrix = holdout_items(by_pid["2"])[2]
    assert matrix.kind == "matrix" and matrix.scored == ("QID198_1", "QID198_2", "QID198_3")


def test_template_holds_no_answers(fixture_respondents):
    for resp in fixture_respondents:
        assert "Answers" not in json.dumps(resp.template)
        assert all("Answers" not in q for _, q in iter_questions(resp.template))


def test_matrix_rows_id_and_branch_recursion(fixture_respondents):
    persona = fixture_respondents[0].persona_json
    matrix = next(q for _, q in iter_questions(persona) if q["QuestionID"] == "QID25")
    assert question_columns(matrix) == ["QID25_1", "QID25_10", "QID25_11"]
    blocks = [b for b, q in iter_questions(fixture_respondents[0].template) if q["QuestionID"] == "QID181"]
    assert blocks == ["Sunk cost - yes"]  # found inside a Branch element


def test_double_encoded_json_field():
    value = [{"BlockName": "x", "Questions": []}]
    assert decode_json_field(json.dumps(json.dumps(value))) == value
    assert decode_json_field(value) == value
    with pytest.raises(PersonaDataError):
        decode_json_field("{not json")


def _rows():
    return [json.loads(line) for line in FIXTURE_WAVE_SPLIT.read_text().splitlines()]


def test_leakage_holdout_qid_in_persona_json_is_refused():
    rows = _rows()
    persona = json.loads(rows[0]["wave1_3_persona_json"])
    wave4 = json.loads(rows[0]["wave4_Q_wave1_3_A"])
    persona.append(wave4[2])  # the framing block with its answered QID157
    rows[0]["wave1_3_persona_json"] = json.dumps(persona)
    with pytest.raises(LeakageError, match="QID157"):
        respondents_from_rows(rows)


def test_leakage_wave4_question_text_in_persona_text_is_refused():
    rows = _rows()
    rows[1]["wave1_3_persona_text"] += (
        "\nAn urn has 7 red and 3 green balls. For each draw, which do you bet on?\n"
    )
    with pytest.raises(LeakageError, match="QID198"):
        respondents_from_rows(rows)


def test_leakage_qid_token_in_summary_is_refused():
    with pytest.raises(LeakageError):
        respondents_from_rows(_rows()[:1], {"1": "Answered QID9_1 with Yes."})


def test_missing_columns_is_a_clear_error():
    row = _rows()[0]
    del row["wave4_Q_wave4_A"]
    with pytest.raises(PersonaDataError, match="wave4_Q_wave4_A"):
        respondents_from_rows([row])


def test_hub_path_pins_one_revision_and_keeps_only_the_summary(monkeypatch):
    """The hub branch of the loader, with the hub replaced by the fixture files (no network in tests)."""
    import datasets

    from evals.persona.data import load_respondents

    real_load = datasets.load_dataset
    calls = []

    def hub_stand_in(path, name=None, **kwargs):
        calls.append((path, name, kwargs))
        if name == "wave_split":
            return real_load("json", data_files=str(FIXTURE_WAVE_SPLIT), split="train")
        summary = real_load("json", data_files=str(FIXTURE_SUMMARY), split="train")
        return summary.add_column("persona_text", ["all four waves incl. QID157 answers"] * len(summary))

    monkeypatch.setattr(datasets, "load_dataset", hub_stand_in)
    sha = "0123456789abcdef0123456789abcdef01234567"
    respondents, provenance = load_respondents(fixture=False, need_summary=True, revision=sha)
    assert calls == [
        ("LLM-Digital-Twin/Twin-2K-500", "wave_split", {"split": "data", "revision": sha}),
        ("LLM-Digital-Twin/Twin-2K-500", "full_persona", {"split": "data", "revision": sha}),
    ]
    assert provenance["revision"] == sha and provenance["respondents"] == 4
    assert all("all four waves" not in r.persona_text for r in respondents)
    assert respondents[0].persona_summary.startswith("The following is a description")


def test_slider_without_statements_has_one_column():
    slider = {
        "QuestionID": "QID156",
        "QuestionType": "Slider",
        "Settings": {"Selector": "HSLIDER"},
        "Answers": {"Values": ["65"]},
    }
    assert question_columns(slider) == ["QID156_1"]
    from evals.persona.data import answer_values

    assert answer_values(slider) == {"QID156_1": 65.0}


def test_local_parquet_copy_and_missing_file(tmp_path):
    import datasets

    from evals.persona.data import load_respondents

    path = tmp_path / "wave_split.parquet"
    datasets.Dataset.from_list(_rows()).to_parquet(str(path))
    respondents, provenance = load_respondents(fixture=False, need_summary=False, wave_split_files=path)
    assert [r.pid for r in respondents] == ["1", "2", "3", "17"] and provenance["source"] == "files"
    assert respondents[1].truth["QID166"] == 45.0
    with pytest.raises(PersonaDataError, match="does not exist"):
        load_respondents(fixture=False, need_summary=False, wave_split_files=tmp_path / "nope.jsonl")
