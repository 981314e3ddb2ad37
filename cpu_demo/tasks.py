"""Synthetic family of small Python function-writing tasks for the CPU demo.

Why: the demo must show GRPO teaching a *tiny* Dream model to write code on a 2-core machine, without
downloaded weights or datasets. HumanEval is far too hard for such a model, so we generate HumanEval-shaped
tasks (a typed signature plus a docstring with one example) whose solution is a single ``return`` expression:
arithmetic on an int, string methods, list operations. Function names, argument names, constants and the
operation vary, so a model has to read the prompt (copy the name, pick the operation, copy the constant) to
pass.

Contract:

* :func:`generate_demo_tasks` is a pure function of its arguments (fixed seed -> identical tasks, in order);
  train and held-out splits never share a task key or a prompt, and held-out function names are word pairs
  that never occur in the train split (every single word does), so held-out success needs copying, not
  memorising.
* Every task carries its reference solution (a full function), test inputs and expected outputs computed by
  running that reference (our own trusted code, executed in-process), so it can be scored by the sandboxed
  reward worker exactly like an EvalPlus task.
* :meth:`DemoTask.reasoning` and :meth:`DemoTask.answer_code` are the supervised targets of the R and A
  blocks.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from decoding.lockstep import DEFAULT_DELIMITER, delimiter_ids

# --------------------------------------------------------------------------------------------- operations
# Each operation: kind of argument, return annotation, docstring sentence, return expression, plan sentence.
# Placeholders: {a} = argument name, {k} = integer constant, {c} = one-letter constant.


@dataclass(frozen=True)
class Operation:
    """One operation of the family; ``k_range`` is the inclusive range of its constant (None: no constant)."""

    name: str
    kind: str  # "int", "str" or "list"
    returns: str
    doc: str
    expr: str
    k_range: tuple[int, int] | None = None
    uses_letter: bool = False
    nonempty: bool = False  # the argument must be non-empty (max/min of a list, ...)


OPERATIONS: tuple[Operation, ...] = (
    Operation("add", "int", "int", "Return {a} plus {k}.", "{a} + {k}", (1, 9)),
    Operation("sub", "int", "int", "Return {a} minus {k}.", "{a} - {k}", (1, 9)),
    Operation("mul", "int", "int", "Return {a} times {k}.", "{a} * {k}", (2, 9)),
    Operation("square", "int", "int", "Return {a} squared.", "{a} * {a}"),
    Operation("neg", "int", "int", "Return the negative of {a}.", "-{a}"),
    Operation("abs", "int", "int", "Return the absolute value of {a}.", "abs({a})"),
    Operation("mod", "int", "int", "Return the remainder of {a} divided by {k}.", "{a} % {k}", (2, 9)),
    Operation("divisible", "int", "bool", "Return True if {a} is divisible by {k}.", "{a} % {k} == 0",
              (2, 9)),
    Operation("max_k", "int", "int", "Return the larger of {a} and {k}.", "max({a}, {k})", (1, 9)),
    Operation("upper", "str", "str", "Return {a} in upper case.", "{a}.upper()"),
    Operation("reverse_str", "str", "str", "Return {a} reversed.", "{a}[::-1]"),
    Operation("repeat", "str", "str", "Return {a} repeated {k} times.", "{a} * {k}", (2, 5)),
    Operation("len_str", "str", "int", "Return the length of {a}.", "len({a})"),
    Operation("prefix", "str", "str", "Return the first {k} characters of {a}.", "{a}[:{k}]", (1, 4)),
    Operation("count_char", "str", "int", 'Return how many times "{c}" appears in {a}.', '{a}.count("{c}")',
              uses_letter=True),
    Operation("sum", "list", "int", "Return the sum of {a}.", "sum({a})"),
    Operation("max", "list", "int", "Return the largest element of {a}.", "max({a})", nonempty=True),
    Operation("min", "list", "int", "Return the smallest element of {a}.", "min({a})", nonempty=True),
    Operation("len_list", "list", "int", "Return the number of elements in {a}.", "len({a})"),
    Operation("sorted", "list", "list[int]", "Return {a} sorted in ascending order.", "sorted({a})"),
    Operation("reverse_list", "list", "list[int]", "Return {a} in reverse order.", "{a}[::-1]"),
    Operation("add_each", "list", "list[int]", "Return a list with {k} added to each element of {a}.",
              "[v + {k} for v in {a}]", (1, 9)),
    Operation("filter_gt", "list", "list[int]", "Return the elements of {a} that are greater than {k}.",
              "[v for v in {a} if v > {k}]", (0, 5)),
    Operation("count_k", "list", "int", "Return how many times {k} appears in {a}.", "{a}.count({k})",
              (0, 5)),
)
OPERATIONS_BY_NAME = {op.name: op for op in OPERATIONS}

# A plausible bug of each operation (same argument and constant; {k1} = k + 1): off-by-one constants, a
# swapped function (max/min, sum/len), a missing call. The demo's SFT warm start learns from demonstrations of
# which a fraction (``bug_rate``) use these instead of the correct expression, like SFT data distilled from an
# imperfect coder; GRPO's verifiable reward is what tells the two apart (docs/demo.md).
BUGGY_EXPRS: dict[str, str] = {
    "add": "{a} + {k1}", "sub": "{a} - {k1}", "mul": "{a} * {k1}", "square": "{a} * 2", "neg": "abs({a})",
    "abs": "-{a}", "mod": "{a} % {k1}", "divisible": "{a} % {k1} == 0", "max_k": "max({a}, {k1})",
    "upper": "{a}.lower()", "reverse_str": "{a}", "repeat": "{a} * {k1}", "len_str": "len({a}) - 1",
    "prefix": "{a}[:{k1}]", "count_char": '{a}.find("{c}")', "sum": "len({a})", "max": "min({a})",
    "min": "max({a})", "len_list": "sum({a})", "sorted": "{a}", "reverse_list": "{a}",
    "add_each": "[v + {k1} for v in {a}]", "filter_gt": "[v for v in {a} if v >= {k}]",
    "count_k": "{a}.count({k1})",
}

ARG_NAMES = {"int": ("x", "n", "num", "value"), "str": ("s", "text", "word"), "list": ("xs", "nums", "items")}
ARG_TYPES = {"int": "int", "str": "str", "list": "list[int]"}
NAME_VERBS = ("compute", "get", "make", "find", "apply", "calc", "build", "solve", "check", "do")
NAME_NOUNS = ("value", "result", "item", "total", "score", "answer", "output", "data", "thing", "part")
LETTERS = "abcdeor"
WORDS = ("a", "to", "cat", "dog", "tree", "code", "abba", "apple", "hello", "river", "banana", "letter",
         "balloon")


# --------------------------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class DemoTask:
    """One generated task. ``prompt`` is HumanEval-shaped (signature + docstring); ``solution`` a full
    function."""

    task_id: str
    entry_point: str
    op: str
    arg: str
    k: int | None
    letter: str | None
    prompt: str
    solution: str
    return_expr: str
    inputs: tuple[tuple[Any, ...], ...]
    expected: tuple[Any, ...]

    @property
    def key(self) -> tuple[str, str, str, int | None, str | None]:
        """Identity of a task; splits are disjoint on it."""
        return (self.op, self.entry_point, self.arg, self.k, self.letter)

    def buggy_expr(self) -> str:
        """The operation's plausible bug (:data:`BUGGY_EXPRS`) with this task's argument and constants."""
        return BUGGY_EXPRS[self.op].format(a=self.arg, k=self.k, k1=(self.k or 0) + 1, c=self.letter)

    def reasoning(self, buggy: bool = False) -> str:
        """Target text of the R block: a one-line plan naming the expression to return."""
        return f"{self.entry_point} returns {self.buggy_expr() if buggy else self.return_expr}."

    def answer_code(self, buggy: bool = False) -> str:
        """Target code of the A block (the reference solution without docstring, or its buggy variant)."""
        if not buggy:
            return self.solution
        return self.solution.replace(f"return {self.return_expr}\n", f"return {self.buggy_expr()}\n")


def _render(op: Operation, entry_point: str, arg: str, k: int | None, letter: str | None,
            example: tuple[Any, ...], example_out: Any) -> tuple[str, str, str]:
    fill = {"a": arg, "k": k, "c": letter}
    expr = op.expr.format(**fill)
    signature = f"def {entry_point}({arg}: {ARG_TYPES[op.kind]}) -> {op.returns}:"
    call = f"{entry_point}({', '.join(repr(v) for v in example)})"
    prompt = (
        f"{signature}\n"
        f'    """{op.doc.format(**fill)}\n'
        f"    >>> {call}\n"
        f"    {example_out!r}\n"
        f'    """\n'
    )
    solution = f"{signature}\n    return {expr}\n"
    return prompt, solution, expr


