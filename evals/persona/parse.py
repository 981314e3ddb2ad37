"""Parse and validate one model answer against the question it answers.

Contract: :func:`parse_answer` returns either one value per column of the item or an error string; it never
fills anything in. A failed item stays missing (the original pipeline kept the template's real wave-4
answers for failed items and scored them as the model's; we strip answers before rendering and never
look at them here).

Accepted shapes (after stripping whitespace and one optional ``` / ```json fence):
- single choice: an integer option number 1..k (``3`` or ``"3"``);
- matrix: a JSON list of integers, one per row, each 1..k;
- slider: a number (one statement) or a JSON list of numbers, each within the slider range;
- numeric text entry: a number (within the range for bounded columns, any finite value for deciles).
Anything else (trailing prose, floats for options, wrong lengths, out of range) is an error.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from evals.persona.data import HoldoutItem, to_number
from evals.persona.tasks import RANGE_TABLE

_FENCE = re.compile(r"^```(?:json)?\s*\n?(.*?)\n?```$", re.DOTALL)


@dataclass(frozen=True)
class ParsedAnswer:
    """``values`` (column -> number) when valid, else ``error`` says why."""

    values: dict[str, float] | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.values is not None


def _fail(reason: str) -> ParsedAnswer:
    return ParsedAnswer(None, reason)


def _body(text: str) -> Any:
    text = text.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    if not text:
        raise ValueError("empty answer")
    return json.loads(text)


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
        return int(value)
    return None


def _as_number(value: Any) -> float | None:
    if isinstance(value, list | dict | bool) or value is None:
        return None
    return to_number(value)


def _in_range(column: str, value: float) -> bool:
    spec = RANGE_TABLE.get(column.upper())
    if spec is None or spec.transform != "identity":
        return True
    return spec.lo <= value <= spec.hi


def parse_answer(text: str, item: HoldoutItem) -> ParsedAnswer:
    """Validate ``text`` as an answer to ``item`` (see module docstring for the accepted shapes)."""
    try:
        body = _body(text)
    except (ValueError, json.JSONDecodeError) as err:
        return _fail(f"not a JSON value: {err}")
    q = item.question
    columns = item.columns
    if item.kind == "single":
        k = len(q.get("Options") or [])
        pos = _as_int(body)
        if pos is None:
            return _fail(f"expected an option number, got {type(body).__name__}")
        if not 1 <= pos <= k:
            return _fail(f"option {pos} outside 1..{k}")
        return ParsedAnswer({columns[0]: float(pos)}, None)
    if item.kind == "matrix":
        k = len(q.get("Columns") or [])
        if not isinstance(body, list) or len(body) != len(columns):
            return _fail(f"expected a list of {len(columns)} option numbers")
        positions = [_as_int(v) for v in body]
        if any(p is None or not 1 <= p <= k for p in positions):
            return _fail(f"matrix entries must be integers 1..{k}")
        return ParsedAnswer({c: float(p) for c, p in zip(columns, positions)}, None)
    if item.kind in ("slider", "number"):
        values = body if isinstance(body, list) else [body]
        if item.kind == "number" and isinstance(body, list):
            return _fail("expected a single number")
        if len(values) != len(columns):
            return _fail(f"expected {len(columns)} number(s)")
        numbers = [_as_number(v) for v in values]
        if any(x is None for x in numbers):
            return _fail("expected numbers")
        bad = [c for c, x in zip(columns, numbers) if not _in_range(c, x)]
        if bad:
            return _fail(f"value out of range for {bad}")
        return ParsedAnswer({c: float(x) for c, x in zip(columns, numbers)}, None)
    return _fail(f"question kind {item.kind!r} is not scored")
