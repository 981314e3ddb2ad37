"""From a corpus name to judged, decontaminated training tasks, with a report of every row dropped and why.

Why one pipeline: data preparation (``launch/prepare_data.py``) and evaluation (``python -m rewards.evaluate
--dataset <corpus>``) must agree on which rows exist, their task ids and their tests. Steps, in order:

1. load (hub at a pinned revision, or local files; :mod:`corpora.load`);
2. AceCode only: DiffuCoder's hard subset (``hard_subset``) and its signature copies (:mod:`corpora.acecode`);
3. row -> task (id, task text, test text); a row missing what it needs is dropped as ``unparseable``;
4. decontamination against HumanEval+/MBPP+ (``decontaminate``; :mod:`corpora.decontam`);
5. the row's tests, :func:`rewards.code_tests.tests_from_row`; ``UnjudgeableRow`` drops are counted by reason;
6. the prompt budget (``max_prompt_tokens`` with a token counter): longer prompts are dropped as ``too_long``;
7. ``max_rows`` (0 = all): the first rows, in file order.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tqdm import tqdm

from .specs import CorpusError, spec_for
from .tasks import CorpusTask, RowProblem, make_task


@dataclasses.dataclass(frozen=True)
class CorpusSelection:
    """What to train on: ``corpus`` (a name of ``corpora.CORPUS_NAMES``), ``data_files`` (local files; none =
    the hub at ``revision``), ``hard_subset`` (AceCode only), ``max_rows`` (0 = all), ``decontaminate`` and
    ``evalplus_dir`` (where the benchmark files are; None = the default places)."""

    corpus: str
    data_files: tuple[str, ...] = ()
    revision: str | None = None
    hard_subset: bool = True
    max_rows: int = 0
    decontaminate: bool = True
    evalplus_dir: str | None = None


@dataclasses.dataclass(frozen=True)
class TrainingTask:
    """A task ready to train on or evaluate: the :class:`corpora.tasks.CorpusTask` and its tests
    (``rewards.code_tests.CodeTests``)."""

    task: CorpusTask
    tests: Any

    @property
    def task_id(self) -> str:
        return self.task.task_id


def prompt_messages(text: str) -> list[dict[str, str]]:
    """The user turn of a training prompt: the evaluation template (:func:`rewards.extract.instruct_messages`)
    around the corpus's task text, so training and validation prompts have one form."""
    from rewards.extract import instruct_messages

    return instruct_messages(text)[:1]


def check_judged(corpus: str) -> None:
    """CorpusError (one line) unless ``corpus`` is known and its test formats are judged today."""
    from rewards.code_tests import JUDGED_CORPORA

    spec_for(corpus)
    if corpus not in JUDGED_CORPORA:
        raise CorpusError(f"{corpus}: its test formats are not judged yet, so it can be neither trained on "
                          f"nor evaluated; judged corpora: {', '.join(sorted(JUDGED_CORPORA)) or 'none'}")


def corpus_tasks(selection: CorpusSelection, rows: Any, provenance: Mapping[str, Any], progress: bool = True
                 ) -> tuple[list[CorpusTask], dict]:
    """Steps 2-3: the tasks of the loaded rows and what was dropped as unparseable (by reason)."""
    spec = spec_for(selection.corpus)
    report: dict[str, Any] = {}
    indexed = enumerate(rows)
    if selection.corpus == "acecode":
        from .acecode import cached_hard_subset_ids, expand_rows

        if selection.hard_subset:
            ids, cached = cached_hard_subset_ids(rows, provenance, progress=progress)
            keep = set(ids)
            report["hard_subset"] = {"rows_in": len(rows), "kept": len(keep), "cached": cached}
            positions = [i for i, row_id in enumerate(rows["id"]) if str(row_id) in keep]  # one column: fast
            indexed = zip(positions, rows.select(positions))
        indexed = expand_rows(indexed)
    else:
        indexed = ((i, row, "") for i, row in indexed)
    tasks, problems = [], Counter()
    for index, row, suffix in tqdm(indexed, desc=f"{selection.corpus} rows", unit="row",
                                   disable=not progress):
        try:
            task = make_task(spec, row, index)
        except RowProblem as problem:
            problems[str(problem)] += 1
            continue
        tasks.append(dataclasses.replace(task, task_id=task.task_id + suffix) if suffix else task)
    report["unparseable"] = dict(problems)
    return tasks, report


def judged_tasks(tasks: Sequence[CorpusTask], progress: bool = True) -> tuple[list[TrainingTask], dict]:
    """Step 5: each task with its tests; rows ``tests_from_row`` refuses are counted by its reason."""
    from rewards.code_tests import UnjudgeableRow, tests_from_row

    out, refused, excluded = [], Counter(), 0
    for task in tqdm(tasks, desc="tests", unit="row", disable=not progress):
        try:
            tests = tests_from_row(task.corpus, task.row)
        except UnjudgeableRow as error:
            refused[str(error)] += 1
            continue
        excluded += int(getattr(tests, "excluded", 0) or 0)
        out.append(TrainingTask(task, tests))
    return out, {"unjudgeable": dict(refused), "excluded_cases": excluded}


def within_budget(tasks: Sequence[TrainingTask], count_tokens: Callable[[list[dict[str, str]]], int] | None,
                  max_prompt_tokens: int | None, progress: bool = True) -> tuple[list[TrainingTask], int]:
    """Step 6: the tasks whose prompt fits ``max_prompt_tokens`` (all when no counter/budget is given)."""
    if count_tokens is None or not max_prompt_tokens:
        return list(tasks), 0
    kept = [t for t in tqdm(tasks, desc="prompt budget", unit="row", disable=not progress)
            if count_tokens(prompt_messages(t.task.text)) <= max_prompt_tokens]
    return kept, len(tasks) - len(kept)


def build_tasks(selection: CorpusSelection, *,
                count_tokens: Callable[[list[dict[str, str]]], int] | None = None,
                max_prompt_tokens: int | None = None, progress: bool = True
                ) -> tuple[list[TrainingTask], dict]:
    """Steps 1-7 (module docstring): the training tasks and the report written to the run folder."""
    from .decontam import benchmark_index, decontaminate
    from .load import load_rows

    check_judged(selection.corpus)
    if selection.max_rows < 0:
        raise CorpusError(f"max_rows must be >= 0, got {selection.max_rows}")
    rows, provenance = load_rows(spec_for(selection.corpus), selection.data_files, selection.revision)
    spec = spec_for(selection.corpus)
    report: dict[str, Any] = {"corpus": selection.corpus, "licence": spec.licence, "provenance": provenance,
                              "rows_loaded": len(rows)}
    tasks, task_report = corpus_tasks(selection, rows, provenance, progress)
    report.update(task_report)
    if selection.decontaminate:
        tasks, report["decontamination"] = decontaminate(tasks, benchmark_index(selection.evalplus_dir),
                                                         progress=progress)
    judged, judge_report = judged_tasks(tasks, progress)
    report.update(judge_report)
    judged, report["too_long"] = within_budget(judged, count_tokens, max_prompt_tokens, progress)
    if selection.max_rows:
        judged = judged[:selection.max_rows]
    report["tasks"] = len(judged)
    if not judged:
        dropped = {"unparseable": sum(report["unparseable"].values()),
                   "decontaminated": report.get("decontamination", {}).get("dropped", 0),
                   "unjudgeable": sum(report["unjudgeable"].values()), "too_long": report["too_long"]}
        raise CorpusError(f"{selection.corpus}: no task left of {report['rows_loaded']} rows "
                          f"(dropped: {dropped})")
    return judged, report
