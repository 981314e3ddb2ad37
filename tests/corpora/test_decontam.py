"""Decontamination against HumanEval+ and MBPP+ (the local EvalPlus files): every evaluation task planted in a
corpus is dropped, every MBPP+-sourced Dream-Coder row is dropped, the fixtures' own rows are kept."""

from __future__ import annotations

import gzip
import json

import pandas as pd
import pytest

from corpora.build import CorpusSelection, corpus_tasks
from corpora.decontam import REASONS, benchmark_index, decontaminate
from corpora.load import load_rows
from corpora.specs import spec_for


@pytest.fixture(scope="module")
def index(shared_data_dir):
    return benchmark_index(shared_data_dir("evalplus"))


@pytest.fixture(scope="module")
def benchmark_problems(shared_data_dir) -> list[dict]:
    folder = shared_data_dir("evalplus")
    problems = []
    for name in ("HumanEvalPlus.jsonl.gz", "MbppPlus.jsonl.gz"):
        with gzip.open(folder / name, "rt") as handle:
            problems += [json.loads(line) for line in handle]
    return problems


def acecode_tasks(frame: pd.DataFrame, tmp_path):
    path = tmp_path / "train-00000-of-00001.parquet"
    frame.to_parquet(path, index=False)
    rows, provenance = load_rows(spec_for("acecode"), [path])
    tasks, _ = corpus_tasks(CorpusSelection("acecode", hard_subset=False), rows, provenance, progress=False)
    return tasks


def planted_frame(fixture: pd.DataFrame, questions: list[str], tests: list[list[str]] | None = None,
                  prefix: str = "planted") -> pd.DataFrame:
    template = fixture.iloc[0]
    rows = []
    for n, question in enumerate(questions):
        row = template.copy()
        row["id"], row["question"] = f"{prefix}_{n}", question
        if tests is not None:
            row["test_cases"] = tests[n]
        rows.append(row)
    return pd.concat([fixture, pd.DataFrame(rows)], ignore_index=True)


def test_the_fixtures_keep_every_row_but_the_mbppplus_one(index, fixture_file) -> None:
    for corpus in ("acecode", "kodcode-light", "kodcode-v1", "deepcoder-lcbv5", "deepcoder-primeintellect",
                   "deepcoder-taco", "primeintellect", "dream-coder"):
        rows, provenance = load_rows(spec_for(corpus), [fixture_file(corpus)])
        tasks, _ = corpus_tasks(CorpusSelection(corpus, hard_subset=False), rows, provenance, progress=False)
        kept, report = decontaminate(tasks, index, progress=False)
        dropped = {t.task_id for t in tasks} - {t.task_id for t in kept}
        if corpus == "dream-coder":
            assert dropped == {"dream-coder/mbppplus/900005"}
            assert report["by_reason"] == {**dict.fromkeys(REASONS, 0), "mbppplus_source": 1}
            assert report["by_source"] == {"mbppplus": 1}
        else:
            assert dropped == set(), (corpus, report["examples"])


def test_no_evaluation_task_reaches_the_training_data(index, benchmark_problems, fixture_file,
                                                      tmp_path) -> None:
    """Every HumanEval+ and MBPP+ prompt, planted as an AceCode question (as is, re-spaced and lower-cased, or
    inside a longer question), is dropped; the fixture's own rows are not."""
    fixture = pd.read_parquet(fixture_file("acecode"))
    variants = []
    for n, problem in enumerate(benchmark_problems):
        prompt = problem["prompt"]
        variants.append([prompt, " ".join(prompt.split()).lower(),
                         f"You are a helpful engineer. Solve this task carefully.\n{prompt}\n"
                         "Return the result."][n % 3])
    tasks = acecode_tasks(planted_frame(fixture, variants), tmp_path)
    kept, report = decontaminate(tasks, index, progress=False)
    planted = [t for t in kept if "/planted_" in t.task_id]
    assert planted == [], [t.task_id for t in planted][:5]
    assert [t.task_id for t in kept] == [t.task_id for t in tasks if "/planted_" not in t.task_id]
    assert report["dropped"] == len(benchmark_problems) + sum(t.task_id.endswith("/signature") for t in tasks
                                                              if "/planted_" in t.task_id)
    assert report["benchmark_tasks"] == len(benchmark_problems) == 164 + 378


def test_a_planted_humaneval_prompt_and_test_input_are_found(index, fixture_file, tmp_path) -> None:
    fixture = pd.read_parquet(fixture_file("acecode"))
    docstring = ("Check if in given list of numbers, are any two numbers closer to each other than given "
                 "threshold.")  # HumanEval/0's statement, inside an otherwise new question
    questions = [f"You are given a list of floats. {docstring} "
                 "Write close_pair(values, limit) returning a bool.",
                 "You write a function that tells whether two numbers in a list are close; "
                 "it returns a bool."]
    tests = [["assert close_pair([1.0, 2.0], 0.5) == False"] * 5,
             # HumanEval/0's input
             ["assert has_close_elements([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True"] * 5]
    tasks = acecode_tasks(planted_frame(fixture, questions, tests), tmp_path)
    kept, report = decontaminate(tasks, index, progress=False)
    assert report["examples"] == {"acecode/planted_0": "prompt_ngram: HumanEval/0",
                                  "acecode/planted_1": "test_call: HumanEval/0"}
    assert len(kept) == len(tasks) - 2


def test_an_mbpp_statement_is_found_exactly(index, fixture_file, tmp_path) -> None:
    fixture = pd.read_parquet(fixture_file("acecode"))
    question = ("You must do this: write a function to find the shared elements from the given two lists. "
                "Be quick.")
    tasks = acecode_tasks(planted_frame(fixture, [question]), tmp_path)
    _, report = decontaminate(tasks, index, progress=False)
    assert report["examples"] == {"acecode/planted_0": "prompt_exact: Mbpp/2"}
