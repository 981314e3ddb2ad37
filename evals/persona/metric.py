"""MAD accuracy (Twin-2K-500 paper metric) with test-retest, random and modal baselines.

acc(i, c) = 1 - |pred - truth| / (max_c - min_c), truth = the person's wave 1-3 answer. Anchoring columns
are first mapped to deciles 1..10 (edges = 10th..90th percentiles of the pooled wave 1-3 answers of both
arms; a value equal to an edge falls in the lower decile). Aggregation: pooled mean over (respondent,
column) cells per task; headline = unweighted mean over tasks; per-respondent summary = mean within task,
then over tasks, then over respondents.

Two scorings, both reported: ``dropped`` (unparseable answers removed, as the original does; every
baseline is computed on the same remaining cells) and ``strict`` (unparseable answers count as
accuracy 0, all valid cells kept). A cell is valid when truth and retest are both present.

Accuracy alone flatters twins (a predictor that ignores the person scores high), so the modal-answer
baseline and a per-column (item-level) Pearson correlation with the truth across respondents are reported
too (columns with < 3 answers or no variance have none).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from evals.persona.data import HoldoutItem, Respondent
from evals.persona.parse import ParsedAnswer
from evals.persona.tasks import DECILE, RANGE_TABLE, ColumnSpec

PREDICTORS = ("model", "retest", "random", "modal")


@dataclass(frozen=True)
class Cell:
    """One scored (respondent, column); all values already in scored space (deciles for anchoring)."""

    pid: str
    column: str
    task: str
    truth: float
    retest: float
    pred: float | None  # None = the model's answer was missing or invalid


def decile_edges(respondents: Iterable[Respondent], table: Mapping[str, ColumnSpec] = RANGE_TABLE) -> dict:
    """Per decile group: the 9 edges (10th..90th percentile, linear interpolation) of pooled truth values."""
    pooled: dict[str, list[float]] = defaultdict(list)
    for resp in respondents:
        for column, value in resp.truth.items():
            spec = table.get(column.upper())
            if spec is not None and spec.transform == DECILE and value is not None:
                pooled[spec.group].append(value)
    return {g: np.percentile(np.asarray(v, dtype=float), np.arange(10, 100, 10)) for g, v in pooled.items()}


def assign_decile(value: float, edges: Sequence[float]) -> int:
    """1-based decile of ``value``: the first edge it does not exceed, else 10."""
    for i, edge in enumerate(edges):
        if value <= edge:
            return i + 1
    return 10


def to_scored(value: float, spec: ColumnSpec, edges: Mapping[str, Sequence[float]]) -> float:
    """The value on the column's scoring scale (identity, or decile via the group's edges)."""
    if spec.transform == DECILE:
        if spec.group not in edges:
            raise ValueError(f"no wave 1-3 values to build decile edges for {spec.column}")
        return float(assign_decile(value, edges[spec.group]))
    return float(value)


def mad_accuracy(pred: float, truth: float, spec: ColumnSpec) -> float:
    """1 - |pred - truth| / (max - min)."""
    return 1.0 - abs(pred - truth) / spec.span


def build_cells(
    respondents: Sequence[Respondent],
    items: Sequence[HoldoutItem],
    answers: Mapping[tuple[str, str], ParsedAnswer],
    table: Mapping[str, ColumnSpec] = RANGE_TABLE,
) -> list[Cell]:
    """Cells of every asked item's scored columns; the decile edges pool all loaded respondents."""
    edges = decile_edges(respondents, table)
    by_pid = {r.pid: r for r in respondents}
    cells: list[Cell] = []
    for item in items:
        resp = by_pid[item.pid]
        parsed = answers.get((item.pid, item.qid))
        for column in item.scored:
            spec = table[column.upper()]
            raw_pred = parsed.values.get(column) if parsed is not None and parsed.ok else None
            cells.append(
                Cell(
                    pid=item.pid,
                    column=column,
                    task=spec.task,
                    truth=to_scored(resp.truth[column], spec, edges),
                    retest=to_scored(resp.retest[column], spec, edges),
                    pred=None if raw_pred is None else to_scored(raw_pred, spec, edges),
                )
            )
    return cells


def random_predictions(
    cells: Sequence[Cell], seed: int, table: Mapping[str, ColumnSpec] = RANGE_TABLE
) -> list[float]:
    """Uniform integers in [min, max] per cell, drawn in (pid, column) order from ``default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    order = sorted(range(len(cells)), key=lambda i: (cells[i].pid, cells[i].column))
    out = [0.0] * len(cells)
    for i in order:
        spec = table[cells[i].column.upper()]
        out[i] = float(rng.integers(int(spec.lo), int(spec.hi) + 1))
    return out


def modal_predictions(cells: Sequence[Cell]) -> list[float]:
    """Per column, the most frequent truth over all cells (smallest value on ties); ignores the person.

    In-sample (it sees every truth of the column), so it is an optimistic reference, not a fair model.
    """
    counts: dict[str, Counter] = defaultdict(Counter)
    for cell in cells:
        counts[cell.column][cell.truth] += 1
    mode = {col: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for col, c in counts.items()}
    return [mode[cell.column] for cell in cells]


def _mean_se(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = float(np.mean(values))
    se = float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
    return mean, se


def item_correlation(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson r across respondents of one column; None with < 3 pairs or a constant side."""
    if len(xs) < 3:
        return None
    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    if x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def _groups(cells: Sequence[Cell], keep: Sequence[int], key) -> dict:
    """Positions ``j`` in ``keep`` grouped by ``key(cell)`` (one pass; insertion order)."""
    groups: dict = defaultdict(list)
    for j, i in enumerate(keep):
        groups[key(cells[i])].append(j)
    return groups


