"""Decontamination: drop every training row that overlaps HumanEval+ or MBPP+, the benchmarks we evaluate on.

Why: a gain on a benchmark whose tasks (or near copies) were trained on measures memorisation. Compared with
the local EvalPlus release files (``../shared/data/evalplus`` or ``$LOCKSTEP_EVALPLUS_DATA``, found by
:func:`rewards.tasks.offline_file`), in this order (a row is counted once, under the first reason that hits):

* ``mbppplus_source``: Dream-Coder rows whose ``data_source`` is ``mbppplus`` (MBPP+ has one split, its 378
  evaluation tasks, so every such row is an evaluation task);
* ``prompt_exact``: the row's task text contains a benchmark task statement (an MBPP+ description, a
  HumanEval+ prompt; at least ``MIN_STATEMENT_TOKENS`` words), compared as lower-case word sequences;
* ``prompt_ngram``: the task text shares an ``N``-word sequence (default 10) with a benchmark prompt or
  canonical solution;
* ``test_call``: the row's tests contain a benchmark test input as a call,
  ``entry_point(<the same arguments>)`` (compared as word/number sequences, at least ``MIN_CALL_ARG_TOKENS``
  argument tokens);
* ``test_ngram``: the row's tests share an ``N``-word sequence (with at least two identifiers) with a
  benchmark's tests (HumanEval+ ``check``, MBPP+ assertions).

Counts per reason and per source go to the run folder (:mod:`corpora.build`); docs/training.md explains them.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from tqdm import tqdm

from .tasks import CorpusTask

NGRAM = 10
MIN_STATEMENT_TOKENS = 6
MIN_CALL_ARG_TOKENS = 3
REASONS = ("mbppplus_source", "prompt_exact", "prompt_ngram", "test_call", "test_ngram")
_WORD = re.compile(r"\w+")
_IDENT = re.compile(r"[A-Za-z_]\w*")


def words(text: str) -> list[str]:
    """Lower-case word tokens (letters, digits, underscores): punctuation, brackets and spacing do not
    count."""
    return _WORD.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> set[str]:
    return {" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def _test_ngrams(tokens: Sequence[str], n: int) -> set[str]:
    """n-grams with at least two identifiers (a run of numbers alone matches any long list of integers)."""
    identifier = [bool(_IDENT.fullmatch(t)) for t in tokens]
    return {" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1) if sum(identifier[i:i + n]) >= 2}


def _statement(task_id: str, prompt: str) -> str:
    """The task statement: MBPP+'s description line (its prompt is a docstring: description, one assert),
    HumanEval+'s whole prompt."""
    if task_id.startswith("Mbpp/"):
        lines = [line for line in prompt.strip().strip('"').strip().splitlines() if line.strip()]
        return lines[0] if lines else prompt
    return prompt


def _call_args(args: object) -> list[str]:
    return words(json.dumps(args, default=repr))


@dataclasses.dataclass
class BenchmarkIndex:
    """What training rows are compared with: prompt n-grams, statements, test calls and test n-grams of every
    benchmark task (``tasks``: the task ids indexed)."""

    n: int = NGRAM
    tasks: list[str] = dataclasses.field(default_factory=list)
    prompt_grams: dict[str, str] = dataclasses.field(default_factory=dict)    # n-gram -> task id
    # 6-gram -> (text, id)
    statements: dict[str, list[tuple[str, str]]] = dataclasses.field(default_factory=dict)
    # name -> args
    calls: dict[str, list[tuple[tuple[str, ...], str]]] = dataclasses.field(default_factory=dict)
    test_grams: dict[str, str] = dataclasses.field(default_factory=dict)

    def add(self, task_id: str, prompt: str, solution: str, entry_point: str, inputs: Iterable[object],
            tests: str) -> None:
        """Index one benchmark task (its prompt, canonical solution, test inputs and test code)."""
        self.tasks.append(task_id)
        for gram in ngrams(words(prompt), self.n) | ngrams(words(solution), self.n):
            self.prompt_grams.setdefault(gram, task_id)
        statement = words(_statement(task_id, prompt))
        if len(statement) >= MIN_STATEMENT_TOKENS:
            key = " ".join(statement[:MIN_STATEMENT_TOKENS])
            self.statements.setdefault(key, []).append((" ".join(statement), task_id))
        name = entry_point.lower()
        for args in inputs:
            tokens = tuple(_call_args(args))
            if len(tokens) >= MIN_CALL_ARG_TOKENS:
                self.calls.setdefault(name, []).append((tokens, task_id))
        for gram in _test_ngrams(words(tests), self.n):
            self.test_grams.setdefault(gram, task_id)

    def match(self, task: CorpusTask) -> tuple[str, str] | None:
        """(reason, benchmark task id) of the first overlap of ``task``, or None when it is clean."""
        if task.corpus == "dream-coder" and task.source == "mbppplus":
            return "mbppplus_source", "MBPP+"
        text = words(task.text)
        joined = " ".join(text)
        for gram in ngrams(text, MIN_STATEMENT_TOKENS):
            for statement, task_id in self.statements.get(gram, ()):
                if statement in joined:
                    return "prompt_exact", task_id
        for gram in ngrams(text, self.n):
            if gram in self.prompt_grams:
                return "prompt_ngram", self.prompt_grams[gram]
        tests = words(task.test_text)
        for i, token in enumerate(tests):
            for args, task_id in self.calls.get(token, ()):
                if tuple(tests[i + 1:i + 1 + len(args)]) == args:
                    return "test_call", task_id
        for gram in _test_ngrams(tests, self.n):
            if gram in self.test_grams:
                return "test_ngram", self.test_grams[gram]
        return None


def _read_jsonl_gz(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def benchmark_index(evalplus_dir: str | Path | None = None, n: int = NGRAM) -> BenchmarkIndex:
    """Index of HumanEval+ and MBPP+ from the local EvalPlus release files (CorpusError when absent)."""
    from rewards.tasks import offline_file

    from .specs import CorpusError

    index = BenchmarkIndex(n=n)
    for dataset in ("humaneval", "mbpp"):
        path = offline_file(dataset, data_dir=evalplus_dir)
        if path is None:
            raise CorpusError(f"decontamination needs the local {dataset} EvalPlus file "
                              "(../shared/data/evalplus, $LOCKSTEP_EVALPLUS_DATA or "
                              "lockstep.data.evalplus_dir)")
        for problem in _read_jsonl_gz(path):
            tests = problem.get("test") or problem.get("assertion") or ""
            index.add(problem["task_id"], problem["prompt"], problem.get("canonical_solution") or "",
                      problem["entry_point"], problem.get("base_input") or [], tests)
    return index


def decontaminate(tasks: Sequence[CorpusTask], index: BenchmarkIndex, progress: bool = True
                  ) -> tuple[list[CorpusTask], dict]:
    """(clean tasks, report): the report counts drops per reason and per source and lists a few examples
    (training task id -> benchmark task id)."""
    kept, reasons, sources, examples = [], Counter(), Counter(), {}
    for task in tqdm(tasks, desc="decontaminate", unit="row", disable=not progress):
        hit = index.match(task)
        if hit is None:
            kept.append(task)
            continue
        reasons[hit[0]] += 1
        sources[task.source] += 1
        if len(examples) < 20:
            examples[task.task_id] = f"{hit[0]}: {hit[1]}"
    report = {"ngram": index.n, "benchmark_tasks": len(index.tasks), "checked": len(tasks),
              "dropped": sum(reasons.values()), "by_reason": {r: reasons.get(r, 0) for r in REASONS},
              "by_source": dict(sources), "examples": examples}
    return kept, report
