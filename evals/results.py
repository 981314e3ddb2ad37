"""Run-level results table and the pass@1-vs-step plot.

Why: a training run produces a series of checkpoints (``<run>/global_step_N``) and each is evaluated
separately, often by concurrent Slurm array tasks. Every finished evaluation appends one row to
``<results_dir>/results.jsonl`` under an exclusive file lock, then re-renders the human-facing views
next to it:

* ``results.md`` — markdown table, one row per (checkpoint, eval name), sorted by task then step;
* ``results.csv`` — the same table for spreadsheets/pandas;
* ``pass_at_1.png`` — pass@1 (base and plus tests) against training step, one line pair per evaluation
  setting.

Contract: ``results.jsonl`` is append-only; when the same (checkpoint, eval_name) was appended more than once
(a re-run), the latest row wins in every view. ``python -m launch.results RESULTS_DIR`` re-renders the views.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import json
import math
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROWS_FILE = "results.jsonl"
TABLE_MD = "results.md"
TABLE_CSV = "results.csv"
PLOT_PNG = "pass_at_1.png"
LOCK_FILE = ".results.lock"

# Columns shown first (when present); every other key follows in first-seen order.
LEADING_COLUMNS = (
    "task", "eval_name", "step", "pass@1_base", "pass@1_plus", "num_tasks", "n_samples",
    "sampler", "steps", "temperature", "tokens_per_s", "checkpoint",
)


STEP_DIR = re.compile(r"^(?:global_step|step|checkpoint)[_-](\d+)$")


def parse_step(path: str | Path) -> int | None:
    """Training step of a checkpoint path: the nearest component named
    ``global_step_N``/``step_N``/``checkpoint-N``."""
    for part in reversed(Path(path).parts):
        match = STEP_DIR.match(part)
        if match:
            return int(match.group(1))
    return None


CHECKPOINTS_SUBDIR = "checkpoints"  # verl's trainer.default_local_dir in our recipes: <run>/checkpoints


def run_root(step_dir: str | Path) -> Path:
    """The run directory of a step directory: ``<run>/checkpoints/global_step_N`` (our GRPO trainer's layout)
    and ``<run>/global_step_N`` both give ``<run>``; the run-level results table lives there."""
    parent = Path(step_dir).parent
    return parent.parent if parent.name == CHECKPOINTS_SUBDIR else parent


def find_checkpoints(run_dir: str | Path) -> list[Path]:
    """Step directories of a run, sorted by step; a clear ValueError when there are none.

    Looks directly under ``run_dir`` and, when nothing is there, under ``run_dir/checkpoints`` (where
    ``launch/train_grpo.py`` writes ``global_step_N``), so both the run dir and its checkpoints dir work.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run directory {run_dir} does not exist")
    for folder in (run_dir, run_dir / CHECKPOINTS_SUBDIR):
        found = ([p for p in folder.iterdir() if p.is_dir() and STEP_DIR.match(p.name)]
                 if folder.is_dir() else [])
        if found:
            return sorted(found, key=lambda p: parse_step(p.name) or 0)
    raise ValueError(
        f"no checkpoints (global_step_N, step_N or checkpoint-N directories) under {run_dir} "
        f"or {run_dir / CHECKPOINTS_SUBDIR}"
    )


@contextlib.contextmanager
def locked(results_dir: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``results_dir`` (serialises concurrent array tasks on one FS)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    with open(results_dir / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def row_key(row: dict[str, Any]) -> tuple[str, str]:
    """Identity of a row: re-evaluating the same checkpoint with the same settings replaces the old row."""
    return (str(row.get("checkpoint", "")), str(row.get("eval_name", row.get("task", ""))))


def load_rows(results_dir: Path) -> list[dict[str, Any]]:
    """Rows of ``results.jsonl`` with duplicates resolved (latest wins); a torn last line is ignored."""
    path = Path(results_dir) / ROWS_FILE
    if not path.exists():
        return []
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    with open(path) as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a writer died mid-line; every complete row is still usable
            latest[row_key(row)] = row
    return sort_rows(list(latest.values()))


def sort_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Order by task, eval name, then step (rows without a step, e.g. a base model, first)."""

    def key(row: dict[str, Any]) -> tuple[str, str, float]:
        step = row.get("step")
        return (str(row.get("task", "")), str(row.get("eval_name", "")),
                -1.0 if step is None else float(step))

    return sorted(rows, key=key)


def columns_of(rows: list[dict[str, Any]]) -> list[str]:
    """Union of row keys: the leading columns, then other pass@k columns (by split, then k), then the rest
    in first-seen order."""
    seen: list[str] = [c for c in LEADING_COLUMNS if any(c in r for r in rows)]
    metrics = sorted({k for r in rows for k in r if k.startswith("pass@") and k not in seen},
                     key=lambda k: (k.rsplit("_", 1)[-1],
                                    int(k[5:].split("_")[0]) if k[5:].split("_")[0].isdigit() else 0))
    seen += metrics
    for row in rows:
        for key in row:
            if key not in seen:
                seen.append(key)
    return seen


def format_cell(value: Any) -> str:
    """Short, stable text for a table cell (floats to 4 significant decimals, lists/dicts as JSON)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4f}".rstrip("0").rstrip(".")
    if isinstance(value, list | dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """Markdown table of ``rows`` (``|`` inside cells escaped); empty input gives a one-line note."""
    if not rows:
        return "_no results yet_\n"
    cols = columns_of(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(format_cell(row.get(c)).replace("|", "\\|") for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    cols = columns_of(rows)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(cols)
        for row in rows:
            writer.writerow([format_cell(row.get(c)) for c in cols])


def plot_pass_at_1(rows: list[dict[str, Any]], path: Path) -> bool:
    """Plot pass@1 (base solid, plus dashed) vs step per (task, eval name); False when nothing is
    plottable."""
    series: dict[str, list[tuple[float, float | None, float | None]]] = {}
    for row in rows:
        if row.get("step") is None or "pass@1_base" not in row:
            continue
        label = f"{row.get('task', '?')} · {row.get('eval_name', '')}"
        series.setdefault(label, []).append(
            (float(row["step"]), row.get("pass@1_base"), row.get("pass@1_plus"))
        )
    if not series:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for idx, (label, points) in enumerate(sorted(series.items())):
        points.sort()
        color = f"C{idx % 10}"
        steps = [p[0] for p in points]
        ax.plot(steps, [p[1] for p in points], marker="o", color=color, label=f"{label} (base)")
        if any(p[2] is not None for p in points):
            plus = [math.nan if p[2] is None else p[2] for p in points]
            ax.plot(steps, plus, marker="s", linestyle="--", color=color, label=f"{label} (plus)")
    ax.set_xlabel("training step")
    ax.set_ylabel("pass@1")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title("pass@1 vs training step")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def render(results_dir: Path) -> dict[str, Path]:
    """(Re)write the markdown table, CSV and plot from ``results.jsonl``; returns the paths written."""
    results_dir = Path(results_dir)
    rows = load_rows(results_dir)
    written = {"markdown": results_dir / TABLE_MD, "csv": results_dir / TABLE_CSV}
    _atomic_write_text(written["markdown"], to_markdown(rows))
    write_csv(rows, written["csv"])
    plot_path = results_dir / PLOT_PNG
    if plot_pass_at_1(rows, plot_path):
        written["plot"] = plot_path
    return written


def append_row(results_dir: Path, row: dict[str, Any]) -> dict[str, Path]:
    """Append one evaluation row (fsync'd) and re-render the views, all under the directory lock."""
    results_dir = Path(results_dir)
    with locked(results_dir):
        with open(results_dir / ROWS_FILE, "a") as handle:
            handle.write(json.dumps(row, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return render(results_dir)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Render the results table (md/csv) and pass@1 plot of a run.")
    parser.add_argument("results_dir", type=Path, help="directory holding results.jsonl")
    args = parser.parse_args(argv)
    if not (args.results_dir / ROWS_FILE).exists():
        print(f"error: no {ROWS_FILE} in {args.results_dir}", file=sys.stderr)
        return 2
    with locked(args.results_dir):
        written = render(args.results_dir)
    print(to_markdown(load_rows(args.results_dir)), end="")
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
