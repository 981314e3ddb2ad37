"""EvalPlus-compatible evaluation CLI on the sandboxed judge.

    python -m rewards.evaluate --dataset humaneval|mbpp --samples samples.jsonl [--mini] [--parallel N]
    python -m rewards.evaluate --dataset acecode|kodcode-light|... --samples S.jsonl [--data-files F ...]

Reads evalplus's sample format (one JSON object per line with ``task_id`` and ``solution`` - the whole
program - or ``completion`` - appended to the prompt) and writes ``<samples stem>_eval_results.json`` next to
the samples with evalplus's layout (``eval`` -> task_id -> [{task_id, solution, base_status, plus_status,
base_fail_tests, plus_fail_tests}]) plus ``pass_at_k`` (unbiased estimator) for base and base+plus tests.

A code-RL corpus name (``corpora.CORPUS_NAMES``) scores the samples on the corpus rows' own tests
(:mod:`corpora.evaluate`; ``base_status`` = the verdict on the row's tests, ``plus_status`` equal to it), read
from ``--data-files`` or, without them, from the hub (``--revision``). A corpus whose test formats are not
judged yet is refused with one line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import numpy as np

from .api import EvalPlusScorer, RewardConfig
from .sandbox import SandboxConfig
from .tasks import load_tasks


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with n samples of which c are correct: 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


class UsageError(Exception):
    """A mistake in the command line or the samples file: reported as one line, exit status 2."""


def read_samples(path: Path) -> list[dict]:
    """Samples of an evalplus-format .jsonl file; raises UsageError naming the first bad line."""
    if not path.is_file():
        raise UsageError(f"samples file not found: {path}")
    samples = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                s = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(s, dict) or not isinstance(s.get("task_id"), str) \
                    or not isinstance(s.get("solution", s.get("completion")), str):
                raise UsageError(f"{path}:{lineno}: each sample must be a JSON object with a string task_id "
                                 "and a string solution or completion")
            samples.append(s)
    if not samples:
        raise UsageError(f"{path}: no samples")
    return samples


def evaluate(dataset: str, samples_path: Path, *, mini: bool = False, noextreme: bool = False,
             parallel: int | None = None, base_only: bool = False, isolation: str = "auto") -> dict:
    """Evaluate a samples file and write the results JSON; returns the results document."""
    samples = read_samples(samples_path)
    if dataset not in ("humaneval", "mbpp"):
        from corpora.specs import CORPUS_NAMES

        raise UsageError(f"unknown dataset {dataset!r}: choose 'humaneval' (HumanEval+), 'mbpp' (MBPP+) or a "
                         f"code-RL corpus ({', '.join(CORPUS_NAMES)})")
    try:
        tasks, key = load_tasks(dataset, mini=mini, noextreme=noextreme)
    except (ValueError, RuntimeError) as exc:  # bad variant, or data neither offline nor downloadable
        raise UsageError(str(exc)) from None
    unknown = sorted({s["task_id"] for s in samples} - set(tasks))
    if unknown:
        raise UsageError(f"{len(unknown)} task id(s) of {samples_path.name} are not in {key}, e.g. "
                         f"{unknown[0]!r}")
    cfg = RewardConfig.evaluation(mini=mini, noextreme=noextreme, workers=parallel, progress=True,
                                  keep_test_details=True,
                                  test_sets=("base",) if base_only else ("base", "plus"),
                                  completion_format="solution", sandbox=SandboxConfig(isolation=isolation))
    with EvalPlusScorer(tasks, cfg=cfg, key=key) as scorer:
        programs = [s["solution"] if "solution" in s else scorer.tasks[s["task_id"]].prompt + s["completion"]
                    for s in samples]
        results = scorer.score([(s["task_id"], p) for s, p in zip(samples, programs)])
    doc: dict = {"date": datetime.now().strftime("%Y-%m-%d %H:%M"), "hash": key.rsplit("-", 1)[-1],
                 "dataset": key, "eval": defaultdict(list)}
    for s, prog, r in zip(samples, programs, results):
        task = tasks[s["task_id"]]
        passed = r.details.get("passed", {})
        doc["eval"][s["task_id"]].append({
            "task_id": s["task_id"], "solution": prog, "base_status": r.base_status or "fail",
            "plus_status": None if base_only else (r.plus_status or "fail"),
            "base_fail_tests": _fails(task.base_inputs, passed.get("base"), r.base_status),
            "plus_fail_tests": [] if base_only else _fails(task.plus_inputs, passed.get("plus"),
                                                           r.plus_status)})
    doc["eval"] = dict(doc["eval"])
    doc["pass_at_k"] = pass_at_k_table(doc["eval"], base_only)
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


def pass_at_k_table(eval_doc: dict, base_only: bool) -> dict:
    """``pass_at_k`` of a results document: per test set ("base", "plus" = base and plus), the mean unbiased
    pass@k over tasks for each k in (1, 10, 100) that every task has enough samples for."""
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


def _evaluate_corpus(args: argparse.Namespace) -> None:
    from corpora.evaluate import evaluate_corpus
    from corpora.specs import CorpusError

    if args.mini or args.noextreme or args.base_only:
        raise UsageError("--mini, --noextreme and --base-only apply to HumanEval+/MBPP+, not to a corpus")
    samples = read_samples(args.samples)
    try:
        evaluate_corpus(args.dataset, samples, args.samples, data_files=args.data_files or (),
                        revision=args.revision, parallel=args.parallel, isolation=args.isolation)
    except CorpusError as exc:
        raise UsageError(str(exc)) from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump: the message says what to fix
        raise UsageError(message)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; user mistakes print ``python -m rewards.evaluate: error: ...`` and return 2."""
    ap = _Parser(prog="python -m rewards.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", required=True,
                    help="humaneval (HumanEval+), mbpp (MBPP+) or a code-RL corpus "
                         "(acecode, kodcode-light, ...)")
    ap.add_argument("--samples", required=True, type=Path, help="evalplus-format samples .jsonl")
    ap.add_argument("--mini", action="store_true", help="HumanEval+ Mini (not available for MBPP+)")
    ap.add_argument("--noextreme", action="store_true")
    ap.add_argument("--base-only", action="store_true")
    ap.add_argument("--parallel", type=int, default=None, help="sandbox workers (default: all cores)")
    ap.add_argument("--isolation", default="auto", choices=["auto", "bwrap", "rlimits"])
    ap.add_argument("--data-files", nargs="+", default=None, help="corpus: local files (default: the hub)")
    ap.add_argument("--revision", default=None,
                    help="corpus on the hub: branch, tag or commit (default: main)")
    try:
        args = ap.parse_args(argv)
        if args.parallel is not None and args.parallel < 1:
            raise UsageError(f"--parallel must be at least 1, got {args.parallel}")
        from corpora.specs import CORPUS_NAMES

        if args.dataset in CORPUS_NAMES:
            _evaluate_corpus(args)
            return 0
        if args.data_files or args.revision:
            raise UsageError("--data-files and --revision are for code-RL corpora, not HumanEval+/MBPP+")
        evaluate(args.dataset, args.samples, mini=args.mini, noextreme=args.noextreme, parallel=args.parallel,
                 base_only=args.base_only, isolation=args.isolation)
    except UsageError as exc:
        print(f"{ap.prog}: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # sandbox refused to start / could not score: say why, no traceback
        print(f"{ap.prog}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
