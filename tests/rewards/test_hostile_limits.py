"""Per-test CPU limits that a sample tries to evade from inside (issue #20, class 5), on the real sandbox.

Each cheat needs 1.2 s of CPU in its first test, where the conftest's limit is 0.5 s per test (2 s per
sample), and then returns the right answer, so only an enforced per-test limit makes it fail. The evasions:
catching the timeout exception, ignoring or blocking the timer signals, disarming or re-arming the timers, and
doing the slow work in code the harness runs to convert the returned object.
"""

from __future__ import annotations

import pytest

ANSWER = "(x * 7919 + 13) % 1000003"
SECRET_REF = f"def f(x):\n    return {ANSWER}\n"  # the conftest's 'secret' task
SPIN = ("import os, signal, time\n"
        "def spin(s):\n    t = time.process_time()\n    while time.process_time() - t < s:\n        try:\n"
        "            while time.process_time() - t < s: pass\n        except BaseException: pass\n")


def _cheat(prelude: str) -> str:
    body = "\n".join("        " + line for line in prelude.splitlines())
    return SPIN + f"def f(x):\n    if x == 0:\n{body}\n        spin(1.2)\n    return {ANSWER}\n"


CHEATS = {
    "catch_timeout": _cheat("pass"),
    "ignore_signals": _cheat("for s in (signal.SIGPROF, signal.SIGALRM, signal.SIGVTALRM, signal.SIGXCPU):\n"
                             "    signal.signal(s, signal.SIG_IGN)"),
    "block_signals": _cheat("signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGPROF, signal.SIGALRM, "
                            "signal.SIGVTALRM, signal.SIGXCPU})"),
    "disarm_timers": _cheat("for t in (signal.ITIMER_PROF, signal.ITIMER_REAL, signal.ITIMER_VIRTUAL):\n"
                            "    signal.setitimer(t, 0)"),
    "rearm_timers_long": _cheat("for t in (signal.ITIMER_PROF, signal.ITIMER_REAL, signal.ITIMER_VIRTUAL):\n"
                                "    signal.setitimer(t, 1000)"),
    "raise_cpu_rlimit": _cheat("import resource\nresource.setrlimit(resource.RLIMIT_CPU, "
                               "resource.getrlimit(resource.RLIMIT_CPU)[1:] * 2)\n"
                               "signal.signal(signal.SIGPROF, signal.SIG_IGN)"),
    # the harness converts the returned object after the call: a fake numpy value runs code in tolist()
    "slow_conversion": SPIN + "class V:\n    def __init__(self, y): self.y = y\n"
                              "    def tolist(self):\n        spin(1.2)\n        return self.y\n"
                              "V.__module__ = 'numpy'\n"
                              f"def f(x):\n    y = {ANSWER}\n    return V(y) if x == 0 else y\n",
    "slow_class_property": SPIN + "class V(int):\n    @property\n    def __class__(self):\n"
                                  "        spin(1.2)\n        return int\n"
                                  f"def f(x):\n    y = {ANSWER}\n    return V(y) if x == 0 else y\n",
}


@pytest.mark.parametrize("name", sorted(CHEATS))
def test_a_test_over_its_cpu_limit_fails_however_the_sample_evades_the_timer(scorer, name) -> None:
    r = scorer.score([("secret", CHEATS[name])])[0]
    assert r.reward == 0.0 and not r.all_pass, (name, r.details)
    assert r.status != "infra_error", r.details
    assert scorer.score([("secret", SECRET_REF)])[0].all_pass


def test_a_sample_over_its_limit_only_in_later_tests_keeps_its_earlier_passes(scorer) -> None:
    """Enforcement from outside kills the child at the slow test: earlier tests keep their verdicts."""
    code = SPIN + f"def f(x):\n    if x == 3:\n        signal.signal(signal.SIGPROF, signal.SIG_IGN)\n" \
                  f"        spin(1.2)\n    return {ANSWER}\n"
    cfg_tests = scorer.tasks["secret"].base_inputs
    r = scorer.score([("secret", code)])[0]
    assert r.reward == 0.0 and r.base_status == "timeout", r.details
    assert 0 < r.n_passed <= len(cfg_tests) - 1, r.details
