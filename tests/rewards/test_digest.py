"""The digest's C-speed fast paths (flat str/int lists, flat int/float/bool lists, nested simple lists)
against the definition they shortcut, written out item by item here: digest(x) = sha256(E(N(x))) with N the
normal form under Python == and E the canonical encoding of a normal form. Exact small cases plus a seeded
random sweep; the security cases (builtin subclasses with lying hooks, arbitrary objects) must take the
general path and behave as before."""

from __future__ import annotations

import hashlib
import marshal
import math
import random
import struct

import pytest

from rewards import _zygote as z

NAN, INF = float("nan"), float("inf")


# ------------------------------------------------------------------------------------------------------------
# the definition, item by item (no fast paths)


def ref_normal(x):
    t = type(x)
    if t is bool:
        return int(x)
    if t is float:
        return int(x) if math.isfinite(x) and x.is_integer() else x
    if t is int or t is str or t is bytes or x is None:
        return x
    if t is list or t is tuple:
        return t(ref_normal(e) for e in x)
    if t is dict:
        return {ref_normal(k): ref_normal(v) for k, v in x.items()}
    if t is set or t is frozenset:
        return frozenset(ref_normal(e) for e in x)
    if t is complex:
        return ref_normal(x.real) if x.imag == 0 else x
    return ref_normal(z._plain(x))


def ref_simple(n) -> bool:
    t = type(n)
    if t is list or t is tuple:
        return all(ref_simple(e) for e in n)
    return t in (str, int, bytes, type(None)) or (t is float and n == n)


def ref_encode(n) -> bytes:
    t = type(n)
    if ref_simple(n):
        return b"M" + marshal.dumps(n, 2)
    if t is float:
        return b"F" + struct.pack("<d", math.nan)
    if t is complex:
        return b"C" + struct.pack("<dd", n.real, n.imag)
    if t is list or t is tuple:
        return (b"L%d:" if t is list else b"T%d:") % len(n) + b"".join(ref_encode(e) for e in n)
    sha = lambda v: hashlib.sha256(ref_encode(v)).digest()  # noqa: E731
    if t is dict:
        return b"D%d:" % len(n) + b"".join(sorted(sha(k) + sha(v) for k, v in n.items()))
    return b"E%d:" % len(n) + b"".join(sorted(sha(e) for e in n))


def ref_digest(x) -> str:
    return hashlib.sha256(ref_encode(ref_normal(x))).hexdigest()[:32]


def typed(x):
    """Structure with types made explicit, so that 1 and 1.0 (or True) compare unequal."""
    if type(x) in (list, tuple):
        return (type(x).__name__, [typed(e) for e in x])
    return (type(x).__name__, "nan" if x != x else x)


# ------------------------------------------------------------------------------------------------------------


class LyingInt(int):
    def __eq__(self, other):
        return True

    def __int__(self):
        return 99

    __hash__ = int.__hash__


class LyingFloat(float):
    def __eq__(self, other):
        return True

    def is_integer(self):
        return True

    def __int__(self):
        return 99

    __hash__ = float.__hash__


class MyList(list):
    def __iter__(self):
        return iter([0])


CASES = [
    True, False, 0, 1.0, -0.0, 2.5, NAN, INF, -INF, 2.0**80, 10**400, "s", None, b"x", 1 + 0j, LyingInt(3),
    LyingFloat(4.0),
    [], (), [1, 2, 3], [1.0, 2.0, 3.0], [True, 2, 3.0], (1, 2.0), [True, False], [1, 0],
    [0.5, -0.0, 0.0, 2.5], [-0.0], [INF, -INF, 1.0], [NAN, 1.0], [1.5, NAN], [2**53, 2.0**53, 2**53 + 1],
    [2.0**60, 10**400, -(10**400), 1.5], [1e308, -1e308, 5e-324], [0.1 + 0.2, 0.3],
    [[1.0, 2], (3.0,)], [[1, 2], (3,)], [[0.5, NAN], [INF]], [[[1.5]], [[2.0]]],
    [(1.0, "a"), (2, b"b", None)],
    [1, "1", None, 1.0, b"x"], ["a", "b"], [1.5, "x"], [{1.0: [2.0]}], [{1.0, 2}], [1 + 0j, 2.5 + 1j],
    MyList([1.0, 2]), [LyingInt(5), 2.0], [LyingFloat(2.5), 1], (LyingInt(7),), [MyList([1.5])],
    [bytearray(b"a"), 3.0],
]


