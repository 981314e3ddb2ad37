"""Trusted scoring of code-RL test formats: sandbox jobs out, plain-data records in, verdicts decided here.

One job per completion: its calls (assert / call formats) or its program runs (stdio) are the job's tests,
each under its own CPU limit enforced by the zygote (``rewards/_supervise.py``). Records are read with the
same strict parser as the EvalPlus path (``rewards/judge.py``): a duplicate, garbled or out-of-range record
voids the sample, a missing one is a failed test. Values decode into plain builtins only; every comparison
runs here.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
import logging
import marshal
import re
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from ._digest import digest
from .api import RewardConfig, RewardResult, collect_results
from .assert_parse import _comp_locals, _validate, check_env
from .code_tests import DEFAULT_CALL_LIMIT_S, CodeTests
from .extract import _AST_LOCK, ExtractedCode, extract_code
from .judge import _OK_NO_VALUE, ProtocolViolation, _check_range, _check_record, _name, _parse, decode_value
from .sandbox import Job, RawResult, SandboxPool
from .warm import WarmCache

log = logging.getLogger(__name__)
MISSING = object()  # an ok record whose value was too large to send (compared by digest only)


def read_outcomes(raw: RawResult, n: int) -> tuple[str, list, dict[str, int], str]:
    """(status, per-test outcome, error counts, detail). Outcome: ``("ok", digest, value | MISSING)``,
    ``("exc", name)``, ``("timeout",)`` or None (no record). Never raises on what the sandbox sent."""
    try:
        return _read_outcomes(raw, n)
    except Exception as exc:  # noqa: BLE001 - anything unanticipated voids this sample only
        return "protocol_violation", [None] * n, {"protocol_violation": 1}, \
            f"unreadable record ({type(exc).__name__})"


def _read_outcomes(raw: RawResult, n: int) -> tuple[str, list, dict[str, int], str]:
    outcomes: list = [None] * n
    if raw.sample_fault:
        return "protocol_violation", outcomes, {"protocol_violation": 1}, \
            "the sample broke its result channel"
    if raw.overflow:
        return "output_overflow", outcomes, {"output_overflow": 1}, "too many result records or bytes"
    if not raw.records:
        return "load_error", outcomes, {"load_error": 1}, \
            "no output (the process died before loading the code)"
    errors: dict[str, int] = {}
    try:
        head = _parse(raw.records[0])
        if len(head) == 2 and head[0] == "load_error" and isinstance(head[1], str):
            return "load_error", outcomes, {_name(head[1]): 1}, f"load error: {_name(head[1])}"
        if head != ["loaded"]:
            raise ProtocolViolation("first record must be the load status")
        for line in raw.records[1:]:
            m = _OK_NO_VALUE.fullmatch(line)
            if m is not None:
                rec: list = [int(m[1]), int(m[2]), "ok", m[3].decode(), None]
                _, i, kind = _check_range(rec, [n])
            else:
                rec = _parse(line)
                _, i, kind = _check_record(rec, [n])
            if outcomes[i] is not None:
                raise ProtocolViolation(f"duplicate record for test {i}")
            if kind == "ok":
                outcomes[i] = ("ok", rec[3], MISSING if rec[4] is None else decode_value(rec[4]))
            elif kind == "exc":
                outcomes[i] = ("exc", _name(rec[3]))
                errors[outcomes[i][1]] = errors.get(outcomes[i][1], 0) + 1
            else:
                outcomes[i] = ("timeout",)
                errors["timeout"] = errors.get("timeout", 0) + 1
    except ProtocolViolation as exc:
        return "protocol_violation", [None] * n, {"protocol_violation": 1}, str(exc)
    missing = sum(o is None for o in outcomes)
    if missing:
        errors["missing"] = missing
    return "ok", outcomes, errors, ""


# ------------------------------------------------------------------------------------------------------------
# per-format verdicts (trusted)


_PLACEHOLDER = re.compile(r"__c[0-9]+")


@functools.lru_cache(maxsize=4096)
def _compiled_check(src: str) -> Any:
    """A case's check, validated again here (defence in depth: CodeTests may come from JSON) and compiled."""
    with _AST_LOCK:  # CPython 3.11's AST recursion counter is per interpreter (see rewards/extract.py)
        expr = ast.parse(src, mode="eval")
    placeholders = {n.id for n in ast.walk(expr) if isinstance(n, ast.Name) and _PLACEHOLDER.fullmatch(n.id)}
    _validate(expr.body, placeholders, _comp_locals(expr.body))
    return compile(expr, "<assert>", "eval")


_NOT_RAISED_BY_CODE = ("TargetMissing", "SystemExit", "KeyboardInterrupt", "GeneratorExit")


