"""Assert statements -> sandboxed calls + a check evaluated on the trusted side (the "assert" test format).

Why: ``assert f(x) == y`` run next to the completion can be forged (a lying ``__eq__``, a patched
``AssertionError``, ``exit(0)``, reading ``y`` from a frame). Here each assert is parsed with ``ast`` on the
trusted side into the calls it makes to the completion's functions (arguments: literals, or pure expressions
of literals evaluated here) and the rest of the expression. Only the calls run in the sandbox
(``_formats.call_runner``); their return values come back as plain data, and the assert expression is
evaluated here, on those values, with Python's own operators and a small set of builtins: Python semantics
stay exact (``1 == 1.0 == True``, ``f() is True`` fails for ``1``, tolerance only where the test writes one:
``abs(f(x) - y) < eps``, ``math.isclose``, ``pytest.approx``).

An assert is excluded (counted, never run) when it cannot be judged that way: a lambda or a nested call of the
completion (e.g. a mutation check ``(lambda m: (f(m), m)[1])(x)``), a name the completion defines used as a
value, private attributes, or operations whose cost the completion's values could blow up on the trusted side
(``*``, ``**``, ``<<`` and method arguments built from returned values, beyond the allow-lists below). See
docs/rewards.md, "Code-RL corpora".
"""

from __future__ import annotations

import ast
import builtins
import copy
import math
from typing import Any

from ._digest import encode_value

# builtins a check may call on returned (plain) values: their cost is bounded by the value's size (range only
# on literals)
SAFE_BUILTINS = {
    name: getattr(builtins, name)
    for name in ("len", "sorted", "set", "list", "tuple", "dict", "frozenset", "abs", "round", "sum", "min",
                 "max", "all", "any", "isinstance", "str", "int", "float", "bool", "type", "repr", "chr",
                 "ord", "reversed", "complex", "bytes", "range", "enumerate", "zip")
}
MATH_FUNCS = frozenset({"isclose", "isnan", "isinf", "isfinite", "fabs", "floor", "ceil", "sqrt", "log",
                        "log2", "log10", "trunc", "inf", "nan", "pi", "e"})
# methods of plain values that may take a returned value as argument (cost bounded by the values' sizes)
VALUE_ARG_METHODS = frozenset({"join", "count", "index", "find", "rfind", "startswith", "endswith", "get",
                               "issubset", "issuperset", "isdisjoint", "union", "intersection", "difference",
                               "symmetric_difference"})
_NO_METHODS = frozenset({"format", "format_map"})  # format strings can reach attributes
_BOUNDED_OPS = (ast.Mult, ast.Pow, ast.LShift)
_ALLOWED_NODES = (ast.Expression, ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Compare, ast.Call, ast.Constant,
                  ast.Name, ast.Load, ast.Attribute, ast.Subscript, ast.Slice, ast.List, ast.Tuple, ast.Set,
                  ast.Dict, ast.IfExp, ast.keyword, ast.Starred, ast.GeneratorExp, ast.ListComp, ast.SetComp,
                  ast.comprehension, ast.Store, ast.boolop, ast.operator, ast.unaryop, ast.cmpop)


class Unjudgeable(ValueError):
    """This assert cannot be judged with the guarantee (str = short reason)."""


class Approx:
    """``pytest.approx`` for numbers and (nested) lists/tuples/dicts of numbers, with pytest's defaults:
    ``|actual - expected| <= max(rel * |expected|, abs)``, rel 1e-6, abs 1e-12; non-numbers compare with
    ``==``."""

    def __init__(self, expected: Any, rel: float | None = None, abs: float | None = None) -> None:  # noqa: A002
        self.expected, self.rel, self.abs = expected, 1e-6 if rel is None else rel, \
            1e-12 if abs is None else abs

    def _close(self, actual: Any, expected: Any) -> bool:
        if isinstance(expected, dict):
            return isinstance(actual, dict) and actual.keys() == expected.keys() and all(
                self._close(actual[k], expected[k]) for k in expected)
        if isinstance(expected, (list, tuple)):
            return isinstance(actual, (list, tuple)) and len(actual) == len(expected) and all(
                self._close(a, e) for a, e in zip(actual, expected))
        numbers = (int, float)
        if isinstance(expected, numbers) and not isinstance(expected, bool) and isinstance(actual, numbers) \
                and not isinstance(actual, bool):
            if actual == expected:
                return True
            if math.isinf(expected) or math.isinf(actual):
                return False
            return abs(actual - expected) <= max(self.rel * abs(expected), self.abs)
        return actual == expected

    def __eq__(self, actual: Any) -> bool:
        return self._close(actual, self.expected)

    def __ne__(self, actual: Any) -> bool:
        return not self.__eq__(actual)

    __hash__ = None  # type: ignore[assignment]


