"""Sandbox-side runners for the code-RL test formats (``rewards/code_tests.py``); runs INSIDE the sandbox.

Standalone like ``_zygote.py`` (no ``rewards`` imports): bound read-only next to it. Each runner is the "entry
point" the zygote's test loop calls once per test, and whatever it returns leaves the sandbox as plain data (a
digest and a tagged-JSON value, ``_digest.py``); nothing here ever sees an expected output, so no comparison
can happen in here and nothing the completion patches can change a verdict (docs/rewards.md, "Code-RL
corpora").

- ``call_runner``: one test = one step ``[target, args, kwargs(, opts)]``; ``target`` is ``[name]`` (a
  function of the completion's module), ``[class_name, method]`` (a fresh instance per test, e.g. LeetCode's
  ``Solution``), ``["*", name]`` (``Solution().name`` when the module defines such a class, else the function
  ``name``), or, for the stateful steps of a pytest test, ``["new", var, class_name]`` /
  ``["on", var, method]`` / ``["arg", k, i]`` (positional argument ``i`` of step ``k`` after that call, for
  tests that check in-place mutation).
- ``stdio_runner``: one test = one run of the whole program as ``__main__`` with the test's input as its stdin
  (fd 0 and ``sys.stdin``) and a file as its stdout (fd 1 and ``sys.stdout``); returns what it wrote.
"""

from __future__ import annotations

import builtins
import io
import os
import sys


class TargetMissing(Exception):
    """The function, class or stored object a step names does not exist (never a raised exception of the
    code)."""


def _resolve(env: dict, objs: dict, target: list):
    if len(target) == 1:
        return env[target[0]]
    if target[0] == "*":  # TACO's rule: a `class Solution` method when there is one, else the function
        cls = env.get("Solution")
        return getattr(cls(), target[1]) if isinstance(cls, type) and hasattr(cls, target[1]) \
            else env[target[1]]
    if target[0] == "new":  # ["new", var, Cls]: construct and keep for later "on" steps of the same test
        cls = env[target[2]]
        return lambda *a, **k: objs.__setitem__(target[1], cls(*a, **k))
    if target[0] == "on":  # ["on", var, method]
        return getattr(objs[target[1]], target[2])
    if target[0] == "arg":  # ["arg", k, i]: positional argument i of step k after that call
        args, kwargs = objs[f"args:{target[1]}"]
        value = kwargs[target[2]] if isinstance(target[2], str) else args[target[2]]
        return lambda: value
    return getattr(env[target[0]](), target[1])


# before any sample runs
_MRO_OF, _NAME_OF = type.__dict__["__mro__"].__get__, type.__dict__["__name__"].__get__
_WRAPS = {f.__name__: f for f in (list, tuple, set, frozenset, sorted, dict)}
_BUILD_NAMES = ("datetime", "collections", "decimal", "fractions", "math")


def call_runner(env: dict):
    """The per-test function for call-based tests; ``env`` is the completion's loaded module namespace.

    A step is ``[target, args, kwargs]`` or ``[target, args, kwargs, opts]``; ``opts["build"]`` is the source
    of an ``(args, kwargs)`` tuple built here from the standard modules in ``_BUILD_NAMES`` (arguments that
    are not plain data, e.g. ``datetime.date(2024, 1, 1)``), ``opts["discard"]`` drops the returned value (a
    statement whose value no check reads), ``opts["wrap"]`` converts it first (``list(f(x))``: generators),
    and ``opts["keep"] = k`` keeps the arguments for ``["arg", k, i]`` steps (``i``: position, or keyword
    name)."""
    objs: dict = {}

    def run(target: list, args: list, kwargs: dict, opts: dict | None = None):
        opts = opts or {}
        try:
            fn = _resolve(env, objs, target)
            if opts.get("build"):
                ns = {"__builtins__": builtins}
                for name in _BUILD_NAMES:
                    ns[name] = __import__(name)
                args, kwargs = eval(opts["build"], ns)  # noqa: S307 - the dataset's argument literals
        except Exception as exc:  # noqa: BLE001 - a missing name is not an exception the test can expect
            raise TargetMissing(type(exc).__name__) from None
        out = fn(*args, **kwargs)
        if "keep" in opts:  # the arguments after the call, for later ["arg", k, i] steps (in-place mutation)
            objs[f"args:{opts['keep']}"] = (args, kwargs)
        # list(f(x)) and the like, applied here: a generator's values can cross, it cannot
        if opts.get("wrap"):
            out = _WRAPS[opts["wrap"]](out)
        return None if opts.get("discard") else out

    return run