@pytest.mark.parametrize("value", CASES, ids=repr)
def test_fast_paths_match_the_definition(value) -> None:
    assert z.digest(value) == ref_digest(value)


@pytest.mark.parametrize("value", [v for v in CASES if type(v) in (list, tuple)], ids=repr)
def test_normal_form_is_exactly_the_item_by_item_one(value) -> None:
    assert typed(z._normalize(value)) == typed(ref_normal(value))


@pytest.mark.parametrize(("a", "b"), [
    ([1, 2, 3], [1.0, 2.0, True + 2]), ([True, False], [1, 0]), ([-0.0, 0.0], [0, 0]), ([2.0**60], [2**60]),
    ([LyingInt(5), 2.0], [5, 2]), ([LyingFloat(2.5)], [2.5]), (MyList([1.0, 2]), [1, 2]),
    ([NAN, 1.5], [float("nan"), 1.5]),  # every NaN digests alike (as before)
])
def test_equal_values_equal_digests(a, b) -> None:
    assert z.digest(a) == z.digest(b)


@pytest.mark.parametrize(("a", "b"), [
    ([1.0, 2], (1, 2)), ([2**53 + 1], [2.0**53]), ([0.5], [0]), ([INF], [-INF]), ([INF], [1e308]),
    ([LyingInt(5), 2.0], [6, 2]), ([LyingFloat(2.5)], [2.0]), ([True], [2]), ([1.5, "x"], [1.5, "y"]),
    ([10**400], [10**400 + 1]), ([[1.0]], [[2.0]]), ([NAN], [INF]), ([NAN], [1.0]),
])
def test_unequal_values_differ(a, b) -> None:
    assert z.digest(a) != z.digest(b)


def test_objects_in_number_lists_are_refused() -> None:
    class Anything:
        def __eq__(self, other):
            return True

    with pytest.raises(TypeError):
        z.digest([1.0, 2, Anything()])
    with pytest.raises(TypeError):
        z.digest((Anything(), 1.5))


def _random_value(rng: random.Random, depth: int = 0):
    leaves = [lambda: rng.randint(-3, 3), lambda: float(rng.randint(-3, 3)),
              lambda: rng.choice([0.5, -2.5, 1e20]),
              lambda: rng.choice([True, False]), lambda: rng.choice([NAN, INF, -INF, -0.0]),
              lambda: rng.choice([2**70, 2.0**70]), lambda: rng.choice(["a", None, b"b"])]
    if depth < 2 and rng.random() < 0.3:
        items = [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
        return items if rng.random() < 0.7 else tuple(items)
    return rng.choice(leaves[:5] if rng.random() < 0.8 else leaves)()


def _nan_equal(a, b) -> bool:
    """Python == with every NaN equal to every NaN (the digest's rule)."""
    if type(a) in (list, tuple) and type(b) in (list, tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(_nan_equal, a, b))
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return bool(a == b)


def test_random_numeric_lists_match_definition_and_python_equality() -> None:
    rng = random.Random(1234)
    values = [[_random_value(rng) for _ in range(rng.randint(0, 5))] for _ in range(400)]
    values += [[rng.choice([1, 1.0, True, 0, 0.0, -0.0, False]) for _ in range(3)] for _ in range(100)]
    digests = [z.digest(v) for v in values]
    assert digests == [ref_digest(v) for v in values]
    for i in range(0, len(values), 5):  # digest equality <=> value equality, on a sample of pairs
        for j in range(len(values)):
            assert (digests[i] == digests[j]) == _nan_equal(values[i], values[j]), (values[i], values[j])
