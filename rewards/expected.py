"""Expected outputs: run each reference solution once in the sandbox (pinned PYTHONHASHSEED=0, same digest
code as for completions) and cache digests + small values + reference CPU times on disk.

The cache is a gzip'd JSON file per dataset key (dataset hash) and harness version (hash of ``_zygote.py``), a
few MB for the full HumanEval+ instead of evalplus's 255 MB pickle. A dedicated pool computes it and is then
closed, so no zygote that later runs completions ever handled reference outputs.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

from tqdm import tqdm

from . import _zygote
from .judge import TaskExpected, _is_floats, decode_value
from .sandbox import Job, SandboxConfig, SandboxPool
from .tasks import VALUE_ORACLES, Task

SETS = ("base", "plus")
GT_TEST_LIMIT_S = 60.0
GT_TASK_BUDGET_S = 1800.0


def cache_dir() -> Path:
    """$LOCKSTEP_CACHE_DIR/expected, else ~/.cache/lockstep/expected (XDG_CACHE_HOME honoured)."""
    base = os.environ.get("LOCKSTEP_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lockstep")
    return Path(base) / "expected"


def harness_version() -> str:
    """Hash of every file of the sandboxed harness (digest, child loop, supervision)."""
    from .isolation import HARNESS_FILES

    return hashlib.md5(b"".join(f.read_bytes() for f in HARNESS_FILES)).hexdigest()[:12]


def _cache_path(key: str, directory: Path | None) -> Path:
    return (directory or cache_dir()) / f"{key}-h{harness_version()}.json.gz"


class ReferenceFailed(RuntimeError):
    """A reference solution did not run cleanly on its own inputs: its expected outputs would be wrong."""


def _needs_values(task: Task) -> bool:
    return task.oracle in VALUE_ORACLES or bool(task.atol)


def _from_values(task: Task) -> TaskExpected:
    """Caller-supplied expected values: digest them with the sandbox's own digest function."""
    digests, values = [], []
    for s, outs in enumerate((task.expected_base, task.expected_plus or [])):
        inputs = task.base_inputs if s == 0 else task.plus_inputs
        if task.oracle == "not_none":
            outs = [o if type(o) is bool else o is not None for o in outs]
        elif task.oracle == "set_eq":
            outs = [set(o) for o in outs]
        digests.append([_zygote.digest(o) for o in outs])
        keep = _needs_values(task) or any(_is_floats(o) for o in outs)
        values.append({i: json.dumps(_zygote.encode_value(o)) for i, o in enumerate(outs)} if keep else {})
        assert len(outs) == len(inputs)
    return TaskExpected(digests=digests, ref_times=[[0.0] * len(d) for d in digests], values=values)


def _gt_job(task: Task) -> Job:
    sizes = [len(task.base_inputs), len(task.plus_inputs)]
    return Job(code=task.reference_solution or "", entry_point=task.entry_point,
               inputs=task.inputs_bytes(SETS), limits=[[GT_TEST_LIMIT_S] * n for n in sizes],
               cpu_budget_s=GT_TASK_BUDGET_S, wall_budget_s=2 * GT_TASK_BUDGET_S, mode=task.child_mode,
               values=True, timing=True, load_limit_s=GT_TEST_LIMIT_S)


def _collect(task: Task, raw) -> TaskExpected:
    sizes = [len(task.base_inputs), len(task.plus_inputs)]
    digests = [[""] * n for n in sizes]
    times = [[0.0] * n for n in sizes]
    vals: list[list] = [[None] * n for n in sizes]
    if raw.infra_error:
        raise ReferenceFailed(f"{task.task_id}: sandbox infrastructure failed: {raw.infra_error}")
    problems = []
    for line in raw.records[1:] if raw.records and raw.records[0] == b'["loaded"]' else []:
        rec = json.loads(line)
        s, i = rec[0], rec[1]
        if rec[2] != "ok":
            problems.append(f"{'base' if s == 0 else 'plus'}[{i}] {rec[2]} {rec[3] if len(rec) > 3 else ''}")
            continue
        digests[s][i], vals[s][i], times[s][i] = rec[3], rec[4], rec[5]
    if not raw.records or raw.records[0] != b'["loaded"]':
        problems.append(f"reference did not load: {raw.records[:1]} {raw.status}")
    missing = sum(1 for d in digests for x in d if not x)
    if problems or missing:
        raise ReferenceFailed(f"{task.task_id}: reference solution failed on its own tests "
                              f"({missing} without output; {problems[:3]}; status {raw.status})")
    values = []
    for s in range(2):
        keep = _needs_values(task) or any(v is not None and _is_floats(decode_value(v)) for v in vals[s])
        values.append({i: v for i, v in enumerate(vals[s]) if v is not None} if keep else {})
    return TaskExpected(digests=digests, ref_times=times, values=values)


def _dump(path: Path, key: str, table: dict[str, TaskExpected]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"key": key, "harness": harness_version(), "tasks": {
        tid: {"d": ["".join(d) for d in e.digests], "t": [[round(t, 5) for t in ts] for ts in e.ref_times],
              "v": [{str(i): v for i, v in vs.items()} for vs in e.values]} for tid, e in table.items()}}
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with gzip.open(tmp, "wt") as f:
        json.dump(doc, f, separators=(",", ":"))
    os.replace(tmp, path)


def _load(path: Path) -> dict[str, TaskExpected]:
    with gzip.open(path, "rt") as f:
        doc = json.load(f)
    w = 2 * _zygote.DIGEST_BYTES
    return {tid: TaskExpected(digests=[[d[k:k + w] for k in range(0, len(d), w)] for d in e["d"]],
                              ref_times=e["t"], values=[{int(i): v for i, v in vs.items()} for vs in e["v"]])
            for tid, e in doc["tasks"].items()}


def ensure_expected(tasks: dict[str, Task], key: str, *, workers: int | None = None,
                    sandbox: SandboxConfig | None = None, directory: Path | None = None,
                    progress: bool = True) -> dict[str, TaskExpected]:
    """Expected outputs for all tasks, from the cache when present, else computed once and cached."""
    direct = {tid: _from_values(t) for tid, t in tasks.items() if t.reference_solution is None}
    todo = {tid: t for tid, t in tasks.items() if t.reference_solution is not None}
    if not todo:
        return direct
    path = _cache_path(key, directory)
    if path.is_file():
        table = _load(path)
        if set(todo) <= set(table):
            return {**{tid: table[tid] for tid in todo}, **direct}
    table = {}
    # Largest tasks first so the slowest ones do not end up alone on one core at the end.
    order = sorted(todo.values(), key=lambda t: -(len(t.base_inputs) + len(t.plus_inputs)))
    with SandboxPool(workers, sandbox) as pool:
        futures = [(t, pool.submit(_gt_job(t))) for t in order]
        for t, fut in tqdm(futures, desc=f"expected outputs ({key})", disable=not progress, unit="task"):
            table[t.task_id] = _collect(t, fut.result())
    _dump(path, key, table)
    return {**table, **direct}
