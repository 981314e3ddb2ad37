"""The "call", "stdio" and "codeio" formats: building their data and judging one case, all on the trusted
side.

- call (fn_name tests): the sandbox calls the function with the case's arguments and returns its value as
  plain data; the LCB checker's rule decides here (``grade_call_based``: a returned tuple becomes a list, then
  Python ``==`` against the JSON expected value). TACO-style ``[ret]`` outputs are unwrapped to ``ret`` first,
  as rLLM's ``taco_to_lcb_format`` does for DeepCoder.
- stdio: the sandbox runs the program on the case's stdin and returns what it wrote to stdout; the comparison
  follows the repo that consumes the corpus (``STDIO_RULES``).
- codeio (Dream-Coder output prediction): nothing runs; the last JSON object of the completion is compared
  with the ground truth.
See docs/rewards.md, "Code-RL corpora".
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from ._digest import digest, encode_value
from .api import RewardConfig, RewardResult
from .code_tests import CodeTests, UnjudgeableRow

STDIO_RULES = ("lcb", "primeintellect", "sandboxfusion")
# LiveCodeBench's harness runs every program after these lines (lcb_runner testing_util ``import_string``,
# kept by rLLM for DeepCoder): LeetCode-style answers use ``List`` / ``defaultdict`` without importing them
LCB_MODULES = ("string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math", "random",
               "statistics", "itertools", "functools", "operator", "io", "sys", "json", "builtins", "typing")
LCB_PRELUDE = "".join(f"from {m} import *\n" for m in LCB_MODULES) + "".join(
    f"import {m}\n" for m in ("string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math",
                              "random", "statistics", "itertools", "functools", "operator", "io", "sys",
                              "json")) \
    + "sys.setrecursionlimit(50000)\n"
PRELUDES = {"lcb": LCB_PRELUDE}
MAX_STDIO_CHARS = 8 * 1024**2  # expected outputs above this are not kept in a row's tests


# ------------------------------------------------------------------------------------------------------------
# builders


def call_tests(target: list[str], cases: list[tuple[Any, Any]], time_limit_s: float | None = None,
               prelude: str | None = None) -> CodeTests:
    """``cases`` = [(argument list, expected value)] of plain data; ``target`` = ``[fn]``,
    ``["Solution", fn]`` or ``["*", fn]`` (``Solution().fn`` when the program defines such a class, else the
    free function ``fn``); ``prelude``: a key of PRELUDES, lines run before the program (the consuming
    harness's imports)."""
    out = []
    for args, expected in cases:
        if not isinstance(args, list):
            raise UnjudgeableRow("call arguments are not a list")
        try:
            out.append([encode_value(args), encode_value(expected)])
        except (TypeError, RecursionError):
            raise UnjudgeableRow("call values are not plain data") from None
    if not out:
        raise UnjudgeableRow("no tests")
    data = {"target": list(target), "cases": out, "rule": "lcb"}
    if time_limit_s:
        data["time_limit_s"] = float(time_limit_s)
    if prelude:
        data["prelude"] = prelude
    return CodeTests("call", data)


def stdio_tests(inputs: Any, outputs: Any, time_limit_s: float | None, rule: str,
                prelude: str | None = None) -> CodeTests:
    """stdin/stdout pairs (strings) compared under ``rule`` (one of STDIO_RULES); ``prelude`` as for
    :func:`call_tests`."""
    if rule not in STDIO_RULES:
        raise ValueError(f"unknown stdio rule {rule!r}")
    if not isinstance(inputs, (list, tuple)) or not isinstance(outputs, (list, tuple)) \
            or len(inputs) != len(outputs):
        raise UnjudgeableRow("unparseable stdin/stdout tests")
    if not inputs:
        raise UnjudgeableRow("no tests")
    if not all(isinstance(x, str) for x in (*inputs, *outputs)):
        raise UnjudgeableRow("stdin/stdout tests are not strings")
    if any(len(x) > MAX_STDIO_CHARS for x in (*inputs, *outputs)):
        raise UnjudgeableRow("stdin/stdout test too large")
    data: dict[str, Any] = {"cases": [[i, o] for i, o in zip(inputs, outputs)], "rule": rule}
    if time_limit_s is not None and math.isfinite(time_limit_s) and time_limit_s > 0:
        data["time_limit_s"] = float(time_limit_s)
    if prelude:
        data["prelude"] = prelude
    return CodeTests("stdio", data)


# ------------------------------------------------------------------------------------------------------------
# trusted comparisons


def _decode(tagged: Any) -> Any:
    from .code_judge import decode_value_obj

    return decode_value_obj(tagged)


def call_case(data: dict, i: int, outcome: tuple | None) -> bool:
    """LCB's ``grade_call_based`` rule: tuple -> list, then ``==`` (values are plain builtins here)."""
    if outcome is None or outcome[0] != "ok":
        return False
    expected = _decode(data["cases"][i][1])
    got = outcome[2]
    from .code_judge import MISSING

    if got is MISSING:  # too large to send: equal digests <=> equal values under ==
        return outcome[1] == digest(expected) or (isinstance(expected, list)
                                                  and outcome[1] == digest(tuple(expected)))
    if isinstance(got, tuple):
        got = list(got)
    try:
        return bool(got == expected)
    except Exception:  # noqa: BLE001 - e.g. a comparison that recurses too deep
        return False


def _lcb_lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().split("\n")]


