"""Corpus loaders on the offline fixtures: stable task ids, AceCode's hard subset and prompt rule, defensive
reads of unverified schema points, and one-line errors for what a user gets wrong."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from corpora.acecode import cached_hard_subset_ids, hard_subset_ids, signature_question
from corpora.build import CorpusSelection, corpus_tasks
from corpora.load import load_rows
from corpora.specs import SPECS, CorpusError, spec_for
from corpora.tasks import STDIO_HINT

ROOT = Path(__file__).resolve().parents[2]
KODCODE_IDS = ["Leetcode_00090001_I", "Prefill_00090002_C", "Apps_00090003_I", "Data_Structure_00090004_I",
               "Filter_00090005_I", "Evol_00090006_I", "Algorithm_00090007_I", "Docs_00090008_I"]
EXPECTED_IDS = {
    "acecode": ["acecode/oss_90001", "acecode/oss_90002", "acecode/oss_90002/signature", "acecode/evol_90003",
                "acecode/evol_90004", "acecode/evol_90004/signature", "acecode/bigcode_python_fns_90005",
                "acecode/bigcode_python_fns_90006", "acecode/bigcode_python_fns_90006/signature",
                "acecode/oss_90007", "acecode/evol_90008", "acecode/evol_90008/signature"],
    "kodcode-light": [f"kodcode-light/{i}" for i in KODCODE_IDS],
    "kodcode-v1": [f"kodcode-v1/{i}" for i in KODCODE_IDS[:6]],
    "deepcoder-lcbv5": [f"deepcoder-lcbv5/{i}" for i in range(4)],
    "deepcoder-primeintellect": [f"deepcoder-primeintellect/{i}" for i in range(4)],
    "deepcoder-taco": [f"deepcoder-taco/{i}" for i in range(4)],
    "primeintellect": [f"primeintellect/{i}" for i in range(8)],
    "dream-coder": ["dream-coder/code_contests/train/900001", "dream-coder/code_contests/train/900002",
                    "dream-coder/livecodebench/900003", "dream-coder/livecodebench/900004",
                    "dream-coder/mbppplus/900005", "dream-coder/autoeval/900006",
                    "dream-coder/guru_codeio/test/900007", "dream-coder/code_contests/train/900008"],
}


def tasks_of(corpus: str, files: list[Path], hard_subset: bool = False):
    rows, provenance = load_rows(spec_for(corpus), files)
    return corpus_tasks(CorpusSelection(corpus, hard_subset=hard_subset), rows, provenance, progress=False)


@pytest.mark.parametrize("corpus", sorted(EXPECTED_IDS))
def test_each_loader_gives_stable_ids_on_its_fixture(corpus, fixture_file) -> None:
    first, report = tasks_of(corpus, [fixture_file(corpus)])
    again, _ = tasks_of(corpus, [fixture_file(corpus)])
    assert [t.task_id for t in first] == EXPECTED_IDS[corpus]
    assert [t.task_id for t in again] == EXPECTED_IDS[corpus]
    assert report["unparseable"] == {}
    assert all(t.text.strip() and t.test_text.strip() for t in first)


def test_local_load_records_the_files_and_their_sha256(fixture_file) -> None:
    import hashlib

    path = fixture_file("primeintellect")  # one JSON array file, as on the hub
    rows, provenance = load_rows(spec_for("primeintellect"), [path])
    assert len(rows) == 8
    assert provenance == {"source": "files", "files": [
        {"path": str(path.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}]}


def test_acecode_hard_subset_follows_diffucoder_and_is_cached(fixture_file, _private_cache) -> None:
    # means of the two reference models' pass rates: p20 = 0.77 keeps oss_90001 and oss_90007 (0.75 each);
    # their std 0.25 is above p40 of all stds (0.11)
    rows, provenance = load_rows(spec_for("acecode"), [fixture_file("acecode")])
    assert hard_subset_ids(rows, progress=False) == ["oss_90001", "oss_90007"]
    ids, cached = cached_hard_subset_ids(rows, provenance, progress=False)
    assert (ids, cached) == (["oss_90001", "oss_90007"], False)
    assert cached_hard_subset_ids(rows, provenance, progress=False) == (ids, True)
    assert len(list((_private_cache / "corpora").glob("acecode-hard-*.json"))) == 1
    tasks, report = tasks_of("acecode", [fixture_file("acecode")], hard_subset=True)
    assert [t.task_id for t in tasks] == ["acecode/oss_90001", "acecode/oss_90007"]
    assert report["hard_subset"] == {"rows_in": 8, "kept": 2, "cached": True}


def test_hard_subset_ignores_other_models_and_drops_rows_without_reference_rates() -> None:
    def row(i, rates, model="qwen_coder_2.5"):
        return {"id": f"r{i}", "inferences": [{"model_name": model, "pass_rate": r, "completion": ""}
                                              for r in rates]}

    rows = [row(0, [0.0, 1.0]), row(1, [0.5, 0.5]), row(2, [1.0, 1.0]), row(3, [1.0, 0.0], "gpt-4o"),
            row(4, [0.2, 0.6]), row(5, [0.9, 0.9])]
    # means 0.5, 0.5, 1.0, 0.4, 0.9 (r3 has no reference rates): p20 = 0.48 keeps r4 only (std 0.2 >= p40 0.0)
    assert hard_subset_ids(rows, progress=False) == ["r4"]


def test_acecode_prompt_rule_and_signature_copy(fixture_file) -> None:
    tasks, _ = tasks_of("acecode", [fixture_file("acecode")])
    by_id = {t.task_id: t for t in tasks}
    plain, copy = by_id["acecode/oss_90002"], by_id["acecode/oss_90002/signature"]
    question, first_test = plain.row["question"], plain.row["test_cases"][0]
    assert plain.text == f"{question.strip()}\nTest cases: {first_test}"
    assert copy.text.startswith("Please complete the following problem:\n```\n"
                                "def first_unique_index(s: str) -> int:")
    assert question in copy.text and "Test cases:" not in copy.text
    assert signature_question(by_id["acecode/oss_90001"].row) is None  # its question says "you"
    assert copy.source == plain.source == "oss"


def test_primeintellect_stdio_rows_get_the_stdio_instruction(fixture_file) -> None:
    tasks, _ = tasks_of("primeintellect", [fixture_file("primeintellect")])
    for task in tasks:
        assert task.text.endswith(STDIO_HINT) == (task.row["test_method"] == "stdio")


def test_unverified_schema_points_are_read_defensively(fixture_file, tmp_path) -> None:
    """``metadata`` as a JSON string instead of a struct, an extra column, a row without its question: the
    rows load, the broken one is counted as unparseable, the ids are unchanged."""
    frame = pd.read_parquet(fixture_file("kodcode-light"))
    frame["metadata"] = frame["metadata"].map(lambda m: json.dumps({k: (int(v) if k == "row_id" else v)
                                                                     for k, v in m.items()}))
    frame["benchmark_similarity"] = 0.1
    frame.loc[2, "question"] = ""
    path = tmp_path / "train-00000-of-00001.parquet"
    frame.to_parquet(path, index=False)
    tasks, report = tasks_of("kodcode-light", [path])
    assert [t.task_id for t in tasks] == [i for n, i in enumerate(EXPECTED_IDS["kodcode-light"]) if n != 2]
    assert report["unparseable"] == {"no question": 1}


def test_lcbv5_metadata_struct_or_json_string_reads_the_same(fixture_file, tmp_path) -> None:
    from corpora.tasks import as_value

    frame = pd.read_parquet(fixture_file("deepcoder-lcbv5"))
    as_json = frame["metadata"].map(json.dumps)
    assert [as_value(v) for v in as_json] == [dict(v) for v in frame["metadata"]]


def test_user_mistakes_are_one_line(tmp_path) -> None:
    with pytest.raises(CorpusError, match="unknown corpus 'acecode87k'; corpora: acecode, kodcode-light"):
        spec_for("acecode87k")
    with pytest.raises(CorpusError, match="data file not found"):
        load_rows(spec_for("acecode"), [tmp_path / "missing.parquet"])
    (tmp_path / "rows.csv").write_text("a,b\n")
    with pytest.raises(CorpusError, match=r"must all be \.parquet or all \.json"):
        load_rows(spec_for("acecode"), [tmp_path / "rows.csv"])
    assert set(SPECS) == set(EXPECTED_IDS)


def test_hub_without_access_is_one_line_naming_data_files() -> None:
    code = ("from corpora.load import load_rows\nfrom corpora.specs import spec_for, CorpusError\n"
            "try:\n    load_rows(spec_for('acecode'), None, 'main')\n"
            "except CorpusError as e:\n    print(e)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    line = result.stdout.strip()
    assert line.startswith("acecode: cannot resolve revision 'main' of TIGER-Lab/AceCode-87K on the hub")
    assert "--data-files" in line and "\n" not in line
