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
    assert cont.status == "ok" and cont.source == "continuation" and cont.code == PROMPT + "    return sum(xs)\n"
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
