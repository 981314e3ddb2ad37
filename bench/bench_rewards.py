"""Reward-worker throughput vs evalplus 0.3.1's own evaluator, side by side in one run, plus a
10,000-completion stress run and the full canonical-solution check.

    python bench/bench_rewards.py --suite compare   # executions/s, ours vs evalplus, same samples, same run
    python bench/bench_rewards.py --suite compare --configs humaneval-plus   # one row only
    python bench/bench_rewards.py --suite stress    # 10,000 queued completions: none lost, peak RSS
    python bench/bench_rewards.py --suite canonical # canonical solutions on full HumanEval+ and MBPP+
    python bench/bench_rewards.py --suite flood     # peak memory of the trusted process under result floods
    python bench/bench_rewards.py --suite smoke     # tiny version of all three (CI smoke check)

Expected outputs (ours: ~/.cache/lockstep, evalplus: ~/.cache/evalplus) are computed before timing starts, and
both evaluators get the same parallelism. Samples: the canonical solution of every task (all tests run) plus a
wrong one (``def <entry_point>(*args, **kwargs): return None``, which parses and so is executed by both, and
fails at the first test under evalplus's fast check and ours). The evalplus side is evalplus 0.3.1's own
``evaluate`` path: one ``check_correctness`` per sample submitted to a ProcessPoolExecutor (which pickles the
problem and its expected outputs per sample, as ``evalplus.evaluate`` does).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import UTC, datetime
from pathlib import Path

from rewards import EvalPlusScorer, RewardConfig  # noqa: E402

# --configs names -> (dataset, mini, base_only), in the order the rows are run
COMPARE_CONFIGS = {"humaneval-base": ("humaneval", False, True),
                   "humaneval-plus": ("humaneval", False, False),
                   "mbpp-plus": ("mbpp", False, False)}


def _wrong(entry_point: str) -> str:
    return f"def {entry_point}(*args, **kwargs):\n    return None\n"


def _samples(tasks: dict, limit: int | None) -> list[tuple[str, str]]:
    out = []
    for tid, t in list(tasks.items())[:limit]:
        out.append((tid, t.reference_solution))
        out.append((tid, _wrong(t.entry_point)))
    return out


def run_ours(dataset: str, mini: bool, base_only: bool, workers: int, limit: int | None) -> dict:
    cfg = RewardConfig.evaluation(mini=mini, workers=workers, completion_format="solution",
                                  test_sets=("base",) if base_only else ("base", "plus"))
    with EvalPlusScorer(dataset=dataset, cfg=cfg) as s:
        samples = _samples(s.tasks, limit)
        s.score(samples[:4])  # warm the zygotes
        t0 = time.perf_counter()
        res = s.score(samples)
        wall = time.perf_counter() - t0
    n_tests = sum(r.n_tests for r in res[::2])
    return {"samples": len(res), "wall_s": wall, "exec_per_s": len(res) / wall, "canonical_tests": n_tests,
            "canonical_pass": sum(r.all_pass for r in res[::2]),
            "wrong_pass": sum(r.all_pass for r in res[1::2])}


def run_evalplus(dataset: str, mini: bool, base_only: bool, workers: int, limit: int | None) -> dict:
    """evalplus 0.3.1's own per-sample path: ProcessPoolExecutor -> check_correctness -> untrusted_check."""
    import evalplus.data.humaneval as he
    import evalplus.data.mbpp as mb
    from evalplus.eval._special_oracle import MBPP_OUTPUT_NOT_NONE_TASKS
    from evalplus.evaluate import check_correctness, get_groundtruth

    from rewards.tasks import offline_file

    mod, attr = (he, "HUMANEVAL_OVERRIDE_PATH") if dataset == "humaneval" else (mb, "MBPP_OVERRIDE_PATH")
    local = offline_file(dataset, mini)
    if local and not getattr(mod, attr):
        setattr(mod, attr, str(local))
    if dataset == "humaneval":
        problems, dhash = he.get_human_eval_plus(mini=mini), he.get_human_eval_plus_hash(mini=mini)
        expected = get_groundtruth(problems, dhash, [])
    else:
        problems, dhash = mb.get_mbpp_plus(), mb.get_mbpp_plus_hash()
        expected = get_groundtruth(problems, dhash, MBPP_OUTPUT_NOT_NONE_TASKS)
    samples = []
    for tid, p in list(problems.items())[:limit]:
        samples.append((tid, p["prompt"] + p["canonical_solution"]))
        samples.append((tid, _wrong(p["entry_point"])))
    t0 = time.perf_counter()
    results = {}
    with ProcessPoolExecutor(max_workers=workers) as ex:
        futs = {ex.submit(check_correctness, dataset, i, problems[tid], sol, expected[tid], base_only, True,
                          i): i for i, (tid, sol) in enumerate(samples)}
        for fut in as_completed(futs):
            results[futs[fut]] = fut.result()
    wall = time.perf_counter() - t0

    def ok(r: dict) -> bool:
        return r["base"][0] == "pass" and (base_only or r["plus"][0] == "pass")

    return {"samples": len(samples), "wall_s": wall, "exec_per_s": len(samples) / wall,
            "canonical_pass": sum(ok(results[i]) for i in range(0, len(samples), 2)),
            "wrong_pass": sum(ok(results[i]) for i in range(1, len(samples), 2))}


