"""Canonical digests and tagged-JSON values: the one definition of "equal outputs" shared by both sides.

The sandbox child digests untrusted outputs with it, and the trusted side digests caller-supplied expected
values with the very same code, so the two can only agree when the values are equal under Python ``==``.
Standalone (no ``rewards`` imports): it is bound read-only into the sandbox next to ``_zygote.py``.
"""

from __future__ import annotations

import hashlib
import itertools
import marshal
import math
import operator
import struct

DIGEST_BYTES = 16
VALUE_CAP = 65536

# ------------------------------------------------------------------------------------------------------------
# canonical digest: equal digests <=> equal values under Python == for plain builtins (bool==int, 1.0==1,
# dict/set order-insensitive, list != tuple). Builtin subclasses are read through the base type's C methods.
#
# digest(x) = sha256(E(N(x))). N (_normalize) maps a value to its normal form: bool -> int, integral float ->
# int, subclasses -> base types, set -> frozenset... E (_canon) is a function of the normal form alone: b"M" +
# marshal (version 2: no object refs, so the bytes depend on values only) when the normal form is made of
# exact list/tuple/str/int/bytes/None/float without NaN (_is_simple), else a structural encoding. The fast
# paths below only compute N or decide E at C speed (type sets, map, list ==) for common shapes; they never
# change the result.


_LEAVES = frozenset({str, int, bytes, type(None)})
_SIMPLE = _LEAVES | {list, tuple}
# floats are normal when not integral (a normal form holds no integral float)
_NORMAL_LEAVES = _LEAVES | {float}
_NUMBERS = frozenset({int, float, bool})
_NAN = struct.pack("<d", math.nan)  # every NaN encodes alike


def _is_simple(x, leaves: frozenset = _LEAVES) -> bool:
    """True when x is built only from exact list/tuple and ``leaves`` types (no NaN): then its marshal bytes
    are canonical. Scans level by level with C-speed type sets (no per-element Python frames)."""
    t = type(x)
    if t in leaves:
        return t is not float or x == x
    if t is not list and t is not tuple:
        return False
    allowed = leaves | {list, tuple}
    level = [x]
    while level:
        items = list(itertools.chain.from_iterable(level))
        kinds = set(map(type, items))
        if not kinds <= allowed:
            return False
        nested = list in kinds or tuple in kinds
        if float in kinds:
            floats = [e for e in items if type(e) is float] if nested else items
            if any(map(operator.ne, floats, floats)):  # NaN is the only value unequal to itself
                return False
        if not nested:
            return True
        level = items if kinds <= {list, tuple} else [e for e in items if type(e) is list or type(e) is tuple]
    return True


def _normal_numbers(x):
    """Normal form of an exact list/tuple of exact int/float/bool at C speed (one int() per item, one list
    ==), or None when an item is inf or NaN (left to the item-by-item path)."""
    t = type(x)
    try:
        ints = t(map(int, x))
    except (OverflowError, ValueError):
        return None
    if ints == x:  # every float integral (int == float compares exactly)
        return ints
    return t([i if i == v else v for i, v in zip(ints, x)])  # keep the non-integral floats


def _normalize(x):
    """Plain canonical form under Python ==: bool -> int, integral float -> int, complex with zero imaginary
    part -> its real part, builtin subclasses -> base type (read through the base type's C methods, so
    overridden hooks do not matter), numpy values -> Python values, set/frozenset -> frozenset."""
    t = type(x)
    if t is str or t is int or x is None or t is bytes:
        return x
    if t is bool:
        return int(x)
    if t is float:
        return int(x) if math.isfinite(x) and x.is_integer() else x
    if t is list or t is tuple:
        kinds = set(map(type, x))
        if kinds <= _LEAVES:
            return x  # already normal
        if kinds <= _NUMBERS:
            y = _normal_numbers(x)
            if y is not None:
                return y
        return t([_normalize(e) for e in x])
    if t is dict:
        return {_normalize(k): _normalize(v) for k, v in x.items()}
    if t is set or t is frozenset:
        return frozenset(_normalize(e) for e in x)
    if t is complex:
        return _normalize(x.real) if x.imag == 0 else x
    if t is bytearray:
        return bytes(x)
    return _normalize(_plain(x))


