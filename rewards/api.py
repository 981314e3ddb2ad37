"""Public scoring API: ``score_batch`` / :class:`EvalPlusScorer` turn (task_id, completion) pairs into
rewards.

Every item gets exactly one :class:`RewardResult`. Sandbox infrastructure failures are retried by the pool; if
they persist the result has status "infra_error" and (by default) :class:`SandboxInfraError` is raised after
the whole batch finished, carrying all results, so that an infrastructure problem is never mistaken for
reward 0.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, as_completed
from typing import Any

from tqdm import tqdm

from .expected import ensure_expected
from .extract import ExtractedCode, build_solution
from .judge import TaskExpected, judge
from .sandbox import Job, SandboxConfig, SandboxPool
from .tasks import Task, load_tasks
from .warm import WarmCache

_ALL_SETS = ("base", "plus")
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """Scoring settings. Use :meth:`rl` (tight CPU limits, default) or :meth:`evaluation` (EvalPlus parity:
    per-test limit max(1 s, 4 x reference time), per-set cap 60 s + 1, stop a set at its first error).

    reward: "binary" (1 if every test of ``test_sets`` passes) or "pass_ratio"; final reward =
    correctness + format_weight * format_reward, or ``no_code_reward`` when no code could be extracted.
    """

    test_sets: tuple[str, ...] = ("base", "plus")
    reward: str = "binary"
    format_weight: float = 0.0
    no_code_reward: float = 0.0
    completion_format: str = "auto"
    answer_marker: str | None = None
    sanitize: bool = True
    mini: bool = False
    noextreme: bool = False
    min_time_limit_s: float = 0.5
    time_limit_factor: float = 4.0
    set_time_cap_s: float = 60.0
    sample_time_cap_s: float | None = 8.0
    wall_factor: float = 4.0
    stop_on_error: bool = False
    workers: int | None = None
    sandbox: SandboxConfig = SandboxConfig()
    on_infra_error: str = "raise"
    keep_test_details: bool = False
    progress: bool = False
    cache_dir: str | None = None
    data_dir: str | None = None

    def __post_init__(self) -> None:
        if self.reward not in ("binary", "pass_ratio"):
            raise ValueError(f"reward must be 'binary' or 'pass_ratio', got {self.reward!r}")
        if not self.test_sets or any(s not in _ALL_SETS for s in self.test_sets):
            raise ValueError(f"test_sets must be a non-empty subset of {_ALL_SETS}, got {self.test_sets!r}")
        if self.on_infra_error not in ("raise", "mark"):
            raise ValueError(f"on_infra_error must be 'raise' or 'mark', got {self.on_infra_error!r}")

    @classmethod
    def rl(cls, **overrides: Any) -> RewardConfig:
        return cls(**overrides)

    @classmethod
    def evaluation(cls, **overrides: Any) -> RewardConfig:
        base = dict(min_time_limit_s=1.0, time_limit_factor=4.0, set_time_cap_s=60.0, sample_time_cap_s=None,
                    stop_on_error=True)
        return cls(**{**base, **overrides})


@dataclasses.dataclass
class RewardResult:
    """Outcome for one (task_id, completion). ``base_status``/``plus_status`` use evalplus's words
    ("pass" | "fail" | "timeout", None when that set was not run)."""

    task_id: str
    reward: float | None
    pass_ratio: float
    all_pass: bool
    format_reward: float
    status: str
    base_status: str | None
    plus_status: str | None
    n_tests: int
    n_passed: int
    details: dict = dataclasses.field(default_factory=dict)


class SandboxInfraError(RuntimeError):
    """Raised after a batch when some items could not be scored because the sandbox machinery kept failing."""

    def __init__(self, message: str, results: list[RewardResult]) -> None:
        super().__init__(message)
        self.results = results


def collect_results(pending: dict[Future, tuple[int, Any, Any]], results: list[RewardResult | None],
                    finish: Callable[[Any, Any, Any], RewardResult], cfg: RewardConfig) -> list[RewardResult]:
    """Fill ``results[idx]`` with ``finish(item, extracted, raw)`` as each pool job completes (a bar with
    ``cfg.progress``); ``pending`` maps a job's future to ``(idx, item, extracted)``. Every scorer ends a
    batch here so that infrastructure failures are handled one way: with ``on_infra_error="raise"`` a batch
    with such samples raises :class:`SandboxInfraError` carrying all results, so that no caller records an
    infrastructure failure as a verdict."""
    bar = tqdm(total=len(pending), desc="scoring", unit="sample", disable=not cfg.progress)
    for fut in as_completed(pending):
        idx, item, ext = pending.pop(fut)
        results[idx] = finish(item, ext, fut.result())
        bar.update()
    bar.close()
    failed = [r for r in results if r is not None and r.status == "infra_error"]
    if failed and cfg.on_infra_error == "raise":
        raise SandboxInfraError(f"{len(failed)} of {len(results)} samples could not be scored (sandbox "
                                f"infrastructure): {failed[0].details.get('infra_error')}", results)
    return results  # type: ignore[return-value]


def _extract(completion: str, task: Task, cfg: RewardConfig) -> ExtractedCode:
    """The program to run for one completion; a completion the extractor cannot handle is that sample's
    "syntax_error", never an exception that would evict it (or the whole batch) from an RL step."""
    try:
        return build_solution(completion, task.prompt, task.entry_point,
                              completion_format=cfg.completion_format, answer_marker=cfg.answer_marker,
                              sanitize=cfg.sanitize)
    except (Exception, RecursionError, MemoryError) as exc:  # noqa: BLE001
        log.warning("code extraction failed for %s: %s: %s", task.task_id, type(exc).__name__, exc)
        return ExtractedCode(None, "syntax_error")


class EvalPlusScorer:
    """Holds tasks, their expected outputs and a warm :class:`SandboxPool`; reuse it across batches (RL
    steps)."""

    def __init__(self, tasks: dict[str, Task] | Sequence[Task] | None = None, *, dataset: str | None = None,
                 cfg: RewardConfig | None = None, key: str | None = None) -> None:
        """``key`` names the expected-output cache of caller-supplied ``tasks`` (default: a hash of the
        tasks); pass the key returned by :func:`rewards.tasks.load_tasks` when the tasks came from there."""
        self.cfg = cfg or RewardConfig()
        if tasks is None:
            if dataset is None:
                raise ValueError("give a dataset name ('humaneval', 'mbpp', 'humaneval-base') or tasks")
            tasks, key = load_tasks(dataset, mini=self.cfg.mini, noextreme=self.cfg.noextreme,
                                    data_dir=self.cfg.data_dir)
        else:
            tasks = {t.task_id: t for t in tasks} if not isinstance(tasks, dict) else dict(tasks)
            key = key or "custom-" + hashlib.md5("".join(sorted(t.fingerprint() for t in tasks.values()))
                                                 .encode()).hexdigest()
        self.tasks, self.key = tasks, key
        from pathlib import Path

        self.expected: dict[str, TaskExpected] = ensure_expected(
            tasks, key, workers=self.cfg.workers, sandbox=self.cfg.sandbox,
            directory=Path(self.cfg.cache_dir) if self.cfg.cache_dir else None, progress=True)
        self.pool = SandboxPool(self.cfg.workers, self.cfg.sandbox)
        self._inputs: dict[str, tuple[bytes, list[list[float]], float]] = {}

    @property
    def isolation(self) -> str:
        return self.pool.isolation

    def _task_job_parts(self, task: Task) -> tuple[bytes, list[list[float]], float]:
        cached = self._inputs.get(task.task_id)
        if cached is None:
            cfg, exp = self.cfg, self.expected[task.task_id]
            limits, budget = [], 1.0
            for name in cfg.test_sets:
                ref = exp.ref_times[_ALL_SETS.index(name)]
                lim = [max(cfg.min_time_limit_s, cfg.time_limit_factor * t) for t in ref]
                limits.append(lim)
                budget += min(cfg.set_time_cap_s, sum(lim)) + 1.0
            if cfg.sample_time_cap_s is not None:
                budget = min(budget, cfg.sample_time_cap_s)
            cached = (task.inputs_bytes(cfg.test_sets), limits, budget)
            self._inputs[task.task_id] = cached
        return cached

    def expected_cost(self, task: Task) -> float:
        """CPU seconds the reference solution took on the configured test sets (a sample's likely cost)."""
        times = self.expected[task.task_id].ref_times
        return float(sum(sum(times[_ALL_SETS.index(name)]) for name in self.cfg.test_sets))

    def _submit(self, task: Task, code: str) -> Future:
        inputs, limits, budget = self._task_job_parts(task)
        exp = self.expected[task.task_id]
        needs_values = bool(task.atol) or task.oracle in ("find_zero", "sum_div", "surface_area",
                                                          "digit_distance") \
            or any(exp.values[_ALL_SETS.index(s)] for s in self.cfg.test_sets)
        # wall clock only stops samples that do not compute (sleep, block): generous, so that a busy machine
        # never turns an honest sample's CPU work into a timeout; CPU limits are enforced by the zygote
        job = Job(code=code, entry_point=task.entry_point, inputs=inputs, limits=limits, cpu_budget_s=budget,
                  wall_budget_s=budget * self.cfg.wall_factor + 2.0, mode=task.child_mode,
                  values=needs_values, stop_on_error=self.cfg.stop_on_error, load_limit_s=min(budget, 10.0))
        return self.pool.submit(job)

    def score(self, items: Iterable[tuple[str, str]]) -> list[RewardResult]:
        """Score (task_id, completion) pairs; results are in input order."""
        items = list(items)
        results: list[RewardResult | None] = [None] * len(items)
        runnable: list[tuple[int, Task, Any]] = []
        for idx, (task_id, completion) in enumerate(items):
            task = self.tasks.get(task_id)
            if task is None:
                raise ValueError(f"unknown task_id {task_id!r} for dataset key {self.key}")
            ext = _extract(completion, task, self.cfg)
            if ext.status != "ok":
                results[idx] = self._no_code(task, ext)
            else:
                runnable.append((idx, task, ext))
        # longest first (by the reference solution's time on the configured tests): a batch ends with its
        # slowest sample, so heavy samples queued last would leave the other workers idle (stable sort: ties
        # keep order)
        runnable.sort(key=lambda item: -self.expected_cost(item[1]))
        pending: dict[Future, tuple[int, Task, Any]] = {
            self._submit(task, ext.code): (idx, task, ext) for idx, task, ext in runnable}
        return collect_results(pending, results, self._result, self.cfg)

    def _no_code(self, task: Task, ext: Any) -> RewardResult:
        n = sum(len(task.base_inputs if s == "base" else task.plus_inputs) for s in self.cfg.test_sets)
        return RewardResult(task.task_id, self.cfg.no_code_reward, 0.0, False, 0.0, ext.status,
                            None, None, n, 0, {"extraction": ext.source})

    def _result(self, task: Task, ext: Any, raw: Any) -> RewardResult:
        cfg = self.cfg
        fmt = 1.0 if ext.well_formed else 0.0
        n = sum(len(task.base_inputs if s == "base" else task.plus_inputs) for s in cfg.test_sets)
        if raw.infra_error:
            return RewardResult(task.task_id, None, 0.0, False, fmt, "infra_error", None, None, n, 0,
                                {"infra_error": raw.infra_error, "attempts": raw.attempts})
        v = judge(task, cfg.test_sets, self.expected[task.task_id], raw)
        n_passed = sum(sum(p) for p in v.passed)
        ratio = n_passed / n if n else 0.0
        all_pass = v.status == "ok" and all(s == "pass" for s in v.set_status)
        correctness = (1.0 if all_pass else 0.0) if cfg.reward == "binary" else ratio
        statuses = dict(zip(cfg.test_sets, v.set_status))
        details = {"errors": v.errors, "extraction": ext.source, "cpu_s": raw.status.get("cpu"),
                   "deadline": raw.status.get("deadline"), "limit_kill": raw.status.get("limit"),
                   "signal": raw.status.get("sig"),
                   "attempts": raw.attempts, "isolation": self.pool.isolation}
        if v.detail:
            details["detail"] = v.detail
        if cfg.keep_test_details:
            details["passed"] = dict(zip(cfg.test_sets, v.passed))
        return RewardResult(task.task_id, correctness + cfg.format_weight * fmt, ratio, all_pass, fmt,
                            v.status, statuses.get("base"), statuses.get("plus"), n, n_passed, details)

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> EvalPlusScorer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


MAX_CACHED_SCORERS = 4
_WARM: WarmCache[EvalPlusScorer] = WarmCache(MAX_CACHED_SCORERS)


def get_scorer(dataset: str = "humaneval", cfg: RewardConfig | None = None,
               tasks: dict[str, Task] | Sequence[Task] | None = None) -> EvalPlusScorer:
    """A process-wide cached EvalPlusScorer (its pool stays warm between calls; :mod:`rewards.warm`)."""
    cfg = cfg or RewardConfig()
    if tasks is not None:
        tlist = list(tasks.values()) if isinstance(tasks, dict) else list(tasks)
        key: Any = ("custom", cfg, tuple(sorted(t.fingerprint() for t in tlist)))
    else:
        key = (dataset, cfg)
    return _WARM.get(key, lambda: EvalPlusScorer(tasks, dataset=None if tasks is not None else dataset,
                                                 cfg=cfg))


def score_batch(items: Sequence[tuple[str, str]], *, dataset: str = "humaneval",
                cfg: RewardConfig | None = None,
                tasks: dict[str, Task] | Sequence[Task] | None = None) -> list[RewardResult]:
    """Score (task_id, completion) pairs against ``dataset`` ("humaneval" = HumanEval+, "mbpp" = MBPP+,
    "humaneval-base") or caller-supplied ``tasks``. The scorer (tasks, expected outputs, warm sandbox pool) is
    cached per (dataset, cfg) for the life of the process."""
    return get_scorer(dataset, cfg, tasks).score(items)


def close_all() -> None:
    """Stop every cached scorer's sandbox workers (also run at exit)."""
    _WARM.close_all()
