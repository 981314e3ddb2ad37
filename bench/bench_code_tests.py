"""Code-RL test formats: scoring throughput of ours (sandboxed, trusted verdicts) vs a local baseline that
scores the same samples the way the public repos do (one subprocess per sample running the tests in-process),
same run.

    python bench/bench_code_tests.py                 # every format, fixture rows x --repeat, 2 workers
    python bench/bench_code_tests.py --repeat 20 --workers 4

Samples: every fixture row of ``../shared/data/code_rl`` (``tests_from_row``) with its reference solution and
with a wrong program, repeated ``--repeat`` times. Baseline per format (a fresh ``python`` per sample, tests
in-process, the verdict = its exit code): assert -> the code followed by every assert (DiffuCoder / TraceRL
style); call -> a harness that calls ``Solution().fn`` or ``fn`` and compares with ``==`` (LCB's rule); stdio
-> a harness that execs the program once per case with ``sys.stdin`` / ``sys.stdout`` replaced (LCB / TraceRL
style) and compares whitespace tokens; pytest -> ``python -m pytest`` on ``solution.py`` + the test file
(KodCode), plugin autoload off. codeio executes nothing in either. Both sides get the same parallelism
(``--workers`` sandbox workers vs as many concurrent subprocesses).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from rewards import RewardConfig  # noqa: E402
from rewards.code_judge import CodeScorer  # noqa: E402
from rewards.code_tests import CodeTests, UnjudgeableRow, tests_from_row  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "code_rl"
WRONG = "import sys\nprint(0)\ndef f(*a, **k):\n    return None\n"

_CALL_HARNESS = r"""
import json, sys
ns = {"__name__": "solution"}
exec(open(sys.argv[1]).read(), ns)
spec = json.load(open(sys.argv[2]))
fn = spec["fn"]
target = getattr(ns["Solution"](), fn) if "Solution" in ns and hasattr(ns["Solution"], fn) else ns[fn]
for args, exp in spec["cases"]:
    got = target(*args)
    if isinstance(got, tuple):
        got = list(got)
    if got != exp:
        sys.exit(1)
"""
_STDIO_HARNESS = r"""
import io, json, sys
code = compile(open(sys.argv[1]).read(), "prog", "exec")
real_out = sys.stdout
for inp, exp in json.load(open(sys.argv[2])):
    sys.stdin, sys.stdout = io.StringIO(inp), io.StringIO()
    try:
        exec(code, {"__name__": "__main__"})
    except SystemExit as e:
        if e.code not in (None, 0):
            sys.exit(1)
    out = sys.stdout.getvalue()
    sys.stdout = real_out
    if " ".join(out.split()) != " ".join(exp.split()):
        sys.exit(1)
