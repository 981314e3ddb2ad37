"""``python -m rewards.evaluate --dataset <corpus> --data-files ... --samples S.jsonl`` on the AceCode
fixture: reference programs pass, wrong ones fail, the results file has evalplus's layout with pass@k, and
what cannot be evaluated is one line with exit status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]


def evaluate(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rewards.evaluate", *args], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=600)


@pytest.fixture(scope="module")
def acecode_file(shared_data_dir) -> Path:
    return shared_data_dir("code_rl") / "acecode87k.sample.parquet"


def samples_of(parquet: Path) -> tuple[list[dict], dict[str, list[str]]]:
    """Two samples per row (a pass-rate-1 inference and a pass-rate<1 one, or the first twice), the expected
    statuses per task id. The first row's reference also comes as a fenced `completion`."""
    samples, expected = [], {}
    for row in pd.read_parquet(parquet).itertuples():
        task_id = f"acecode/{row.id}"
        right = next(i["completion"] for i in row.inferences if i["pass_rate"] == 1.0)
        wrong = next((i["completion"] for i in row.inferences if i["pass_rate"] < 1.0), None)
        samples.append({"task_id": task_id, "solution": right})
        samples.append({"task_id": task_id, "solution": wrong or right})
        expected[task_id] = ["pass", "fail" if wrong else "pass"]
    samples.append({"task_id": "acecode/oss_90001",
                    "completion": f"Here it is:\n```python\n{samples[0]['solution']}```"})
    expected["acecode/oss_90001"].append("pass")
    return samples, expected


def test_reference_solutions_pass_and_wrong_ones_fail(acecode_file, tmp_path) -> None:
    samples, expected = samples_of(acecode_file)
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    result = evaluate("--dataset", "acecode", "--data-files", str(acecode_file), "--samples", str(path))
    assert result.returncode == 0, result.stderr[-3000:]
    doc = json.loads((tmp_path / "samples_eval_results.json").read_text())
    assert doc["dataset"] == "acecode" and doc["provenance"]["source"] == "files"
    assert {t: [r["base_status"] for r in rs] for t, rs in doc["eval"].items()} == expected
    for results in doc["eval"].values():
        for r in results:
            assert r["plus_status"] == r["base_status"] and set(r) == {
                "task_id", "solution", "base_status", "plus_status", "base_fail_tests", "plus_fail_tests"}
    n_pass = [sum(s == "pass" for s in statuses) / len(statuses) for statuses in expected.values()]
    assert doc["pass_at_k"]["base"]["pass@1"] == pytest.approx(sum(n_pass) / len(n_pass))
    assert doc["pass_at_k"]["plus"] == doc["pass_at_k"]["base"]
    assert "acecode (base = the row's tests): pass@1:" in result.stdout


def test_what_cannot_be_evaluated_is_one_line_exit_2(acecode_file, tmp_path) -> None:
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps({"task_id": "acecode/oss_00000", "solution": "x = 1"}) + "\n")
    cases = [(["--dataset", "acecode", "--data-files", str(acecode_file)],
              "1 task id(s) of the samples are not in acecode, e.g. 'acecode/oss_00000'"),
             (["--dataset", "acecode", "--data-files", str(tmp_path / "none.parquet")],
              "data file not found"),
             (["--dataset", "acecode"], "cannot resolve revision 'main' of TIGER-Lab/AceCode-87K"),
             (["--dataset", "humaneval", "--data-files", str(acecode_file)],
              "--data-files and --revision are for"),
             (["--dataset", "acecode87k"], "unknown dataset 'acecode87k'")]
    for args, message in cases:
        result = evaluate(*args, "--samples", str(path), env={"HF_HUB_OFFLINE": "1"})
        assert result.returncode == 2, (args, result.stderr[-2000:])
        line = result.stderr.strip().splitlines()[-1]  # after the loading progress bars, if any
        assert line.startswith("python -m rewards.evaluate: error: ") and message in line, (args, line)
        assert "Traceback" not in result.stderr, args
    assert not (tmp_path / "samples_eval_results.json").exists()


FIXTURES = {"kodcode-light": "kodcode_light_rl_10k.sample.parquet", "kodcode-v1": "kodcode_v1.sample.parquet",
            "deepcoder-lcbv5": "deepcoder_preview.lcbv5.sample.parquet",
            "deepcoder-primeintellect": "deepcoder_preview.primeintellect.sample.parquet",
            "deepcoder-taco": "deepcoder_preview.taco.sample.parquet",
            "primeintellect": "primeintellect_genverse.sample.json",
            "dream-coder": "dream_coder_rl_17k.sample.parquet"}
WRONG_PROGRAM = "```python\nprint('wrong answer 7d1f')\n```"
WRONG_OUTPUT = '{"output": "wrong answer 7d1f"}'


def fenced(code: str) -> str:
    return code if "```" in code else f"```python\n{code}\n```"


def references(corpus: str, code_rl: Path) -> list[tuple[str, str]]:
    """(task id, reference completion) of every row: the row's own solution column, else the fixture folder's
    reference_solutions.json (prompt-only corpora); a Dream-Coder codeio answer is the answer text itself."""
    from corpora.load import load_rows
    from corpora.specs import spec_for

    rows, _ = load_rows(spec_for(corpus), [code_rl / FIXTURES[corpus]])
    refs = json.loads((code_rl / "reference_solutions.json").read_text()).get(FIXTURES[corpus], {})
    out = []
    for index, row in enumerate(rows):
        task_id = spec_for(corpus).task_id(row, index)
        if corpus.startswith("kodcode"):
            code = row["solution"]
        elif corpus in ("deepcoder-primeintellect", "deepcoder-taco"):
            code = row["solutions"][0]
        else:
            code = refs[str(index)]
        out.append((task_id, code if row.get("data_source") == "codeio" else fenced(code)))
    return out


@pytest.mark.parametrize("corpus", sorted(FIXTURES))
def test_every_corpus_evaluates_references_as_pass_and_wrong_answers_as_fail(corpus, shared_data_dir,
                                                                             tmp_path) -> None:
    code_rl = shared_data_dir("code_rl")
    refs = [(t, c) for t, c in references(corpus, code_rl) if "/mbppplus/" not in t]  # refused: next test
    samples = []
    for task_id, completion in refs:
        wrong = WRONG_OUTPUT if completion.startswith("{") else WRONG_PROGRAM
        samples += [{"task_id": task_id, "completion": completion}, {"task_id": task_id, "completion": wrong}]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    result = evaluate("--dataset", corpus, "--data-files", str(code_rl / FIXTURES[corpus]), "--samples",
                      str(path))
    assert result.returncode == 0, result.stderr[-3000:]
    doc = json.loads((tmp_path / "samples_eval_results.json").read_text())
    statuses = {t: [r["base_status"] for r in rs] for t, rs in doc["eval"].items()}
    assert statuses == {task_id: ["pass", "fail"] for task_id, _ in refs}
    assert doc["pass_at_k"]["base"]["pass@1"] == pytest.approx(0.5)


def test_an_mbppplus_row_of_dream_coder_is_refused_in_one_line(shared_data_dir, tmp_path) -> None:
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps({"task_id": "dream-coder/mbppplus/900005",
                                "completion": WRONG_PROGRAM}) + "\n")
    code_rl = shared_data_dir("code_rl")
    result = evaluate("--dataset", "dream-coder", "--data-files", str(code_rl / FIXTURES["dream-coder"]),
                      "--samples", str(path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "python -m rewards.evaluate: error: 1 sampled task(s) of dream-coder cannot be judged: "
        "{'mbppplus rows are MBPP+ evaluation tasks': 1}")
