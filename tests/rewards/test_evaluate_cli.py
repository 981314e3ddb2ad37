"""``python -m rewards.evaluate``: evalplus sample format in, evalplus-compatible results + pass@k out."""

from __future__ import annotations

import json

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


def test_cli_rejects_bad_input(tmp_path) -> None:
    bad = tmp_path / "s.jsonl"
    bad.write_text('{"task_id": "HumanEval/0"}\n')
    with pytest.raises(SystemExit, match="solution or completion"):
        main(["--dataset", "humaneval", "--samples", str(bad)])
    with pytest.raises(SystemExit):
        main(["--dataset", "mbpp", "--mini", "--samples", str(bad)])