class _Pytest:
    approx = Approx


def check_env() -> dict[str, Any]:
    """The globals a check is evaluated in on the trusted side (``__builtins__`` emptied)."""
    return {"__builtins__": {}, **SAFE_BUILTINS, "math": math, "pytest": _Pytest, "approx": Approx}


_TRUSTED_NAMES = frozenset(SAFE_BUILTINS) | {"math", "pytest", "approx"}


def _is_target_call(node: ast.Call, names: frozenset[str]) -> list[str] | None:
    """``[name]`` for a call of a completion function, ``[Cls, method]`` for ``Cls().method(...)`` (a
    capitalised class name, as LeetCode's ``Solution``; ``f().lower()`` is a method of ``f``'s value), else
    None."""
    func = node.func
    if isinstance(func, ast.Name) and func.id not in names:
        return [func.id]
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Call) \
            and isinstance(func.value.func, ast.Name) and func.value.func.id not in names \
            and func.value.func.id[:1].isupper() and not func.value.args and not func.value.keywords:
        return [func.value.func.id, func.attr]
    return None


def trusted_eval(node: ast.expr, values: dict[str, Any] | None = None) -> Any:
    """Evaluate a validated expression on the trusted side (plain values only reach it)."""
    code = compile(ast.fix_missing_locations(ast.Expression(node)), "<assert>", "eval")
    return eval(code, check_env(), dict(values or {}))  # noqa: S307 - validated by _validate, builtins emptied


def _contains(node: ast.AST, names: set[str]) -> bool:
    return any(isinstance(n, ast.Name) and n.id in names for n in ast.walk(node))


def _validate(node: ast.expr, placeholders: set[str], local: set[str]) -> None:
    """Raise Unjudgeable unless evaluating ``node`` here is safe whatever plain values the placeholders hold.

    Comprehension variables count as returned values too (they iterate over them)."""
    tainted = placeholders | local if placeholders else set()
    for n in ast.walk(node):
        if not isinstance(n, _ALLOWED_NODES):
            raise Unjudgeable(f"{type(n).__name__} in assert")
        if isinstance(n, ast.Name) and n.id not in _TRUSTED_NAMES | placeholders | local:
            raise Unjudgeable(f"name {n.id!r} is not a literal")
        if isinstance(n, ast.Attribute):
            if n.attr.startswith("_") or n.attr in _NO_METHODS:
                raise Unjudgeable(f"attribute {n.attr!r}")
            if isinstance(n.value, ast.Name) and n.value.id == "math" and n.attr not in MATH_FUNCS:
                raise Unjudgeable(f"math.{n.attr}")
        if isinstance(n, ast.BinOp) and _contains(n, tainted):
            _check_bounded(n, tainted)
        elif isinstance(n, ast.BinOp) and _huge_literal_op(n):
            raise Unjudgeable("literal arithmetic too large to evaluate")
        if isinstance(n, (ast.ListComp, ast.SetComp, ast.GeneratorExp)) and len(n.generators) > 1 \
                and _contains(n, tainted):
            raise Unjudgeable("nested comprehension over a returned value")
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) \
                and n.func.attr not in VALUE_ARG_METHODS \
                and not (isinstance(n.func.value, ast.Name) and n.func.value.id in ("math", "pytest")) \
                and any(_contains(a, tainted) for a in [*n.args, *(k.value for k in n.keywords)]):
            raise Unjudgeable(f"method {n.func.attr!r} with a returned value as argument")
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "range" \
                and _contains(n, tainted):
            raise Unjudgeable("range over a returned value")


def _small_number(node: ast.expr, limit: float) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        node = node.operand
    return isinstance(node, ast.Constant) and type(node.value) in (int, float) and abs(node.value) <= limit


def _huge_literal_op(n: ast.BinOp) -> bool:
    """Dataset arithmetic that could stall the trusted side (``10**10**10``, ``[0] * 10**12``): powers and
    shifts need a literal exponent of at most 10,000; a sequence may be repeated at most 10**7 times."""
    if isinstance(n.op, (ast.Pow, ast.LShift)):
        return not _small_number(n.right, 10_000)
    if isinstance(n.op, ast.Mult):
        seq = (ast.List, ast.Tuple, ast.ListComp)
        for a, b in ((n.left, n.right), (n.right, n.left)):
            is_seq = isinstance(a, seq) or (isinstance(a, ast.Constant) and isinstance(a.value, (str, bytes)))
            if is_seq and not _small_number(b, 10**7) and not (isinstance(b, ast.BinOp) and _bounded_int(b)):
                return True
    return False


