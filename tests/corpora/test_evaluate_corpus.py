"""``python -m rewards.evaluate --dataset <corpus> --data-files ... --samples S.jsonl`` on the AceCode fixture:
reference programs pass, wrong ones fail, the results file has evalplus's layout with pass@k, and what cannot be
evaluated is one line with exit status 2."""

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
    return subprocess.run([sys.executable, "-m", "rewards.evaluate", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=600)


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
    samples.append({"task_id": "acecode/oss_90001", "completion": f"Here it is:\n```python\n{samples[0]['solution']}```"})
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
             (["--dataset", "acecode", "--data-files", str(tmp_path / "none.parquet")], "data file not found"),
             (["--dataset", "acecode"], "cannot resolve revision 'main' of TIGER-Lab/AceCode-87K"),
             (["--dataset", "humaneval", "--data-files", str(acecode_file)], "--data-files and --revision are for"),
             (["--dataset", "acecode87k"], "unknown dataset 'acecode87k'")]
    for args, message in cases:
        result = evaluate(*args, "--samples", str(path), env={"HF_HUB_OFFLINE": "1"})
        assert result.returncode == 2, (args, result.stderr[-2000:])
        line = result.stderr.strip().splitlines()[-1]  # after the loading progress bars, if any
        assert line.startswith("python -m rewards.evaluate: error: ") and message in line, (args, line)
        assert "Traceback" not in result.stderr, args
    assert not (tmp_path / "samples_eval_results.json").exists()