def exc_label(exc: BaseException) -> str:
    """Names of the raised exception's classes, most derived first, read from the type slots (no Python code
    of the exception runs): ``"ZeroDivisionError<ArithmeticError"``; ``Exception`` and its bases are left out.
    The trusted side matches ``pytest.raises(E)`` by name (docs/rewards.md)."""
    mro, name_of = _MRO_OF(type(exc)), _NAME_OF
    names = []
    for cls in mro:
        name = name_of(cls)
        if name in ("Exception", "BaseException", "object"):
            break
        names.append(name)
    return "<".join(names)[:64] or name_of(type(exc))[:64]


class StdioRunError(Exception):
    """The program ended with a non-zero ``SystemExit`` code (a failed run, as a non-zero exit status is)."""


def _redirect(path: str, fd: int, flags: int) -> None:
    new = os.open(path, flags, 0o600)
    if new != fd:  # the program may have closed fd (open(0) closes it when collected): then os.open reused it
        os.dup2(new, fd)
        os.close(new)


def site_exit(code=None):
    """``exit()`` / ``quit()`` as the ``site`` module defines them (the sandbox's Python runs with ``-S``)."""
    raise SystemExit(code)


def _join_threads() -> None:
    """Wait for the threads the program started (the zygote's CPU accounting bounds how long)."""
    threading = sys.modules.get("threading")
    if threading is None:
        return
    main = threading.main_thread()
    for t in threading.enumerate():
        if t is not main and not t.daemon:
            t.join()


def stdio_runner(code, builtins_module, out_cap: int):
    """The per-test function for stdin/stdout tests. ``code`` is the compiled program; each test runs it in a
    fresh ``__main__`` namespace. ``SystemExit`` with code 0/None ends the run normally (contest programs call
    ``sys.exit()`` after printing); any other code or exception fails the test. At most ``out_cap`` bytes of
    output are read back (the file-size rlimit bounds what can be written)."""

    base = os.getcwd()  # the job dir: absolute paths, whatever the program does with its working directory
    stdin_path, stdout_path = os.path.join(base, "stdin.txt"), os.path.join(base, "stdout.txt")

    def run(stdin_text: str) -> str:
        with open(stdin_path, "w", encoding="utf-8") as f:
            f.write(stdin_text)
        _redirect(stdin_path, 0, os.O_RDONLY)
        _redirect(stdout_path, 1, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115 - replaced by the next test
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
        env = {"__name__": "__main__", "__builtins__": builtins_module, "exit": site_exit, "quit": site_exit}
        try:
            exec(code, env)
            _join_threads()  # contest programs often run main() in a thread with a larger stack
        except SystemExit as exc:
            if exc.code not in (None, 0):
                raise StdioRunError from None
        finally:
            try:
                for stream in (sys.stdout, sys.__stdout__):
                    if stream is not None:
                        stream.flush()
            finally:
                sys.stdout = sys.stderr
        with io.FileIO(stdout_path, "r") as f:
            data = f.read(out_cap + 1)
        if len(data) > out_cap:
            raise StdioRunError("output too long")
        return data.decode("utf-8", errors="replace")

    return run


def load_entry(payload: dict, env: dict, out_cap: int):
    """Compile the job's code and return the function the zygote calls once per test: ``env[entry_point]`` for
    EvalPlus jobs (kind "fn"), :func:`call_runner` for "call", :func:`stdio_runner` for "stdio" (the program
    then runs once per test, not here)."""
    kind = payload.get("kind", "fn")
    code = compile(payload["code"], "<solution>", "exec")
    env.setdefault("exit", site_exit)
    env.setdefault("quit", site_exit)
    if kind == "stdio":
        return stdio_runner(code, builtins, out_cap)
    exec(code, env)
    return call_runner(env) if kind == "call" else env[payload["entry_point"]]
