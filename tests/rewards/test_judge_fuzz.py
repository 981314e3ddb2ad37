"""The trusted judge never raises on anything a sandbox child can send (issue #20, class 1).

Hand-written records that once escaped as exceptions (complex numbers built from huge integers, ...), then a
derandomized hypothesis fuzz of the record decoder and the whole judge: random bytes, random JSON, and
well-formed records carrying random tagged values, against tasks that exercise every oracle. Every outcome
must be a :class:`Verdict`; an undecodable or out-of-range record voids that sample only.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rewards import _zygote as z
from rewards.judge import ProtocolViolation, Verdict, decode_value, judge
from rewards.sandbox import RawResult
from rewards.tasks import Task

HUGE = "f" * 400  # 1600-bit integer: beyond any float
BIG = json.dumps({"i": HUGE})
CRAFTED_VALUES = [
    f'{{"c": [{BIG}, 0]}}',
    '{"c": [0, {"i": "-' + HUGE + '"}]}',
    f'{{"c": [{BIG}, {BIG}]}}',
    f'{{"s": [{{"c": [{BIG}, 1]}}]}}',
    f'{{"d": [[{{"c": [1, {BIG}]}}, 1]]}}',
    BIG,  # decodes fine; the oracles then compare it with floats
    f"[{BIG}, 1.5]",
    '{"f": "inf"}',
]
PLAIN = (type(None), bool, int, float, str, bytes, complex, list, tuple, set, dict)


def _plain(x) -> bool:
    if isinstance(x, (list, tuple, set)):
        return type(x) in PLAIN and all(_plain(e) for e in x)
    if isinstance(x, dict):
        return type(x) is dict and all(_plain(k) and _plain(v) for k, v in x.items())
    return type(x) in PLAIN


def _decodes_to_plain_or_violates(text: str) -> None:
    try:
        value = decode_value(text)
    except ProtocolViolation:
        return
    assert _plain(value), value


def _tasks() -> list[Task]:
    base = dict(prompt="", entry_point="f", base_inputs=[[1], [2]], plus_inputs=[[3]])
    return [
        Task(task_id="floats", expected_base=[0.5, [1.5, 2.5]], expected_plus=[1e300], atol=1e-6, **base),
        Task(task_id="ints", expected_base=[1, 2], expected_plus=[3], **base),
        Task(task_id="set_eq", oracle="set_eq", expected_base=[[1, 2], [3]], expected_plus=[[4]], **base),
        Task(task_id="not_none", oracle="not_none", expected_base=[1, None], expected_plus=[True], **base),
        Task(task_id="find_zero", oracle="find_zero", atol=1e-6, prompt="", entry_point="f",
             base_inputs=[[[-6, 11, -6, 1]]], expected_base=[1.0], plus_inputs=[[[1, 1]]],
             expected_plus=[-1.0]),
        Task(task_id="surface_area", oracle="surface_area", atol=1e-6, prompt="", entry_point="f",
             base_inputs=[[5, 12]], expected_base=[1.0], plus_inputs=[[1, 1]], expected_plus=[2.0]),
        Task(task_id="digit_distance", oracle="digit_distance", prompt="", entry_point="f",
             base_inputs=[[123, 256]], expected_base=[7], plus_inputs=[[1, 2]], expected_plus=[1]),
        Task(task_id="sum_div", oracle="sum_div", expected_base=[1, 2], expected_plus=[3], **base),
    ]


TASKS = _tasks()


def _expected(task: Task):
    from rewards.expected import _from_values

    return _from_values(task)


EXPECTED = {t.task_id: _expected(t) for t in TASKS}
STATUSES = {"ok", "load_error", "protocol_violation", "output_overflow"}


def _judge_all(lines: list[bytes], status: dict | None = None) -> list[Verdict]:
    out = []
    for t in TASKS:
        for sets in (("base", "plus"), ("base",)):
            v = judge(t, sets, EXPECTED[t.task_id], RawResult(records=lines, status=status or {}))
            assert isinstance(v, Verdict) and v.status in STATUSES, v
            assert len(v.passed) == len(sets) and len(v.set_status) == len(sets)
            out.append(v)
    return out


@pytest.mark.parametrize("value", CRAFTED_VALUES)
def test_crafted_values_never_raise_from_the_decoder(value) -> None:
    _decodes_to_plain_or_violates(value)


@pytest.mark.parametrize("value", CRAFTED_VALUES)
def test_crafted_value_records_are_judged_not_raised(value) -> None:
    for s, i in ((0, 0), (0, 1), (1, 0)):
        rec = json.dumps([s, i, "ok", "0" * 32, value]).encode()
        for v in _judge_all([b'["loaded"]', rec]):
            assert not any(any(p) for p in v.passed) or v.status == "ok"


def test_crafted_records_of_every_kind_are_judged_not_raised() -> None:
    weird = [b'[0,0,"exc","\\ud800"]', b'[0,0,"exc",' + b'"x"' * 1 + b']',
             b'["load_error",' + b'1' * 5000 + b']',
             b'[0,0,"ok","' + b"0" * 32 + b'",null,' + b"9" * 4000 + b"]", b"\xff\xfe", b"[" * 200000,
             b'[0,0,"ok","' + b"0" * 32 + b'","' + b"[" * 50000 + b'"]', b'[1e999,0,"timeout"]']
    for first in (b'["loaded"]', b'["load_error","\\udfff"]', b"[]", b"null"):
        _judge_all([first, *weird])
        for w in weird:
            _judge_all([first, w])


# --- fuzzing ------------------------------------------------------------------------------------------------

_hex = (st.text("0123456789abcdef", min_size=0, max_size=420) | st.text(max_size=8)
        | st.sampled_from([HUGE, "-" + HUGE, "1" + "0" * 256, "-0", "0x1f"]))
_leaf = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
         | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8)
         | st.builds(lambda h: {"i": h}, _hex) | st.sampled_from([{"f": "nan"}, {"f": "inf"}, {"f": "-inf"},
                                                                  {"f": "1"}, {"b": "00ff"}, {"b": "zz"}]))


def _tagged(children):
    return (st.lists(children, max_size=4)
            | st.builds(lambda v: {"t": v}, st.lists(children, max_size=4))
            | st.builds(lambda v: {"s": v}, st.lists(children, max_size=4))
            | st.builds(lambda v: {"d": v}, st.lists(st.lists(children, min_size=0, max_size=3), max_size=3))
            | st.builds(lambda a, b: {"c": [a, b]}, children, children)
            | st.dictionaries(st.text(max_size=2), children, max_size=2))


VALUES = st.recursive(_leaf, _tagged, max_leaves=12)
DIGEST = st.sampled_from(["0" * 32, z.digest(1), z.digest(0.5), z.digest(3), z.digest(frozenset({1, 2}))])
INDEX = st.integers(min_value=-2, max_value=3)


def _ok_line(s, i, d, v) -> bytes:
    return json.dumps([s, i, "ok", d, None if v is None else json.dumps(v)]).encode()


RECORD = (st.builds(_ok_line, INDEX, INDEX, DIGEST, VALUES)
          | st.builds(lambda s, i, n: json.dumps([s, i, "exc", n]).encode(), INDEX, INDEX,
                      st.text(max_size=70))
          | st.builds(lambda s, i: json.dumps([s, i, "timeout"]).encode(), INDEX, INDEX)
          | st.builds(lambda v: json.dumps(v).encode(), VALUES)
          | st.binary(max_size=64))
FIRST = st.sampled_from([b'["loaded"]', b'["load_error","X"]']) | RECORD
FUZZ = settings(derandomize=True, max_examples=400, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(VALUES)
def test_fuzz_decoder_returns_plain_values_or_protocol_violation(value) -> None:
    _decodes_to_plain_or_violates(json.dumps(value))


@FUZZ
@given(FIRST, st.lists(RECORD, max_size=6), st.booleans())
def test_fuzz_judge_never_raises(first, lines, deadline) -> None:
    _judge_all([first, *lines], {"deadline": deadline})
