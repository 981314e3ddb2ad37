"""fn_name calls, stdin/stdout programs and codeio predictions of the code-RL corpora, in the real sandbox.

Every fixture's reference solutions score 1 and wrong ones 0; output comparison follows the consuming repo's
rules (LCB checker for DeepCoder, TraceRL for Gen-Verse/PrimeIntellect, SandboxFusion for Dream-Coder); and
every hostile class of the issue scores 0 in each format.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from rewards.api import RewardConfig
from rewards.code_tests import JUDGED_CORPORA, CodeTests, UnjudgeableRow, tests_from_row
from rewards.formats_judge import call_tests, codeio_tests, last_json_object, stdio_equal, stdio_tests
from rewards.sandbox import SandboxConfig


def _fenced(code: str) -> str:
    return code if "```" in code else f"```python\n{code}\n```"


def _fixture_items(root) -> list[tuple[str, str, CodeTests]]:
    """(label, reference completion, tests) for every fixture row of the call / stdio / codeio corpora."""
    refs = json.loads((root / "reference_solutions.json").read_text())
    out = []
    for cfg in ("lcbv5", "primeintellect", "taco"):
        name = f"deepcoder_preview.{cfg}.sample.parquet"
        for i, row in enumerate(pq.read_table(root / name).to_pylist()):
            sol = row["solutions"][0] if row.get("solutions") else refs[name][str(i)]
            out.append((f"{name}[{i}]", _fenced(sol), tests_from_row(f"deepcoder-{cfg}", row)))
    name = "dream_coder_rl_17k.sample.parquet"
    for i, row in enumerate(pq.read_table(root / name).to_pylist()):
        if row["data_source"] in ("mbppplus", "autoeval"):
            continue
        tests = tests_from_row("dream-coder", row)
        sol = refs[name][str(i)]
        out.append((f"{name}[{i}]", sol if tests.format == "codeio" else _fenced(sol), tests))
    name = "primeintellect_genverse.sample.json"
    for i, row in enumerate(json.loads((root / name).read_text())):
        if row["test_method"] == "stdio":
            out.append((f"{name}[{i}]", _fenced(refs[name][str(i)]), tests_from_row("primeintellect", row)))
    return out


def test_fixture_references_pass_and_wrong_programs_fail(code_scorer, shared_data_dir) -> None:
    items = _fixture_items(shared_data_dir("code_rl"))
    formats = {t.format for _, _, t in items}
    assert formats == {"call", "stdio", "codeio"}
    for _, _, tests in items:
        assert CodeTests.from_json(tests.to_json()) == tests and tests.excluded == 0
    wrong = {"call": "class Solution:\n    def __getattr__(self, name):\n        return lambda *a: 0\n"
                     "def max_profit(p):\n    return 0\ndef countPrimes(n):\n    return 0\n"
                     "def digital_root(n):\n    return 0\n",
             "stdio": "import sys\nprint(sys.stdin.read().split()[0])\n", "codeio": '{"output": -1}'}
    results = code_scorer.score([(c, t) for _, c, t in items]
                                + [(_fenced(wrong[t.format]) if t.format != "codeio" else wrong["codeio"], t)
                                   for _, _, t in items])
    n = len(items)
    for (label, _, _), res in zip(items, results[:n]):
        assert res.reward == 1.0 and res.base_status == res.plus_status == "pass", (label, res)
    for (label, _, _), res in zip(items, results[n:]):
        assert res.reward == 0.0 and res.base_status == "fail", (label, res)


def test_row_conversion_and_judged_corpora(shared_data_dir) -> None:
    root = shared_data_dir("code_rl")
    rows = pq.read_table(root / "dream_coder_rl_17k.sample.parquet").to_pylist()
    mbpp = next(r for r in rows if r["data_source"] == "mbppplus")
    with pytest.raises(UnjudgeableRow, match="MBPP"):
        tests_from_row("dream-coder", mbpp)
    lcb = pq.read_table(root / "deepcoder_preview.lcbv5.sample.parquet").to_pylist()[1]
    tests = tests_from_row("deepcoder-lcbv5", {**lcb, "metadata": {"func_name": "longestGoodSubarray"}})
    # struct or (Python-literal / JSON) string metadata
    assert tests == tests_from_row("deepcoder-lcbv5", lcb)
    assert (tests.data["target"] == ["Solution", "longestGoodSubarray"]
            and tests.data["cases"][0][0] == [[1, 3, 2, 4, 6, 5], 2])
    with pytest.raises(ValueError, match="unknown corpus"):
        tests_from_row("humaneval", {})
    with pytest.raises(UnjudgeableRow):
        tests_from_row("deepcoder-taco", {"tests": "not json"})
    assert {"acecode", "primeintellect", "deepcoder-lcbv5", "deepcoder-primeintellect",
            "deepcoder-taco"} <= JUDGED_CORPORA


@pytest.mark.parametrize(("rule", "out", "expected", "ok"), [
    ("lcb", "3 \r\n4\n\n", "3\n4\n", True),           # trailing whitespace, CRLF, trailing blank lines
    ("lcb", "3 4\n", "3\n4\n", False),                # line structure matters
    ("lcb", "0.50000\n", "0.5\n", True),              # numeric tokens compared as Decimals
    ("lcb", "0.5000001\n", "0.5\n", False),           # no float tolerance in LCB
    ("lcb", "YES\n", "yes\n", False),
    ("primeintellect", "3 4", "3\n4\n", True),        # whitespace-token equality
    ("primeintellect", "0.50", "0.5", False),
    ("sandboxfusion", "YES\n", "yes\n", True),        # lower-cased lines
    ("sandboxfusion", "0.3333334\n", "0.333333\n", True),  # float lines, relative tolerance 1e-5
    ("sandboxfusion", "0.3334\n", "0.3333\n", False),
    ("sandboxfusion", "1 2\n", "1  2\n", False),      # inner whitespace kept
    ("sandboxfusion", "a\n\n", "a", True),
])
def test_stdio_rules(rule: str, out: str, expected: str, ok: bool) -> None:
    assert stdio_equal(rule, out, expected) is ok


def test_stdio_program_shapes(code_scorer) -> None:
    """What contest programs do: open(0), sys.stdin.buffer, os.write(1), sys.exit() / exit() / quit() after
    printing (the sandbox runs python -S, without site's exit), a thread with a larger stack,
    `if __name__ == "__main__":`; a non-zero exit code fails."""
    tests = stdio_tests(["2 3\n", "10 20\n"], ["5\n", "30\n"], 1.0, "lcb")
    programs = {
        "open0": "a, b = map(int, open(0).read().split())\nprint(a + b)\n",
        "buffer": "import sys\na, b = map(int, sys.stdin.buffer.read().split())\n"
                  "sys.stdout.buffer.write(b'%d\\n' % (a + b))\n",
        "os_write": "import os, sys\na, b = map(int, input().split())\n"
                    "os.write(1, str(a + b).encode() + b'\\n')\n",
        "exit_after": "import sys\na, b = map(int, input().split())\nprint(a + b)\nsys.exit()\n",
        "site_exit": "a, b = map(int, input().split())\nprint(a + b)\nexit()\nprint('unreachable')\n",
        "site_quit": "a, b = map(int, input().split())\nprint(a + b)\nquit(0)\n",
        "thread": "import threading, sys\ndef main():\n    a, b = map(int, input().split())\n"
                  "    print(a + b)\nthreading.stack_size(1 << 26)\nthreading.Thread(target=main).start()\n",
        "main_guard": "def main():\n    print(sum(map(int, input().split())))\nif __name__ == '__main__':\n"
                      "    main()\n",
    }
    bad = "import sys\na, b = map(int, input().split())\nprint(a + b)\nsys.exit(1)\n"
    results = code_scorer.score([(_fenced(p), tests) for p in programs.values()] + [(_fenced(bad), tests)])
    assert [r.reward for r in results] == [1.0] * len(programs) + [0.0], [r.details for r in results]


def test_call_rules(code_scorer) -> None:
    """LCB's grade_call_based: a returned tuple counts as a list; otherwise Python == on plain values."""
    tests = call_tests(["*", "f"], [([1], [1, 2]), ([2], 2.0), ([3], True)])
    ok = "def f(x):\n    return {1: (1, 2), 2: 2, 3: 1}[x]\n"
    lying = "class A:\n    def __eq__(s, o): return True\ndef f(x):\n    return A() if x == 1 else (1, 2)\n"
    results = code_scorer.score([(_fenced(ok), tests), (_fenced(lying), tests)])
    assert results[0].reward == 1.0 and results[1].n_passed == 0


def test_codeio() -> None:
    tests = codeio_tests('{"output": [1, 2]}')
    assert (last_json_object('think {"output": [9]} then\n```json\n{"output": [1, 2]}\n```')
            == {"output": [1, 2]})
    from rewards.formats_judge import codeio_pass

    assert codeio_pass('so {"output": [1, 2]}', tests.data["cases"][0])
    assert not codeio_pass('{"output": [1, 2]} no wait {"output": [2, 1]}', tests.data["cases"][0])
    assert not codeio_pass("import os; os._exit(0)  # {'output': [1, 2]}", tests.data["cases"][0])
    assert not codeio_pass('{"input": [1, 2]}', tests.data["cases"][0])


SECRET_IN = ["3\n", "4242\n", "17\n"]
SECRET_OUT = [f"{(int(x) * 7919 + 13) % 1000003}\n" for x in SECRET_IN]
# the same cheats, as a stdin/stdout program and as a function g(x) (call format)
HOSTILE_STDIO = {
    "print_passed": "print('passed')\nprint('All tests passed')\n",
    "exit_zero": "import os\nos._exit(0)\n",
    "system_exit": "raise SystemExit(0)\n",
    "echo_input": "print(input())\n",
    "patch_builtins": "import builtins\nbuiltins.print = lambda *a, **k: None\n"
                      "builtins.input = lambda *a: '0'\nimport sys\nsys.stdout.write('0\\n')\n",
    "frames_and_gc": "import sys, gc\nfound = []\nfr = sys._getframe()\nwhile fr:\n"
                     "    found += [v for v in fr.f_locals.values() "
                     "if isinstance(v, str) and v.strip().isdigit()]\n    fr = fr.f_back\n"
                     "found += [o for o in gc.get_objects() "
                     "if isinstance(o, list) and any(isinstance(x, str) for x in o)][:3]\n"
                     "print(found[-1] if found else 0)\n",
    "kill_the_harness": "import os, signal\nfor pid in (os.getppid(), 1, -1, 0):\n"
                        "    try: os.kill(pid, signal.SIGKILL)\n    except OSError: pass\nprint(0)\n",
    "forge_records": "import os, json\n"
                     "rec = ''.join(json.dumps([0, i, 'ok', '0' * 32, json.dumps('1\\n')]) + '\\n'"
                     " for i in range(3))\nfor fd in range(3, 64):\n    try: os.write(fd, rec.encode())\n"
                     "    except OSError: pass\nos._exit(0)\n",
    "lying_stdout_object": "import sys\nclass W:\n    def write(s, x): return len(x)\n"
                           "    def flush(s): pass\n"
                           "    def __eq__(s, o): return True\nsys.stdout = W()\nprint('0')\n",
    "read_files": "import glob\nhits = glob.glob('/work/**/*.json', recursive=True)"
                  " + glob.glob('/tmp/**', recursive=True)\nprint(len(hits))\n",
}
HOSTILE_CALL = {
    "lying_eq": "class A:\n    def __eq__(s, o): return True\n    __hash__ = object.__hash__\ndef g(x):\n"
                "    return A()\n",
    "lying_int": "class E(int):\n    def __eq__(s, o): return True\n    __hash__ = int.__hash__\ndef g(x):\n"
                 "    return E(0)\n",
    "lying_bool_sub": "class B:\n    def __bool__(s): return True\n    def __sub__(s, o): return 0\n"
                      "    def __eq__(s, o): return True\n    __hash__ = object.__hash__\ndef g(x):\n"
                      "    return B()\n",
    "exit_zero": "import os\ndef g(x):\n    os._exit(0)\n",
    "system_exit": "def g(x):\n    raise SystemExit(0)\n",
    "print_passed": "def g(x):\n    print('passed')\n    return 'passed'\n",
    "patch_assertion_error_and_builtins": "import builtins\nbuiltins.AssertionError = KeyError\n"
                                          "builtins.isinstance = lambda *a: True\n"
                                          "builtins.list = lambda *a: [0]\ndef g(x):\n    return (0,)\n",
    "frames": "import sys\ndef g(x):\n    fr = sys._getframe(1)\n    while fr:\n"
              "        for v in fr.f_locals.values():\n"
              "            if type(v) is int and v > 1000: return v\n        fr = fr.f_back\n    return 0\n",
    "forge_records": "import os, json\n"
                     "rec = ''.join(json.dumps([0, i, 'ok', '0' * 32, json.dumps(1)]) + '\\n'"
                     " for i in range(3))\nfor fd in range(3, 64):\n    try: os.write(fd, rec.encode())\n"
                     "    except OSError: pass\nos._exit(0)\n",
    "kill_the_harness": "import os, signal\ndef g(x):\n    for pid in (os.getppid(), 1, -1, 0):\n"
                        "        try: os.kill(pid, 9)\n        except OSError: pass\n    return 0\n",
}


def test_hostile_stdio_and_call_score_zero(code_scorer) -> None:
    stdio = stdio_tests(SECRET_IN, SECRET_OUT, 1.0, "primeintellect")
    call = call_tests(["*", "g"], [([int(x)], int(y)) for x, y in zip(SECRET_IN, SECRET_OUT)])
    honest_stdio = "x = int(input())\nprint((x * 7919 + 13) % 1000003)\n"
    honest_call = "def g(x):\n    return (x * 7919 + 13) % 1000003\n"
    items = ([(_fenced(p), stdio) for p in HOSTILE_STDIO.values()]
             + [(_fenced(p), call) for p in HOSTILE_CALL.values()])
    results = code_scorer.score(items + [(_fenced(honest_stdio), stdio), (_fenced(honest_call), call)])
    for name, res in zip([*HOSTILE_STDIO, *HOSTILE_CALL], results):
        assert res.reward == 0.0 and res.n_passed == 0, (name, res)
    assert [r.reward for r in results[-2:]] == [1.0, 1.0]  # the pool survived every attack


GARBAGE_ROWS = [{}, {"tests": None, "info": None, "test": None, "test_cases": None},
                {"tests": "[1, 2]", "info": "{]"},
                {"tests": '{"inputs": [1], "outputs": []}', "info": '{"test": 5}',
                 "data_source": "code_contests", "test_cases": [5], "test_method": "stdio",
                 "test_input": ["1"], "test_output": [2], "test": "def ("},
                {"tests": '[{"testtype": "functional", "type": "other", "input": "[1", "output": "1"}]',
                 "metadata": "{'func_name': 'f'}", "data_source": "livecodebench",
                 "info": '{"test": "{\\"input_output\\": 3}"}', "test_method": "function",
                 "test_list": ["assert True"], "test": "def test_x(capsys):\n    pass\n"}]


@pytest.mark.parametrize("row", GARBAGE_ROWS)
@pytest.mark.parametrize("corpus", ["acecode", "kodcode-light", "kodcode-v1", "deepcoder-lcbv5",
                                    "deepcoder-primeintellect",
                                    "deepcoder-taco", "primeintellect", "dream-coder"])
def test_malformed_rows_raise_unjudgeable_row(corpus: str, row: dict) -> None:
    """Loaders count drops by reason: a malformed row is UnjudgeableRow with a short reason, never a crash."""
    with pytest.raises(UnjudgeableRow) as info:
        tests_from_row(corpus, row)
    assert 0 < len(str(info.value)) <= 80


def test_mixed_batch_keeps_input_order(code_scorer) -> None:
    """One batch mixing formats, unparseable completions and codeio: results come back in input order."""
    stdio = stdio_tests(["1 2\n"], ["3\n"], 1.0, "primeintellect")
    call = call_tests(["*", "g"], [([2], 4)])
    codeio = codeio_tests('{"output": 1}')
    items = [("```python\nprint(sum(map(int, input().split())))\n```", stdio),
             ("```python\ndef g(:\n```", call),
             ('{"output": 1}', codeio), ("```python\ndef g(x):\n    return x * 2\n```", call),
             ("", stdio), ("```python\nprint(4)\n```", stdio)]
    results = code_scorer.score(items)
    assert [r.reward for r in results] == [1.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    assert [r.status for r in results] == ["ok", "syntax_error", "ok", "ok", "no_code", "ok"]


def test_lcb_rows_get_lcb_imports(code_scorer, shared_data_dir) -> None:
    """LiveCodeBench's harness runs programs after its import lines (typing, collections, ...): a LeetCode
    answer that uses `defaultdict` / `Counter` without importing them passes DeepCoder's lcbv5 functional
    rows, as under rLLM's checker."""
    rows = pq.read_table(shared_data_dir("code_rl") / "deepcoder_preview.lcbv5.sample.parquet").to_pylist()
    tests = tests_from_row("deepcoder-lcbv5", rows[2])  # minChangesToPalindrome
    assert tests.data["prelude"] == "lcb"
    code = ("class Solution:\n    seen = defaultdict(int)\n"
            "    def minChangesToPalindrome(self, s: str) -> int:\n"
            "        c = Counter(s[i] != s[-1 - i] for i in range(len(s) // 2))\n        return c[True]\n")
    [res] = code_scorer.score([(_fenced(code), tests)])
    assert res.reward == 1.0, res.details
    plain = call_tests(["Solution", "minChangesToPalindrome"], [(["ab"], 1)])
    [res] = code_scorer.score([(_fenced(code), plain)])
    assert res.status == "load_error"  # without the prelude, defaultdict is undefined at class definition


def test_score_code_tests_reuses_its_pool() -> None:
    """The loaders' entry point: one warm pool per RewardConfig, reused across calls (RL steps), input order
    kept."""
    from rewards.code_judge import close_code_scorers, get_code_scorer
    from rewards.code_tests import score_code_tests

    cfg = RewardConfig.rl(workers=1, sandbox=SandboxConfig(isolation="bwrap", max_retries=1))
    tests = call_tests(["*", "g"], [([2], 4), ([5], 10)])
    try:
        first = score_code_tests([("```python\ndef g(x):\n    return 2 * x\n```", tests),
                                  ("```python\ndef g(x):\n    return x + 2\n```", tests)], cfg)
        pool = get_code_scorer(cfg).pool
        second = score_code_tests([("```python\ndef g(x):\n    return x * 2\n```", tests)], cfg)
        assert get_code_scorer(cfg).pool is pool and pool.stats["jobs"] == 3
        assert [r.reward for r in first + second] == [1.0, 0.0, 1.0]
        assert first[1].base_status == first[1].plus_status == "fail" and first[1].n_passed == 1
    finally:
        close_code_scorers()
