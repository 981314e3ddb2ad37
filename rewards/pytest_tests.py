"""pytest files (KodCode ``test``, Dream-Coder ``autoeval``) -> sandboxed steps + trusted checks (the "pytest"
format).

Why not run pytest next to the completion: the completion could patch ``pytest``, ``AssertionError`` or
builtins, exit 0, or hand back objects whose ``__eq__`` lies. So the test file never runs: each ``def test_*``
is read with ``ast`` on the trusted side into *steps* (calls of the completion's functions, construction of
its classes and method calls on those objects, in order) and *checks* (its asserts, with each call replaced by
the value the step returned). Only the steps run in the sandbox (``_formats.call_runner``; a fresh process per
sample, the steps of a test in order so objects keep their state); their values cross as plain data and the
checks run here, with the assert format's evaluator (``rewards/assert_parse.py``). ``with pytest.raises(E):``
steps pass when the call raised an exception whose class, or a base class, is named ``E``.

What a test may contain: asserts; ``x = <call | Class(...) | literal>``; bare calls (a list/dict/set variable
passed in is read back after the call: in-place changes); ``list(f(x))`` and the like (converted in the
sandbox, so generators work); ``Cls(args).method(...)``; ``for v in <literal>:``
loops (unrolled); ``with pytest.raises(E):`` blocks without ``match=``; ``@pytest.mark.parametrize`` with
literal values (expanded, one case per parameter set); arguments that are literals, or built in the sandbox
from ``datetime`` / ``collections`` / ``decimal`` / ``fractions`` / ``math`` (values that cannot cross).
Anything else (fixtures such as ``capsys`` / ``monkeypatch`` / ``tmp_path``, helpers or classes of the test
file, objects passed back into calls, generators consumed in the test, ``try``/``if`` blocks, ``match=``)
excludes that test, counted in ``CodeTests.excluded``. docs/rewards.md lists the consequences.
"""

from __future__ import annotations

import ast
import builtins
import itertools
from typing import Any

from ._digest import encode_value
from .assert_parse import (
    _TRUSTED_NAMES,
    Unjudgeable,
    _comp_locals,
    _validate,
    constructed_method,
    trusted_eval,
    wrapped_call,
)
from .code_tests import DEFAULT_CALL_LIMIT_S, CodeTests, UnjudgeableRow

_BUILTIN_NAMES = frozenset(dir(builtins))  # never the completion's (in a file without `from solution import`)
BUILD_MODULES = frozenset({"datetime", "collections", "decimal", "fractions", "math"})
_ALLOWED_IMPORTS = BUILD_MODULES | {"pytest"}


def _copy(node: Any) -> Any:
    """A copy of an AST (3x faster than ``copy.deepcopy``; positions are not kept: unparse does not need
    them)."""
    if isinstance(node, ast.AST):
        new = node.__class__()
        for field, value in ast.iter_fields(node):
            setattr(new, field, _copy(value))
        return new
    if isinstance(node, list):
        return [_copy(v) for v in node]
    return node


def _value(node: ast.expr) -> Any:
    """A validated pure expression's value: ``ast.literal_eval`` when it is a literal, else evaluated here."""
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return trusted_eval(node)