def _decimals(line: str) -> list[Decimal] | None:
    try:
        return [Decimal(tok) for tok in line.split()]
    except (InvalidOperation, ValueError):
        return None


def stdio_equal(rule: str, out: str, expected: str) -> bool:
    """The output rule of the repo that consumes the corpus.

    - ``lcb`` (LiveCodeBench's checker, used by rLLM/DeepCoder for lcbv5, primeintellect and taco): strip the
      whole output, split lines, strip each; same number of lines; each line equal, or all its whitespace
      tokens equal as ``Decimal``s.
    - ``primeintellect`` (TraceRL, Gen-Verse/PrimeIntellect):
      ``" ".join(out.split()) == " ".join(exp.split())``.
    - ``sandboxfusion`` (Dream-Coder via SandboxFusion ``check_stdio_test_case``): strip, split lines, ignore
      one trailing empty line, compare lines lower-cased and stripped, or as floats with relative tolerance
      1e-5.
    """
    if rule == "primeintellect":
        return " ".join(out.split()) == " ".join(expected.split())
    if rule == "lcb":
        got, exp = _lcb_lines(out), _lcb_lines(expected)
        if len(got) != len(exp):
            return False
        for g, e in zip(got, exp):
            if g == e:
                continue
            dg, de = _decimals(g), _decimals(e)
            if dg is None or de is None or dg != de:
                return False
        return True
    got, exp = out.strip().split("\n"), expected.strip().split("\n")
    if len(got) - len(exp) == 1 and got[-1] == "":
        got = got[:-1]
    if len(exp) - len(got) == 1 and exp[-1] == "":
        exp = exp[:-1]
    if len(got) != len(exp):
        return False
    for g, e in zip(got, exp):
        g, e = g.lower().strip(), e.lower().strip()
        if g != e and not _float_equal(g, e):
            return False
    return True


def _float_equal(a: str, b: str) -> bool:
    try:
        x, y = float(a), float(b)
    except (ValueError, OverflowError):
        return False
    try:
        return abs(x - y) / max(abs(y), 1e-10) < 1e-5
    except (OverflowError, ValueError):  # inf - inf
        return False


def stdio_case(data: dict, i: int, outcome: tuple | None) -> bool:
    """One stdin/stdout case. Outputs too large to send whole (> 64 KB) are compared by digest of their
    whitespace-token form, for every rule."""
    if outcome is None or outcome[0] != "ok":
        return False
    expected = data["cases"][i][1]
    from .code_judge import MISSING

    if outcome[2] is MISSING:
        return outcome[1] == digest(" ".join(expected.split()))
    return isinstance(outcome[2], str) and stdio_equal(data["rule"], outcome[2], expected)


# ------------------------------------------------------------------------------------------------------------
# codeio (nothing executed)

_MAX_CODEIO_CHARS = 1 << 20


def last_json_object(text: str) -> dict | None:
    """The last ``{...}`` of ``text`` that parses as a JSON object (scanning openings from the end)."""
    if len(text) > _MAX_CODEIO_CHARS:
        return None
    decoder = json.JSONDecoder()
    for m in reversed([m.start() for m in re.finditer(r"\{", text)]):
        try:
            obj, _ = decoder.raw_decode(text, m)
        except (ValueError, RecursionError):
            continue
        if isinstance(obj, dict):
            return obj
    return None


def codeio_tests(ground_truth: Any) -> CodeTests:
    """Dream-Coder ``codeio`` rows: ``ground_truth`` is a JSON string such as ``{"output": ...}``."""
    try:
        gt = json.loads(ground_truth) if isinstance(ground_truth, str) else ground_truth
    except (ValueError, RecursionError):
        raise UnjudgeableRow("unparseable ground_truth") from None
    if not isinstance(gt, dict) or not ({"output", "input"} & gt.keys()):
        raise UnjudgeableRow("ground_truth has no output/input")
    return CodeTests("codeio", {"cases": [gt]})


def codeio_pass(completion: str, gt: dict) -> bool:
    """The last JSON object of the completion has the ground truth's key (``output``, else ``input``),
    equal."""
    pred = last_json_object(completion)
    if pred is None:
        return False
    key = "output" if "output" in gt else "input"
    return key in pred and pred[key] == gt[key]


def codeio_result(completion: str, tests: CodeTests, cfg: RewardConfig) -> RewardResult:
    """A codeio sample's result (binary; no format reward: the answer is JSON, not a code block)."""

    ok = codeio_pass(completion, tests.data["cases"][0])
    verdict = "pass" if ok else "fail"
    reward = 1.0 if ok else 0.0
    return RewardResult("", reward, reward, ok, 0.0, "ok", verdict, verdict, 1, int(ok), {"excluded": 0})
