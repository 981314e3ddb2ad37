"""HumanEval+/MBPP+ side of checkpoint evaluation: task selection, prompts, chunk scoring, pass@k and result
files.

Why separate from the entry point: this is the part that must match EvalPlus exactly — the sample file format
(``{"task_id", "solution"}`` lines), the result file (``eval`` / ``base_status`` / ``plus_status`` /
``pass_at_k``), "plus" meaning base *and* plus tests pass, and the unbiased pass@k estimator
``1 - C(n-c, k) / C(n, k)`` averaged over tasks (Chen et al. 2021) reported only for ``k <= n``.
Tasks, prompt format, code extraction and the sandboxed judge all come from :mod:`rewards`.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from evals.code import store


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one task with ``c`` correct out of ``n`` samples (``k <= n``)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_pass_at_k(correct_per_task: dict[str, list[bool]], ks: list[int]) -> dict[str, float]:
    """``{"pass@k": mean over tasks}`` for each k that every task has enough samples for."""
    if not correct_per_task:
        return {}
    n_min = min(len(v) for v in correct_per_task.values())
    out = {}
    for k in sorted(set(ks)):
        if 1 <= k <= n_min:
            values = [pass_at_k(len(v), sum(v), k) for v in correct_per_task.values()]
            out[f"pass@{k}"] = sum(values) / len(values)
    return out


@dataclass
class CodeTasks:
    """The selected tasks of one evaluation: prompt parts and the (task_id, sample_idx) items.

    ``prompts[task_id] = (user message, assistant prefix)``: the chat prompt is the user turn followed by the
    opened assistant turn plus the prefix (evalplus's "Below is a Python script ... ```python" or lockstep's
    "[R] "), and the stored completion starts with that prefix so code extraction sees the opened fence.
    """

    dataset: str
    dataset_key: str
    tasks: dict[str, Any]  # task_id -> rewards.tasks.Task
    prompts: dict[str, tuple[str, str]]
    items: list[store.SampleKey]

    @classmethod
    def load(cls, cfg: DictConfig) -> CodeTasks:
        """Load HumanEval+/MBPP+ via rewards, keep ``dataset.task_ids`` or the first ``dataset.limit``
        tasks."""
        from rewards.tasks import load_tasks

        mini = bool(cfg.dataset.get("mini", False))
        if cfg.task == "mbpp" and mini:
            raise ValueError("MBPP+ has no Mini variant: set dataset.mini=false")
        all_tasks, key = load_tasks(cfg.task, mini=mini)
        ids = list(all_tasks)
        if cfg.dataset.task_ids:
            wanted = [str(t) for t in cfg.dataset.task_ids]
            unknown = [t for t in wanted if t not in all_tasks]
            if unknown:
                raise ValueError(f"unknown task ids for {cfg.task}: {unknown[:5]}")
            ids = wanted
        if cfg.dataset.limit is not None:
            if int(cfg.dataset.limit) < 1:
                raise ValueError(f"dataset.limit must be >= 1, got {cfg.dataset.limit}")
            ids = ids[: int(cfg.dataset.limit)]
        n = int(cfg.generation.n_samples)
        if n < 1:
            raise ValueError(f"generation.n_samples must be >= 1, got {n}")
        tasks = {t: all_tasks[t] for t in ids}
        prompts = {t: prompt_parts(task.prompt, marked_lockstep(cfg),
                                   training=cfg.generation.sampler == "lockstep")
                   for t, task in tasks.items()}
        items = [(t, s) for t in ids for s in range(n)]
        return cls(cfg.task, key, tasks, prompts, items)


def prompt_parts(task_prompt: str, lockstep: bool, training: bool = False) -> tuple[str, str]:
    """(user message, assistant prefix) in the rewards package's evalplus-style instruct format.

    ``training``: the GRPO prompt (``launch/prepare_data.py``: the user turn only, the R block opens the
    assistant turn), what a lockstep decoder with the training delimiter was trained on. ``lockstep`` (wins):
    the marked ``[R]``/``[A]`` format, for a delimiter that carries the ``[A]`` marker."""
    from rewards.extract import instruct_messages, instruct_prompt

    if lockstep:  # "...Think in the [R] block, then give only the final code in the [A] block.\n[R] "
        text = instruct_prompt(task_prompt, lockstep=True)
        cut = text.rfind("[R]")
        return text[:cut], text[cut:]
    user, assistant = instruct_messages(task_prompt)
    return user["content"], "" if training else assistant["content"]


ANSWER_MARKER = "[A]"


def marked_lockstep(cfg: DictConfig) -> bool:
    """Lockstep with a delimiter carrying the ``[A]`` marker: the marked prompt format and answer extraction.
    The training delimiter (``decoding.lockstep.DEFAULT_DELIMITER``) has none: the A block is a python
    fence."""
    gen = cfg.generation
    return gen.sampler == "lockstep" and ANSWER_MARKER in str(gen.get("delimiter") or "")


def reward_config(cfg: DictConfig) -> Any:
    """EvalPlus-parity scoring settings (+ ``scoring.reward`` overrides); lockstep answers follow ``[A]``."""
    from rewards.api import RewardConfig
    from rewards.sandbox import SandboxConfig

    reward = cfg.scoring.get("reward")
    overrides = OmegaConf.to_container(reward, resolve=True) if reward is not None else {}
    if isinstance(overrides.get("sandbox"), dict):
        overrides["sandbox"] = SandboxConfig(**overrides["sandbox"])
    if "test_sets" in overrides:
        overrides["test_sets"] = tuple(overrides["test_sets"])
    marker = ANSWER_MARKER if marked_lockstep(cfg) else None
    try:
        return RewardConfig.evaluation(mini=bool(cfg.dataset.get("mini", False)), answer_marker=marker,
                                       **overrides)
    except TypeError as err:  # unknown key
        raise ValueError(f"scoring.reward: {err}") from None


class SandboxRowScorer:
    """A warm rewards :class:`~rewards.api.EvalPlusScorer` over the selected tasks, created on first use."""

    def __init__(self, cfg: DictConfig, tasks: CodeTasks) -> None:
        self.cfg, self.tasks = cfg, tasks
        self.reward_cfg = reward_config(cfg)
        self._scorer: Any = None

    def __call__(self, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
        """Score rows -> (score rows for the samples that got a verdict, number left unscored by infra
        errors)."""
        from rewards.api import EvalPlusScorer, SandboxInfraError
        from rewards.extract import build_solution

        if self._scorer is None:
            self._scorer = EvalPlusScorer(self.tasks.tasks, cfg=self.reward_cfg)
        try:
            results = self._scorer.score([(r["task_id"], r["completion"]) for r in rows])
        except SandboxInfraError as err:  # never record an infrastructure failure as a verdict
            results = err.results
        rc = self.reward_cfg
        out = []
        for row, res in zip(rows, results):
            if res.status == "infra_error":
                continue
            task = self.tasks.tasks[row["task_id"]]
            ext = build_solution(row["completion"], task.prompt, task.entry_point,
                                 completion_format=rc.completion_format, answer_marker=rc.answer_marker,
                                 sanitize=rc.sanitize)
            out.append({"task_id": row["task_id"], "sample_idx": row["sample_idx"],
                        "solution": ext.code or "", "base_status": res.base_status or "fail",
                        "plus_status": res.plus_status or "fail", "status": res.status,
                        "n_passed": res.n_passed, "n_tests": res.n_tests})
        return out, len(rows) - len(out)

    def close(self) -> None:
        if self._scorer is not None:
            self._scorer.close()
            self._scorer = None


def speed(generations: list[dict[str, Any]]) -> dict[str, float]:
    """Decoding speed over all batches (sum over batches: per-device throughput when several GPUs ran)."""
    batches: dict[str, dict[str, Any]] = {}
    tokens = 0
    for row in generations:
        tokens += int(row.get("num_tokens", 0))
        batches.setdefault(row["batch_id"], row)
    seconds = sum(float(b["batch_seconds"]) for b in batches.values())
    canvas = sum(int(b.get("batch_canvas_tokens", 0)) for b in batches.values())
    if seconds <= 0:
        return {}
    return {"gen_seconds": round(seconds, 3), "samples_per_s": len(generations) / seconds,
            "tokens_per_s": tokens / seconds, "canvas_tokens_per_s": canvas / seconds,
            "mean_tokens": tokens / max(len(generations), 1)}


def finalize_code_eval(cfg: DictConfig, tasks: CodeTasks, out_dir: Path) -> dict[str, Any]:
    """Write samples.jsonl, samples_eval_results.json and summary.json once every item is scored.

    Raises RuntimeError naming the missing samples otherwise (the caller asks the user to re-run).
    """
    scores = store.read_scores(out_dir)
    generations = store.read_generations(out_dir)
    missing = [k for k in tasks.items if k not in scores]
    if missing:
        raise RuntimeError(f"{len(missing)} sample(s) are not scored yet (e.g. {missing[:3]}); "
                           "re-run to resume")
    per_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for key in tasks.items:
        per_task[key[0]].append(scores[key])
    base = {t: [r["base_status"] == "pass" for r in rows] for t, rows in per_task.items()}
    plus = {t: [r["base_status"] == "pass" and r["plus_status"] == "pass" for r in rows]
            for t, rows in per_task.items()}
    ks = [int(k) for k in (cfg.scoring.k if OmegaConf.is_list(cfg.scoring.k) else [cfg.scoring.k])]
    pass_k = {"base": mean_pass_at_k(base, ks), "plus": mean_pass_at_k(plus, ks)}
    write_evalplus_files(out_dir, tasks, per_task, pass_k)
    timing = speed([generations[k] for k in tasks.items if k in generations])
    row = {f"{name}_{split}": value for split, values in pass_k.items() for name, value in values.items()}
    gen = cfg.generation
    kwargs = OmegaConf.to_container(gen[gen.sampler], resolve=True)
    row.update({"num_tasks": len(per_task), "n_samples": int(gen.n_samples), "sampler": gen.sampler,
                "steps": kwargs.get("steps", kwargs.get("max_steps")),
                "temperature": kwargs.get("temperature"), "max_new_tokens": kwargs.get("max_new_tokens"),
                "dataset_key": tasks.dataset_key,
                **{k: round(v, 4) if isinstance(v, float) else v for k, v in timing.items()}})
    summary = {"pass_at_k": pass_k, "speed": timing, "row": row,
               "statuses": dict(Counter(scores[k].get("status", "ok") for k in tasks.items))}
    store.write_json_atomic(out_dir / "summary.json", summary)
    return summary


def write_evalplus_files(out_dir: Path, tasks: CodeTasks, per_task: dict[str, list[dict[str, Any]]],
                         pass_k: dict[str, dict[str, float]]) -> None:
    """``samples.jsonl`` (evalplus sample format) and ``samples_eval_results.json`` (evalplus result
    format)."""
    lines = []
    evals: dict[str, list[dict[str, Any]]] = {}
    for task_id, rows in per_task.items():
        evals[task_id] = []
        for row in rows:
            lines.append({"task_id": task_id, "solution": row["solution"]})
            evals[task_id].append({"task_id": task_id, "solution": row["solution"],
                                   "base_status": row["base_status"], "plus_status": row["plus_status"],
                                   "base_fail_tests": [], "plus_fail_tests": []})
    journal = store.Journal(out_dir / "samples.jsonl.tmp")
    journal.path.unlink(missing_ok=True)
    journal.append(lines)
    journal.close()
    journal.path.replace(out_dir / "samples.jsonl")
    store.write_json_atomic(out_dir / "samples_eval_results.json", {
        "date": datetime.now().strftime("%Y-%m-%d %H:%M"), "hash": tasks.dataset_key, "eval": evals,
        "pass_at_k": pass_k})
