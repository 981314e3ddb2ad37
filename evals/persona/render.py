"""Prompt rendering: persona variants, questions (answers shown or ``[Masked]``), and the 2048-token fit.

Why one question per prompt: Dream's usable context is 2048 tokens. A single prompt with all ~65 wave-4
questions leaves no room for the persona and cannot hold the answers in a short canvas. Each prompt here is
[system] [persona] [one question + a compact per-type answer format], and only the persona is shortened,
at the token level, from its start: the question and the format instructions at the end always survive.

Contract of :func:`build_prompt`: the returned text, tokenized without extra special tokens, is at most
``max_context - max_new_tokens`` tokens; ``persona_tokens - persona_tokens_kept`` tokens were cut (recorded).
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from evals.persona.data import HoldoutItem, Respondent, iter_questions, question_kind
from evals.persona.tasks import RANGE_TABLE

VARIANTS = ("full", "json", "summary", "summary+text")
MASKED = "[Masked]"
CUT_MARK = "[... earlier responses omitted ...]\n"
SYSTEM_PROMPT = (
    "You are simulating one specific person taking a survey. The Persona Profile lists this person's own "
    "past survey responses. Answer the New Survey Question exactly as this person would, consistent with "
    "the profile, and follow the Format Instructions exactly."
)


class PersonaUnavailable(ValueError):
    """The requested persona variant is empty for this respondent (never prompt with an empty persona)."""


class PromptTooLong(ValueError):
    """Even with the whole persona removed, the question and instructions do not fit the context."""


def clean_text(text: Any) -> str:
    """QuestionText without HTML tags/entities, whitespace collapsed."""
    text = re.sub(r"<[^>]+>", " ", str(text or ""))
    text = html.unescape(text.replace("&nbsp;", " "))
    return re.sub(r"\s+", " ", text).strip()


NO_ANSWER = "[No Answer Provided]"


def _pick(values: Any, i: int) -> Any:
    if isinstance(values, list):
        return values[i] if i < len(values) else None
    return values if i == 0 else None


def _blank(value: Any) -> bool:
    return value is None or value == ""


def _position_text(pos: Any, labels: Sequence[str]) -> str:
    """``"3 - label"`` for a valid 1-based position, the raw value otherwise."""
    ok = str(pos).isdigit() and 0 < int(pos) <= len(labels)
    return f"{pos} - {labels[int(pos) - 1]}" if ok else str(pos)


def _choice(q: Mapping[str, Any], answers: Mapping[str, Any] | None, kind: str) -> list[str]:
    options = [clean_text(o) for o in q.get("Options") or []]
    lines = ["Question Type: " + ("Single Choice" if kind == "single" else "Multiple Choice"), "Options:"]
    lines += [f"  {i} - {o}" for i, o in enumerate(options, 1)]
    if answers is None:
        return [*lines, f"Answer: {MASKED}"]
    pos = answers.get("SelectedByPosition")
    chosen = [_position_text(p, options) for p in (pos if isinstance(pos, list) else [pos]) if not _blank(p)]
    return [*lines, "Answer: " + (", ".join(chosen) if chosen else NO_ANSWER)]


def _matrix(q: Mapping[str, Any], answers: Mapping[str, Any] | None) -> list[str]:
    columns = [clean_text(c) for c in q.get("Columns") or []]
    lines = ["Question Type: Matrix", "Options:"] + [f"  {i} = {c}" for i, c in enumerate(columns, 1)]
    for k, row in enumerate(q.get("Rows") or []):
        lines.append(f"{k + 1}. {clean_text(row)}")
        if answers is None:
            lines.append(f"Answer: {MASKED}")
            continue
        pos = _pick(answers.get("SelectedByPosition"), k)
        lines.append(f"Answer: {NO_ANSWER if _blank(pos) else _position_text(pos, columns)}")
    return lines


def _slider(q: Mapping[str, Any], answers: Mapping[str, Any] | None) -> list[str]:
    lines = ["Question Type: Slider"]
    for k, statement in enumerate(q.get("Statements") or [""]):  # from Statements, never from the answers
        lines.append(f"{k + 1}. {clean_text(statement) or '[No Statement Needed]'}")
        value = None if answers is None else _pick(answers.get("Values"), k)
        lines.append(f"Answer: {MASKED if answers is None else (NO_ANSWER if _blank(value) else value)}")
    return lines


def _text_entry(q: Mapping[str, Any], answers: Mapping[str, Any] | None, kind: str) -> list[str]:
    if kind == "number":
        value = None if answers is None else answers.get("Text")
        shown = MASKED if answers is None else (NO_ANSWER if _blank(value) else value)
        return ["Question Type: Text Entry", f"Answer: {shown}"]
    lines = ["Question Type: Text Entry (Form)"]
    for k, label in enumerate(q.get("Rows") or []):
        value = None if answers is None else _pick(answers.get("Text"), k)
        if isinstance(value, Mapping):
            value = next(iter(value.values()), None)
        lines.append(f"{clean_text(label)}: {MASKED if answers is None else value}")
    return lines


def render_question(q: Mapping[str, Any], *, mask: bool) -> str:
    """One question as text; ``mask=True`` never reads ``Answers`` and prints ``[Masked]`` instead."""
    kind = question_kind(q)
    answers = None if mask else (q.get("Answers") or {})
    if kind in ("single", "multi"):
        body = _choice(q, answers, kind)
    elif kind == "matrix":
        body = _matrix(q, answers)
    elif kind == "slider":
        body = _slider(q, answers)
    elif kind in ("number", "form"):
        body = _text_entry(q, answers, kind)
    elif kind == "db":
        body = ["[Descriptive Information]"]
    else:
        body = [f"Question Type: {q.get('QuestionType', 'unknown')}"]
    return "\n".join([clean_text(q.get("QuestionText")), *body])


def render_persona_json(elements: Sequence[Mapping[str, Any]]) -> str:
    """The persona from its JSON, every question with its answer (blank line between questions)."""
    return "\n\n".join(render_question(q, mask=False) for _, q in iter_questions(elements)).strip()


def persona_for_variant(resp: Respondent, variant: str) -> str:
    """Persona text for ``variant`` (full | json | summary | summary+text); raises if it would be empty."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown persona variant {variant!r}; choose one of {VARIANTS}")
    text = resp.persona_text.strip()
    summary = (resp.persona_summary or "").strip()
    if variant == "full":
        persona = text
    elif variant == "json":
        persona = render_persona_json(resp.persona_json)
    elif variant == "summary":
        persona = summary
    else:
        persona = f"{summary}\n\n--- Detailed Responses ---\n\n{text}" if summary and text else ""
    if not persona:
        raise PersonaUnavailable(f"pid {resp.pid}: persona variant {variant!r} is empty")
    return persona


