"""Evaluate samples on a code-RL corpus's own tests: ``python -m rewards.evaluate --dataset <corpus>``.

Why: the same results layout as the EvalPlus path (``<samples stem>_eval_results.json``: ``eval`` -> task id
-> [{task_id, solution, base_status, plus_status, base_fail_tests, plus_fail_tests}], ``pass_at_k``), so every
tool that reads evalplus results reads these. ``base_status`` is the verdict on the row's tests,
``plus_status`` is equal to it (a corpus has one test set). Task ids are the training ids (``acecode/<id>``,
docs/training.md); every row of the corpus can be evaluated (no hard-subset or decontamination filter applies
here).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from .build import CorpusSelection, check_judged, corpus_tasks, judged_tasks
from .load import load_rows
from .specs import CorpusError, spec_for


def corpus_tests(corpus: str, task_ids: set[str], data_files: Sequence[str] = (), revision: str | None = None
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(task id -> CodeTests for ``task_ids``, provenance); CorpusError for unknown or unjudgeable ids."""
    check_judged(corpus)
    selection = CorpusSelection(corpus, tuple(data_files), revision, hard_subset=False, decontaminate=False)
    rows, provenance = load_rows(spec_for(corpus), selection.data_files, revision)
    tasks, _report = corpus_tasks(selection, rows, provenance)
    wanted = [t for t in tasks if t.task_id in task_ids]
    unknown = sorted(task_ids - {t.task_id for t in wanted})
    if unknown:
        raise CorpusError(f"{len(unknown)} task id(s) of the samples are not in {corpus}, e.g. "
                          f"{unknown[0]!r} (ids look like {tasks[0].task_id!r})" if tasks
                          else f"{corpus} has no rows")
    judged, report = judged_tasks(wanted)
    if len(judged) < len(wanted):
        raise CorpusError(f"{len(wanted) - len(judged)} sampled task(s) of {corpus} cannot be judged: "
                          f"{report['unjudgeable']}")
    return {t.task_id: t.tests for t in judged}, provenance


def evaluate_corpus(corpus: str, samples: list[dict], samples_path: Path, *, data_files: Sequence[str] = (),
                    revision: str | None = None, parallel: int | None = None,
                    isolation: str = "auto") -> dict:
    """Score ``samples`` (evalplus format: ``task_id`` and ``solution`` or ``completion``) on the corpus rows'
    tests, write ``<stem>_eval_results.json`` next to them and return the document."""
    import dataclasses

    from rewards.api import RewardConfig
    from rewards.code_tests import score_code_tests
    from rewards.evaluate import pass_at_k_table
    from rewards.sandbox import SandboxConfig

    tests, provenance = corpus_tests(corpus, {s["task_id"] for s in samples}, data_files, revision)
    base = RewardConfig.evaluation(workers=parallel, progress=True,
                                   sandbox=SandboxConfig(isolation=isolation))
    results: list[Any] = [None] * len(samples)
    for fmt in ("solution", "auto"):  # a `solution` is the whole program; a `completion` is extracted from
        picked = [i for i, s in enumerate(samples) if ("solution" in s) == (fmt == "solution")]
        if not picked:
            continue
        cfg = dataclasses.replace(base, completion_format=fmt)
        texts = [(samples[i].get("solution", samples[i].get("completion")), tests[samples[i]["task_id"]])
                 for i in picked]
        for i, result in zip(picked, score_code_tests(texts, cfg=cfg)):
            results[i] = result
    doc: dict = {"date": datetime.now().strftime("%Y-%m-%d %H:%M"), "dataset": corpus,
                 "provenance": provenance, "eval": defaultdict(list)}
    for sample, result in zip(samples, results):
        status = "pass" if result.base_status == "pass" else (result.base_status or "fail")
        doc["eval"][sample["task_id"]].append({
            "task_id": sample["task_id"], "solution": sample.get("solution", sample.get("completion")),
            "base_status": status, "plus_status": status, "base_fail_tests": [], "plus_fail_tests": []})
    doc["eval"] = dict(doc["eval"])
    doc["pass_at_k"] = pass_at_k_table(doc["eval"], base_only=False)
    out = samples_path.with_name(samples_path.stem + "_eval_results.json")
    out.write_text(json.dumps(doc, default=str))
    for name, values in doc["pass_at_k"].items():
        print(f"{corpus} ({name} = the row's tests): "
              + "  ".join(f"{k}: {v:.3f}" for k, v in values.items()))
    print(f"results written to {out}")
    return doc