def _canon(x, out) -> None:
    """Stream the canonical encoding of a normalised value into ``out`` (a hash update function)."""
    t = type(x)
    if _is_simple(x, _NORMAL_LEAVES):
        out(b"M" + marshal.dumps(x, 2))
    elif t is float:
        out(b"F" + (struct.pack("<d", x) if x == x else _NAN))
    elif t is complex:
        out(b"C" + struct.pack("<dd", x.real, x.imag))
    elif t is list or t is tuple:
        out((b"L%d:" if t is list else b"T%d:") % len(x))
        for e in x:
            _canon(e, out)
    elif t is dict:
        items = sorted(_sub(k) + _sub(v) for k, v in x.items())
        out(b"D%d:" % len(items) + b"".join(items))
    elif t is frozenset:
        items = sorted(_sub(e) for e in x)
        out(b"E%d:" % len(items) + b"".join(items))
    else:
        raise TypeError(f"unsupported output type {t.__name__}")


def _plain(x):
    """Convert builtin subclasses / numpy values to plain builtins (reading storage, not overridable
    hooks)."""
    if isinstance(x, bool):
        return bool(int.__int__(x))
    if isinstance(x, int):
        return int.__int__(x)
    if isinstance(x, float):
        return float.__float__(x)
    if isinstance(x, str):
        return str.__str__(x)
    if isinstance(x, dict):
        return dict(dict.items(x))
    if isinstance(x, list):
        return list.copy(x)
    if isinstance(x, tuple):
        return tuple.__getitem__(x, slice(None))
    if isinstance(x, (set, frozenset)):
        return frozenset(set.__iter__(x) if isinstance(x, set) else frozenset.__iter__(x))
    if isinstance(x, complex):
        return complex.__complex__(x)
    if isinstance(x, (bytes, bytearray)):
        return bytes(x)
    mod = getattr(type(x), "__module__", "") or ""
    if mod.split(".")[0] == "numpy" and hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"unsupported output type {type(x).__name__}")


def _sub(x) -> bytes:
    h = hashlib.sha256()
    _canon(x, h.update)
    return h.digest()


def digest(x) -> str:
    """Hex digest of a value, equal for values equal under Python == (plain builtins, dict/set order ignored,
    list != tuple); raises TypeError for objects that are not plain data."""
    t = type(x)
    if t in _LEAVES or t is bool or (t is float and x == x):  # scalars whose normal form is simple
        data = b"M" + marshal.dumps(x if t in _LEAVES else _normalize(x), 2)
        return hashlib.sha256(data).hexdigest()[: 2 * DIGEST_BYTES]
    h = hashlib.sha256()
    kinds = set(map(type, x)) if t is list or t is tuple else None
    if kinds is not None and kinds <= _LEAVES:  # flat list of str/int/...: already normal and simple
        h.update(b"M" + marshal.dumps(x, 2))
    elif kinds is not None and kinds <= _NUMBERS and (y := _normal_numbers(x)) is not None:
        h.update(b"M" + marshal.dumps(y, 2))  # normal numbers hold no NaN and no integral float: simple
    elif _is_simple(x):  # nested lists/tuples of str/int/...: one marshal call, however big
        h.update(b"M" + marshal.dumps(x, 2))
    else:
        _canon(_normalize(x), h.update)
    return h.hexdigest()[: 2 * DIGEST_BYTES]


def small(x, budget: int = VALUE_CAP) -> bool:
    """Cheap upper-bound check that a value's JSON form can fit in ``budget`` bytes (avoids encoding huge
    outputs)."""
    stack = [x]
    while stack:
        y = stack.pop()
        t = type(y)
        if t is str or t is bytes or t is bytearray:
            budget -= len(y)
        elif t in (list, tuple, set, frozenset):
            budget -= 2 + len(y)
            if budget < 0:
                return False
            stack.extend(y)
        elif t is dict:
            budget -= 2 + 2 * len(y)
            if budget < 0:
                return False
            stack.extend(y.keys())
            stack.extend(y.values())
        elif t is int:
            budget -= 2 + y.bit_length() // 3
        else:
            budget -= 8
        if budget < 0:
            return False
    return True


def encode_value(x):
    """Tagged-JSON form of a plain value (decoded on the trusted side by a strict object_hook)."""
    t = type(x)
    if x is None or t is bool or t is str:
        return x
    if t is int:
        return x if -(2**53) < x < 2**53 else {"i": format(x, "x")}
    if t is float:
        return x if math.isfinite(x) else {"f": repr(x)}
    if t is list:
        return [encode_value(e) for e in x]
    if t is tuple:
        return {"t": [encode_value(e) for e in x]}
    if t is dict:
        return {"d": [[encode_value(k), encode_value(v)] for k, v in x.items()]}
    if t is set or t is frozenset:
        return {"s": [encode_value(e) for e in x]}
    if t is complex:
        return {"c": [encode_value(x.real), encode_value(x.imag)]}
    if t is bytes or t is bytearray:
        return {"b": bytes(x).hex()}
    return encode_value(_plain(x))
