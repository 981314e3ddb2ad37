"""Trusted-side judge: turns a sandbox's raw record lines into per-test verdicts.

Why it cannot be fooled: the sandbox never sees expected outputs, so the only way to produce a matching digest
is to produce the right value. Records are size-capped JSON; values are decoded by a strict object hook into
plain builtins only (nothing is unpickled or unmarshalled). A duplicate, out-of-range or malformed record
voids the whole sample (``protocol_violation``); a missing record is a failed test. EvalPlus's oracles
(atol/rtol, set equality, not-None, find_zero and the MBPP special cases) are applied here, never inside the
sandbox.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from typing import Any

from ._supervise import MAX_LINE
from .sandbox import RawResult
from .tasks import VALUE_ORACLES, Task

_HEX = re.compile(r"[0-9a-f]{32}")
# exactly the bytes the sandbox writes for an ok record without a value: JSON that _parse + _check_record
# would read as [s, i, "ok", digest, null] (no leading zeros, at most 9 digits, no whitespace)
_OK_NO_VALUE = re.compile(rb'\[(0|[1-9][0-9]{0,8}),(0|[1-9][0-9]{0,8}),"ok","([0-9a-f]{32})",null\]')
_TAGS = {"t", "s", "d", "c", "b", "i", "f"}
log = logging.getLogger(__name__)


class ProtocolViolation(ValueError):
    """A record that no honest harness writes."""


def _hook(obj: dict) -> Any:
    if len(obj) != 1:
        raise ProtocolViolation("tagged value must have exactly one key")
    (tag, val), = obj.items()
    if tag not in _TAGS:
        raise ProtocolViolation(f"unknown value tag {tag!r}")
    if tag == "t" and isinstance(val, list):
        return tuple(val)
    if tag == "s" and isinstance(val, list):
        return set(val)
    if tag == "d" and isinstance(val, list) and all(isinstance(kv, list) and len(kv) == 2 for kv in val):
        return {k: v for k, v in val}
    if tag == "c" and isinstance(val, list) and len(val) == 2 and all(isinstance(v, (int, float))
                                                                      for v in val):
        return complex(val[0], val[1])
    if tag == "b" and isinstance(val, str):
        return bytes.fromhex(val)
    if tag == "i" and isinstance(val, str):
        return int(val, 16)
    if tag == "f" and val in ("nan", "inf", "-inf"):
        return float(val)
    raise ProtocolViolation(f"malformed {tag!r} value")


def _reject_constant(name: str) -> Any:
    raise ProtocolViolation(f"bare JSON constant {name}")


def decode_value(text: str) -> Any:
    """Decode one tagged-JSON value from the sandbox (plain builtins only); raises ProtocolViolation."""
    try:
        return json.loads(text, object_hook=_hook, parse_constant=_reject_constant)
    except ProtocolViolation:
        raise
    except Exception as exc:  # noqa: BLE001 - unhashable set items, bad hex, deep nesting, complex(huge int)...
        raise ProtocolViolation(f"undecodable value: {type(exc).__name__}") from exc


# ------------------------------------------------------------------------------------------------------------
# oracles (trusted)


def _is_floats(x: Any) -> bool:
    if isinstance(x, float):
        return True
    return isinstance(x, (list, tuple)) and bool(x) and all(isinstance(i, float) for i in x)


def _poly(xs: list, x: float) -> float:
    return sum(c * math.pow(x, i) for i, c in enumerate(xs))


def oracle_pass(task: Task, inp: list, out: Any, exp: Any) -> bool:
    """EvalPlus's comparison rules for one test whose digest did not match (so exact equality already failed
    unless the oracle relaxes it). ``exp`` is the expected value (None when too large to keep)."""
    import numpy as np
    from evalplus.eval._special_oracle import _digit_distance_nums, _surface_Area

    try:
        if task.oracle == "always":
            return True
        if task.oracle == "find_zero":
            return isinstance(out, (int, float)) and abs(_poly(*inp, out)) <= (task.atol or 1e-6)
        if task.oracle == "sum_div":
            return out == exp or out == 0
        if task.oracle == "surface_area":
            return bool(out == exp or abs(out - _surface_Area(*inp)) <= task.atol)
        if task.oracle == "digit_distance":
            return bool(out == exp or out == _digit_distance_nums(*inp))
        if exp is None:
            return False
        atol = task.atol or (1e-6 if _is_floats(exp) else 0.0)
        if out == exp:
            return True
        if atol == 0 or type(out) is not type(exp):
            return False
        if isinstance(exp, (list, tuple)) and len(out) != len(exp):
            return False
        return bool(np.allclose(out, exp, rtol=1e-07, atol=atol))
    except Exception:  # noqa: BLE001 - any failure to compare is a failed test
        return False


# ------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TaskExpected:
    """Expected outputs of one task, as the cache stores them: digests per set, small values where an oracle
    needs them, and the reference CPU time per test (for EvalPlus-style per-test time limits)."""

    digests: list[list[str]]
    ref_times: list[list[float]]
    values: list[dict[int, str]]

    def value(self, s: int, i: int) -> Any:
        text = self.values[s].get(i)
        return None if text is None else decode_value(text)


@dataclasses.dataclass
class Verdict:
    status: str  # "ok" | "load_error" | "protocol_violation" | "output_overflow"
    passed: list[list[bool]]  # per set, per test
    set_status: list[str]  # evalplus-style per set: "pass" | "fail" | "timeout"
    errors: dict[str, int]  # counts of exception type names / "timeout" / "wrong" / "missing"
    detail: str = ""


def judge(task: Task, sets: tuple[str, ...], exp: TaskExpected, raw: RawResult) -> Verdict:
    """Verdict for one sample; never raises on anything the sandbox sent.

    The records are untrusted input to trusted code: every way they can fail to decode, convert or compare is
    a protocol violation of this sample alone (an escaping exception would abort a whole evaluation or RL
    step)."""
    sizes = [len(task.base_inputs if s == "base" else task.plus_inputs) for s in sets]
    try:
        return _judge(task, sets, exp, raw, sizes)
    except Exception as exc:  # noqa: BLE001 - a record this code did not anticipate: the sample's failure
        log.warning("judge: %s record for %s voided the sample: %s", type(exc).__name__, task.task_id, exc)
        return Verdict("protocol_violation", [[False] * n for n in sizes], ["fail"] * len(sets),
                       {"protocol_violation": 1}, f"unreadable record ({type(exc).__name__})")


def _judge(task: Task, sets: tuple[str, ...], exp: TaskExpected, raw: RawResult, sizes: list[int]) -> Verdict:
    passed = [[False] * n for n in sizes]
    errors: dict[str, int] = {}

    def void(status: str, detail: str) -> Verdict:
        return Verdict(status, [[False] * n for n in sizes], ["fail"] * len(sets), {status: 1}, detail)

    if raw.sample_fault:
        return void("protocol_violation", f"the sample broke its own result channel: {raw.sample_fault}")
    if raw.overflow:
        return void("output_overflow", "the sample wrote more result records or bytes than allowed")
    recs = raw.records
    if not recs:
        return void("load_error", "no output (the process died before loading the code)")
    try:
        head = _parse(recs[0])
        if head == ["loaded"]:
            pass
        elif len(head) == 2 and head[0] == "load_error" and isinstance(head[1], str):
            name = _name(head[1])
            return Verdict("load_error", passed, ["fail"] * len(sets), {name: 1}, f"load error: {name}")
        else:
            raise ProtocolViolation("first record must be the load status")
        seen = set()
        for line in recs[1:]:
            m = _OK_NO_VALUE.fullmatch(line)
            if m is not None:  # the common record, read without json; anything else takes the strict path
                rec = [int(m[1]), int(m[2]), "ok", m[3].decode(), None]
                s, i, kind = _check_range(rec, sizes)
            else:
                rec = _parse(line)
                s, i, kind = _check_record(rec, sizes)
            if (s, i) in seen:
                raise ProtocolViolation(f"duplicate record for test {s}/{i}")
            seen.add((s, i))
            if kind == "ok":
                ok = rec[3] == exp.digests[s][i] or task.oracle == "always"
                if not ok and rec[4] is not None and (task.oracle in VALUE_ORACLES or task.atol
                                                      or exp.values[s]):
                    inp = (task.base_inputs if sets[s] == "base" else task.plus_inputs)[i]
                    ok = oracle_pass(task, inp, decode_value(rec[4]), exp.value(s, i))
                passed[s][i] = ok
                if not ok:
                    errors["wrong"] = errors.get("wrong", 0) + 1
            else:
                name = "timeout" if kind == "timeout" else _name(rec[3])
                errors[name] = errors.get(name, 0) + 1
    except ProtocolViolation as exc:
        return void("protocol_violation", str(exc))
    missing = sum(n for n in sizes) - len(seen)
    if missing:
        errors["missing"] = missing
    set_status = []
    for s, n in enumerate(sizes):
        if all(passed[s]):
            set_status.append("pass")
        elif (raw.status.get("deadline") or raw.status.get("limit")) and any((s, i) not in seen
                                                                             for i in range(n)):
            set_status.append("timeout")
        else:
            set_status.append("fail")
    return Verdict("ok", passed, set_status, errors)


_UNPRINTABLE = re.compile(r"[^\x21-\x7e]")


def _name(text: str) -> str:
    """An exception type name from the sandbox as printable ASCII (it ends up in logs and result files)."""
    return _UNPRINTABLE.sub("?", text[:64])


def _parse(line: bytes) -> list:
    if len(line) > MAX_LINE:
        raise ProtocolViolation("record too long")
    try:
        rec = json.loads(line, parse_constant=_reject_constant)
    except (ValueError, RecursionError, MemoryError) as exc:
        raise ProtocolViolation("garbled record") from exc
    if not isinstance(rec, list):
        raise ProtocolViolation("record is not a list")
    return rec


def _check_range(rec: list, sizes: list[int]) -> tuple[int, int, str]:
    s, i = rec[0], rec[1]
    if not (0 <= s < len(sizes) and 0 <= i < sizes[s]):
        raise ProtocolViolation(f"test index {s}/{i} out of range")
    return s, i, rec[2]


def _check_record(rec: list, sizes: list[int]) -> tuple[int, int, str]:
    if len(rec) < 3 or type(rec[0]) is not int or type(rec[1]) is not int or not isinstance(rec[2], str):
        raise ProtocolViolation("malformed test record")
    s, i, kind = _check_range(rec, sizes)
    if kind == "ok":
        if len(rec) not in (5, 6) or not isinstance(rec[3], str) or not _HEX.fullmatch(rec[3]):
            raise ProtocolViolation("malformed ok record")
        if rec[4] is not None and not isinstance(rec[4], str):
            raise ProtocolViolation("malformed value")
    elif kind == "exc":
        if len(rec) != 4 or not isinstance(rec[3], str):
            raise ProtocolViolation("malformed exc record")
    elif kind != "timeout" or len(rec) != 3:
        raise ProtocolViolation(f"unknown record kind {kind!r}")
    return s, i, kind
