"""Code extraction and prompt formats: each failure mode has its own status."""

from __future__ import annotations

import pytest

from rewards.extract import build_solution, extract_code, instruct_messages, instruct_prompt, prompt_imports

PROMPT = 'from typing import List\n\n\ndef add(xs: List[int]) -> int:\n    """Sum."""\n'


def test_fenced_block_is_preferred_and_well_formed() -> None:
    text = "Sure!\n```python\ndef add(xs):\n    return sum(xs)\n```\nHope it helps."
    ext = extract_code(text, entry_point="add")
    assert ext.status == "ok" and ext.source == "fenced" and ext.well_formed
    assert ext.code == "def add(xs):\n    return sum(xs)\n"


def test_block_defining_the_entry_point_wins() -> None:
    text = "```python\nprint(1)\nprint(2)\nprint(3)\n```\n```python\ndef add(xs):\n    return 0\n```"
    assert "def add" in extract_code(text, entry_point="add").code


def test_unterminated_fence_still_extracts() -> None:
    assert extract_code("```python\ndef add(xs):\n    return 1\n", entry_point="add").status == "ok"


def test_answer_block_of_lockstep_rollout() -> None:
    text = "[R] I will sum the list. [A] ```python\ndef add(xs):\n    return sum(xs)\n```<|endoftext|>junk"
    ext = extract_code(text, answer_marker="[A]", entry_point="add")
    assert ext.status == "ok" and "return sum(xs)" in ext.code and "junk" not in ext.code
    raw = extract_code("[R] think [A] def add(xs):\n    return 3\n", answer_marker="[A]")
    assert raw.status == "ok" and raw.source == "raw" and raw.well_formed


@pytest.mark.parametrize(("text", "status"), [
    ("[R] only reasoning, no answer", "no_answer_block"),
    ("[R] x [A]   ", "no_code"),
    ("[R] x [A] def add(:\n  ???", "syntax_error"),
])
def test_answer_block_failures_have_statuses(text, status) -> None:
    assert extract_code(text, answer_marker="[A]", sanitize=False).status == status


def test_sanitizer_recovers_code_from_prose() -> None:
    text = "Here is my answer:\ndef add(xs):\n    return sum(xs)\nThis works because of reasons."
    ext = extract_code(text, entry_point="add")
    assert ext.status == "ok" and ext.source == "sanitized" and not ext.well_formed
    assert "reasons" not in ext.code


def test_build_solution_formats() -> None:
    code = build_solution("```python\ndef add(xs):\n    return sum(xs)\n```", PROMPT, "add")
    assert code.code.startswith("from typing import List\n") and "def add" in code.code
    cont = build_solution("    return sum(xs)\n", PROMPT, "add")
    assert (cont.status == "ok" and cont.source == "continuation"
            and cont.code == PROMPT + "    return sum(xs)\n")
    assert build_solution("```python\ndef other():\n    return 1\n```", PROMPT, "add",
                          completion_format="code").status == "no_entry_point"
    assert build_solution("x", PROMPT, "add", completion_format="solution").code == "x"
    with pytest.raises(ValueError):
        build_solution("x", PROMPT, "add", completion_format="bogus")


def test_prompt_formats() -> None:
    msgs = instruct_messages(PROMPT)
    assert msgs[0]["role"] == "user" and PROMPT.strip() in msgs[0]["content"]
    assert msgs[1]["content"].endswith("```python\n")
    assert instruct_prompt(PROMPT, lockstep=True).endswith("[R] ")
    assert prompt_imports(PROMPT) == "from typing import List\n"


# ast.parse on hostile text, and from many threads at once (verl scores rewards in a thread pool; on CPython
# 3.11 concurrent ast construction can raise "SystemError: AST constructor recursion depth mismatch")
DEEP = ["def add(xs):\n    return " + "-" * 3000 + "xs\n",  # RecursionError during AST construction
        "def add(xs):\n    return " + "(" * 150 + "xs" + ")" * 150 + "\n",
        "def add(xs):\n    return " + "[" * 90 + "xs" + "]" * 90 + "\n",
        "```python\ndef add(xs):\n    return " + " + ".join(["xs"] * 3000) + "\n```",
        "def add(xs):\n    return '\ud800'\n",  # a lone surrogate cannot even be encoded for the parser
        "x = (" * 300 + "\n"]


def _statuses(texts: list[str]) -> list[tuple]:
    out = []
    for t in texts:
        ext = build_solution(t, PROMPT, "add", completion_format="auto")
        out.append((ext.status, ext.code))
    return out


def test_parser_failures_on_hostile_text_are_statuses_not_exceptions() -> None:
    got = _statuses(DEEP)
    assert got[0][0] != "ok" and got[4][0] != "ok" and got[5][0] != "ok"
    assert got[1][0] == got[2][0] == "ok"
    assert prompt_imports("-" * 3000 + "x\n") == "" and prompt_imports(PROMPT) == "from typing import List\n"


def test_extraction_from_many_threads_at_once_matches_single_threaded_results() -> None:
    import threading

    expected = _statuses(DEEP)
    results: list = []
    errors: list = []

    def work() -> None:
        try:
            for _ in range(15):
                results.append(_statuses(DEEP))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 8 * 15 and all(r == expected for r in results), errors[:3]


def test_a_completion_the_parser_fails_on_scores_zero_without_raising(tmp_path, secret_task_list) -> None:
    from rewards import RewardConfig, SandboxConfig, score_batch

    secret_ref = "def f(x):\n    return (x * 7919 + 13) % 1000003\n"

    cfg = RewardConfig.rl(workers=1, cache_dir=str(tmp_path), sandbox=SandboxConfig(isolation="bwrap"))
    hostile = ["```python\ndef f(x):\n    return " + "-" * 3000 + "x\n```",
               "def f(x):\n    return '\ud800'\n"]
    results = score_batch([("secret", t) for t in hostile] + [("secret", secret_ref)],
                          tasks=secret_task_list, cfg=cfg)
    assert [r.reward for r in results] == [0.0, 0.0, 1.0], [(r.status, r.details) for r in results]
    assert all(r.status != "ok" for r in results[:2])