class _Module:
    """What the test file defines at top level: targets (names from ``solution``), constants, other names."""

    def __init__(self, tree: ast.Module, solution_import: bool) -> None:
        self.targets: set[str] | None = set() if solution_import else None
        self.constants: dict[str, Any] = {}
        # names the test file defines or imports: a test using them is excluded
        self.foreign: set[str] = set()
        self.modules: set[str] = set()
        for stmt in tree.body:
            if isinstance(stmt, ast.ImportFrom) and stmt.module == "solution" and self.targets is not None:
                names = {a.asname or a.name for a in stmt.names}
                self.targets = None if "*" in names else self.targets | names  # *: any name not defined here
            elif isinstance(stmt, ast.Import):
                for a in stmt.names:
                    if a.name == "solution" and self.targets is not None:
                        self.modules.add(a.asname or a.name)
                    elif a.name in _ALLOWED_IMPORTS and not a.asname:
                        self.modules.add(a.name)
                    else:
                        self.foreign.add((a.asname or a.name).split(".")[0])
            elif isinstance(stmt, ast.ImportFrom):
                self.foreign |= {a.asname or a.name for a in stmt.names}
            elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 \
                    and isinstance(stmt.targets[0], ast.Name):
                try:
                    _validate(stmt.value, set(), _comp_locals(stmt.value))
                    self.constants[stmt.targets[0].id] = trusted_eval(_copy(stmt.value))
                except Exception:  # noqa: BLE001 - not a literal constant
                    self.foreign.add(stmt.targets[0].id)
            elif isinstance(stmt, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) \
                    and not stmt.name.startswith("test"):
                self.foreign.add(stmt.name)

    def is_target(self, name: str) -> bool:
        if name in self.foreign or name in self.modules or name in self.constants:
            return False
        if self.targets is not None:
            return name in self.targets
        return name not in _TRUSTED_NAMES and name not in _BUILTIN_NAMES


def _literal_ast(value: Any) -> ast.expr:
    """An AST that evaluates to ``value`` (round trip through ``repr``), or Unjudgeable."""
    try:
        node = ast.parse(repr(value), mode="eval").body
        if ast.literal_eval(node) != value:
            raise ValueError
        encode_value(value)
    except Exception:  # noqa: BLE001
        raise Unjudgeable("value without a literal form") from None
    return node


