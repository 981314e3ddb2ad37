"""Trusted-side pieces on exact small cases: canonical digests, value decoding, the judge's protocol checks
and EvalPlus's oracles. No sandbox needed: the judge is fed hand-written record lines, exactly what a hostile
sandbox child could write."""

from __future__ import annotations

import json
from collections import Counter, OrderedDict, defaultdict, namedtuple

import pytest

from rewards import _zygote as z
from rewards.judge import ProtocolViolation, TaskExpected, decode_value, judge, oracle_pass
from rewards.sandbox import RawResult
from rewards.tasks import Task


class AlwaysEqual(int):
    def __eq__(self, other):
        return True

    __hash__ = int.__hash__


@pytest.mark.parametrize(("a", "b"), [
    ([1, 2, 3], [1, 2.0, True + 2]),
    ({1: "a", 2: "b"}, {2: "b", 1: "a"}),
    ({1, 2, 3}, frozenset([3, 2, 1])),
    (Counter("aab"), {"a": 2, "b": 1}),
    (namedtuple("P", "x y")(1, 2), (1, 2)),
    (defaultdict(int, {"k": 1}), {"k": 1}),
    (OrderedDict([("a", 1)]), {"a": 1}),
    (list(range(200)), [float(i) for i in range(200)]),
    ([(1, "a")] * 100, [(1.0, "a")] * 100),
    (3 + 0j, 3),
])
def test_digest_equal_under_python_equality(a, b) -> None:
    assert a == b
    assert z.digest(a) == z.digest(b)


@pytest.mark.parametrize(("a", "b"), [
    ([1, 2], (1, 2)), ([1, 2], [2, 1]), (0.5, 1), ("1", 1), (None, 0), (b"a", "a"), ([[1]], [[2]]),
    ({1: 2}, {1: 3}), (float("inf"), float("-inf")),
])
def test_digest_differs_when_values_differ(a, b) -> None:
    assert a != b
    assert z.digest(a) != z.digest(b)


def test_builtin_subclass_with_lying_eq_digests_as_its_stored_value() -> None:
    assert z.digest(AlwaysEqual(5)) == z.digest(5)
    assert z.digest(AlwaysEqual(5)) != z.digest(6)


def test_digest_refuses_arbitrary_objects() -> None:
    class Anything:
        def __eq__(self, other):
            return True

    with pytest.raises(TypeError):
        z.digest(Anything())


@pytest.mark.parametrize("value", [1, -(2**80), 2.5, float("nan"), "s", None, True, [1, (2, 3)], {"a": [1]},
                                   {1, 2}, 1 + 2j, b"\x00\xff", {(1, 2): {3}}])
def test_tagged_value_roundtrip(value) -> None:
    back = decode_value(json.dumps(z.encode_value(value)))
    assert type(back) is type(value) or isinstance(value, set)
    if value == value:  # NaN aside
        assert back == value


@pytest.mark.parametrize("text", ['{"t": 1}', '{"x": [1]}', '{"t": [1], "s": [2]}', "NaN", '{"i": "zz"}',
                                  '{"s": [[1]]}', "[" * 100000 + "]" * 100000])
def test_decode_value_rejects_anything_else(text) -> None:
    with pytest.raises(ProtocolViolation):
        decode_value(text)


def _task(**kw) -> Task:
    base = dict(task_id="t", prompt="", entry_point="f", base_inputs=[[1], [2]], plus_inputs=[[3]],
                expected_base=[10, 20], expected_plus=[30])
    return Task(**{**base, **kw})


def _expected(task: Task) -> TaskExpected:
    from rewards.expected import _from_values

    return _from_values(task)


def _rec(s, i, value) -> bytes:
    return json.dumps([s, i, "ok", z.digest(value), json.dumps(z.encode_value(value))]).encode()


def _raw(*lines: bytes, **status) -> RawResult:
    return RawResult(records=[b'["loaded"]', *lines], status={"deadline": False, **status})


def test_judge_counts_passes_and_statuses() -> None:
    t = _task()
    v = judge(t, ("base", "plus"), _expected(t), _raw(_rec(0, 0, 10), _rec(0, 1, 21), _rec(1, 0, 30)))
    assert v.status == "ok" and v.passed == [[True, False], [True]] and v.set_status == ["fail", "pass"]


@pytest.mark.parametrize("bad", [
    b'[0, 0, "ok", "00", null]', b"[0, 0]", b"garbage", b'[5, 0, "timeout"]', b'[0, 9, "timeout"]',
    b'[0, 0, "pass"]', b'{"0": 1}', b'[0, 0, "ok", "' + b"a" * 32 + b'", 5]', b'[true, 0, "timeout"]',
])
def test_malformed_record_voids_the_sample(bad) -> None:
    t = _task()
    v = judge(t, ("base", "plus"), _expected(t), _raw(_rec(0, 0, 10), _rec(0, 1, 20), _rec(1, 0, 30), bad))
    assert v.status == "protocol_violation" and not any(any(p) for p in v.passed)


