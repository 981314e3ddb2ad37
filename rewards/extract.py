"""Prompt formats for instruct models and code extraction from completions.

Extraction never raises: it returns an :class:`ExtractedCode` whose ``status`` says what went wrong, so a
batch of RL rollouts gets one clear per-sample status ("no_answer_block", "no_code", "syntax_error") instead
of an exception. Order: (1) the A block of a lockstep rollout when ``answer_marker`` is given (the markers are
plain text in the completion); (2) fenced code blocks; (3) the raw text; (4) evalplus's sanitizer
(tree-sitter) when the text does not parse as Python.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import textwrap
import threading

# evalplus's chat prompt wording (evalplus/codegen + provider/utility.make_raw_chat_prompt)
INSTRUCTION_PREFIX = ("Please provide a self-contained Python script that solves the following problem in a "
                      "markdown code block:")
RESPONSE_PREFIX = ("Below is a Python script with a self-contained function that solves the problem and "
                   "passes corresponding tests:")
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_end|>", "<|im_start|>", "<|eot_id|>", "<|mask|>", "</s>")
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_CODE_LANGS = {"", "python", "py", "python3", "py3", "Python", "Python3"}


@dataclasses.dataclass(frozen=True)
class ExtractedCode:
    """code is None unless status == "ok". source: "fenced" | "raw" | "sanitized". ``well_formed`` (the format
    reward) is True when the code came from a fenced block (or the A block) and parses without sanitizing."""

    code: str | None
    status: str
    source: str = ""
    well_formed: bool = False


def instruct_messages(task_prompt: str) -> list[dict[str, str]]:
    """Chat messages for an instruct model: evalplus's instruction, the task in a fence, and the assistant
    prefix that opens a python fence (pass it as the start of the assistant turn)."""
    return [{"role": "user", "content": f"{INSTRUCTION_PREFIX}\n```\n{task_prompt.strip()}\n```\n"},
            {"role": "assistant", "content": f"{RESPONSE_PREFIX}\n```python\n"}]


def instruct_prompt(task_prompt: str, *, lockstep: bool = False) -> str:
    """Plain-text instruct prompt (no chat template). With ``lockstep=True`` the model is asked for a
    reasoning block after ``[R]`` and the final code after ``[A]`` (the lockstep R/A canvas)."""
    text = f"{INSTRUCTION_PREFIX}\n```\n{task_prompt.strip()}\n```\n"
    if lockstep:
        return text + "Think in the [R] block, then give only the final code in the [A] block.\n[R] "
    return text + f"{RESPONSE_PREFIX}\n```python\n"


def answer_block(completion: str, answer_marker: str, stop_markers: tuple[str, ...] = ("[R]",)) -> str | None:
    """Text after the last ``answer_marker`` up to the next stop marker; None when the marker is absent."""
    pos = completion.rfind(answer_marker)
    if pos < 0:
        return None
    text = completion[pos + len(answer_marker):]
    cut = min((text.find(m) for m in stop_markers if m and m in text), default=-1)
    return text if cut < 0 else text[:cut]


def _strip_special(text: str) -> str:
    for tok in SPECIAL_TOKENS:
        text = text.split(tok)[0] if tok in ("<|endoftext|>", "<|im_end|>", "<|eot_id|>") \
            else text.replace(tok, "")
    return text


# CPython 3.11 keeps the AST constructor's recursion counter per interpreter, not per thread, so ast.parse
# called from several threads at once (verl's reward thread pool) can fail with "SystemError: AST constructor
# recursion depth mismatch". Parsing is serialised; whatever ast still raises on hostile text is that text's
# failure.
_AST_LOCK = threading.Lock()
_AST_ERRORS = (SyntaxError, ValueError, MemoryError, RecursionError, SystemError, OverflowError)


def parse_or_none(code: str) -> ast.Module | None:
    """``ast.parse(code)``, or None when the text does not parse or the parser itself fails on it (never
    raises for any text; thread-safe)."""
    with _AST_LOCK:
        try:
            return ast.parse(code)
        except _AST_ERRORS:
            return None


def _parses(code: str) -> bool:
    return parse_or_none(code) is not None


def defines(code: str, name: str) -> bool:
    """True when ``code`` parses and defines ``name`` at top level (function, class or assignment)."""
    tree = parse_or_none(code)
    if tree is None:
        return False
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name
                                                for t in node.targets):
            return True
    return False


def _sanitize(text: str, entry_point: str | None) -> str:
    try:
        from evalplus.sanitize import sanitize
    except ImportError:  # tree-sitter missing: keep the raw text
        return text
    lines = text.count("\n")
    if lines > 400:  # evalplus's code_extract is quadratic in lines
        return text
    try:
        with _AST_LOCK:  # evalplus's sanitizer calls ast.parse itself
            return sanitize(text, entry_point)
    except (Exception, RecursionError, MemoryError):  # noqa: BLE001 - sanitizer failures mean "no code"
        return ""


def extract_code(completion: str, *, answer_marker: str | None = None, entry_point: str | None = None,
                 stop_markers: tuple[str, ...] = ("[R]",), sanitize: bool = True) -> ExtractedCode:
    """Code from a model completion; see the module docstring for the order of attempts."""
    text = _strip_special(completion)
    from_block = False
    if answer_marker:
        block = answer_block(text, answer_marker, stop_markers)
        if block is None:
            return ExtractedCode(None, "no_answer_block")
        text, from_block = block, True
    fences = [body for lang, body in _FENCE.findall(text) if lang in _CODE_LANGS and body.strip()]
    if fences:
        chosen = next((f for f in fences if entry_point and defines(f, entry_point)), max(fences, key=len))
        if _parses(chosen):
            return ExtractedCode(chosen.strip("\n") + "\n", "ok", "fenced", True)
        text = chosen
    else:
        for cand in (text.strip("\n"), textwrap.dedent(text).strip("\n"), text.strip()):
            if cand.strip() and _parses(cand):
                return ExtractedCode(cand + "\n", "ok", "raw", from_block)
    if not text.strip():
        return ExtractedCode(None, "no_code")
    if sanitize:
        cleaned = _sanitize(text, entry_point)
        if cleaned.strip() and _parses(cleaned):
            return ExtractedCode(cleaned + "\n", "ok", "sanitized", False)
    return ExtractedCode(None, "syntax_error")


def prompt_imports(prompt: str) -> str:
    """Top-level import lines of a task prompt (instruct answers often omit ``from typing import List``)."""
    tree = parse_or_none(prompt)
    if tree is None:
        return ""
    lines = prompt.splitlines()
    out = [("\n".join(lines[n.lineno - 1:n.end_lineno])) for n in tree.body
           if isinstance(n, (ast.Import, ast.ImportFrom))]
    return "\n".join(out) + ("\n" if out else "")


def build_solution(completion: str, prompt: str, entry_point: str, *, completion_format: str = "auto",
                   answer_marker: str | None = None, sanitize: bool = True) -> ExtractedCode:
    """Program to run for a completion.

    completion_format: "continuation" (evalplus's ``completion`` field: prompt + completion), "code"
    (extracted code must define the entry point; the prompt's imports are prepended), "solution" (the text is
    the whole program, evalplus's ``solution`` field), or "auto" (code when it defines the entry point, else
    continuation).
    """
    if completion_format == "solution":
        return ExtractedCode(completion, "ok", "raw", _parses(completion))
    if completion_format == "continuation":
        return ExtractedCode(prompt + completion, "ok", "raw", _parses(prompt + completion))
    if completion_format not in ("auto", "code"):
        raise ValueError("completion_format must be auto/code/continuation/solution, got "
                         f"{completion_format!r}")
    ext = extract_code(completion, answer_marker=answer_marker, entry_point=entry_point, sanitize=sanitize)
    if ext.status == "ok" and defines(ext.code, entry_point):
        return dataclasses.replace(ext, code=prompt_imports(prompt) + ext.code)
    if completion_format == "auto" and answer_marker is None and defines(prompt + completion, entry_point):
        return ExtractedCode(prompt + completion, "ok", "continuation", False)
    if ext.status == "ok":
        return ExtractedCode(None, "no_entry_point", ext.source)
    return ext
