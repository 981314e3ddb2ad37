"""Tests of the public code-RL corpora as plain data, and their trusted scoring (``score_code_tests``).

A row's test columns become a :class:`CodeTests` (format + JSON-able data) in :func:`tests_from_row`; scoring
runs only the completion's calls or program in the sandbox and compares what comes back on the trusted side
(``rewards/code_judge.py``), so a completion can only pass by producing the right values. Formats, the
guarantee and what is excluded per corpus: docs/rewards.md, "Code-RL corpora".

The loaders (hub names, prompts, ids, filters) live with the corpora; this module owns the judging semantics
of a row's tests, which is why the per-corpus conversion is here.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .assert_parse import NO_LITERAL as _NO_LITERAL
from .assert_parse import Unjudgeable, asserts_of, encode_calls, parse_assert

if TYPE_CHECKING:
    from .api import RewardConfig, RewardResult

CORPORA = ("acecode", "kodcode-light", "kodcode-v1", "deepcoder-lcbv5", "deepcoder-primeintellect",
           "deepcoder-taco", "primeintellect", "dream-coder")
FORMATS = ("assert", "call", "stdio", "pytest", "codeio")
# per-call CPU seconds when the corpus gives none (DiffuCoder: 5 s wall per assert)
DEFAULT_CALL_LIMIT_S = 1.0


class UnjudgeableRow(ValueError):
    """A row whose tests cannot be judged with the guarantee; ``str(error)`` is a short reason (drop
    counts)."""


@dataclasses.dataclass(frozen=True)
class CodeTests:
    """The tests of one row as plain JSON-able data. ``data`` is format-specific (docs/rewards.md);
    ``excluded`` counts the row's cases that cannot be judged with the guarantee (they are not run)."""

    format: str
    data: dict
    excluded: int = 0

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown test format {self.format!r}; choose from {FORMATS}")

    def to_json(self) -> str:
        return json.dumps({"format": self.format, "data": self.data, "excluded": self.excluded},
                          separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CodeTests:
        obj = json.loads(text)
        return cls(obj["format"], obj["data"], int(obj.get("excluded", 0)))

    @property
    def n_cases(self) -> int:
        return len(self.data["cases"])


# ------------------------------------------------------------------------------------------------------------
# assert lists (AceCode test_cases, PrimeIntellect function rows' test_list)


def assert_tests(snippets: Sequence[str], time_limit_s: float | None = None) -> CodeTests:
    """Assert snippets (one assert each, or a ``def check(candidate): ...`` block) -> an "assert" CodeTests.

    Each judgeable assert is a case ``{"check": expression with __cK placeholders, "calls": [indices into
    data["calls"]], "literal"?: tagged expected value}``; the rest are counted in ``excluded``."""
    calls: list[list] = []
    cases: list[dict] = []
    excluded = 0
    for snippet in snippets:
        try:
            tests, skipped = asserts_of(snippet)
        except Unjudgeable:
            excluded += 1
            continue
        excluded += skipped
        for test, rename in tests:
            try:
                check, own_calls, literal = parse_assert(test, rename, start=len(calls))
            except (Unjudgeable, RecursionError, MemoryError, ValueError, SyntaxError):
                excluded += 1
                continue
            base = len(calls)
            calls += own_calls
            case: dict[str, Any] = {"check": check, "calls": list(range(base, len(calls)))}
            if literal is not _NO_LITERAL:
                from ._digest import encode_value

                case["literal"] = encode_value(literal)
            cases.append(case)
    if not cases:
        raise UnjudgeableRow("no judgeable assert" if excluded else "no tests")
    data = {"calls": encode_calls(calls), "cases": cases,
            "time_limit_s": float(time_limit_s or DEFAULT_CALL_LIMIT_S)}
    return CodeTests("assert", data, excluded)


def _acecode(row: Mapping[str, Any]) -> CodeTests:
    cases = row.get("test_cases")
    if not isinstance(cases, (list, tuple)) or not all(isinstance(c, str) for c in cases):
        raise UnjudgeableRow("unparseable test_cases")
    return assert_tests(list(cases))


def _primeintellect(row: Mapping[str, Any]) -> CodeTests:
    """Gen-Verse/PrimeIntellect (TraceRL): stdio rows with TraceRL's whitespace rule, function rows as
    asserts."""
    method = row.get("test_method")
    try:
        limit = float(row.get("test_time_limit") or 1.0)
    except (TypeError, ValueError):
        raise UnjudgeableRow("unparseable test_time_limit") from None
    if not 0 < limit < float("inf"):
        limit = 1.0
    if method == "function":
        tests = row.get("test_list")
        if not isinstance(tests, (list, tuple)) or not all(isinstance(t, str) for t in tests):
            raise UnjudgeableRow("unparseable test_list")
        return assert_tests(list(tests), time_limit_s=limit)
    if method == "stdio":
        from .formats_judge import stdio_tests

        return stdio_tests(row.get("test_input"), row.get("test_output"), limit, rule="primeintellect")
    raise UnjudgeableRow(f"unknown test_method {method!r}")


from .corpus_tests import (  # noqa: E402 - they build on the classes above
    deepcoder_lcbv5,
    deepcoder_primeintellect,
    deepcoder_taco,
    dream_coder,
    kodcode,
)

_CONVERTERS: dict[str, Any] = {"acecode": _acecode, "primeintellect": _primeintellect,
                               "deepcoder-lcbv5": deepcoder_lcbv5,
                               "deepcoder-primeintellect": deepcoder_primeintellect,
                               "deepcoder-taco": deepcoder_taco, "dream-coder": dream_coder,
                               "kodcode-light": kodcode, "kodcode-v1": kodcode}
# a corpus is listed only when every one of its formats is judged with the guarantee
JUDGED_CORPORA: frozenset[str] = frozenset(CORPORA)


def tests_from_row(corpus: str, row: Mapping[str, Any]) -> CodeTests:
    """The tests of one row (a dict as ``datasets`` yields it). Raises UnjudgeableRow (nothing judgeable,
    excluded format, unparseable) and ValueError for an unknown corpus."""
    if corpus not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}; choose from {', '.join(CORPORA)}")
    return _CONVERTERS[corpus](row)


tests_from_row.__test__ = False  # type: ignore[attr-defined] - not a pytest test when imported into a test module


def score_code_tests(items: Sequence[tuple[str, CodeTests]], cfg: RewardConfig | None = None,
                     ) -> list[RewardResult]:
    """Score ``(completion text, tests)`` pairs; results (``RewardResult``) in input order. ``base_status`` is
    the verdict on the row's tests and ``plus_status`` equals it; the reward follows ``cfg.reward`` (binary /
    pass_ratio) plus ``cfg.format_weight`` x format. The sandbox pool is cached per ``cfg`` (warm across
    calls); ``cfg.progress`` shows a bar."""
    from .code_judge import get_code_scorer

    return get_code_scorer(cfg).score(items)