def _bounds(column: str, default: tuple[float, float]) -> tuple[float, float]:
    spec = RANGE_TABLE.get(column.upper())
    if spec is None or spec.transform != "identity":
        return default
    return spec.lo, spec.hi


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def answer_format(item: HoldoutItem) -> str:
    """Compact format instructions: a 32-64 token canvas is enough for every answer shape."""
    q = item.question
    n = len(item.columns)
    if item.kind == "single":
        k = len(q.get("Options") or [])
        return f"Reply with only the number (1-{k}) of the option this person would choose. No other text."
    if item.kind == "matrix":
        k = len(q.get("Columns") or [])
        example = ", ".join(str(1 + (i % k)) for i in range(n))
        return (
            f"Reply with only a JSON list of {n} integers: for each row in order, the number (1-{k}) of the "
            f"option this person would choose, e.g. [{example}]. No other text."
        )
    if item.kind == "slider":
        lo, hi = _bounds(item.columns[0], (0, 100))
        if n == 1:
            return f"Reply with only a number from {_fmt(lo)} to {_fmt(hi)}. No other text."
        return (
            f"Reply with only a JSON list of {n} numbers, each from {_fmt(lo)} to {_fmt(hi)}. No other text."
        )
    if item.kind == "number":
        spec = RANGE_TABLE.get(item.columns[0].upper())
        if spec is not None and spec.transform == "identity":
            return f"Reply with only a number from {_fmt(spec.lo)} to {_fmt(spec.hi)}. No other text."
        return "Reply with only a number. No other text."
    raise ValueError(f"{item.qid}: question kind {item.kind!r} is not a holdout answer type")


def user_message(persona: str, item: HoldoutItem) -> str:
    """The user turn: persona first (the part that may be cut), question and format instructions last."""
    return (
        "## Persona Profile (this person's past survey responses):\n"
        f"{persona}\n---\n"
        "## New Survey Question (answer as the person described above):\n"
        f"{render_question(item.question, mask=True)}\n"
        "### Format Instructions\n"
        f"{answer_format(item)}"
    )


@dataclass(frozen=True)
class Prompt:
    """A chat-templated prompt plus what the context fit did to the persona."""

    pid: str
    qid: str
    text: str
    n_tokens: int
    persona_tokens: int
    persona_tokens_kept: int

    @property
    def cut(self) -> bool:
        return self.persona_tokens_kept < self.persona_tokens


def _n_tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False))


def build_prompt(
    tokenizer: Any,
    item: HoldoutItem,
    persona: str,
    *,
    max_context: int = 2048,
    max_new_tokens: int = 48,
    persona_ids: Sequence[int] | None = None,
) -> Prompt:
    """Chat-templated prompt fitting ``max_context - max_new_tokens`` tokens; the persona start is cut first.

    ``persona_ids`` (the persona tokenized without special tokens) may be passed to tokenize a respondent's
    persona once for all of their questions.
    """
    from decoding.tokenizer import build_chat_prompt

    limit = max_context - max_new_tokens
    if limit <= 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room in max_context={max_context}")

    def chat(persona_part: str) -> str:
        return build_chat_prompt(tokenizer, user_message(persona_part, item), system=SYSTEM_PROMPT)

    if persona_ids is None:
        persona_ids = tokenizer.encode(persona, add_special_tokens=False)
    persona_ids = list(persona_ids)
    text = chat(persona)
    n = _n_tokens(tokenizer, text)
    if n <= limit:
        return Prompt(item.pid, item.qid, text, n, len(persona_ids), len(persona_ids))
    overhead = _n_tokens(tokenizer, chat(CUT_MARK.strip()))
    keep = limit - overhead
    if keep < 0:
        raise PromptTooLong(
            f"pid {item.pid} {item.qid}: question + instructions need {overhead} tokens > {limit} "
            f"(max_context {max_context} - max_new_tokens {max_new_tokens})"
        )
    while True:
        kept = persona_ids[len(persona_ids) - keep :] if keep > 0 else []
        text = chat(CUT_MARK + tokenizer.decode(kept))
        n = _n_tokens(tokenizer, text)
        if n <= limit or keep == 0:  # re-tokenizing at the cut can merge differently: shave and retry
            break
        keep = max(0, keep - max(1, n - limit))
    if n > limit:
        raise PromptTooLong(
            f"pid {item.pid} {item.qid}: prompt has {n} tokens > {limit} with no persona left"
        )
    return Prompt(item.pid, item.qid, text, n, len(persona_ids), len(kept))