def _per_column(cells: Sequence[Cell], keep: Sequence[int], preds: Mapping, acc: Mapping) -> dict[str, dict]:
    out: dict[str, dict] = {}
    groups = _groups(cells, keep, lambda c: c.column)
    for column in sorted(groups):
        idx = groups[column]
        row: dict = {"task": cells[keep[idx[0]]].task, "n": len(idx)}
        for name in preds:
            row[name] = float(np.mean([acc[name][j] for j in idx]))
        for name in ("model", "retest"):
            pairs = [(preds[name][keep[j]], cells[keep[j]].truth) for j in idx]
            pairs = [(a, b) for a, b in pairs if a is not None]
            row[f"{name}_corr"] = item_correlation([a for a, _ in pairs], [b for _, b in pairs])
        out[column] = row
    return out


def _per_task(cells: Sequence[Cell], keep: Sequence[int], preds: Mapping, acc: Mapping) -> dict[str, dict]:
    out: dict[str, dict] = {}
    groups = _groups(cells, keep, lambda c: c.task)
    for task in sorted(groups):
        idx = groups[task]
        row: dict = {name: float(np.mean([acc[name][j] for j in idx])) for name in preds}
        row["n_cells"] = len(idx)
        row["n_respondents"] = len({cells[keep[j]].pid for j in idx})
        row["model_over_retest"] = row["model"] / row["retest"] if row["retest"] else None
        out[task] = row
    return out


def _per_respondent(cells: Sequence[Cell], keep: Sequence[int], preds: Mapping, acc: Mapping) -> dict:
    """Mean within each task, then over the person's tasks, then over persons (with standard error)."""
    groups = _groups(cells, keep, lambda c: (c.pid, c.task))
    task_means: dict[str, list[list[float]]] = defaultdict(list)
    for (pid, _), idx in groups.items():
        task_means[pid].append([float(np.mean([acc[name][j] for j in idx])) for name in preds])
    out = {}
    for k, name in enumerate(preds):
        person_means = [float(np.mean([m[k] for m in task_means[pid]])) for pid in sorted(task_means)]
        mean, se = _mean_se(person_means)
        out[name] = {"mean": mean, "stderr": se, "n": len(person_means)}
    return out


def _score(cells: Sequence[Cell], preds: Mapping[str, Sequence[float | None]], strict: bool, table) -> dict:
    keep = [i for i, c in enumerate(cells) if strict or c.pred is not None]
    acc: dict[str, list[float]] = {}
    for name, values in preds.items():
        specs = [table[cells[i].column.upper()] for i in keep]
        acc[name] = [
            0.0 if values[i] is None else mad_accuracy(values[i], cells[i].truth, spec)
            for i, spec in zip(keep, specs)
        ]
    per_task = _per_task(cells, keep, preds, acc)
    overall = {
        name: (float(np.mean([row[name] for row in per_task.values()])) if per_task else None)
        for name in preds
    }
    per_column = _per_column(cells, keep, preds, acc)
    mean_corr = {}
    for name in ("model", "retest"):
        values = [r[f"{name}_corr"] for r in per_column.values() if r[f"{name}_corr"] is not None]
        mean_corr[name] = float(np.mean(values)) if values else None
    return {
        "n_cells": len(keep),
        "n_tasks": len(per_task),
        "overall": overall,
        "per_task": per_task,
        "per_respondent": _per_respondent(cells, keep, preds, acc),
        "per_column": per_column,
        "mean_item_correlation": mean_corr,
    }


def summarise(cells: Sequence[Cell], *, seed: int, table: Mapping[str, ColumnSpec] = RANGE_TABLE) -> dict:
    """Both scorings (``dropped``/``strict``) for model, retest, random and modal on the same cells."""
    preds = {
        "model": [c.pred for c in cells],
        "retest": [c.retest for c in cells],
        "random": random_predictions(cells, seed, table),
        "modal": modal_predictions(cells),
    }
    n_pred = sum(c.pred is not None for c in cells)
    return {
        "dropped": _score(cells, preds, strict=False, table=table),
        "strict": _score(cells, preds, strict=True, table=table),
        "cells": {
            "valid": len(cells),
            "with_prediction": n_pred,
            "coverage": n_pred / len(cells) if cells else None,
        },
        "random_seed": seed,
    }