def suite_compare(workers: int, limit: int | None, configs: list[tuple[str, bool, bool]]) -> list[dict]:
    rows = []
    for dataset, mini, base_only in configs:
        name = f"{'HumanEval+' if dataset == 'humaneval' else 'MBPP+'}{' Mini' if mini else ''}" \
               f" {'base' if base_only else 'base+plus'}"
        run_ours(dataset, mini, base_only, workers, 2)  # builds/loads our expected-output cache
        run_evalplus(dataset, mini, base_only, workers, 2)  # builds/loads evalplus's ground-truth pickle
        ours = run_ours(dataset, mini, base_only, workers, limit)
        ref = run_evalplus(dataset, mini, base_only, workers, limit)
        row = {"config": name, "ours": ours, "evalplus": ref, "ratio": ours["exec_per_s"] / ref["exec_per_s"]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def suite_stress(n: int, workers: int) -> dict:
    """n queued completions (canonical / wrong / crashing / forging) on HumanEval+ Mini base tests, RL
    config."""
    cfg = RewardConfig.rl(mini=True, workers=workers, test_sets=("base",), completion_format="solution",
                          on_infra_error="mark", progress=True)
    with EvalPlusScorer(dataset="humaneval", cfg=cfg) as s:
        tids = list(s.tasks)
        kinds = [lambda t: t.reference_solution, lambda t: t.prompt + "    return None\n",
                 lambda t: "import os\nos._exit(0)\n", lambda t: t.prompt + "    raise SystemExit(0)\n"]
        items = [(tids[i % len(tids)], kinds[i % 4](s.tasks[tids[i % len(tids)]])) for i in range(n)]
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        res = s.score(items)
        wall = time.perf_counter() - t0
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        stats = dict(s.pool.stats)
    lost = n - len([r for r in res if r is not None and r.status != "infra_error"])
    correct = all(r.all_pass == (i % 4 == 0) for i, r in enumerate(res))
    out = {"completions": n, "scored": len(res), "lost": lost, "verdicts_as_expected": correct,
           "wall_s": wall,
           "exec_per_s": n / wall, "peak_rss_mb_before": rss0 / 1024, "peak_rss_mb_after": rss1 / 1024,
           "pool_stats": stats}
    print(json.dumps(out), flush=True)
    return out


def suite_canonical(workers: int) -> list[dict]:
    rows = []
    for dataset, mini in (("humaneval", False), ("mbpp", False)):
        cfg = RewardConfig.evaluation(mini=mini, workers=workers, completion_format="solution", progress=True)
        t0 = time.perf_counter()
        with EvalPlusScorer(dataset=dataset, cfg=cfg) as s:
            setup = time.perf_counter() - t0
            t1 = time.perf_counter()
            res = s.score([(tid, t.reference_solution) for tid, t in s.tasks.items()])
            wall = time.perf_counter() - t1
        row = {"dataset": s.key, "tasks": len(res), "pass": sum(r.all_pass for r in res),
               "failed": [r.task_id for r in res if not r.all_pass], "tests": sum(r.n_tests for r in res),
               "setup_s_incl_expected": setup, "score_wall_s": wall}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


FLOOD_CHUNKS = {"newlines": "b'\\n' * (1 << 20)", "short lines": "b'12\\n' * 349525",
                "one long line": "b'x' * (1 << 20)"}


def suite_flood(workers: int, mb: int = 40, rounds: int = 3) -> dict:
    """Samples that write ``mb`` MB of newlines / short lines / one long line to every fd (in their first
    test) before returning the right answer, ``workers`` at once, ``rounds`` times per kind; peak RSS of this
    (trusted) process before and after (the result buffer was once capped in bytes only, and split into one
    object per line)."""
    from rewards import SandboxConfig, Task

    task = Task(task_id="t", prompt="def f(x):\n", entry_point="f", base_inputs=[[i] for i in range(5)],
                reference_solution="def f(x):\n    return x * 7 + 1\n")
    cfg = RewardConfig.rl(workers=workers, completion_format="solution", on_infra_error="mark",
                          sandbox=SandboxConfig(memory_bytes=1024**3))
    with EvalPlusScorer([task], cfg=cfg) as s:
        s.score([("t", task.reference_solution)])
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        statuses: dict = {}
        t0 = time.perf_counter()
        for kind, chunk in FLOOD_CHUNKS.items():
            code = (f"import os\ndef f(x):\n    chunk = {chunk} if x == 0 else b''\n"
                    "    for fd in range(3, 256):\n"
                    f"        try:\n            for _ in range({mb}): os.write(fd, chunk)\n"
                    "        except OSError:\n"
                    "            pass\n    return x * 7 + 1\n")
            for _ in range(rounds):
                for r in s.score([("t", code)] * workers):
                    statuses[f"{kind}: {r.status}"] = statuses.get(f"{kind}: {r.status}", 0) + 1
        wall = time.perf_counter() - t0
        honest = s.score([("t", task.reference_solution)])[0].all_pass
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"flood_mb": mb, "at_once": workers, "rounds": rounds, "statuses": statuses, "wall_s": wall,
           "honest_after": honest, "peak_rss_mb_before": rss0 / 1024, "peak_rss_mb_after": rss1 / 1024}
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", choices=["compare", "stress", "canonical", "flood", "smoke"],
                    default="compare")
    ap.add_argument("--parallel", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--limit", type=int, default=None, help="first N tasks only (compare suite)")
    ap.add_argument("--n", type=int, default=10_000, help="completions for the stress suite")
    ap.add_argument("--out", type=Path, default=None, help="append a JSON record of the run here")
    ap.add_argument("--configs", nargs="+", choices=sorted(COMPARE_CONFIGS), default=sorted(COMPARE_CONFIGS),
                    help="compare suite: which rows to run (default: all)")
    args = ap.parse_args()
    record = {"date": datetime.now(UTC).isoformat(timespec="minutes"), "machine": platform.platform(),
              "cpus": os.cpu_count(), "parallel": args.parallel, "suite": args.suite,
              "loadavg_start": os.getloadavg()}
    if args.suite == "compare":
        record["rows"] = suite_compare(args.parallel, args.limit,
                                       [COMPARE_CONFIGS[c] for c in COMPARE_CONFIGS if c in args.configs])
    elif args.suite == "stress":
        record["stress"] = suite_stress(args.n, args.parallel)
    elif args.suite == "canonical":
        record["canonical"] = suite_canonical(args.parallel)
    elif args.suite == "flood":
        record["flood"] = suite_flood(args.parallel)
    else:
        record["rows"] = suite_compare(args.parallel, 3, [("humaneval", True, True)])
        record["stress"] = suite_stress(40, args.parallel)
    record["loadavg_end"] = os.getloadavg()
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