def test_duplicate_record_voids_even_correct_outputs() -> None:
    t = _task()
    v = judge(t, ("base", "plus"), _expected(t), _raw(_rec(0, 0, 10), _rec(0, 0, 10), _rec(0, 1, 20)))
    assert v.status == "protocol_violation"


def test_missing_records_fail_and_deadline_means_timeout() -> None:
    t = _task()
    v = judge(t, ("base", "plus"), _expected(t), _raw(_rec(0, 0, 10), _rec(0, 1, 20), deadline=True))
    assert v.set_status == ["pass", "timeout"] and v.errors["missing"] == 1


def test_load_error_and_empty_output() -> None:
    t = _task()
    assert judge(t, ("base",), _expected(t),
                 RawResult([b'["load_error","SyntaxError"]'], {})).status == "load_error"
    assert judge(t, ("base",), _expected(t), RawResult([], {})).status == "load_error"


def test_float_tolerance_and_type_rules() -> None:
    t = _task(expected_base=[0.1 + 0.2, [1.0, 2.0]], expected_plus=[1.0])
    exp = _expected(t)
    v = judge(t, ("base",), exp, _raw(_rec(0, 0, 0.3), _rec(0, 1, (1.0, 2.0))))
    # 0.3 within atol 1e-6; tuple is not list (evalplus asserts type equality)
    assert v.passed == [[True, False]]


def test_special_oracles() -> None:
    fz = _task(oracle="find_zero", atol=1e-6, base_inputs=[[[-6, 11, -6, 1]]], expected_base=[1.0],
               plus_inputs=[], expected_plus=[])
    assert oracle_pass(fz, [[-6, 11, -6, 1]], 3.0, 1.0)  # another root is also right
    assert not oracle_pass(fz, [[-6, 11, -6, 1]], 2.5, 1.0)
    assert not oracle_pass(fz, [[-6, 11, -6, 1]], "3", 1.0)
    always = _task(oracle="always")
    v = judge(always, ("base",), _expected(always), _raw(_rec(0, 0, "x"), _rec(0, 1, None)))
    assert v.passed == [[True, True]]
    sd = _task(oracle="sum_div")
    assert oracle_pass(sd, [1], 0, 10) and not oracle_pass(sd, [1], 3, 10)


def test_set_eq_and_not_none_expected_are_converted_like_the_sandbox() -> None:
    t = _task(oracle="set_eq", expected_base=[[1, 2], [3]], expected_plus=[[4, 4]])
    exp = _expected(t)
    assert exp.digests[0][0] == z.digest({2, 1}) and exp.digests[1][0] == z.digest({4})
    nn = _task(oracle="not_none", expected_base=[object(), None], expected_plus=[True])
    assert _expected(nn).digests[0] == [z.digest(True), z.digest(False)]


def _compact(s, i, value) -> bytes:
    """An ok record exactly as the sandbox child writes it when no value is sent (the judge's json-free
    path)."""
    return b'[%d,%d,"ok","%s",null]' % (s, i, z.digest(value).encode())


def test_compact_ok_records_judge_like_json_ones() -> None:
    t = _task()
    fast = judge(t, ("base", "plus"), _expected(t), _raw(_compact(0, 0, 10), _compact(0, 1, 21),
                                                         _compact(1, 0, 30)))
    slow = judge(t, ("base", "plus"), _expected(t), _raw(_rec(0, 0, 10), _rec(0, 1, 21), _rec(1, 0, 30)))
    assert fast == slow and fast.passed == [[True, False], [True]]


@pytest.mark.parametrize("bad", [
    b'[0,2,"ok","' + b"a" * 32 + b'",null]', b'[1,1,"ok","' + b"a" * 32 + b'",null]',
    b'[00,0,"ok","' + b"a" * 32 + b'",null]', b'[0,0,"ok","' + b"A" * 32 + b'",null]',
    b'[0,0,"ok","' + b"a" * 31 + b'",null]', b'[0,0,"ok","' + b"a" * 32 + b'",nul]',
])
def test_compact_record_lookalikes_void_the_sample(bad) -> None:
    t = _task()
    v = judge(t, ("base", "plus"), _expected(t), _raw(_compact(0, 0, 10), _compact(1, 0, 30), bad))
    assert v.status == "protocol_violation"


def test_duplicate_across_compact_and_json_records() -> None:
    t = _task()
    v = judge(t, ("base", "plus"), _expected(t), _raw(_compact(0, 0, 10), _rec(0, 0, 10)))
    assert v.status == "protocol_violation"
