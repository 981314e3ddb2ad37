"""Tests of the synthetic demo task family (cpu_demo/tasks.py)."""

from __future__ import annotations

import ast
import json

import pytest

from cpu_demo.tasks import OPERATIONS, generate_demo_tasks, run_reference


def test_generation_is_deterministic_and_seed_dependent() -> None:
    a = generate_demo_tasks(seed=3, n_train=200, n_heldout=20)
    b = generate_demo_tasks(seed=3, n_train=200, n_heldout=20)
    c = generate_demo_tasks(seed=4, n_train=200, n_heldout=20)
    assert a == b
    assert [t.prompt for t in a.train] != [t.prompt for t in c.train]


def test_splits_are_disjoint_and_heldout_names_unseen() -> None:
    splits = generate_demo_tasks(seed=0, n_train=1500, n_heldout=64)
    assert len(splits.train) == 1500 and len(splits.heldout) == 64
    train_keys = {t.key for t in splits.train}
    assert len(train_keys) == 1500
    assert not train_keys & {t.key for t in splits.heldout}
    assert not {t.prompt for t in splits.train} & {t.prompt for t in splits.heldout}
    train_names = {t.entry_point for t in splits.train}
    assert not train_names & {t.entry_point for t in splits.heldout}
    train_words = {w for name in train_names for w in name.split("_")}
    assert all(w in train_words for t in splits.heldout for w in t.entry_point.split("_"))


def test_family_covers_every_operation_kind() -> None:
    splits = generate_demo_tasks(seed=0, n_train=600, n_heldout=0)
    assert {t.op for t in splits.train} == {op.name for op in OPERATIONS}


def test_tasks_are_consistent_humaneval_shaped_functions() -> None:
    for task in generate_demo_tasks(seed=1, n_train=100, n_heldout=10).train:
        assert task.prompt.startswith(f"def {task.entry_point}(")
        ast.parse(task.prompt + "    pass\n")
        assert task.solution.splitlines()[0] == task.prompt.splitlines()[0]
        assert task.solution.endswith(f"    return {task.return_expr}\n")
        assert list(task.expected) == run_reference(task.solution, task.entry_point, task.inputs)
        assert len({repr(e) for e in task.expected}) > 1, "tests must tell a constant answer apart"
        assert repr(task.expected[0]) in task.prompt  # the docstring example is the first test
        assert task.return_expr in task.reasoning()


def test_operation_subset_and_bad_arguments() -> None:
    splits = generate_demo_tasks(seed=0, n_train=30, n_heldout=5, operations=["add", "upper"])
    assert {t.op for t in splits.train + splits.heldout} <= {"add", "upper"}
    with pytest.raises(ValueError, match="unknown demo operations"):
        generate_demo_tasks(operations=["add", "fly"])
    with pytest.raises(ValueError, match="cannot draw"):
        generate_demo_tasks(n_train=10_000, n_heldout=0, operations=["square"])


def test_canvas_targets_follow_the_lockstep_layout(tiny_dream_dir) -> None:
    from cpu_demo.tasks import CanvasSpec, canvas_targets, prompt_text, sft_example
    from decoding.lockstep import DEFAULT_DELIMITER
    from decoding.tokenizer import load_tokenizer

    tok = load_tokenizer(tiny_dream_dir)
    task = generate_demo_tasks(seed=0, n_train=5, n_heldout=0).train[0]
    canvas = CanvasSpec(r_len=28, a_len=48)
    r_ids, delim, a_ids = canvas_targets(tok, task, canvas)
    assert len(r_ids) == 28 and len(a_ids) == 48
    assert delim == tok.encode(DEFAULT_DELIMITER, add_special_tokens=False)
    assert tok.decode(r_ids, skip_special_tokens=True) == task.reasoning()
    assert r_ids[-1] == tok.eos_token_id and a_ids[-1] == tok.eos_token_id
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.decode(a_ids[: a_ids.index(im_end)]) == task.solution + "```"
    example = sft_example(tok, task, canvas)
    assert list(example.completion_ids) == r_ids + delim + a_ids
    assert example.scored == tuple([True] * 28 + [False] * len(delim) + [True] * 48)
    assert tok.decode(example.prompt_ids).endswith("<|im_start|>assistant\n")
    assert task.prompt.strip() in prompt_text(tok, task)
    with pytest.raises(ValueError, match="r_len"):
        canvas_targets(tok, task, CanvasSpec(r_len=4, a_len=48))


