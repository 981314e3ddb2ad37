"""EvalPlus-compatible evaluation CLI on the sandboxed judge.

    python -m rewards.evaluate --dataset humaneval|mbpp --samples samples.jsonl [--mini] [--parallel N]

Reads evalplus's sample format (one JSON object per line with ``task_id`` and ``solution`` - the whole program -
or ``completion`` - appended to the prompt) and writes ``<samples stem>_eval_results.json`` next to the samples with
evalplus's layout (``eval`` -> task_id -> [{task_id, solution, base_status, plus_status, base_fail_tests,
plus_fail_tests}]) plus ``pass_at_k`` (unbiased estimator) for base and base+plus tests.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import numpy as np

from .api import RewardConfig, Scorer
from .sandbox import SandboxConfig


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with n samples of which c are correct: 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def read_samples(path: Path) -> list[dict]:
    samples = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                s = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SystemExit(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if "task_id" not in s or not ("solution" in s or "completion" in s):
                raise SystemExit(f"{path}:{lineno}: each sample needs task_id and solution or completion")
            samples.append(s)
    return samples


def evaluate(dataset: str, samples_path: Path, *, mini: bool = False, noextreme: bool = False,
             parallel: int | None = None, base_only: bool = False, isolation: str = "auto") -> dict:
    """Evaluate a samples file and write the results JSON; returns the results document."""
    samples = read_samples(samples_path)
    cfg = RewardConfig.evaluation(mini=mini, noextreme=noextreme, workers=parallel, progress=True, keep_test_details=True,
                                  test_sets=("base",) if base_only else ("base", "plus"),
                                  completion_format="solution", sandbox=SandboxConfig(isolation=isolation))
    with Scorer(dataset=dataset, cfg=cfg) as scorer:
        unknown = sorted({s["task_id"] for s in samples} - set(scorer.tasks))
        if unknown:
            raise SystemExit(f"{len(unknown)} task ids are not in {scorer.key}: {unknown[:5]}")
        programs = [s["solution"] if "solution" in s else scorer.tasks[s["task_id"]].prompt + s["completion"]
                    for s in samples]
        results = scorer.score([(s["task_id"], p) for s, p in zip(samples, programs)])
        tasks, key = scorer.tasks, scorer.key
    doc: dict = {"date": datetime.now().strftime("%Y-%m-%d %H:%M"), "hash": key.rsplit("-", 1)[-1],
                 "dataset": key, "eval": defaultdict(list)}
    for s, prog, r in zip(samples, programs, results):
        task = tasks[s["task_id"]]
        passed = r.details.get("passed", {})
        doc["eval"][s["task_id"]].append({
            "task_id": s["task_id"], "solution": prog, "base_status": r.base_status or "fail",
            "plus_status": None if base_only else (r.plus_status or "fail"),
            "base_fail_tests": _fails(task.base_inputs, passed.get("base"), r.base_status),
            "plus_fail_tests": [] if base_only else _fails(task.plus_inputs, passed.get("plus"), r.plus_status)})
    doc["eval"] = dict(doc["eval"])
    doc["pass_at_k"] = _pass_at_k(doc["eval"], base_only)
    out = samples_path.with_name(samples_path.stem + "_eval_results.json")
    out.write_text(json.dumps(doc))
    for name, vals in doc["pass_at_k"].items():
        print(f"{dataset}{'+' if name == 'plus' else ''} ({name} tests): "
              + "  ".join(f"{k}: {v:.3f}" for k, v in vals.items()))
    print(f"results written to {out}")
    return doc


def _fails(inputs: list, passed: list[bool] | None, status: str | None) -> list:
    if status == "pass" or passed is None:
        return []
    first = next((i for i, ok in enumerate(passed) if not ok), None)
    try:
        return [] if first is None else json.loads(json.dumps([inputs[first]], default=repr))
    except (TypeError, ValueError):
        return []


def _pass_at_k(eval_doc: dict, base_only: bool) -> dict:
    out = {}
    for name in ("base",) if base_only else ("base", "plus"):
        counts = [(len(rs), sum(r["base_status"] == "pass" and (name == "base" or r["plus_status"] == "pass")
                                for r in rs)) for rs in eval_doc.values()]
        if not counts:
            continue
        n_min = min(n for n, _ in counts)
        out[name] = {f"pass@{k}": float(np.mean([pass_at_k(n, c, k) for n, c in counts]))
                     for k in (1, 10, 100) if n_min >= k}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rewards.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", required=True, choices=["humaneval", "mbpp"])
    ap.add_argument("--samples", required=True, type=Path, help="evalplus-format samples .jsonl")
    ap.add_argument("--mini", action="store_true", help="HumanEval+ Mini (not available for MBPP+)")
    ap.add_argument("--noextreme", action="store_true")
    ap.add_argument("--base-only", action="store_true")
    ap.add_argument("--parallel", type=int, default=None, help="sandbox workers (default: all cores)")
    ap.add_argument("--isolation", default="auto", choices=["auto", "bwrap", "rlimits"])
    args = ap.parse_args(argv)
    if not args.samples.is_file() or args.samples.suffix != ".jsonl":
        ap.error(f"--samples must be an existing .jsonl file, got {args.samples}")
    if args.dataset == "mbpp" and args.mini:
        ap.error("MBPP+ has no Mini variant")
    evaluate(args.dataset, args.samples, mini=args.mini, noextreme=args.noextreme, parallel=args.parallel,
             base_only=args.base_only, isolation=args.isolation)
    return 0


if __name__ == "__main__":
    sys.exit(main())