def _raised(out: tuple | None, expected: str) -> bool:
    """``pytest.raises(expected)``: the step raised an exception with a class (or base class) of that name."""
    if out is None or out[0] != "exc" or out[1].startswith("Output"):
        return False
    names = out[1].split("<")
    if expected in ("Exception", "BaseException"):
        return names[0] not in _NOT_RAISED_BY_CODE or (expected == "BaseException"
                                                       and names[0] != "TargetMissing")
    return expected in names


def _assert_case(case: dict, outcomes: list) -> bool:
    """An assert (or pytest test): every step ran (or raised what ``raises`` expects), then the check
    holds."""
    values = {}
    raises = case.get("raises", {})
    for k in case["calls"]:
        out = outcomes[k]
        if str(k) in raises:
            if not _raised(out, raises[str(k)]):
                return False
            continue
        if out is None or out[0] != "ok":
            return False
        values[f"__c{k}"] = out[2]
    if any(v is MISSING for v in values.values()):  # too large to send: only `__cK == literal` can be judged
        if "literal" not in case or len(values) != 1:
            return False
        return outcomes[case["calls"][0]][1] == digest(decode_value_obj(case["literal"]))
    try:
        return bool(eval(_compiled_check(case["check"]), check_env(), values))  # noqa: S307 - validated check
    except Exception:  # noqa: BLE001 - a check that raises on the returned values fails
        return False


def decode_value_obj(tagged: Any) -> Any:
    """A tagged-JSON value already parsed into Python lists/dicts (as stored in CodeTests.data) -> plain
    value, through the same strict decoder as the sandbox's records (a tampered CodeTests cannot smuggle
    objects in)."""
    return decode_value(json.dumps(tagged))


def case_verdicts(tests: CodeTests, outcomes: list) -> list[bool]:
    """Per case: did it pass? (one entry per ``tests.data["cases"]``)."""
    if tests.format in ("assert", "pytest"):
        return [_assert_case(c, outcomes) for c in tests.data["cases"]]
    from .formats_judge import call_case, stdio_case

    if tests.format == "call":
        return [call_case(tests.data, i, outcomes[i]) for i in range(tests.n_cases)]
    if tests.format == "stdio":
        return [stdio_case(tests.data, i, outcomes[i]) for i in range(tests.n_cases)]
    raise ValueError(f"format {tests.format!r} is not run in the sandbox")


# ------------------------------------------------------------------------------------------------------------
# jobs


def job_inputs(tests: CodeTests) -> tuple[str, str, list]:
    """(job kind, child output mode, per-test inputs) of a CodeTests; inputs are decoded to Python values
    here."""
    if tests.format in ("assert", "pytest"):  # pytest steps carry a 4th element, opts (_formats.call_runner)
        return "call", "exact", [[t, decode_value_obj(a), decode_value_obj(k), *rest]
                                 for t, a, k, *rest in tests.data["calls"]]
    if tests.format == "call":
        target = tests.data["target"]
        return "call", "exact", [[target, decode_value_obj(args), {}] for args, _ in tests.data["cases"]]
    if tests.format == "stdio":
        return "stdio", "stdio", [[inp] for inp, _ in tests.data["cases"]]
    raise ValueError(f"format {tests.format!r} is not run in the sandbox")


def _entry_point(tests: CodeTests) -> str | None:
    """The name code extraction should prefer a fenced block to define (None: any)."""
    if tests.format in ("assert", "pytest"):
        for target, *_ in tests.data["calls"]:
            if len(target) == 1 or target[0] not in ("new", "on", "*"):
                return target[0]
            if target[0] == "new":
                return target[2]
        return None
    if tests.format == "call":  # ["Solution", fn] -> the class; ["*", fn] -> fn
        target = tests.data["target"]
        return target[-1] if target[0] == "*" else target[0]
    return None