def _bounded_int(node: ast.expr) -> bool:
    """A literal integer expression whose value is at most 10**7 (evaluated only when its parts are small)."""
    if _small_number(node, 10**7):
        return True
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Pow)) \
            and _small_number(node.left, 10**7) and _small_number(node.right, 64):
        try:
            return abs(trusted_eval(node)) <= 10**7
        except Exception:  # noqa: BLE001
            return False
    return False


def _check_bounded(n: ast.BinOp, tainted: set[str]) -> None:
    """``*``, ``**``, ``<<`` and ``%``-formatting whose cost a returned value could blow up: only with a small
    number literal as the other operand (and never a returned exponent)."""
    if isinstance(n.op, ast.Mod) and isinstance(n.left, ast.Constant) \
            and isinstance(n.left.value, (str, bytes)):
        raise Unjudgeable("%-formatting of a returned value")
    if not isinstance(n.op, _BOUNDED_OPS):
        return
    other, mine = (n.right, n.left) if _contains(n.left, tainted) else (n.left, n.right)
    small = isinstance(other, ast.Constant) and type(other.value) in (int, float) and abs(other.value) <= 64
    if _contains(other, tainted) or not small or (isinstance(n.op, ast.Pow) and mine is n.right):
        raise Unjudgeable("unbounded arithmetic on a returned value")


def _comp_locals(node: ast.AST) -> set[str]:
    return {t.id for c in ast.walk(node) if isinstance(c, ast.comprehension) for t in ast.walk(c.target)
            if isinstance(t, ast.Name)}


class _Extract(ast.NodeTransformer):
    """Replaces each completion call by a placeholder name ``__cK`` and records ``[target, args, kwargs]``."""

    def __init__(self, rename: dict[str, str], start: int) -> None:
        self.calls: list[list] = []
        self.rename, self.start = rename, start

    def visit_Call(self, node: ast.Call) -> ast.AST:
        inner, wrap = wrapped_call(node, lambda n: _is_target_call(n, _TRUSTED_NAMES) is not None
                                   or constructed_method(n, _TRUSTED_NAMES) is not None)
        ctor = constructed_method(inner, _TRUSTED_NAMES)
        target = _is_target_call(inner, _TRUSTED_NAMES)
        if ctor is not None:  # Cls(a).method(b): construct (kept in the sandbox), then call the method on it
            var = f"__o{self.start + len(self.calls)}"
            self._add(["new", var, self.rename.get(ctor.func.id, ctor.func.id)], ctor, {"discard": True})
            target = ["on", var, inner.func.attr]
        elif target is None:
            return self.generic_visit(node)
        else:
            target[0] = self.rename.get(target[0], target[0])
        name = self._add(target, inner, {"wrap": wrap} if wrap else {})
        return ast.copy_location(ast.Name(id=name, ctx=ast.Load()), node)

    def _add(self, target: list, call: ast.Call, opts: dict) -> str:
        args, kwargs = [], {}
        for a in call.args:
            args.append(_literal(a))
        for k in call.keywords:
            if k.arg is None:
                raise Unjudgeable("**kwargs in a call")
            kwargs[k.arg] = _literal(k.value)
        name = f"__c{self.start + len(self.calls)}"
        self.calls.append([target, args, kwargs] + ([opts] if opts else []))
        return name


def constructed_method(node: ast.Call, names: frozenset[str]) -> ast.Call | None:
    """The constructor call of ``Cls(args).method(...)`` (a capitalised class of the completion, with
    arguments; ``Cls().method()`` is the plain ``[Cls, method]`` target), else None."""
    f = node.func
    if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Call) and isinstance(f.value.func, ast.Name) \
            and f.value.func.id not in names and f.value.func.id[:1].isupper() \
            and (f.value.args or f.value.keywords):
        return f.value
    return None


# conversions a check applies directly to a returned value: applied in the sandbox instead, so that iterators
# and generators (which cannot cross) are judged by the plain value they produce (rewards/_formats.py, "wrap")
WRAPPERS = frozenset({"list", "tuple", "set", "frozenset", "sorted", "dict"})


def wrapped_call(node: ast.Call, is_target: Any) -> tuple[ast.Call, str | None]:
    """``list(f(x))`` -> (the inner call, "list"); anything else -> (node, None)."""
    if isinstance(node.func, ast.Name) and node.func.id in WRAPPERS and len(node.args) == 1 \
            and not node.keywords and isinstance(node.args[0], ast.Call) and is_target(node.args[0]):
        return node.args[0], node.func.id
    return node, None