"""


def _raw(corpus: str, row: dict, tests: CodeTests) -> dict:
    """What the baseline runs for one row, from the row's own test text (assert / pytest) or its tests'
    data."""
    from rewards.code_judge import decode_value_obj

    if tests.format == "assert":
        return {"asserts": list(row["test_cases"] if corpus == "acecode" else row["test_list"])}
    if tests.format == "pytest":
        if corpus == "dream-coder":
            return {"test": json.loads(row["info"])["test"], "import": False}
        return {"test": row["test"], "import": True}
    if tests.format == "call":
        return {"fn": tests.data["target"][-1],
                "cases": [[decode_value_obj(a), decode_value_obj(e)] for a, e in tests.data["cases"]]}
    if tests.format == "stdio":
        return {"cases": tests.data["cases"]}
    return {}


def fixture_samples() -> list[tuple[str, str, CodeTests, dict]]:
    """(format, completion, tests, baseline spec) for every fixture row: its reference solution and a wrong
    program."""
    import pyarrow.parquet as pq

    refs = json.loads((DATA / "reference_solutions.json").read_text())
    rows: list[tuple[str, dict, str]] = []
    for row in pq.read_table(DATA / "acecode87k.sample.parquet").to_pylist():
        rows.append(("acecode", row,
                     next(i["completion"] for i in row["inferences"] if i["pass_rate"] == 1.0)))
    for name, corpus in (("kodcode_light_rl_10k", "kodcode-light"), ("kodcode_v1", "kodcode-v1")):
        rows += [(corpus, r, r["solution"])
                 for r in pq.read_table(DATA / f"{name}.sample.parquet").to_pylist()]
    for cfg in ("lcbv5", "primeintellect", "taco"):
        name = f"deepcoder_preview.{cfg}.sample.parquet"
        for i, r in enumerate(pq.read_table(DATA / name).to_pylist()):
            sol = r["solutions"][0] if r.get("solutions") else refs[name][str(i)]
            rows.append((f"deepcoder-{cfg}", r, sol.replace("```python", "").replace("```", "")))
    name = "dream_coder_rl_17k.sample.parquet"
    rows += [("dream-coder", r, refs[name][str(i)])
             for i, r in enumerate(pq.read_table(DATA / name).to_pylist())]
    name = "primeintellect_genverse.sample.json"
    rows += [("primeintellect", r, refs[name][str(i)])
             for i, r in enumerate(json.loads((DATA / name).read_text()))]
    out = []
    for corpus, row, sol in rows:
        try:
            tests = tests_from_row(corpus, row)
        except UnjudgeableRow:
            continue
        raw = _raw(corpus, row, tests)
        if tests.format == "codeio":
            out += [("codeio", sol, tests, raw), ("codeio", '{"output": null}', tests, raw)]
        else:
            out += [(tests.format, f"```python\n{sol}\n```", tests, raw),
                    (tests.format, f"```python\n{WRONG}\n```", tests, raw)]
    return out


def _baseline_one(fmt: str, completion: str, raw: dict) -> bool:
    """Score one sample the public repos' way: a fresh interpreter running the tests next to the code."""
    code = completion.split("```python\n", 1)[-1].rsplit("```", 1)[0]
    with tempfile.TemporaryDirectory() as d:
        p = Path(d)
        if fmt == "assert":
            (p / "prog.py").write_text(code + "\n" + "\n".join(raw["asserts"]) + "\n")
            argv = [sys.executable, "prog.py"]
        elif fmt == "call":
            (p / "code.py").write_text(code)
            (p / "spec.json").write_text(json.dumps(raw))
            (p / "h.py").write_text(_CALL_HARNESS)
            argv = [sys.executable, "h.py", "code.py", "spec.json"]
        elif fmt == "stdio":
            (p / "code.py").write_text(code)
            (p / "cases.json").write_text(json.dumps(raw["cases"]))
            (p / "h.py").write_text(_STDIO_HARNESS)
            argv = [sys.executable, "h.py", "code.py", "cases.json"]
        else:  # pytest (autoeval: tests in the same file)
            (p / "solution.py").write_text(code)
            (p / "test_solution.py").write_text(raw["test"] if raw["import"] else code + "\n\n" + raw["test"])
            argv = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "test_solution.py"]
        # a clean pytest (no third-party plugins of this venv, whose autoload alone takes ~2 s per process)
        env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
        try:
            return subprocess.run(argv, cwd=d, capture_output=True, timeout=30, env=env).returncode == 0
        except subprocess.TimeoutExpired:
            return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    base = fixture_samples()
    samples = base * args.repeat
    cfg = RewardConfig.rl(workers=args.workers, sample_time_cap_s=30.0)
    print(f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}; {len(base)} fixture samples x {args.repeat}, {args.workers} workers")
    print("| format | samples | ours: wall s | ours samples/s | baseline: wall s | baseline samples/s | "
          "ratio | passes ours / baseline |")
    print("|---|---|---|---|---|---|---|---|")
    scorer = CodeScorer(cfg)
    try:
        scorer.score([(c, t) for _, c, t, _ in samples[:4]])  # warm the zygotes
        for fmt in ("assert", "call", "stdio", "pytest", "codeio"):
            idx = [i for i, s in enumerate(samples) if s[0] == fmt]
            items = [(samples[i][1], samples[i][2]) for i in idx]
            t0 = time.perf_counter()
            ours = scorer.score(items)
            t_ours = time.perf_counter() - t0
            if fmt == "codeio":
                print(f"| {fmt} | {len(idx)} | {t_ours:.2f} | {len(idx) / t_ours:.0f} | - | - | - | "
                      f"{sum(r.all_pass for r in ours)} / - |")
                continue
            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.workers) as pool:
                theirs = list(pool.map(_baseline_one, [fmt] * len(idx), [samples[i][1] for i in idx],
                                       [samples[i][3] for i in idx]))
            t_base = time.perf_counter() - t0
            print(f"| {fmt} | {len(idx)} | {t_ours:.2f} | {len(idx) / t_ours:.1f} | {t_base:.2f} | "
                  f"{len(idx) / t_base:.1f} | **{t_base / t_ours:.1f}x** | {sum(r.all_pass for r in ours)} / "
                  f"{sum(theirs)} |")
    finally:
        scorer.close()


if __name__ == "__main__":
    main()
