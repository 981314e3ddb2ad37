"""Turn a corpus row into a training task: a stable task id, the task text of the prompt, the text of its
tests.

Why here and not in ``rewards/``: the prompt wording, the ids and what decontamination compares are data
choices; how a row's test columns are judged is :func:`rewards.code_tests.tests_from_row` (called by
:mod:`corpora.build`). Every column read here is read defensively: a struct column may arrive as a JSON string
(``metadata`` differs between revisions), extra columns are ignored, a missing one is a row problem.
Prompt rules per corpus (the public repos' task text, inside our evaluation template): docs/training.md.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from typing import Any

from .specs import CorpusSpec

# TraceRL's stdio instruction (Gen-Verse/dLLM-RL sample/dream_rl_rollout.py), our wording after the task
STDIO_HINT = "Use input() to read input and print() to produce output in your script."


class RowProblem(ValueError):
    """A row that cannot become a task (missing or malformed column); ``str()`` is the drop-count reason."""


@dataclasses.dataclass(frozen=True)
class CorpusTask:
    """One training task: ``task_id`` (``<corpus>/<row id>``), ``text`` (the task as the prompt shows it),
    ``test_text`` (the row's tests as text, for decontamination), ``source`` (the row's seed set / subset /
    data source, for per-source counts), ``row`` (the row as ``datasets`` yields it, for the tests)."""

    task_id: str
    corpus: str
    text: str
    test_text: str
    source: str
    row: Mapping[str, Any]


def as_value(value: Any) -> Any:
    """A struct/list column as Python data whether the revision stores it as a struct or as a JSON string."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def string_leaves(value: Any, depth: int = 0) -> Iterator[str]:
    """Every string (and number, as text) inside a possibly JSON-encoded, even doubly encoded, value: test
    data as text for decontamination."""
    value = as_value(value) if depth < 3 else value
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from string_leaves(item, depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from string_leaves(item, depth + 1)
    elif isinstance(value, (int, float)):
        yield str(value)


def _text(row: Mapping[str, Any], column: str) -> str:
    value = row.get(column)
    if not isinstance(value, str) or not value.strip():
        raise RowProblem(f"no {column}")
    return value


def _last_user_message(value: Any) -> str:
    messages = as_value(value)
    if isinstance(messages, str):
        return messages
    users = [m.get("content") for m in messages or [] if isinstance(m, Mapping) and m.get("role") == "user"]
    if not users or not isinstance(users[-1], str):
        raise RowProblem("no user message in prompt")
    return users[-1]


def task_text(corpus: str, row: Mapping[str, Any]) -> str:
    """The task as the training prompt states it (inside the evaluation template, :mod:`corpora.build`)."""
    if corpus == "acecode":
        from .acecode import acecode_text

        return acecode_text(row)
    if corpus in ("kodcode-light", "kodcode-v1"):
        return _text(row, "question").strip()
    if corpus.startswith("deepcoder-"):
        starter = row.get("starter_code")
        text = _text(row, "problem").strip()
        return f"{text}\n\n{starter.strip()}" if isinstance(starter, str) and starter.strip() else text
    if corpus == "primeintellect":
        text = _text(row, "question").strip()
        return f"{text}\n{STDIO_HINT}" if row.get("test_method") == "stdio" else text
    if corpus == "dream-coder":
        return _last_user_message(row.get("prompt")).strip()
    raise ValueError(f"unknown corpus {corpus!r}")


def test_text(corpus: str, row: Mapping[str, Any]) -> str:
    """The row's tests (asserts, pytest file, stdin/stdout, JSON specs) as one text, for decontamination."""
    columns = {"acecode": ("test_cases",), "kodcode-light": ("test",), "kodcode-v1": ("test",),
               "primeintellect": ("test_input", "test_output", "test_list"), "dream-coder": ("info",)}
    names = columns.get(corpus, ("tests",))
    return "\n".join(text for name in names for text in string_leaves(row.get(name)))


def source_of(corpus: str, row: Mapping[str, Any]) -> str:
    """Per-source key of the drop counts: AceCode ``source``, KodCode ``subset``, Dream-Coder
    ``data_source``."""
    column = {"acecode": "source", "kodcode-light": "subset", "kodcode-v1": "subset",
              "dream-coder": "data_source"}.get(corpus)
    value = row.get(column) if column else None
    return str(value) if value else corpus


def make_task(spec: CorpusSpec, row: Mapping[str, Any], index: int, task_id: str | None = None) -> CorpusTask:
    """The :class:`CorpusTask` of row ``index`` (RowProblem when a column it needs is missing)."""
    try:
        task_id = task_id or spec.task_id(dict(row), index)
    except ValueError as error:
        raise RowProblem(str(error)) from None
    return CorpusTask(task_id, spec.name, task_text(spec.name, row),
                      test_text(spec.name, row), source_of(spec.name, row), row)
