"""Data preparation on a corpus (``launch/prepare_data.py --corpus``), the recipes that use it and the verl
reward on its rows: train rows carry the row's tests, validation rows are the whole benchmark in the
evaluation's prompt, no recipe trains on a benchmark, and drop counts land in the run folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

from corpora import CorpusSelection  # noqa: E402
from launch.prepare_data import DATASETS, RecipeError, main, write_corpus_files  # noqa: E402

ACECODE_IDS = ["acecode/oss_90001", "acecode/oss_90002", "acecode/oss_90002/signature", "acecode/evol_90003",
               "acecode/evol_90004", "acecode/evol_90004/signature", "acecode/bigcode_python_fns_90005",
               "acecode/bigcode_python_fns_90006", "acecode/bigcode_python_fns_90006/signature",
               "acecode/oss_90007", "acecode/evol_90008", "acecode/evol_90008/signature"]


def acecode_solutions(parquet: Path) -> dict[str, tuple[str, str | None]]:
    """AceCode row id -> (a reference program: an inference with pass rate 1, a wrong one: pass rate < 1, or
    None when every inference of the row passes)."""
    out = {}
    for row in pd.read_parquet(parquet).itertuples():
        right = next(i["completion"] for i in row.inferences if i["pass_rate"] == 1.0)
        wrong = next((i["completion"] for i in row.inferences if i["pass_rate"] < 1.0), None)
        out[row.id] = (right, wrong)
    return out


@pytest.fixture(scope="module")
def acecode_data(tmp_path_factory, shared_data_dir) -> Path:
    out = tmp_path_factory.mktemp("acecode-data")
    selection = CorpusSelection("acecode", (str(shared_data_dir("code_rl") / "acecode87k.sample.parquet"),),
                                hard_subset=False)
    write_corpus_files(selection, "humaneval", out)
    return out


def test_corpus_rows_carry_their_tests_and_validation_is_all_of_humaneval_plus(acecode_data) -> None:
    from evals.code.tasks import prompt_parts
    from rewards.code_tests import CodeTests
    from rewards.tasks import load_tasks

    train, val = pd.read_parquet(acecode_data / "train.parquet"), \
        pd.read_parquet(acecode_data / "val.parquet")
    assert list(train["extra_info"].map(lambda e: e["task_id"])) == ACECODE_IDS
    assert set(train["data_source"]) == {"acecode"}
    tests = CodeTests.from_json(train.iloc[0]["reward_model"]["ground_truth"])
    assert tests.format == "assert"
    assert "Test cases: assert net_balances(" in train.iloc[0]["prompt"][0]["content"]
    humaneval, _key = load_tasks("humaneval")
    assert list(val["reward_model"].map(lambda r: r["ground_truth"])) == list(humaneval)  # all 164, in order
    for row in val.itertuples():  # the evaluation's own user message
        assert row.prompt[0]["content"] == \
            prompt_parts(humaneval[row.reward_model["ground_truth"]].prompt, False)[0]
    assert not set(val["reward_model"].map(lambda r: r["ground_truth"])) & set(train["extra_info"].map(
        lambda e: e["task_id"]))


def test_corpus_report_records_provenance_and_drop_counts(acecode_data, shared_data_dir) -> None:
    report = json.loads((acecode_data / "corpus_report.json").read_text())
    assert report["corpus"] == "acecode" and report["rows_loaded"] == 8 and report["tasks"] == 12
    assert report["provenance"]["source"] == "files" and len(report["provenance"]["files"][0]["sha256"]) == 64
    assert report["decontamination"]["dropped"] == 0 and report["decontamination"]["benchmark_tasks"] == 542
    assert report["too_long"] == 0 and report["unparseable"] == {} and report["unjudgeable"] == {}
    assert report["validation"] == {"benchmark": "humaneval", "tasks": 164}


def test_prompt_budget_drops_long_prompts_and_counts_them(tmp_path, shared_data_dir) -> None:
    from launch.train_grpo import prompt_token_counter

    counter = prompt_token_counter(shared_data_dir("dream-v0-instruct-7b"))
    selection = CorpusSelection("acecode", (str(shared_data_dir("code_rl") / "acecode87k.sample.parquet"),),
                                hard_subset=False)
    write_corpus_files(selection, "mbpp", tmp_path, count_tokens=counter, max_prompt_tokens=128)
    report = json.loads((tmp_path / "corpus_report.json").read_text())
    train = pd.read_parquet(tmp_path / "train.parquet")
    assert report["too_long"] == 12 - len(train) == 5  # 166, 135, 138, 136, 136 tokens with Dream's template
    assert all(counter(p) <= 128 for p in train["prompt"].map(list))
    assert report["validation"] == {"benchmark": "mbpp", "tasks": 378}


def test_unjudgeable_and_unparseable_rows_are_counted_by_reason(tmp_path, shared_data_dir) -> None:
    frame = pd.read_parquet(shared_data_dir("code_rl") / "acecode87k.sample.parquet")
    frame.at[1, "test_cases"] = ["print('no assert here')"]  # nothing judgeable: oss_90002 and its copy go
    frame.at[2, "question"] = ""                               # no question: evol_90003 goes
    path = tmp_path / "train-00000-of-00001.parquet"
    frame.to_parquet(path, index=False)
    write_corpus_files(CorpusSelection("acecode", (str(path),), hard_subset=False), "humaneval",
                       tmp_path / "d")
    report = json.loads((tmp_path / "d" / "corpus_report.json").read_text())
    assert report["unparseable"] == {"no question": 1}
    assert sum(report["unjudgeable"].values()) == 2 and len(report["unjudgeable"]) == 1
    train_ids = set(pd.read_parquet(tmp_path / "d" / "train.parquet")["extra_info"]
                    .map(lambda e: e["task_id"]))
    assert train_ids == set(ACECODE_IDS) - {"acecode/oss_90002", "acecode/oss_90002/signature",
                                            "acecode/evol_90003"}
    assert report["tasks"] == 9
    frame["question"] = ""
    frame.to_parquet(path, index=False)
    with pytest.raises(RecipeError, match=r"acecode: no task left of 8 rows \(dropped: \{'unparseable': 8"):
        write_corpus_files(CorpusSelection("acecode", (str(path),), hard_subset=False), "humaneval",
                           tmp_path / "e")


def test_dream_coder_mbppplus_rows_never_reach_the_training_file(tmp_path, shared_data_dir) -> None:
    selection = CorpusSelection("dream-coder",
                                (str(shared_data_dir("code_rl") / "dream_coder_rl_17k.sample.parquet"),))
    write_corpus_files(selection, "mbpp", tmp_path)
    train = pd.read_parquet(tmp_path / "train.parquet")
    assert not [t for t in train["extra_info"].map(lambda e: e["task_id"]) if "mbppplus" in t]
    report = json.loads((tmp_path / "corpus_report.json").read_text())
    assert report["decontamination"]["by_reason"]["mbppplus_source"] == 1


def test_a_corpus_not_judged_yet_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    """While a corpus's formats are not judged (``JUDGED_CORPORA`` grows as formats land), asking for it is
    one line and writes nothing."""
    monkeypatch.setattr("rewards.code_tests.JUDGED_CORPORA", frozenset({"acecode"}))
    assert main(["--corpus", "kodcode-light", "--out", str(tmp_path / "d"), "--data-files",
                 str(tmp_path / "x.parquet")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: kodcode-light: its test formats are not judged yet") and "\n" not in err
    assert not (tmp_path / "d").exists()
    with pytest.raises(RecipeError, match="unknown corpus 'nope'"):
        write_corpus_files(CorpusSelection("nope"), "humaneval", tmp_path / "e")


def test_corpus_names_are_the_names_the_rewards_side_judges() -> None:
    from corpora import CORPUS_NAMES
    from rewards.code_tests import CORPORA

    assert tuple(CORPORA) == CORPUS_NAMES


def test_no_recipe_trains_on_a_benchmark() -> None:
    """Every training recipe (GRPO, SFT) as composed: GRPO recipes train on a corpus or the synthetic demo
    tasks, never on HumanEval+/MBPP+ rows; the HumanEval+/MBPP+ recipes validate on their benchmark."""
    from launch.recipes import recipe_names
    from launch.train_grpo import compose_recipe

    grpo = recipe_names("grpo")
    assert {"demo", "humaneval", "mbpp"} <= set(grpo)
    for name in grpo:
        data = compose_recipe(name, ["actor_rollout_ref.model.path=/models/Dream"]).lockstep.data
        assert data.get("dataset") not in DATASETS, name
        assert data.get("corpus") or data.get("dataset") == "demo", name
    for name, val in (("humaneval", "humaneval"), ("mbpp", "mbpp")):
        data = compose_recipe(name, ["actor_rollout_ref.model.path=/models/Dream"]).lockstep.data
        assert (data.corpus, data.hard_subset, data.val) == ("acecode", True, val)
    for name in recipe_names("sft"):  # SFT recipes train on the synthetic demo tasks
        raw = yaml.safe_load((ROOT / "recipes" / f"{name}.yaml").read_text())
        assert not {"dataset", "corpus"} & set(raw.get("tasks") or {}), name


def test_the_launcher_refuses_a_bad_corpus_before_writing_anything(tmp_path, monkeypatch) -> None:
    from launch.recipes import RecipeError
    from launch.train_grpo import compose_recipe
    from rl.verl.config import validate_recipe

    model = "actor_rollout_ref.model.path=/models/Dream"
    cases = [("lockstep.data.corpus=acecode87k", "lockstep.data.corpus: unknown corpus 'acecode87k'"),
             ("lockstep.data.val=humaneval_plus", "lockstep.data.val must be one of"),
             (f"lockstep.data.data_files=[{tmp_path / 'none.parquet'}]", "none.parquet does not exist"),
             ("lockstep.data.corpus=dream-coder", "its test formats are not judged yet"),
             ("+lockstep.data.dataset=humaneval",
              "lockstep.data: set corpus (acecode) or dataset (humaneval), not both")]
    monkeypatch.setattr("rewards.code_tests.JUDGED_CORPORA", frozenset({"acecode"}))
    for override, message in cases:
        cfg = compose_recipe("humaneval", [model, f"lockstep.run_dir={tmp_path / 'run'}", override])
        with pytest.raises(RecipeError, match=re.escape(message)):
            validate_recipe(cfg, check_files=False)
    assert not (tmp_path / "run").exists()


def test_verl_reward_scores_corpus_rows_on_their_own_tests(acecode_data, shared_data_dir,
                                                           monkeypatch) -> None:
    from rl.verl.reward import compute_score

    monkeypatch.setenv("LOCKSTEP_REWARD_CONFIG", json.dumps({"reward": "binary"}))
    solutions = acecode_solutions(shared_data_dir("code_rl") / "acecode87k.sample.parquet")
    train = pd.read_parquet(acecode_data / "train.parquet")
    row = train.iloc[0]
    right, wrong = solutions["oss_90001"]
    extra = dict(row["extra_info"])
    good = compute_score("acecode", f"```python\n{right}\n```", row["reward_model"]["ground_truth"], extra)
    bad = compute_score("acecode", f"```python\n{wrong}\n```", row["reward_model"]["ground_truth"], extra)
    assert (good["score"], good["pass_base"]) == (1.0, 1.0)
    assert (bad["score"], bad["pass_base"]) == (0.0, 0.0)


@pytest.mark.parametrize("corpus", ["kodcode-light", "kodcode-v1", "deepcoder-lcbv5",
                                    "deepcoder-primeintellect", "deepcoder-taco", "primeintellect",
                                    "dream-coder"])
def test_every_corpus_fixture_prepares_into_judged_training_rows(corpus, fixture_file, tmp_path) -> None:
    """Each corpus end to end: every fixture row becomes a training row with its tests as ground truth
    (nothing is dropped but Dream-Coder's MBPP+ row), and the report accounts for every row."""
    from corpora.build import corpus_tasks
    from corpora.load import load_rows
    from corpora.specs import spec_for
    from rewards.code_tests import CodeTests, tests_from_row

    rows, provenance = load_rows(spec_for(corpus), [fixture_file(corpus)])
    tasks, _ = corpus_tasks(CorpusSelection(corpus), rows, provenance, progress=False)
    write_corpus_files(CorpusSelection(corpus, (str(fixture_file(corpus)),)), "mbpp", tmp_path)
    train = pd.read_parquet(tmp_path / "train.parquet")
    report = json.loads((tmp_path / "corpus_report.json").read_text())
    expected = [t for t in tasks if "/mbppplus/" not in t.task_id]
    assert list(train["extra_info"].map(lambda e: e["task_id"])) == [t.task_id for t in expected]
    assert set(train["data_source"]) == {corpus}
    for row, task in zip(train.itertuples(), expected):
        assert CodeTests.from_json(row.reward_model["ground_truth"]) == tests_from_row(corpus, task.row)
    assert report["tasks"] == len(expected) == report["rows_loaded"] - report["decontamination"]["dropped"]
    assert report["unjudgeable"] == {} and report["unparseable"] == {} and report["too_long"] == 0


def test_prepare_data_cli_writes_a_corpus_with_a_row_cap(fixture_file, tmp_path, capsys) -> None:
    out = tmp_path / "data"
    assert main(["--corpus", "acecode", "--data-files", str(fixture_file("acecode")), "--all-rows",
                 "--max-rows", "3", "--val", "mbpp", "--out", str(out)]) == 0
    assert list(pd.read_parquet(out / "train.parquet")["extra_info"].map(lambda e: e["task_id"])) \
        == ACECODE_IDS[:3]
    assert len(pd.read_parquet(out / "val.parquet")) == 378
    assert main(["--corpus", "acecode", "--data-files", str(fixture_file("acecode")), "--out",
                 str(tmp_path / "h")]) == 0
    hard = pd.read_parquet(tmp_path / "h" / "train.parquet")  # the hard subset by default
    assert list(hard["extra_info"].map(lambda e: e["task_id"])) == ["acecode/oss_90001", "acecode/oss_90007"]
