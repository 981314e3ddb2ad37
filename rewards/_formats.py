"""Sandbox-side runners for the code-RL test formats (``rewards/code_tests.py``); runs INSIDE the sandbox.

Standalone like ``_zygote.py`` (no ``rewards`` imports): bound read-only next to it. Each runner is the "entry
point" the zygote's test loop calls once per test, and whatever it returns leaves the sandbox as plain data (a
digest and a tagged-JSON value, ``_digest.py``); nothing here ever sees an expected output, so no comparison can
happen in here and nothing the completion patches can change a verdict (docs/rewards.md, "Code-RL corpora").

- ``call_runner``: one test = one call ``[target, args, kwargs]``; ``target`` is ``[name]`` (a function of the
  completion's module), ``[class_name, method]`` (a fresh instance per test, e.g. LeetCode's ``Solution``) or
  ``["*", name]`` (``Solution().name`` when the module defines such a class, else the function ``name``).
- ``stdio_runner``: one test = one run of the whole program as ``__main__`` with the test's input as its stdin
  (fd 0 and ``sys.stdin``) and a file as its stdout (fd 1 and ``sys.stdout``); returns what it wrote.
"""

from __future__ import annotations

import io
import os
import sys


def call_runner(env: dict):
    """The per-test function for call-based tests; ``env`` is the completion's loaded module namespace."""

    def run(target: list, args: list, kwargs: dict):
        if len(target) == 1:
            fn = env[target[0]]
        elif target[0] == "*":  # TACO's rule: a `class Solution` method when there is one, else the function
            cls = env.get("Solution")
            fn = getattr(cls(), target[1]) if isinstance(cls, type) and hasattr(cls, target[1]) else env[target[1]]
        else:
            fn = getattr(env[target[0]](), target[1])
        return fn(*args, **kwargs)

    return run


class StdioRunError(Exception):
    """The program ended with a non-zero ``SystemExit`` code (a failed run, as a non-zero exit status is)."""


def _redirect(path: str, fd: int, flags: int) -> None:
    new = os.open(path, flags, 0o600)
    if new != fd:  # the program may have closed fd (open(0) closes it when collected): then os.open reused it
        os.dup2(new, fd)
        os.close(new)


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
        env = {"__name__": "__main__", "__builtins__": builtins_module}
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