def _random_input(rng: random.Random, op: Operation, k: int | None, letter: str | None) -> Any:
    if op.kind == "int":
        if k is not None and rng.random() < 0.3:
            return k * rng.randint(-3, 3)  # multiples of k make divisible/mod tests informative
        return rng.randint(-20, 20)
    if op.kind == "str":
        word = rng.choice(WORDS)
        return word if letter is None or rng.random() < 0.5 else word + letter
    low = 1 if op.nonempty else 0
    values = [rng.randint(-5, 9) for _ in range(rng.randint(low, 5))]
    if k is not None and op.name == "count_k" and values and rng.random() < 0.6:
        values[rng.randrange(len(values))] = k
    return values


def run_reference(solution: str, entry_point: str, inputs: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Expected outputs of a *trusted* reference solution (our own generated code), executed in-process."""
    namespace: dict[str, Any] = {}
    exec(compile(solution, f"<reference {entry_point}>", "exec"), namespace)  # noqa: S102 - trusted, generated here
    fn = namespace[entry_point]
    return [fn(*(list(a) if isinstance(a, list) else a for a in args)) for args in inputs]


def _draw_inputs(rng: random.Random, op: Operation, k: int | None, letter: str | None,
                 n_tests: int) -> list[tuple[Any, ...]]:
    inputs: list[tuple[Any, ...]] = []
    seen: set[str] = set()
    for _ in range(20 * n_tests):
        value = _random_input(rng, op, k, letter)
        if repr(value) not in seen:
            seen.add(repr(value))
            inputs.append((value,))
        if len(inputs) == n_tests:
            break
    return inputs


def _make_task(rng: random.Random, op: Operation, entry_point: str, arg: str, k: int | None,
               letter: str | None, n_tests: int) -> DemoTask:
    _, solution, _ = _render(op, entry_point, arg, k, letter, (0,), None)
    for _ in range(20):  # tests whose expected outputs are all equal would let a constant answer pass
        inputs = _draw_inputs(rng, op, k, letter, n_tests)
        expected = run_reference(solution, entry_point, inputs)
        if n_tests == 1 or len({repr(e) for e in expected}) > 1:
            break
    prompt, solution, expr = _render(op, entry_point, arg, k, letter, inputs[0], expected[0])
    suffix = "" if k is None and letter is None else f"_{k if letter is None else letter}"
    return DemoTask(
        task_id=f"Demo/{op.name}/{entry_point}/{arg}{suffix}", entry_point=entry_point, op=op.name, arg=arg,
        k=k, letter=letter, prompt=prompt, solution=solution, return_expr=expr,
        inputs=tuple(inputs), expected=tuple(expected),
    )


@dataclass(frozen=True)
class DemoSplits:
    """Train and held-out task lists of one seed."""

    train: list[DemoTask]
    heldout: list[DemoTask]


def _split_names(seed: int, heldout_name_frac: float) -> tuple[list[str], list[str]]:
    """Split verb_noun names so that held-out names are unseen pairs of words that all occur in train
    names."""
    rng = random.Random(f"names-{seed}")
    names = [f"{v}_{n}" for v in NAME_VERBS for n in NAME_NOUNS]
    rng.shuffle(names)
    n_held = max(1, round(heldout_name_frac * len(names)))
    held, train = names[:n_held], names[n_held:]
    train_words = {w for name in train for w in name.split("_")}
    assert all(w in train_words for name in held for w in name.split("_")), "held-out word unseen in train"
    return sorted(train), sorted(held)


def generate_demo_tasks(
    seed: int = 0,
    n_train: int = 2000,
    n_heldout: int = 64,
    operations: Sequence[str] | None = None,
    n_tests: int = 5,
    heldout_name_frac: float = 0.2,
) -> DemoSplits:
    """Generate the train and held-out splits (deterministic in all arguments).

    Args:
        seed: generator seed; the same arguments always give the same tasks in the same order.
        n_train / n_heldout: split sizes (tasks are unique by :attr:`DemoTask.key`).
        operations: names from :data:`OPERATIONS` to draw from (default: all of them).
        n_tests: test inputs per task (the first one is also the docstring example).
        heldout_name_frac: fraction of function names reserved for the held-out split.
    Raises:
        ValueError: unknown operation names, or more tasks requested than the family can provide.
    """
    names = list(operations) if operations is not None else [op.name for op in OPERATIONS]
    unknown = sorted(set(names) - set(OPERATIONS_BY_NAME))
    if unknown or not names:
        raise ValueError(f"unknown demo operations {unknown or names}; choose from "
                         f"{sorted(OPERATIONS_BY_NAME)}")
    if n_train < 0 or n_heldout < 0 or n_tests < 1:
        raise ValueError(f"need n_train, n_heldout >= 0 and n_tests >= 1 (got {n_train}, {n_heldout}, "
                         f"{n_tests})")
    ops = [OPERATIONS_BY_NAME[n] for n in names]
    train_names, held_names = _split_names(seed, heldout_name_frac)
    rng = random.Random(seed)
    splits: dict[str, list[DemoTask]] = {"train": [], "heldout": []}
    used: set[tuple] = set()
    for split, size, pool in (("heldout", n_heldout, held_names), ("train", n_train, train_names)):
        attempts = 0
        while len(splits[split]) < size:
            attempts += 1
            if attempts > 50 * size + 1000:
                raise ValueError(f"cannot draw {size} distinct {split} tasks from operations {names}")
            op = rng.choice(ops)
            entry_point = rng.choice(pool)
            arg = rng.choice(ARG_NAMES[op.kind])
            k = rng.randint(*op.k_range) if op.k_range else None
            letter = rng.choice(LETTERS) if op.uses_letter else None
            key = (op.name, entry_point, arg, k, letter)
            if key in used:
                continue
            used.add(key)
            splits[split].append(_make_task(rng, op, entry_point, arg, k, letter, n_tests))
    return DemoSplits(train=splits["train"], heldout=splits["heldout"])


# --------------------------------------------------------------------------------------------- task spec
# The demo's default family: every operation whose R and A targets fit the demo canvas (18 + 32 tokens with
# the tiny tokenizer); the long list comprehensions and list-returning operations are left out to keep the
# canvas (and so every CPU forward pass) short.
DEMO_OPERATIONS: tuple[str, ...] = (
    "add", "sub", "mul", "square", "neg", "abs", "mod", "divisible", "max_k", "upper", "reverse_str",
    "repeat",
    "len_str", "prefix", "count_char", "sum", "max", "min", "len_list",
)


@dataclass(frozen=True)
class DemoTaskSpec:
    """Everything that determines a demo task set: :func:`generate_demo_tasks` arguments as one value.

    Why: the SFT warm start, the GRPO prompts (parquet rows) and the reward workers must all see the same
    tasks; the rows carry :meth:`to_json` and each reward worker regenerates the tasks from it
    (:func:`tasks_from_json`, cached), so no task list travels between processes.
    """

    seed: int = 0
    n_train: int = 3000
    n_heldout: int = 48
    operations: tuple[str, ...] = DEMO_OPERATIONS
    n_tests: int = 5
    heldout_name_frac: float = 0.2

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> DemoTaskSpec:
        """Build from a (recipe) mapping; ``operations: null`` = the default family. ValueError on unknown
        keys."""
        values = dict(values or {})
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown demo task settings {unknown}; known: {sorted(known)}")
        if values.get("operations") is None:
            values.pop("operations", None)
        else:
            values["operations"] = tuple(str(name) for name in values["operations"])
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def generate(self) -> DemoSplits:
        return generate_demo_tasks(self.seed, self.n_train, self.n_heldout, self.operations, self.n_tests,
                                   self.heldout_name_frac)


@functools.lru_cache(maxsize=4)
def tasks_from_json(spec_json: str) -> dict[str, DemoTask]:
    """All tasks (train and held-out) of a :meth:`DemoTaskSpec.to_json` string, by task id (cached per
    process)."""
    raw = json.loads(spec_json)
    splits = DemoTaskSpec.from_dict(raw).generate()
    return {t.task_id: t for t in [*splits.train, *splits.heldout]}


# --------------------------------------------------------------------------------------------- R/A format
# The demo uses the HumanEval recipe's format exactly: evalplus's instruct user turn (rewards.extract),
# Dream's ChatML with the default system turn, and a lockstep canvas R block + DEFAULT_DELIMITER + A block
# (the delimiter recipes/_grpo_7b.yaml decodes with: its options.delimiter is null, i.e. decoding.lockstep's
# default).


@dataclass(frozen=True)
class CanvasSpec:
    """Lengths of the lockstep canvas: ``r_len`` reasoning tokens, the delimiter, ``a_len`` answer tokens."""

    r_len: int = 28
    a_len: int = 48

    def __post_init__(self) -> None:
        if self.r_len < 1 or self.a_len < 1:
            raise ValueError(f"canvas blocks need r_len >= 1 and a_len >= 1, got {self.r_len}, {self.a_len}")


def user_message(task: DemoTask) -> str:
    """The user turn (evalplus's instruct wording around the HumanEval-shaped prompt)."""
    from rewards.extract import instruct_messages

    return instruct_messages(task.prompt)[0]["content"]


def prompt_text(tokenizer: Any, task: DemoTask) -> str:
    """Full prompt text: ChatML with Dream's default system turn, ending in the opened assistant turn."""
    from decoding.tokenizer import build_chat_prompt

    return build_chat_prompt(tokenizer, user_message(task))


def completion_text(task: DemoTask) -> str:
    """The target completion as the reward reads it (R text + delimiter + A text, the rollout's reward text);
    scoring it must pass every test."""
    return f"{task.reasoning()}{DEFAULT_DELIMITER}{task.answer_code()}```"


def canvas_targets(tokenizer: Any, task: DemoTask, canvas: CanvasSpec, buggy: bool = False
                   ) -> tuple[list[int], list[int], list[int]]:
    """Token ids of the R block, the delimiter and the A block of the target canvas.

    R = reasoning + end-of-text fill; A = code + closing fence + ``<|im_end|>`` + end-of-text fill (Dream ends
    a turn with ``<|im_end|>`` and pads with ``<|endoftext|>``). Raises ``ValueError`` if a block overflows.
    """
    eos = tokenizer.eos_token_id
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    r_ids = tokenizer.encode(task.reasoning(buggy), add_special_tokens=False) + [eos]
    a_ids = tokenizer.encode(task.answer_code(buggy) + "```", add_special_tokens=False) + [im_end]
    for name, ids, size in (("R", r_ids, canvas.r_len), ("A", a_ids, canvas.a_len)):
        if len(ids) > size:
            raise ValueError(f"{task.task_id}: the {name} target needs {len(ids)} tokens > "
                             f"{name.lower()}_len={size}")
    delimiter = delimiter_ids(tokenizer)
    return r_ids + [eos] * (canvas.r_len - len(r_ids)), delimiter, a_ids + [eos] * (canvas.a_len - len(a_ids))


def buggy_demonstrations(n_tasks: int, bug_rate: float, seed: int) -> list[bool]:
    """Which of ``n_tasks`` SFT demonstrations use the buggy expression: ``round(bug_rate * n_tasks)`` of
    them, chosen by ``seed`` (deterministic)."""
    if not 0.0 <= bug_rate <= 1.0:
        raise ValueError(f"bug_rate must be in [0, 1], got {bug_rate}")
    buggy = set(random.Random(f"bugs-{seed}").sample(range(n_tasks), round(bug_rate * n_tasks)))
    return [i in buggy for i in range(n_tasks)]


def sft_example(tokenizer: Any, task: DemoTask, canvas: CanvasSpec, buggy: bool = False) -> Any:
    """An :class:`rl.sft.SFTExample`: prompt ids + full canvas; the delimiter is fixed (never masked/scored).
    ``buggy``: the demonstration uses :meth:`DemoTask.buggy_expr` in both blocks."""
    from rl.sft import SFTExample

    r_ids, delimiter, a_ids = canvas_targets(tokenizer, task, canvas, buggy)
    prompt_ids = tokenizer.encode(prompt_text(tokenizer, task), add_special_tokens=False)
    scored = [True] * len(r_ids) + [False] * len(delimiter) + [True] * len(a_ids)
    return SFTExample(tuple(prompt_ids), tuple(r_ids + delimiter + a_ids), tuple(scored))


def reward_task(task: DemoTask) -> Any:
    """The task for the sandboxed reward worker (:class:`rewards.tasks.Task`, base tests = our tests)."""
    from rewards.tasks import Task

    return Task(
        task_id=task.task_id, prompt=task.prompt, entry_point=task.entry_point,
        base_inputs=[list(args) for args in task.inputs], expected_base=list(task.expected), dataset="custom",
    )