def _literal(node: ast.expr) -> Any:
    """An argument of a completion call: a pure expression of literals and safe builtins, evaluated here."""
    if isinstance(node, ast.Starred):
        raise Unjudgeable("*args in a call")
    try:
        value = ast.literal_eval(node)  # the common case, without compiling anything
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    else:
        try:
            encode_value(value)
        except (TypeError, RecursionError):
            raise Unjudgeable("argument not plain data") from None
        return value
    for n in ast.walk(node):
        if isinstance(n, ast.Call) and _is_target_call(n, _TRUSTED_NAMES) is not None:
            raise Unjudgeable("nested call of the completion")
    _validate(node, set(), _comp_locals(node))
    try:
        value = trusted_eval(node)
        encode_value(value)  # plain data only (raises TypeError otherwise)
    except Exception as exc:  # noqa: BLE001 - an argument we cannot build here
        raise Unjudgeable(f"argument not plain data ({type(exc).__name__})") from None
    return value


def parse_assert(test: ast.expr, rename: dict[str, str] | None = None, start: int = 0,
                 ) -> tuple[str, list[list], Any]:
    """(check expression source with ``__cK`` placeholders, K from ``start``; calls
    ``[target, args, kwargs]``; the expected value when the check is exactly ``__cK == <literal>``, for the
    digest comparison of returned values too large to send, else the sentinel ``NO_LITERAL``). Raises
    Unjudgeable; rewrites ``test`` in place."""
    ext = _Extract(rename or {}, start)
    expr = ext.visit(test)  # in place: asserts_of hands out nodes no one else holds
    if not ext.calls:
        raise Unjudgeable("no call of the completion")
    placeholders = {f"__c{start + k}" for k in range(len(ext.calls))}
    _validate(expr, placeholders, _comp_locals(expr))
    literal: Any = NO_LITERAL
    if len(ext.calls) == 1 and isinstance(expr, ast.Compare) and len(expr.ops) == 1 \
            and isinstance(expr.ops[0], ast.Eq):
        left, right = expr.left, expr.comparators[0]
        only = f"__c{start}"
        other = right if isinstance(left, ast.Name) and left.id == only else \
            left if isinstance(right, ast.Name) and right.id == only else None
        if other is not None and not _contains(other, placeholders):
            try:
                literal = trusted_eval(other)
                encode_value(literal)  # plain data (pytest.approx(...) is not: no digest fallback for it)
            except Exception:  # noqa: BLE001
                literal = NO_LITERAL
    return ast.unparse(expr), ext.calls, literal


class _NoLiteral:
    def __repr__(self) -> str:
        return "NO_LITERAL"


NO_LITERAL = _NoLiteral()


def asserts_of(source: str) -> tuple[list[tuple[ast.expr, dict[str, str]]], int]:
    """The assert expressions of a test snippet, with the renames a ``def check(candidate): ...; check(f)``
    block implies (``candidate`` -> ``f``), and the number of other statements that cannot be judged (0 when
    the snippet is only asserts). Raises Unjudgeable when the snippet does not parse."""
    try:
        module = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise Unjudgeable(f"test does not parse ({type(exc).__name__})") from None
    checks = {n.name: n for n in module.body if isinstance(n, ast.FunctionDef)}
    out: list[tuple[ast.expr, dict[str, str]]] = []
    skipped = 0
    for stmt in module.body:
        if isinstance(stmt, ast.Assert):
            out.append((stmt.test, {}))
        elif isinstance(stmt, (ast.Import, ast.ImportFrom, ast.FunctionDef)):
            continue  # imports of the test file; check functions are expanded where called
        elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call) \
                and isinstance(stmt.value.func, ast.Name) and stmt.value.func.id in checks \
                and len(stmt.value.args) == 1 and isinstance(stmt.value.args[0], ast.Name):
            fdef = checks[stmt.value.func.id]
            params = [a.arg for a in fdef.args.args]
            if len(params) != 1:
                skipped += 1
                continue
            rename = {params[0]: stmt.value.args[0].id}
            for inner in fdef.body:
                if isinstance(inner, ast.Assert):
                    out.append((copy.deepcopy(inner.test), rename))  # check() may be called more than once
                elif not (isinstance(inner, ast.Expr) and isinstance(inner.value, ast.Constant)):
                    skipped += 1  # a statement other than an assert (or a docstring) in check()
        else:
            skipped += 1
    return out, skipped


def encode_calls(calls: list[list]) -> list[list]:
    """Calls as JSON-able data: ``[target, tagged args, tagged kwargs(, opts)]``."""
    return [[t, encode_value(a), encode_value(k), *rest] for t, a, k, *rest in calls]
