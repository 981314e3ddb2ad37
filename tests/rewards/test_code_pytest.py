"""pytest-file tests (KodCode-Light-RL-10K, KodCode-V1, Dream-Coder autoeval) judged without running pytest
next to the completion: steps in the sandbox, asserts on the trusted side. Fixture references score 1, the V1
trials score exactly their stored Pass/Fail, what cannot be judged is counted and excluded, and every hostile
class scores 0."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from rewards.code_tests import CodeTests, tests_from_row
from rewards.pytest_tests import pytest_tests


def _fenced(code: str) -> str:
    return f"```python\n{code}\n```"


def test_kodcode_fixtures_all_judged_and_trials_match(code_scorer, shared_data_dir) -> None:
    root = shared_data_dir("code_rl")
    items, expected = [], []
    for name, corpus in (("kodcode_light_rl_10k", "kodcode-light"), ("kodcode_v1", "kodcode-v1")):
        for row in pq.read_table(root / f"{name}.sample.parquet").to_pylist():
            tests = tests_from_row(corpus, row)
            # 100% of the rows judged
            assert tests.format == "pytest" and tests.excluded == 0, row["question_id"]
            assert CodeTests.from_json(tests.to_json()) == tests
            items.append((_fenced(row["solution"]), tests))
            expected.append(True)
            for trial in (row.get("trials") or {}).values():
                if trial:
                    items.append((_fenced(trial["solution_code"]), tests))
                    expected.append(trial["test_result"] == "Pass")
    assert False in expected  # the V1 fixture has failing trials
    results = code_scorer.score(items)
    assert [r.all_pass for r in results] == expected
    assert all(r.reward == (1.0 if ok else 0.0) for r, ok in zip(results, expected))


def test_autoeval_row(code_scorer, shared_data_dir) -> None:
    import json

    root = shared_data_dir("code_rl")
    rows = pq.read_table(root / "dream_coder_rl_17k.sample.parquet").to_pylist()
    idx = next(i for i, r in enumerate(rows) if r["data_source"] == "autoeval")
    tests = tests_from_row("dream-coder", rows[idx])
    ref = json.loads((root / "reference_solutions.json").read_text())[
        "dream_coder_rl_17k.sample.parquet"][str(idx)]
    wrong = "def chunk_list(items, size):\n    return [items]\n"
    assert [r.reward for r in code_scorer.score([(_fenced(ref), tests),
                                                 (_fenced(wrong), tests)])] == [1.0, 0.0]


STACK_TESTS = '''
import pytest
import datetime
from solution import Counter2, days_after, safe_div

LIMIT = 3

def test_counter():
    c = Counter2(start=1)
    for _ in range(LIMIT):
        c.inc()
    assert c.value() == 4
    total = c.value() + 1
    assert total == 5

def test_days():
    assert days_after(datetime.date(2024, 2, 27), 3) == "2024-03-01"

@pytest.mark.parametrize("a,b,expected", [(6, 3, 2.0), (1, 4, 0.25)])
def test_div(a, b, expected):
    assert safe_div(a, b) == pytest.approx(expected)

def test_div_zero():
    print("dividing by zero")
    with pytest.raises(ZeroDivisionError):
        safe_div(1, 0)

def test_div_zero_base_class():
    with pytest.raises(ArithmeticError):
        safe_div(1, 0)
'''
STACK_SOLUTION = '''
import datetime
class Counter2:
    def __init__(self, start=0):
        self.n = start
    def inc(self):
        self.n += 1
        return self
    def value(self):
        return self.n
def days_after(d, k):
    return (d + datetime.timedelta(days=k)).isoformat()
def safe_div(a, b):
    return a / b
'''


def test_stateful_objects_parametrize_raises_and_sandbox_built_arguments(code_scorer) -> None:
    tests = pytest_tests(STACK_TESTS)
    assert tests.excluded == 0 and tests.n_cases == 6
    no_raise = STACK_SOLUTION.replace("return a / b", "return a / b if b else 0.0")
    stale = STACK_SOLUTION.replace("self.n += 1", "pass")
    results = code_scorer.score([(_fenced(c), tests) for c in (STACK_SOLUTION, no_raise, stale)])
    assert results[0].reward == 1.0, results[0].details
    assert results[1].n_passed == 4 and results[2].n_passed == 5


MUTATION_TESTS = '''
from solution import sort_in_place, evens, Bag

def test_sorts_in_place():
    data = [3, 1, 2]
    result = sort_in_place(data)
    assert result is None
    assert data == [1, 2, 3]

def test_keyword_argument():
    d = {"b": 1}
    sort_in_place(items=d)
    assert d == {"b": 1, "sorted": True}

def test_generator():
    assert list(evens(7)) == [0, 2, 4, 6]
    assert sorted(evens(3)) == [0, 2]

def test_held_by_object():
    items = [1]
    b = Bag(items)
    b.add(2)
    assert b.size() == 2
'''
MUTATION_SOLUTION = '''
def sort_in_place(items):
    if isinstance(items, dict):
        items["sorted"] = True
    else:
        items.sort()
def evens(n):
    for i in range(0, n, 2):
        yield i
class Bag:
    def __init__(self, items):
        self.items = items
    def add(self, x):
        self.items.append(x)
    def size(self):
        return len(self.items)
'''


def test_star_import_and_module_import(code_scorer) -> None:
    star = pytest_tests("from solution import *\n\ndef test_a():\n    assert evens(5) is not None\n"
                        "    assert list(evens(5)) == [0, 2, 4]\n")
    module = pytest_tests("import solution\n\ndef test_a():\n"
                          "    assert sorted(solution.evens(5)) == [0, 2, 4]\n")
    assert star.n_cases == module.n_cases == 1
    results = code_scorer.score([(_fenced(MUTATION_SOLUTION), star), (_fenced(MUTATION_SOLUTION), module)])
    assert results[1].reward == 1.0
    assert results[0].reward == 0.0  # `evens(5) is not None` needs the generator itself to cross: it cannot


def test_in_place_mutation_and_generators(code_scorer) -> None:
    """A list passed to the completion is read back after the call (as pytest sees it); generators are
    converted in the sandbox (list(f(x)), sorted(f(x))); an argument an object keeps is not read as a stale
    literal."""
    tests = pytest_tests(MUTATION_TESTS)
    assert (tests.n_cases, tests.excluded) == (4, 0)
    copying = MUTATION_SOLUTION.replace("items.sort()", "items = sorted(items)")
    [ok, bad] = code_scorer.score([(_fenced(MUTATION_SOLUTION), tests), (_fenced(copying), tests)])
    assert ok.reward == 1.0, ok.details
    assert bad.n_passed == 3  # the copy leaves the caller's list unsorted: test_sorts_in_place fails
    later_read = pytest_tests("from solution import Bag\ndef test_x():\n    items = [1]\n    b = Bag(items)\n"
                              "    assert items == [1]\n\ndef test_ok():\n"
                              "    assert Bag([1, 5]).size() == 2\n")
    assert (later_read.n_cases, later_read.excluded) == (1, 1)
    [res] = code_scorer.score([(_fenced(MUTATION_SOLUTION), later_read)])
    # Bag([1, 5]).size(): constructed in the sandbox, only the size crosses
    assert res.reward == 1.0, res.details


@pytest.mark.parametrize(("test", "why"), [
    ("def test_out(capsys):\n    f(1)\n    assert capsys.readouterr().out == '1\\n'", "fixture"),
    ("def test_mp(monkeypatch):\n    monkeypatch.setattr('os.sep', '/')\n    assert f(1) == 1", "fixture"),
    ("def helper():\n    return 1\ndef test_helper():\n    assert f(helper()) == 1",
     "helper of the test file"),
    ("def test_try():\n    try:\n        f(1)\n    except ValueError:\n        pass", "try block"),
    ("def test_match():\n    with pytest.raises(ValueError, match='bad'):\n        f(-1)", "raises(match=)"),
    ("def test_pass_object():\n    s = Stack()\n    assert f(s) == 1", "object passed back"),
    ("def test_if():\n    if f(1):\n        assert f(2) == 2", "if block"),
    ("class TestGroup:\n    def test_a(self):\n        assert f(1) == 1", "test class"),
])
def test_unjudgeable_tests_are_counted(test: str, why: str) -> None:
    source = ("import pytest\nfrom solution import f, Stack\n" + test
              + "\n\ndef test_ok():\n    assert f(1) == 1\n")
    tests = pytest_tests(source)
    assert (tests.n_cases, tests.excluded) == (1, 1), why


HOSTILE = {
    "lying_eq": "class A:\n    def __eq__(s, o): return True\n    __hash__ = object.__hash__\n"
                "def f(x):\n    return A()\nclass Box:\n    def __init__(self):\n        pass\n"
                "    def get(self):\n        return A()\n",
    "lying_int": "class E(int):\n    def __eq__(s, o): return True\n    __hash__ = int.__hash__\n"
                 "def f(x):\n    return E(0)\nclass Box:\n    def get(self):\n        return E(0)\n",
    "lying_bool_sub": "class B:\n    def __bool__(s): return True\n    def __sub__(s, o): return 0\n"
                      "    def __eq__(s, o): return True\n    __hash__ = object.__hash__\n"
                      "def f(x):\n    return B()\nclass Box:\n    def get(self):\n        return B()\n",
    "exit_zero": "import os\nos._exit(0)\n",
    "system_exit_in_calls": "def f(x):\n    raise SystemExit(0)\nclass Box:\n    def get(self):\n"
                            "        raise SystemExit(0)\n",
    "print_passed": "print('1 passed')\ndef f(x):\n    print('PASSED')\n    return 'passed'\nclass Box:\n"
                    "    def get(self):\n        return 'passed'\n",
    "patch_pytest_and_builtins": "import sys, types, builtins\nfake = types.ModuleType('pytest')\n"
                                 "fake.raises = lambda *a, **k: None\nsys.modules['pytest'] = fake\n"
                                 "builtins.AssertionError = KeyError\nbuiltins.sorted = lambda *a: [1]\n"
                                 "def f(x):\n    return 0\nclass Box:\n"
                                 "    def get(self):\n        return 0\n",
    "frames": "import sys\ndef f(x):\n    fr = sys._getframe(1)\n    while fr:\n"
              "        for v in fr.f_locals.values():\n"
              "            if type(v) is int and v > 1000: return v\n        fr = fr.f_back\n    return 0\n"
              "class Box:\n    def get(self):\n        return f(0)\n",
    "kill_the_harness": "import os\nfor pid in (os.getppid(), 1, -1, 0):\n    try: os.kill(pid, 9)\n"
                        "    except OSError: pass\n"
                        "def f(x):\n    return 0\nclass Box:\n    def get(self):\n        return 0\n",
    "forge_records": "import os, json\n"
                     "rec = ''.join(json.dumps([0, i, 'ok', '0' * 32, json.dumps(1)]) + '\\n'"
                     " for i in range(9))\nfor fd in range(3, 64):\n    try: os.write(fd, rec.encode())\n"
                     "    except OSError: pass\nos._exit(0)\n",
}
SECRET_TESTS = '''
import pytest
from solution import f, Box

def test_value():
    assert f(3) == 23770

def test_sorted():
    assert sorted([f(11), 5]) == [5, 87122]

def test_box():
    b = Box()
    assert b.get() == 7919

def test_raises():
    with pytest.raises(ValueError):
        f(-1)
'''
HONEST = ("def f(x):\n    if x < 0:\n        raise ValueError(x)\n    return (x * 7919 + 13) % 1000003\n"
          "class Box:\n    def get(self):\n        return 7919\n")


def test_hostile_pytest_completions_score_zero(code_scorer) -> None:
    tests = pytest_tests(SECRET_TESTS)
    assert tests.n_cases == 4 and tests.excluded == 0
    results = code_scorer.score([(_fenced(c), tests) for c in HOSTILE.values()] + [(_fenced(HONEST), tests)])
    for name, res in zip(HOSTILE, results):
        assert res.reward == 0.0 and not res.all_pass, (name, res)
        # test_raises alone can pass for a cheat that raises ValueError: nothing else may
        assert res.n_passed == 0 or (res.n_passed == 1
                                     and res.details["errors"].get("ValueError")), (name, res)
    assert results[-1].reward == 1.0