class _Case:
    """Builds one case (one parametrization of one test function) into the row's step list."""

    def __init__(self, mod: _Module, steps: list, consts: dict[str, Any]) -> None:
        self.mod, self.steps = mod, steps
        self.bound: dict[str, ast.expr | tuple[str, str]] = {k: _literal_ast(v) for k, v in consts.items()}
        self.own: list[int] = []
        self.checks: list[str] = []
        self.raises: dict[str, str] = {}
        # names bound to list/dict/set literals (a call may change them in place)
        self.mutable: set[str] = set()

    # --- expressions ----------------------------------------------------------------------------------------

    def _subst(self, node: ast.expr) -> ast.expr:
        """Names bound to literals or to earlier steps' values replaced; objects may not be used as values."""
        case = self

        class Sub(ast.NodeTransformer):
            def visit_Name(self, n: ast.Name) -> ast.AST:
                b = case.bound.get(n.id)
                if b is None:
                    if n.id in case.mod.constants:
                        return _literal_ast(case.mod.constants[n.id])
                    return n
                if isinstance(b, tuple):  # ("obj", var) or ("held", name): its state lives in the sandbox
                    raise Unjudgeable("an object of the completion used as a value")
                return _copy(b)

        return Sub().visit(_copy(node))

    def _call_target(self, node: ast.Call) -> list | None:
        f = node.func
        if isinstance(f, ast.Name) and self.mod.is_target(f.id):
            return [f.id]
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
            b = self.bound.get(f.value.id)
            if isinstance(b, tuple) and b[0] == "obj":
                return ["on", b[1], f.attr]
            if isinstance(b, tuple):
                raise Unjudgeable("a value an object of the completion holds")
            if f.value.id in self.mod.modules and f.value.id not in _ALLOWED_IMPORTS:  # solution.f(...)
                return [f.attr]
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Call) \
                and isinstance(f.value.func, ast.Name) and self.mod.is_target(f.value.func.id) \
                and f.value.func.id[:1].isupper() and not f.value.args:
            return [f.value.func.id, f.attr]
        return None

    def _args(self, node: ast.Call) -> tuple[list, dict, dict]:
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            raise Unjudgeable("*args / **kwargs")
        exprs = [self._subst(a) for a in node.args] + [self._subst(k.value) for k in node.keywords]
        for e in exprs:
            for n in ast.walk(e):
                if isinstance(n, ast.Call) and self._call_target(n) is not None:
                    raise Unjudgeable("nested call of the completion")
                if isinstance(n, ast.Name) and (n.id in self.mod.foreign or n.id.startswith("__c")):
                    raise Unjudgeable(f"argument uses {n.id!r}")
        try:
            for e in exprs:
                _validate(e, set(), _comp_locals(e))
            args = [_value(a) for a in exprs[: len(node.args)]]
            kwargs = {k.arg: _value(v) for k, v in zip(node.keywords, exprs[len(node.args):])}
            encode_value([args, kwargs])
            return args, kwargs, {}
        except Exception:  # noqa: BLE001 - not plain data: build it in the sandbox from the standard modules
            pass
        names = {n.id for e in exprs for n in ast.walk(e) if isinstance(n, ast.Name)}
        if not names <= (BUILD_MODULES & self.mod.modules) | _TRUSTED_NAMES | _comp_locals(ast.Tuple(exprs)):
            raise Unjudgeable("argument neither plain data nor built from standard modules")
        if any(isinstance(n, ast.Attribute) and n.attr.startswith("_") for e in exprs for n in ast.walk(e)):
            raise Unjudgeable("private attribute in an argument")
        src = ast.unparse(ast.Tuple([ast.List(exprs[: len(node.args)]), ast.Dict(
            [ast.Constant(k.arg) for k in node.keywords], exprs[len(node.args):])], ast.Load()))
        return [], {}, {"build": src}

    def _new_object(self, name: str, ctor: ast.Call) -> str:
        """A ``new`` step constructing the completion's class; returns the sandbox-side variable."""
        var = f"{len(self.steps)}:{name}"  # unique in the row (the sample's objects live for all its steps)
        args, kwargs, build = self._args(ctor)
        for a in [*ctor.args, *(k.value for k in ctor.keywords)]:  # the object may keep and change them
            if isinstance(a, ast.Name) and a.id in self.mutable:
                self.bound[a.id] = ("held", a.id)
                self.mutable.discard(a.id)
        self.steps.append([["new", var, ctor.func.id], args, kwargs, {**build, "discard": True}])
        self.own.append(len(self.steps) - 1)
        return var

    def _ctor(self, node: ast.Call) -> ast.Call | None:
        ctor = constructed_method(node, _TRUSTED_NAMES)
        return ctor if ctor is not None and self.mod.is_target(ctor.func.id) else None

    def _step(self, node: ast.Call, opts: dict, peek: bool = True, target: list | None = None) -> int:
        target = target or self._call_target(node)
        if target is None:
            raise Unjudgeable("a call of something other than the completion")
        args, kwargs, build = self._args(node)
        k = len(self.steps)
        self.steps.append([target, args, kwargs, {**build, **opts}])
        self.own.append(k)
        # a list/dict/set variable passed in may be changed in place: later reads see it after the call
        passed = [(i, a.id) for i, a in enumerate(node.args)
                  if isinstance(a, ast.Name) and a.id in self.mutable]
        passed += [(kw.arg, kw.value.id) for kw in node.keywords
                   if isinstance(kw.value, ast.Name) and kw.value.id in self.mutable]
        if passed and (not peek or build):
            raise Unjudgeable("a mutable argument whose later state cannot be read")
        if passed:
            self.steps[k][3]["keep"] = k
        for where, name in passed:
            p = len(self.steps)
            self.steps.append([["arg", k, where], [], {}, {}])
            self.own.append(p)
            self.bound[name] = ast.Name(id=f"__c{p}", ctx=ast.Load())
            self.mutable.discard(name)
        return k

    def _expr(self, node: ast.expr) -> str:
        """An expression whose completion calls become steps: the check source with ``__cK`` placeholders."""
        case = self

        class Ext(ast.NodeTransformer):
            def visit_Call(self, n: ast.Call) -> ast.AST:
                inner, wrap = wrapped_call(
                    n, lambda c: case._call_target(c) is not None or case._ctor(c) is not None)
                ctor, target = case._ctor(inner), None
                if ctor is not None:  # Cls(a).method(b): construct, then call the method on the object
                    target = ["on", case._new_object("tmp", ctor), inner.func.attr]
                elif case._call_target(inner) is None:
                    return self.generic_visit(n)
                step = case._step(inner, {"wrap": wrap} if wrap else {}, target=target)
                return ast.copy_location(ast.Name(id=f"__c{step}", ctx=ast.Load()), n)

        expr = self._subst(Ext().visit(_copy(node)))  # calls first: `s.top()` is a step on object s
        placeholders = {n.id for n in ast.walk(expr) if isinstance(n, ast.Name) and n.id.startswith("__c")}
        _validate(expr, placeholders, _comp_locals(expr))
        return ast.unparse(expr)

    # --- statements -----------------------------------------------------------------------------------------

    def stmt(self, s: ast.stmt) -> None:
        if isinstance(s, ast.Assert):
            self.checks.append(self._expr(s.test))
        elif isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant):
            return  # docstring
        elif isinstance(s, ast.Expr) and isinstance(s.value, ast.Call) \
                and isinstance(s.value.func, ast.Name) and s.value.func.id == "print" \
                and not self.mod.is_target("print"):
            return  # a debugging print of the test: no effect on its verdict
        elif isinstance(s, ast.Expr) and isinstance(s.value, ast.Call):
            self._step(s.value, {"discard": True})
        elif isinstance(s, ast.Assign) and len(s.targets) == 1 and isinstance(s.targets[0], ast.Name):
            self._assign(s.targets[0].id, s.value)
        elif isinstance(s, ast.For) and isinstance(s.target, ast.Name) and not s.orelse:
            items = trusted_eval(self._validated(s.iter))
            for item in list(items)[:1000]:
                self.bound[s.target.id] = _literal_ast(item)
                for inner in s.body:
                    self.stmt(inner)
        elif isinstance(s, ast.With) and len(s.items) == 1 and not s.items[0].optional_vars:
            self._raises(s.items[0].context_expr, s.body)
        elif isinstance(s, ast.Pass):
            return
        else:
            raise Unjudgeable(f"{type(s).__name__} statement")

    def _validated(self, node: ast.expr) -> ast.expr:
        expr = self._subst(node)
        _validate(expr, set(), _comp_locals(expr))
        return expr

    def _assign(self, name: str, value: ast.expr) -> None:
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) \
                and self.mod.is_target(value.func.id) and value.func.id[:1].isupper():
            self.bound[name] = ("obj", self._new_object(name, value))
        elif isinstance(value, ast.Call) and self._call_target(value) is not None:
            self.bound[name] = ast.Name(id=f"__c{self._step(value, {})}", ctx=ast.Load())
        else:
            if isinstance(value, ast.Name) and value.id in self.mutable:
                raise Unjudgeable("an alias of a mutable value")
            expr = ast.parse(self._expr(value), mode="eval").body  # steps inside become placeholders
            self.mutable.discard(name)
            if not any(isinstance(n, ast.Name) and n.id.startswith("__c") for n in ast.walk(expr)):
                literal = trusted_eval(expr)
                expr = _literal_ast(literal)
                if isinstance(literal, (list, dict, set)):
                    self.mutable.add(name)
            self.bound[name] = expr

    def _raises(self, ctx: ast.expr, body: list[ast.stmt]) -> None:
        if not (isinstance(ctx, ast.Call) and isinstance(ctx.func, ast.Attribute)
                and ctx.func.attr == "raises" and isinstance(ctx.func.value, ast.Name)
                and ctx.func.value.id == "pytest" and len(ctx.args) == 1 and not ctx.keywords):
            raise Unjudgeable("with-block other than pytest.raises(E)")
        exc = ctx.args[0]
        name = exc.id if isinstance(exc, ast.Name) else exc.attr if isinstance(exc, ast.Attribute) else None
        if name is None or name.startswith("_"):
            raise Unjudgeable("pytest.raises of an expression")
        calls = [s for s in body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
        if len(calls) != 1 or not isinstance(calls[0], (ast.Expr, ast.Assign)) \
                or not isinstance(calls[0].value, ast.Call):
            raise Unjudgeable("pytest.raises block that is not one call")
        # pytest stops at the raise; a mutable argument's later state is not read after it
        self.raises[str(self._step(calls[0].value, {"discard": True}, peek=False))] = name

    def case(self) -> dict:
        out: dict[str, Any] = {"check": " and ".join(f"({c})" for c in self.checks) or "True",
                               "calls": self.own}
        if self.raises:
            out["raises"] = self.raises
        return out


def _parametrizations(fn: ast.FunctionDef, mod: _Module) -> list[dict[str, Any]]:
    sets: list[list[dict[str, Any]]] = []
    for dec in fn.decorator_list:
        if not (isinstance(dec, ast.Call) and ast.unparse(dec.func) == "pytest.mark.parametrize"
                and len(dec.args) == 2):
            raise Unjudgeable("decorator other than pytest.mark.parametrize")
        names = trusted_eval(_copy(dec.args[0]))
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        values_node = _Case(mod, [], {})._validated(dec.args[1])
        rows = []
        for v in trusted_eval(values_node):
            v = (v,) if len(names) == 1 else tuple(v)
            if len(v) != len(names):
                raise Unjudgeable("parametrize row of the wrong length")
            rows.append(dict(zip(names, v)))
        sets.append(rows)
    combos = [dict(itertools.chain.from_iterable(d.items() for d in c))
              for c in itertools.product(*sets)] if sets else [{}]
    params = [a.arg for a in fn.args.args]
    if any(set(params) != set(c) for c in combos) or fn.args.vararg or fn.args.kwarg or fn.args.kwonlyargs:
        raise Unjudgeable("test arguments that are fixtures")
    return combos


def pytest_tests(source: Any, *, solution_import: bool = True) -> CodeTests:
    """A pytest file -> "pytest" CodeTests (one case per test function and parametrization); tests that cannot
    be judged with the guarantee are counted in ``excluded``. ``solution_import``: the file imports the
    completion as ``solution`` (KodCode); else the tests sit in the completion's own file (Dream-Coder
    autoeval)."""
    if not isinstance(source, str):
        raise UnjudgeableRow("unparseable test")
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise UnjudgeableRow("test does not parse") from None
    mod = _Module(tree, solution_import)
    steps: list = []
    cases: list[dict] = []
    excluded = 0
    for fn in tree.body:
        if not (isinstance(fn, ast.FunctionDef) and fn.name.startswith("test")):
            if isinstance(fn, (ast.ClassDef, ast.AsyncFunctionDef)) and fn.name.startswith("Test"):
                excluded += 1  # test classes
            continue
        try:
            combos = _parametrizations(fn, mod)
        except Exception:  # noqa: BLE001 - Unjudgeable, or a parametrize we cannot evaluate
            excluded += 1
            continue
        for consts in combos:
            mark = len(steps)
            try:
                case = _Case(mod, steps, consts)
                for s in fn.body:
                    case.stmt(s)
                if not case.own:
                    raise Unjudgeable("no call of the completion")
                cases.append(case.case())
            except Exception:  # noqa: BLE001 - Unjudgeable or an evaluation error on the trusted side
                del steps[mark:]
                excluded += 1
    if not cases:
        raise UnjudgeableRow("no judgeable test" if excluded else "no tests")
    data = {"calls": [[t, encode_value(a), encode_value(k), o] for t, a, k, o in steps], "cases": cases,
            "time_limit_s": DEFAULT_CALL_LIMIT_S}
    return CodeTests("pytest", data, excluded)


def autoeval_tests(source: Any) -> CodeTests:
    """Dream-Coder ``autoeval``: pytest functions meant to be appended to the completion's own file."""
    return pytest_tests(source, solution_import=False)
