"""Assert-list tests (AceCode-87K, PrimeIntellect function rows) judged on the trusted side, in the real
sandbox.

Reference solutions score 1, wrong ones 0 (their scores match the fixture's stored pass rates), Python
semantics are exact (``is True``, ``1 == 1.0``, tolerance only where the assert writes one), and a completion
cannot forge its verdict: every hostile class of the issue scores 0 against a task whose answer it cannot
guess.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from rewards.assert_parse import Unjudgeable, parse_assert
from rewards.code_tests import CodeTests, UnjudgeableRow, assert_tests, tests_from_row

SECRET = "def f(x):\n    return (x * 7919 + 13) % 1000003\n"
SECRET_ASSERTS = [f"assert f({x}) == {(x * 7919 + 13) % 1000003}" for x in (3, 11, 4242)]


def _fenced(code: str) -> str:
    return f"```python\n{code}\n```"


def test_acecode_fixture_pass_rates_match(pass_ratio_code_scorer, shared_data_dir) -> None:
    """Every stored inference scores its stored pass rate over the judged asserts; pass rate 1.0 scores 1."""
    rows = pq.read_table(shared_data_dir("code_rl") / "acecode87k.sample.parquet").to_pylist()
    items, expected, excluded = [], [], 0
    for row in rows:
        tests = tests_from_row("acecode", row)
        assert CodeTests.from_json(tests.to_json()) == tests
        excluded += tests.excluded
        for inf in row["inferences"]:
            items.append((_fenced(inf["completion"]), tests))
            expected.append(inf["pass_rate"])
    results = pass_ratio_code_scorer.score(items)
    assert excluded == 1  # evol_90008's in-place mutation check (a lambda): counted, not run
    for (_, tests), res, rate in zip(items, results, expected):
        assert res.status == "ok" and res.base_status == res.plus_status
        if rate == 1.0:
            assert res.reward == 1.0 and res.all_pass and res.base_status == "pass"
        else:
            assert not res.all_pass and res.base_status == "fail"
            assert res.n_tests == tests.n_cases
            # the stored rate counts the excluded assert too;
            # the wrong solutions pass it (it checks no mutation)
            assert res.n_passed in (round(rate * res.n_tests),
                                    round(rate * (res.n_tests + tests.excluded)) - tests.excluded)


def test_primeintellect_function_rows(pass_ratio_code_scorer, shared_data_dir) -> None:
    """Both ``test_list`` shapes: single asserts and a ``def check(candidate): ...; check(f)`` block."""
    root = shared_data_dir("code_rl")
    rows = json.loads((root / "primeintellect_genverse.sample.json").read_text())
    refs = json.loads((root / "reference_solutions.json").read_text())["primeintellect_genverse.sample.json"]
    items = []
    for idx, row in enumerate(rows):
        if row["test_method"] == "function":
            tests = tests_from_row("primeintellect", row)
            assert tests.format == "assert" and tests.excluded == 0 and tests.n_cases == 4
            items += [(row["prefix"] + refs[str(idx)] + "\n```", tests),
                      (_fenced("def prime_factors(n):\n    return []\n"
                               "def count_islands(g):\n    return 0\n"), tests)]
    results = pass_ratio_code_scorer.score(items)
    assert [r.all_pass for r in results] == [True, False, True, False]


SEMANTICS = [  # (assert, completion body of g, passes?)
    ("assert g() is True", "return 1", False),
    ("assert g() is True", "return True", True),
    ("assert g() == True", "return 1", True),
    ("assert g() == 1", "return 1.0", True),
    ("assert g() is None", "return 0", False),
    ("assert g() == 0.3", "return 0.1 + 0.2", False),
    ("assert abs(g() - 0.3) < 1e-9", "return 0.1 + 0.2", True),
    ("assert math.isclose(g(), 0.3)", "return 0.1 + 0.2", True),
    ("assert g() == pytest.approx(0.3)", "return 0.1 + 0.2", True),
    ("assert g() == pytest.approx([0.3, 1])", "return [0.1 + 0.2, 1.0000000001]", True),
    ("assert g() == pytest.approx(0.3)", "return 0.31", False),
    ("assert not g()", "return []", True),
    ("assert not g()", "return [0]", False),
    ("assert g()", "return 'x'", True),
    ("assert g() == (1, 2)", "return [1, 2]", False),
    ("assert g() == {1: 'a'}", "import collections\n    return collections.OrderedDict([(1, 'a')])", True),
    ("assert sorted(g()) == [1, 2, 3]", "return {3, 1, 2}", True),
    ("assert len(g()) == 2 and g()[0] == 'a'", "return 'ab'", True),
    ("assert isinstance(g(), list)", "return (1,)", False),
    ("assert g() in ('a', 'b')", "return 'b'", True),
    ("assert Solution().g() == 5", None, True),
    ("assert Solution(2).g() == 5 and list(Solution(3).gen()) == [0, 1, 2]", None, True),
    ("assert sorted(Solution(1).gen()) == [0]", None, True),
]


@pytest.mark.parametrize(("test", "body", "ok"), SEMANTICS, ids=[s[0] + " / " + str(s[1]) for s in SEMANTICS])
def test_python_semantics_are_exact(pass_ratio_code_scorer, test: str, body: str | None, ok: bool) -> None:
    code = ("class Solution:\n    def __init__(self, n=0):\n        self.n = n\n    def g(self):\n"
            "        return 5\n    def gen(self):\n        yield from range(self.n)\n"
            if body is None else f"def g():\n    {body}\n")
    [res] = pass_ratio_code_scorer.score([(_fenced(code), assert_tests([test]))])
    assert res.all_pass is ok, res.details
    # the same verdict as running the assert next to the code (for honest code the formats agree)
    prelude = "import math, pytest\n"
    run = subprocess.run([sys.executable, "-c", prelude + code + "\n" + test], capture_output=True)
    assert (run.returncode == 0) is ok


@pytest.mark.parametrize(("test", "reason"), [
    ("assert (lambda m: (f(m), m)[1])([1]) == [1]", "not a literal"),
    ("assert f(g(1)) == 2", "nested call"),
    ("assert f(1) == CONST", "not a literal"),
    ("assert f(1).__class__ is int", "attribute"),
    ("assert 'x' * f(1) == 'xx'", "unbounded"),
    ("assert 2 ** f(1) == 4", "unbounded"),
    ("assert '{0.__class__}'.format(f(1))", "format"),
    ("assert f(1) == '{0.__class__}'.format(1)", "format"),
    ("assert True", "no call"),
    ("assert list(range(f(1))) == [0]", "range"),
    ("assert [[0] * x for x in f(1)] == [[0]]", "unbounded"),
    ("assert len([1 for x in f(1) for y in f(2)]) == 1", "nested comprehension"),
    ("assert '%*d' % (f(1), 1) == ' 1'", "formatting"),
    ("assert f(10 ** 10 ** 10) == 1", "too large"),
    ("assert f([0] * 10 ** 9) == 1", "too large"),
    ("assert f(list(range(3))) == 1 and g(f(1)) == 1", "nested call"),
    ("assert f([0] * 10 ** 5, 2 ** 31 - 1, 10 ** 9 + 7) == 1 and g(f(1)) == 1", "nested call"),
])
def test_unjudgeable_asserts_are_excluded(test: str, reason: str) -> None:
    with pytest.raises(Unjudgeable, match=reason):
        parse_assert(ast.parse(test).body[0].test)
    tests = assert_tests([test, "assert f(1) == 2"])
    assert tests.excluded == 1 and tests.n_cases == 1
    with pytest.raises(UnjudgeableRow):
        assert_tests([test])


HOSTILE = {  # each must score 0 on SECRET_ASSERTS (the naive `python -c code + assert` passes the first five)
    "lying_eq": "class A:\n    def __eq__(s, o): return True\n    __hash__ = object.__hash__\ndef f(x):\n"
                "    return A()\n",
    "lying_int_subclass": "class E(int):\n    def __eq__(s, o): return True\n    __hash__ = int.__hash__\n"
                          "def f(x):\n    return E(0)\n",
    "lying_bool_and_sub": "class B:\n    def __bool__(s): return True\n    def __eq__(s, o): return s\n"
                          "    def __sub__(s, o): return 0\n    def __rsub__(s, o): return 0\n"
                          "    __hash__ = object.__hash__\ndef f(x):\n    return B()\n",
    "patch_assertion_error": "import builtins\nclass Quiet(BaseException): pass\n"
                             "builtins.AssertionError = Quiet\n"
                             "import sys\nsys.excepthook = lambda *a: None\ndef f(x):\n    return -1\n",
    "exit_zero_in_call": "import os\ndef f(x):\n    os._exit(0)\n",
    "exit_zero_at_import": "import os\nos._exit(0)\n",
    "system_exit": "def f(x):\n    raise SystemExit(0)\n",
    "print_passed": "import sys\nprint('passed'); sys.stdout.write('All tests passed\\n')\ndef f(x):\n"
                    "    print('ok')\n    return 'passed'\n",
    "patch_builtins": "import builtins\nbuiltins.sorted = builtins.len = builtins.abs = lambda *a, **k: 0\n"
                      "builtins.isinstance = lambda *a: True\ndef f(x):\n    return 0\n",
    "frames_for_expected": "import sys, gc\ndef f(x):\n    fr = sys._getframe(1)\n    while fr:\n"
                           "        for v in list(fr.f_locals.values()):\n"
                           "            if type(v) is int and v > 1000: return v\n        fr = fr.f_back\n"
                           "    for o in gc.get_objects():\n"
                           "        if type(o) is list and len(o) == 3 and type(o[1]) is list:\n"
                           "            return o\n    return None\n",
    "kill_the_harness": "import os, signal\nfor pid in (os.getppid(), 1, -1, 0):\n"
                        "    try: os.kill(pid, signal.SIGKILL)\n"
                        "    except OSError: pass\ndef f(x):\n    return 0\n",
    "forge_records": "import os, json\n"
                     "rec = ''.join(json.dumps([0, i, 'ok', '0' * 32, json.dumps(1)]) + '\\n'"
                     " for i in range(3))\nfor fd in range(3, 64):\n    try: os.write(fd, rec.encode())\n"
                     "    except OSError: pass\nos._exit(0)\n",
}


def test_hostile_completions_score_zero(pass_ratio_code_scorer) -> None:
    tests = assert_tests(SECRET_ASSERTS + ["assert not (f(5) - 39608)", "assert abs(f(7) - 55446) < 1e-9"])
    results = pass_ratio_code_scorer.score([(_fenced(code), tests) for code in HOSTILE.values()]
                                           + [(_fenced(SECRET), tests)])
    for name, res in zip(HOSTILE, results):
        assert res.reward == 0.0 and res.n_passed == 0 and not res.all_pass, (name, res)
    assert results[-1].reward == 1.0  # the pool is intact: an honest sample after them still passes


def test_the_naive_harness_is_fooled() -> None:
    """Control: the same cheats pass when the assert runs next to the code, as ``python -c code + assert``
    (DiffuCoder's AceCode reward): that is why only values cross and the comparison happens outside."""
    for name in ("lying_eq", "lying_int_subclass", "lying_bool_and_sub", "exit_zero_at_import",
                 "system_exit"):
        program = HOSTILE[name] + "\n" + "\n".join(SECRET_ASSERTS) + "\n"
        assert subprocess.run([sys.executable, "-c", program], capture_output=True).returncode == 0, name


def test_tampered_checks_are_refused_on_the_trusted_side(pass_ratio_code_scorer) -> None:
    """A CodeTests read back from JSON is validated again before its checks run on the trusted side."""
    tests = assert_tests(["assert f(1) == 7932"])
    evil = json.loads(tests.to_json())
    evil["data"]["cases"][0]["check"] = "__c0.__class__.__base__ is object or __import__('os')"
    [honest, tampered] = pass_ratio_code_scorer.score([(_fenced(SECRET), tests),
                                            (_fenced(SECRET), CodeTests.from_json(json.dumps(evil)))])
    assert honest.reward == 1.0 and tampered.reward == 0.0
