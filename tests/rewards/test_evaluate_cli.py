"""``python -m rewards.evaluate``: evalplus sample format in, evalplus-compatible results + pass@k out."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rewards.evaluate import main, pass_at_k
from rewards.tasks import load_tasks


def test_pass_at_k_unbiased_estimator_exact_values() -> None:
    assert pass_at_k(2, 1, 1) == 0.5
    assert pass_at_k(5, 0, 1) == 0.0
    assert pass_at_k(4, 4, 2) == 1.0
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(10, 3, 10) == 1.0


@pytest.mark.slow
def test_cli_writes_evalplus_results(tmp_path, evalplus_data, cache_env, monkeypatch, capsys) -> None:
    monkeypatch.setenv("LOCKSTEP_EVALPLUS_DATA", str(evalplus_data))
    tasks, _ = load_tasks("humaneval", mini=True, data_dir=evalplus_data)
    t0, t2 = tasks["HumanEval/0"], tasks["HumanEval/2"]
    samples = [
        {"task_id": "HumanEval/0", "solution": t0.reference_solution},
        {"task_id": "HumanEval/0", "completion": "    return False\n"},
        {"task_id": "HumanEval/2", "completion": t2.reference_solution[len(t2.prompt):]},
        {"task_id": "HumanEval/2", "completion": "    return number\n"},
    ]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    assert main(["--dataset", "humaneval", "--samples", str(path), "--mini", "--parallel", "2"]) == 0
    doc = json.loads((tmp_path / "samples_eval_results.json").read_text())
    assert doc["hash"] == "401e75ad986361dccc7afecb4121e295"
    r0, r2 = doc["eval"]["HumanEval/0"], doc["eval"]["HumanEval/2"]
    assert [(r["base_status"], r["plus_status"]) for r in r0] == [("pass", "pass"), ("fail", "fail")]
    assert r2[0]["base_status"] == r2[0]["plus_status"] == "pass" and r2[1]["base_status"] == "fail"
    assert r0[1]["base_fail_tests"] == [t0.base_inputs[0]] and r0[0]["base_fail_tests"] == []
    assert r2[0]["solution"] == t2.reference_solution
    assert doc["pass_at_k"] == {"base": {"pass@1": 0.5}, "plus": {"pass@1": 0.5}}
    assert "pass@1" in capsys.readouterr().out


BAD_INPUTS = {
    "missing file": (["--dataset", "humaneval"], None, "not found"),
    "bad JSON": (["--dataset", "humaneval"], '{"task_id": "HumanEval/0", "completion": "x"}\n{oops\n',
                 "s.jsonl:2: not valid JSON"),
    "no code": (["--dataset", "humaneval"], '{"task_id": "HumanEval/0"}\n', "solution or completion"),
    "not an object": (["--dataset", "humaneval"], "[1, 2]\n", "JSON object"),
    "empty": (["--dataset", "humaneval"], "\n", "no samples"),
    "unknown dataset": (["--dataset", "apps"], '{"task_id": "x", "solution": ""}\n',
                        "unknown dataset 'apps'"),
    "MBPP+ Mini": (["--dataset", "mbpp", "--mini"], '{"task_id": "Mbpp/2", "solution": ""}\n', "no Mini"),
    "unknown task id": (["--dataset", "humaneval", "--mini"],
                        '{"task_id": "HumanEval/999", "solution": ""}\n', "'HumanEval/999'"),
    "bad parallel": (["--dataset", "humaneval", "--parallel", "0"],
                     '{"task_id": "HumanEval/0", "solution": ""}\n', "--parallel"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_cli_user_mistakes_are_one_line_errors(case, tmp_path, evalplus_data, monkeypatch, capsys) -> None:
    monkeypatch.setenv("LOCKSTEP_EVALPLUS_DATA", str(evalplus_data))
    args, content, message = BAD_INPUTS[case]
    path = tmp_path / "s.jsonl"
    if content is not None:
        path.write_text(content)
    assert main([*args, "--samples", str(path)]) == 2
    err = capsys.readouterr().err
    assert (err.count("\n") == 1 and err.startswith("python -m rewards.evaluate: error: ")
            and message in err), err


def test_cli_module_exit_status_without_traceback(tmp_path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text("{not json\n")
    proc = subprocess.run([sys.executable, "-m", "rewards.evaluate", "--dataset", "humaneval", "--samples",
                           str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "not valid JSON" in proc.stderr
