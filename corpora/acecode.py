"""AceCode-87K: DiffuCoder's hard subset (from the rows' ``inferences`` pass rates) and its prompt rule.

Why: DiffuCoder (apple/ml-diffucoder ``recipes/process_data.py``) trains on the ~21K rows the reference models
found hard *and* disagreed on, not on all 87K; reproducing it needs the pass rates, which only the raw rows
carry. The kept ids are cached (``$LOCKSTEP_CACHE_DIR`` or ``~/.cache/lockstep``, ``corpora/``), keyed by what
was loaded (the hub commit or the files' sha256), so the 87K-row pass runs once per data version.

The rule (docs/training.md, "Training corpora"): keep the inferences of ``qwen_coder_2.5`` and
``llama3_instruct``; a row's mean and (population) std of their pass rates; keep rows whose mean is at most
the 20th percentile of all means and whose std is at least the 40th percentile of all stds (percentiles over
the rows that have such inferences; rows without any are dropped, as DiffuCoder's NaN mean drops them).
A row whose question does not address "you" and whose best inference starts with ``def`` gets a second task,
``<id>/signature``, whose question is DiffuCoder's rewrite around that signature.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .tasks import RowProblem, as_value

HARD_MODELS = ("qwen_coder_2.5", "llama3_instruct")
MEAN_PERCENTILE, STD_PERCENTILE = 20, 40
RULE_VERSION = "diffucoder-hard-v1"
SIGNATURE_SUFFIX = "/signature"


def _inferences(row: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    value = as_value(row.get("inferences"))
    return [i for i in value or [] if isinstance(i, Mapping)]


def reference_pass_rates(row: Mapping[str, Any]) -> list[float]:
    """Pass rates of the row's inferences by the two reference models (unparseable ones skipped)."""
    rates = []
    for inference in _inferences(row):
        try:
            if inference.get("model_name") in HARD_MODELS:
                rates.append(float(inference["pass_rate"]))
        except (KeyError, TypeError, ValueError):
            continue
    return rates


def hard_subset_ids(rows: Any, progress: bool = True) -> list[str]:
    """Ids of the rows DiffuCoder's hard-subset rule keeps (``rows``: an iterable of row dicts)."""
    ids, means, stds = [], [], []
    for row in tqdm(rows, desc="acecode hard subset", unit="row", disable=not progress):
        rates = reference_pass_rates(row)
        if rates and row.get("id") is not None:
            ids.append(str(row["id"]))
            means.append(float(np.mean(rates)))
            stds.append(float(np.std(rates)))
    if not ids:
        return []
    mean_max = float(np.percentile(means, MEAN_PERCENTILE))
    std_min = float(np.percentile(stds, STD_PERCENTILE))
    return [i for i, m, s in zip(ids, means, stds) if m <= mean_max and s >= std_min]


def _cache_file(provenance: Mapping[str, Any]) -> Path:
    key = hashlib.sha256(json.dumps({"rule": RULE_VERSION, **provenance},
                                    sort_keys=True).encode()).hexdigest()
    root = Path(os.environ.get("LOCKSTEP_CACHE_DIR") or Path.home() / ".cache" / "lockstep")
    return root / "corpora" / f"acecode-hard-{key[:20]}.json"


def cached_hard_subset_ids(rows: Any, provenance: Mapping[str, Any], progress: bool = True
                           ) -> tuple[list[str], bool]:
    """(kept ids, whether they came from the cache); computes and stores them on a miss."""
    path = _cache_file(provenance)
    if path.is_file():
        try:
            return list(json.loads(path.read_text())["ids"]), True
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a damaged cache file is recomputed and rewritten
    selected = rows.select_columns(["id", "inferences"]) if hasattr(rows, "select_columns") else rows
    ids = hard_subset_ids(selected, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"rule": RULE_VERSION, "provenance": dict(provenance), "ids": ids}))
    tmp.replace(path)
    return ids, False


def signature_question(row: Mapping[str, Any]) -> str | None:
    """DiffuCoder's rewritten question (the best inference's ``def`` line around the question), or None when
    the row addresses "you" or its best inference does not start with ``def``."""
    question = row.get("question")
    if not isinstance(question, str) or not question.strip() or "you" in question.lower():
        return None
    scored = []
    for inference in _inferences(row):
        try:
            scored.append((float(inference.get("pass_rate")), str(inference.get("completion") or "")))
        except (TypeError, ValueError):
            continue
    if not scored:
        return None
    best = max(scored, key=lambda item: item[0])[1]  # first of the best on ties
    head = best.split(":\n")[0]
    if not head.startswith("def "):
        return None
    return f'Please complete the following problem:\n```\n{head}:\n    """\n    {question}\n    """\n```\n'


def acecode_text(row: Mapping[str, Any]) -> str:
    """DiffuCoder's user prompt: the question and the first test case, or the rewritten question as is."""
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise RowProblem("no question")
    if "\n```\n" in question:
        return question.strip()
    tests = as_value(row.get("test_cases"))
    if not isinstance(tests, list) or not tests or not isinstance(tests[0], str):
        raise RowProblem("no test_cases")
    return f"{question.strip()}\nTest cases: {tests[0]}"


def expand_rows(rows: Iterator[tuple[int, Mapping[str, Any]]]
                ) -> Iterator[tuple[int, Mapping[str, Any], str]]:
    """(index, row, id suffix) for each row, plus a ``/signature`` copy whose question is the rewrite."""
    for index, row in rows:
        yield index, row, ""
        rewritten = signature_question(row)
        if rewritten is not None:
            yield index, {**row, "question": rewritten}, SIGNATURE_SUFFIX