class CodeScorer:
    """A warm sandbox pool for code-RL tests; reuse it across batches (RL steps)."""

    def __init__(self, cfg: RewardConfig | None = None) -> None:
        from .formats_judge import LCB_MODULES

        self.cfg = cfg or RewardConfig()
        # the zygotes import the LCB prelude's modules once, so the children forked per sample find them
        # loaded
        preload = self.cfg.sandbox.preload + tuple(m for m in LCB_MODULES
                                                   if m not in self.cfg.sandbox.preload)
        self.pool = SandboxPool(self.cfg.workers, dataclasses.replace(self.cfg.sandbox, preload=preload))

    def _job(self, code: str, tests: CodeTests, prepared: dict[int, tuple]) -> Job:
        """``prepared`` caches, per CodeTests object of this batch, its decoded and marshalled inputs (the
        samples of one prompt share their tests)."""
        parts = prepared.get(id(tests))
        if parts is None:
            kind, mode, inputs = job_inputs(tests)
            parts = prepared[id(tests)] = (kind, mode, marshal.dumps([inputs], 2), len(inputs))
        kind, mode, blob, n = parts
        per_test = max(self.cfg.min_time_limit_s,
                       float(tests.data.get("time_limit_s") or DEFAULT_CALL_LIMIT_S))
        limits = [[per_test] * n]
        budget = min(self.cfg.set_time_cap_s, per_test * n) + 1.0
        if self.cfg.sample_time_cap_s is not None:
            budget = min(budget, max(self.cfg.sample_time_cap_s, per_test + 1.0))
        prelude = tests.data.get("prelude")
        if prelude:
            from .formats_judge import PRELUDES

            code = PRELUDES.get(prelude, "") + code
        return Job(code=code, entry_point=_entry_point(tests) or "", inputs=blob, limits=limits,
                   cpu_budget_s=budget, wall_budget_s=budget * self.cfg.wall_factor + 2.0, mode=mode,
                   values=True, stop_on_error=self.cfg.stop_on_error and tests.format in ("call", "stdio"),
                   load_limit_s=min(budget, 10.0), kind=kind)

    def score(self, items: Sequence[tuple[str, CodeTests]]) -> list[RewardResult]:
        """Results in input order; a progress bar with ``cfg.progress``."""
        results: list[RewardResult | None] = [None] * len(items)
        pending: dict[Future, tuple[int, CodeTests, ExtractedCode]] = {}
        # id(tests) -> job parts; the items list keeps every tests object alive
        prepared: dict[int, tuple] = {}
        for idx, (completion, tests) in enumerate(items):
            if tests.format == "codeio":
                from .formats_judge import codeio_result

                results[idx] = codeio_result(completion, tests, self.cfg)
                continue
            ext = _extract(completion, tests, self.cfg)
            if ext.status != "ok":
                results[idx] = RewardResult("", self.cfg.no_code_reward, 0.0, False, 0.0, ext.status, None,
                                            None, tests.n_cases, 0,
                                            {"extraction": ext.source, "excluded": tests.excluded})
                continue
            pending[self.pool.submit(self._job(ext.code, tests, prepared))] = (idx, tests, ext)
        return collect_results(pending, results, self._result, self.cfg)

    def _result(self, tests: CodeTests, ext: ExtractedCode, raw: RawResult) -> RewardResult:
        cfg, n = self.cfg, tests.n_cases
        fmt = 1.0 if ext.well_formed else 0.0
        if raw.infra_error:
            return RewardResult("", None, 0.0, False, fmt, "infra_error", None, None, n, 0,
                                {"infra_error": raw.infra_error, "attempts": raw.attempts})
        n_steps = len(tests.data["calls"]) if tests.format in ("assert", "pytest") else n
        status, outcomes, errors, detail = read_outcomes(raw, n_steps)
        passed = case_verdicts(tests, outcomes) if status == "ok" else [False] * n
        n_passed = sum(passed)
        all_pass = status == "ok" and n_passed == n
        if status == "ok" and not all_pass:
            errors["failed_cases"] = n - n_passed  # the other counts are per call / run (raises included)
        verdict = "pass" if all_pass else "timeout" \
            if (raw.status.get("deadline") or raw.status.get("limit")) else "fail"
        ratio = n_passed / n if n else 0.0
        correctness = (1.0 if all_pass else 0.0) if cfg.reward == "binary" else ratio
        details = {"errors": errors, "extraction": ext.source, "excluded": tests.excluded,
                   "cpu_s": raw.status.get("cpu"), "attempts": raw.attempts, "isolation": self.pool.isolation}
        if detail:
            details["detail"] = detail
        if cfg.keep_test_details:
            details["passed"] = passed
        return RewardResult("", correctness + cfg.format_weight * fmt, ratio, all_pass, fmt, status, verdict,
                            verdict, n, n_passed, details)

    def close(self) -> None:
        self.pool.close()


def _extract(completion: str, tests: CodeTests, cfg: RewardConfig) -> ExtractedCode:
    try:
        return extract_code(completion, answer_marker=cfg.answer_marker, entry_point=_entry_point(tests),
                            sanitize=cfg.sanitize)
    except (Exception, RecursionError, MemoryError):  # noqa: BLE001 - the sample's syntax error, never the batch's
        return ExtractedCode(None, "syntax_error")


_WARM: WarmCache[CodeScorer] = WarmCache(4)


def get_code_scorer(cfg: RewardConfig | None = None) -> CodeScorer:
    """A process-wide CodeScorer per config (its pool stays warm between calls; :mod:`rewards.warm`)."""
    cfg = cfg or RewardConfig()
    return _WARM.get(cfg, lambda: CodeScorer(cfg))


def close_code_scorers() -> None:
    """Stop every cached code scorer's sandbox workers (also run at exit)."""
    _WARM.close_all()
