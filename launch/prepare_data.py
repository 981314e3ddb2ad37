"""Write verl's parquet prompt files: a code-RL corpus to train on with a benchmark to validate on, or the
demo tasks.

    python launch/prepare_data.py --corpus acecode --val humaneval --out runs/he/data [--data-files F ...]
    python launch/prepare_data.py --dataset demo --out runs/demo/data [--train-tasks 3000 --val-tasks 48]

``--corpus``: the training rows are the tasks of a public code-RL corpus (:mod:`corpora`: hub or local files,
hard subset, decontamination against HumanEval+/MBPP+, drop counts in ``corpus_report.json`` next to the
parquet files); their ``data_source`` is the corpus name and their ``reward_model.ground_truth`` the row's
tests, ``rewards.code_tests.CodeTests.to_json()``. The validation file holds every task of ``--val``
(HumanEval+, HumanEval+ Mini or MBPP+), prompted exactly as the evaluation prompts them.

``--dataset humaneval|humaneval_mini|mbpp`` (no recipe uses it): training rows taken from the benchmark
itself, the first tasks, validation the last ones. It exists for machinery tests; a score on a benchmark
trained on measures memorisation.

Why: verl's ``RLHFDataset`` reads parquet rows with a chat ``prompt`` (list of messages), ``data_source``
(routes the reward), ``reward_model.ground_truth`` and ``extra_info``. Our reward (:mod:`rl.verl.reward`)
scores a completion by EvalPlus ``task_id``, so the task id travels as ground truth. Rows are in task order;
the validation file holds the last ``val_tasks`` tasks (disjoint from training unless there are too few
tasks).

Tasks are loaded by :func:`rewards.tasks.load_tasks` (same files and task ids the reward scores against;
``--evalplus-dir`` points it at a folder of EvalPlus release files).

``demo``: the synthetic tasks of :mod:`cpu_demo.tasks` (train split -> ``train.parquet``, held-out split ->
``val.parquet``), rendered with the same user turn as the EvalPlus rows. Their rows have ``data_source``
``demo`` and carry the generator settings (``extra_info.demo_spec``, JSON) so each reward worker regenerates
the same tests.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

# name -> (rewards dataset, EvalPlus Mini variant)
DATASETS: dict[str, tuple[str, bool]] = {
    "humaneval": ("humaneval", False),
    "humaneval_mini": ("humaneval", True),
    "mbpp": ("mbpp", False),
}
DEMO_DATASET = "demo"


from launch.recipes import RecipeError  # noqa: E402  (a data-preparation problem the user can fix)


def load_tasks(dataset: str, evalplus_dir: str | None = None) -> list[Any]:
    """EvalPlus tasks (:class:`rewards.tasks.Task`: ``task_id``, ``prompt``, ``entry_point``) in release
    order."""
    from rewards.tasks import load_tasks as load_reward_tasks

    if dataset not in DATASETS:
        raise RecipeError(f"unknown dataset {dataset!r}; choose one of {sorted([*DATASETS, DEMO_DATASET])}")
    name, mini = DATASETS[dataset]
    try:
        tasks, _key = load_reward_tasks(name, mini=mini, data_dir=evalplus_dir)
    except (OSError, ValueError) as error:
        raise RecipeError(f"cannot load {dataset} tasks: {error}") from None
    return list(tasks.values())


def task_row(task: Any, dataset: str, index: int, split: str) -> dict[str, Any]:
    """One verl parquet row for an EvalPlus task (evalplus's instruct wording, see :mod:`rewards.extract`)."""
    from rewards.extract import instruct_messages

    name, mini = DATASETS[dataset]
    return {
        "data_source": name,
        # the user turn; the chat template opens the assistant turn
        "prompt": instruct_messages(task.prompt)[:1],
        "ability": "code",
        "reward_model": {"style": "rule", "ground_truth": task.task_id},
        "extra_info": {"task_id": task.task_id, "entry_point": task.entry_point, "index": index,
                       "split": split,
                       "mini": mini},
    }


def split_tasks(tasks: list[Any], train_tasks: int, val_tasks: int) -> tuple[list[Any], list[Any]]:
    """Validation = the last ``val_tasks`` tasks; training = the first ``train_tasks`` of the rest (0 =
    all)."""
    if train_tasks < 0 or val_tasks < 0:
        raise RecipeError("train_tasks and val_tasks must be >= 0")
    if val_tasks >= len(tasks):
        raise RecipeError(f"val_tasks={val_tasks} leaves no training task (dataset has {len(tasks)})")
    val = tasks[len(tasks) - val_tasks:] if val_tasks else []
    rest = tasks[: len(tasks) - val_tasks]
    train = rest[:train_tasks] if train_tasks else rest
    return train, val or train[:1]


def demo_spec(train_tasks: int, val_tasks: int, settings: dict[str, Any] | None = None) -> Any:
    """The :class:`cpu_demo.tasks.DemoTaskSpec` of a demo data set: ``settings`` (recipe
    ``lockstep.data.demo``) with the split sizes (``train_tasks`` / ``val_tasks``; 0 = the spec's default)."""
    from cpu_demo.tasks import DemoTaskSpec

    if train_tasks < 0 or val_tasks < 0:
        raise RecipeError("train_tasks and val_tasks must be >= 0")
    values = dict(settings or {})
    if train_tasks:
        values["n_train"] = train_tasks
    if val_tasks:
        values["n_heldout"] = val_tasks
    try:
        return DemoTaskSpec.from_dict(values)
    except (TypeError, ValueError) as error:
        raise RecipeError(f"demo tasks: {error}") from None


def demo_row(task: Any, spec_json: str, index: int, split: str) -> dict[str, Any]:
    """One verl parquet row for a demo task (same user turn as :func:`task_row`)."""
    from rewards.extract import instruct_messages

    return {
        "data_source": DEMO_DATASET,
        "prompt": instruct_messages(task.prompt)[:1],
        "ability": "code",
        "reward_model": {"style": "rule", "ground_truth": task.task_id},
        "extra_info": {"task_id": task.task_id, "entry_point": task.entry_point, "index": index,
                       "split": split,
                       "demo_spec": spec_json},
    }


def corpus_row(item: Any, index: int, split: str) -> dict[str, Any]:
    """One verl parquet row for a corpus task (:class:`corpora.TrainingTask`): the tests travel as ground
    truth."""
    from corpora import prompt_messages

    return {
        "data_source": item.task.corpus,
        "prompt": prompt_messages(item.task.text),
        "ability": "code",
        "reward_model": {"style": "rule", "ground_truth": item.tests.to_json()},
        "extra_info": {"task_id": item.task_id, "index": index, "split": split, "source": item.task.source},
    }


def write_corpus_files(selection: Any, val_dataset: str, out_dir: str | Path, *,
                       count_tokens: Any = None, max_prompt_tokens: int | None = None,
                       evalplus_dir: str | None = None) -> tuple[Path, Path]:
    """``train.parquet`` (the corpus tasks of ``selection``, a :class:`corpora.CorpusSelection`),
    ``val.parquet`` (every task of the benchmark ``val_dataset``) and ``corpus_report.json`` (provenance, drop
    counts) under ``out_dir``. ``count_tokens`` (chat messages -> prompt tokens) with ``max_prompt_tokens``
    drops long prompts."""
    import json

    import pandas as pd

    from corpora import CorpusError, build_tasks

    if val_dataset not in DATASETS:
        raise RecipeError(f"unknown validation benchmark {val_dataset!r}; choose one of {sorted(DATASETS)}")
    val_tasks = load_tasks(val_dataset, evalplus_dir)
    try:
        train, report = build_tasks(selection, count_tokens=count_tokens, max_prompt_tokens=max_prompt_tokens)
    except CorpusError as error:
        raise RecipeError(str(error)) from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report["validation"] = {"benchmark": val_dataset, "tasks": len(val_tasks)}
    (out / "corpus_report.json").write_text(json.dumps(report, indent=1, default=str))
    paths = out / "train.parquet", out / "val.parquet"
    pd.DataFrame([corpus_row(t, i, "train") for i, t in enumerate(train)]).to_parquet(paths[0], index=False)
    pd.DataFrame([task_row(t, val_dataset, i, "val") for i, t in enumerate(val_tasks)]).to_parquet(paths[1],
                                                                                                    index=False)
    return paths


def write_parquet_files(dataset: str, out_dir: str | Path, train_tasks: int = 0, val_tasks: int = 0,
                        evalplus_dir: str | None = None,
                        demo: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``train.parquet`` and ``val.parquet`` under ``out_dir``; returns their paths.

    ``demo`` (only for ``dataset="demo"``): :class:`cpu_demo.tasks.DemoTaskSpec` fields (seed, operations,
    ...).
    """
    import pandas as pd

    if dataset == DEMO_DATASET:
        spec = demo_spec(train_tasks, val_tasks, demo)
        try:
            splits = spec.generate()
        except ValueError as error:
            raise RecipeError(f"demo tasks: {error}") from None
        spec_json = spec.to_json()
        tables = [(splits.train, "train"), (splits.heldout or splits.train[:1], "val")]
        rows = [[demo_row(t, spec_json, i, split) for i, t in enumerate(tasks)] for tasks, split in tables]
    else:
        tasks = load_tasks(dataset, evalplus_dir)
        train, val = split_tasks(tasks, train_tasks, val_tasks)
        rows = [[task_row(t, dataset, i, split) for i, t in enumerate(part)]
                for part, split in ((train, "train"), (val, "val"))]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "train.parquet", out / "val.parquet"
    for path, table in zip(paths, rows):
        pd.DataFrame(table).to_parquet(path, index=False)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--corpus", help="code-RL corpus to train on (corpora.CORPUS_NAMES), e.g. acecode")
    source.add_argument("--dataset", choices=sorted([*DATASETS, DEMO_DATASET]),
                        help="demo tasks, or (machinery tests only) a benchmark split into train/val")
    parser.add_argument("--out", required=True, help="output folder for train.parquet / val.parquet")
    parser.add_argument("--val", default="humaneval", choices=sorted(DATASETS),
                        help="--corpus: the benchmark validated on (all its tasks)")
    parser.add_argument("--data-files", nargs="+", default=None,
                        help="--corpus: local files instead of the hub")
    parser.add_argument("--revision", default=None, help="--corpus: hub revision (default: the corpus's pin)")
    parser.add_argument("--all-rows", action="store_true",
                        help="acecode: skip DiffuCoder's hard-subset filter")
    parser.add_argument("--max-rows", type=int, default=0, help="--corpus: first N tasks (0 = all)")
    parser.add_argument("--train-tasks", type=int, default=0,
                        help="first N training tasks (0 = all; demo: train split size, 0 = default)")
    parser.add_argument("--val-tasks", type=int, default=0,
                        help="last N tasks held out for validation (demo: held-out split size, 0 = default)")
    parser.add_argument("--demo-seed", type=int, default=None, help="demo only: task generator seed")
    parser.add_argument("--evalplus-dir", default=None,
                        help="folder with the EvalPlus release .jsonl.gz files")
    args = parser.parse_args(argv)
    try:
        if args.corpus:
            from corpora import CorpusSelection

            selection = CorpusSelection(args.corpus, tuple(args.data_files or ()), args.revision,
                                        hard_subset=not args.all_rows, max_rows=args.max_rows,
                                        evalplus_dir=args.evalplus_dir)
            train, val = write_corpus_files(selection, args.val, args.out, evalplus_dir=args.evalplus_dir)
        else:
            demo = {"seed": args.demo_seed} if args.demo_seed is not None else None
            train, val = write_parquet_files(args.dataset, args.out, args.train_tasks, args.val_tasks,
                                             args.evalplus_dir, demo=demo)
    except RecipeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {train} and {val}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
