"""Per-corpus conversion of a row's test columns into :class:`rewards.code_tests.CodeTests` (judging
semantics).

Schemas: ``../shared/data/code_rl/README.md`` as documented in docs/rewards.md, "Code-RL corpora". Columns
that are JSON strings in one revision and structs in another (DeepCoder ``metadata``, Dream-Coder ``info``)
are read either way.
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Mapping
from typing import Any

from .code_tests import CodeTests, UnjudgeableRow
from .formats_judge import call_tests, codeio_tests, stdio_tests

LCB_LIMIT_S = 6.0  # rLLM's LCB checker timeout (DeepCoder); per-run CPU seconds here
SANDBOXFUSION_LIMIT_S = 10.0  # Dream-Coder: time_limit absent or NaN


def _json(value: Any, what: str) -> Any:
    if isinstance(value, (bytes, str)):
        try:
            return json.loads(value)
        except (ValueError, RecursionError):
            raise UnjudgeableRow(f"unparseable {what}") from None
    return value


def _mapping(value: Any) -> dict:
    """A struct column that may also be a JSON string or a Python-literal string
    (``"{'func_name': None}"``)."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str) and value.strip():
        for parse in (json.loads, ast.literal_eval):
            try:
                obj = parse(value)
            except (ValueError, SyntaxError, RecursionError, MemoryError):
                continue
            if isinstance(obj, dict):
                return obj
    return {}


def _lcb_call_cases(inputs: list[str], outputs: list[str]) -> list[tuple[list, Any]]:
    """LCB functional tests: each input is newline-separated JSON arguments, each output JSON."""
    try:
        return [([json.loads(a) for a in inp.split("\n")], json.loads(out))
                for inp, out in zip(inputs, outputs)]
    except (ValueError, AttributeError, TypeError, RecursionError):
        raise UnjudgeableRow("unparseable functional test") from None


def deepcoder_lcbv5(row: Mapping[str, Any]) -> CodeTests:
    tests = _json(row.get("tests"), "tests")
    if not isinstance(tests, list) or not tests or not all(isinstance(t, Mapping) for t in tests):
        raise UnjudgeableRow("unparseable tests")
    kinds = {t.get("testtype") for t in tests}
    if kinds == {"functional"}:
        fn = _mapping(row.get("metadata")).get("func_name")
        if not isinstance(fn, str) or not fn:
            raise UnjudgeableRow("functional tests without metadata.func_name")
        cases = _lcb_call_cases([t.get("input") for t in tests], [t.get("output") for t in tests])
        return call_tests(["Solution", fn], cases, LCB_LIMIT_S, prelude="lcb")
    if kinds <= {"stdin", "stdin_stdout"}:
        return stdio_tests([t.get("input") for t in tests], [t.get("output") for t in tests], LCB_LIMIT_S,
                           "lcb", prelude="lcb")
    raise UnjudgeableRow(f"test types {sorted(map(str, kinds))}")


def deepcoder_primeintellect(row: Mapping[str, Any]) -> CodeTests:
    """stdin_stdout tests with the LCB checker (as rLLM); ``function_call`` tests as calls of ``fn_name`` with
    ``[ret]`` unwrapped (rLLM would score them as stdin, which no program can pass; docs/rewards.md)."""
    tests = _json(row.get("tests"), "tests")
    if not isinstance(tests, list) or not tests or not all(isinstance(t, Mapping) for t in tests):
        raise UnjudgeableRow("unparseable tests")
    kinds = {t.get("type") for t in tests}
    if kinds == {"function_call"}:
        names = {t.get("fn_name") for t in tests}
        if len(names) != 1 or not isinstance(next(iter(names)), str):
            raise UnjudgeableRow("function_call tests without one fn_name")
        cases = [(t.get("input"), _unwrap(t.get("output"))) for t in tests]
        return call_tests(["*", names.pop()], cases, LCB_LIMIT_S, prelude="lcb")
    if kinds <= {"stdin_stdout", None}:
        return stdio_tests([t.get("input") for t in tests], [t.get("output") for t in tests], LCB_LIMIT_S,
                           "lcb", prelude="lcb")
    raise UnjudgeableRow(f"test types {sorted(map(str, kinds))}")


def _unwrap(out: Any) -> Any:
    return out[0] if isinstance(out, list) and out else out


def deepcoder_taco(row: Mapping[str, Any]) -> CodeTests:
    """rLLM's ``taco_to_lcb_format`` then the LCB checker: ``fn_name`` rows are calls (free function or
    ``class Solution``, TACO's rule), outputs ``[ret]`` unwrapped; the other rows are stdin/stdout."""
    tests = _json(row.get("tests"), "tests")
    if not isinstance(tests, Mapping):
        raise UnjudgeableRow("unparseable tests")
    inputs, outputs = tests.get("inputs"), tests.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
        raise UnjudgeableRow("unparseable tests")
    fn = tests.get("fn_name")
    if fn:
        return call_tests(["*", str(fn)], [(i, _unwrap(o)) for i, o in zip(inputs, outputs)], LCB_LIMIT_S,
                          prelude="lcb")
    return stdio_tests(inputs, outputs, LCB_LIMIT_S, "lcb", prelude="lcb")


def dream_coder(row: Mapping[str, Any]) -> CodeTests:
    """Dream-Coder-RL-17k: ``info`` per ``data_source`` (SandboxFusion's rules for stdio)."""
    source = row.get("data_source")
    info = _mapping(row.get("info"))
    if source == "code_contests":
        tests = info.get("test")
        if not isinstance(tests, list) or not all(isinstance(t, Mapping) for t in tests):
            raise UnjudgeableRow("unparseable tests")
        try:
            inputs = [t["input"]["stdin"] for t in tests]
            outputs = [t["output"]["stdout"] for t in tests]
        except (KeyError, TypeError):
            raise UnjudgeableRow("unparseable tests") from None
        limit = info.get("time_limit")
        limit = float(limit) if isinstance(limit, (int, float)) and math.isfinite(limit) and limit > 0 \
            else SANDBOXFUSION_LIMIT_S
        return stdio_tests(inputs, outputs, limit, "sandboxfusion")
    if source == "livecodebench":
        spec = _mapping(_json(info.get("test"), "test"))
        io = _mapping(spec.get("input_output"))
        inputs, outputs = io.get("inputs"), io.get("outputs")
        if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
            raise UnjudgeableRow("unparseable input_output")
        if io.get("fn_name"):
            return call_tests(["Solution", str(io["fn_name"])], _lcb_call_cases(inputs, outputs), LCB_LIMIT_S,
                              prelude="lcb")
        return stdio_tests(inputs, outputs, LCB_LIMIT_S, "sandboxfusion", prelude="lcb")
    if source == "codeio":
        return codeio_tests(info.get("ground_truth"))
    if source == "mbppplus":
        raise UnjudgeableRow("mbppplus rows are MBPP+ evaluation tasks")
    if source == "autoeval":
        from .pytest_tests import autoeval_tests

        return autoeval_tests(info.get("test"))
    raise UnjudgeableRow(f"unknown data_source {source!r}")


def kodcode(row: Mapping[str, Any]) -> CodeTests:
    """KodCode-Light-RL-10K / KodCode-V1: ``test`` is a pytest file importing from ``solution``."""
    from .pytest_tests import pytest_tests

    return pytest_tests(row.get("test"), solution_import=True)