def test_reference_solutions_pass_their_tests_in_the_real_sandbox() -> None:
    from cpu_demo.evaluate import score_completions
    from cpu_demo.tasks import completion_text

    splits = generate_demo_tasks(seed=0, n_train=400, n_heldout=16)
    one_per_op = list({t.op: t for t in splits.train}.values())
    tasks = one_per_op + splits.heldout
    results = score_completions(tasks, [completion_text(t) for t in tasks])
    assert [r.status for r in results] == ["ok"] * len(tasks)
    assert all(r.all_pass for r in results), [t.task_id for t, r in zip(tasks, results) if not r.all_pass]
    # a solution of another task with the same signature but another operation fails
    add = next(t for t in splits.train if t.op == "add")
    wrong = completion_text(add).replace(f"{add.arg} + {add.k}", f"{add.arg} - {add.k}")
    assert not score_completions([add], [wrong])[0].all_pass


def test_buggy_demonstrations_are_wrong_programs_in_the_same_layout(tiny_dream_dir) -> None:
    """The warm start's noisy demonstrations: every operation's bug is valid code with the task's own name and
    argument, fits the demo canvas, and fails the task's tests (almost always: a bug may coincide on 5
    inputs)."""
    from cpu_demo.tasks import BUGGY_EXPRS, DEMO_OPERATIONS, CanvasSpec, canvas_targets, sft_example
    from decoding.tokenizer import load_tokenizer

    assert set(BUGGY_EXPRS) == {op.name for op in OPERATIONS}
    tok = load_tokenizer(tiny_dream_dir)
    tasks = generate_demo_tasks(seed=0, n_train=600, n_heldout=0, operations=DEMO_OPERATIONS).train
    failing = 0
    for task in tasks:
        code = task.answer_code(buggy=True)
        assert code != task.solution and task.buggy_expr() in task.reasoning(buggy=True)
        ast.parse(code)
        try:
            failing += run_reference(code, task.entry_point, task.inputs) != list(task.expected)
        except IndexError:  # e.g. xs[0] of an empty list: a failing program too
            failing += 1
        r_ids, _, a_ids = canvas_targets(tok, task, CanvasSpec(r_len=18, a_len=32), buggy=True)
        assert tok.decode(r_ids, skip_special_tokens=True) == task.reasoning(buggy=True)
    assert failing >= 0.95 * len(tasks), failing
    clean, noisy = (sft_example(tok, tasks[0], CanvasSpec(18, 32)),
                    sft_example(tok, tasks[0], CanvasSpec(18, 32), True))
    assert clean.prompt_ids == noisy.prompt_ids and clean.scored == noisy.scored
    assert clean.completion_ids != noisy.completion_ids


def test_the_buggy_fraction_is_exact_and_seeded() -> None:
    from cpu_demo.tasks import buggy_demonstrations

    flags = buggy_demonstrations(1000, 0.7, seed=0)
    assert sum(flags) == 700 and flags == buggy_demonstrations(1000, 0.7, seed=0)
    assert flags != buggy_demonstrations(1000, 0.7, seed=1)
    assert not any(buggy_demonstrations(10, 0.0, seed=0)) and all(buggy_demonstrations(10, 1.0, seed=0))
    with pytest.raises(ValueError, match="bug_rate"):
        buggy_demonstrations(10, 1.5, seed=0)


def test_task_spec_round_trips_and_regenerates_the_same_tasks() -> None:
    from cpu_demo.tasks import DEMO_OPERATIONS, DemoTaskSpec, tasks_from_json

    spec = DemoTaskSpec.from_dict({"seed": 3, "n_train": 30, "n_heldout": 4, "operations": None})
    assert spec.operations == DEMO_OPERATIONS
    splits = spec.generate()
    tasks = tasks_from_json(spec.to_json())
    assert list(tasks) == [t.task_id for t in [*splits.train, *splits.heldout]]
    assert DemoTaskSpec.from_dict(json.loads(spec.to_json())) == spec
    assert {t.op for t in splits.train} <= set(DEMO_OPERATIONS)
    with pytest.raises(ValueError, match="unknown demo task settings"):
        DemoTaskSpec.from_dict({"seeed": 1})
