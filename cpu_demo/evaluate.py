"""Held-out pass rate of a Dream policy on the demo tasks: lockstep R/A decoding + the sandboxed reward
worker.

Why: the demo's claims (SFT gives a low but non-zero pass rate, GRPO raises it) must be measured with the same
sampler and the same reward path as training, not with an in-process ``exec``. Contract:
:func:`evaluate_pass_rate` decodes every task once (greedy by default, so the number is reproducible), reads
each canvas the way the VERL rollout's reward does (R text + delimiter + A text) and scores it with
:func:`rewards.api.score_batch` on the task's own tests. It returns scalar metrics plus the per-task samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from cpu_demo.tasks import CanvasSpec, DemoTask, prompt_text, reward_task
from decoding.lockstep import DEFAULT_DELIMITER


@dataclass(frozen=True)
class DemoEvalConfig:
    """Decoding and scoring settings of the held-out evaluation (``lockstep`` = extra LockstepCfg fields)."""

    canvas: CanvasSpec = CanvasSpec()
    batch_size: int = 64
    mode: str = "gauss_seidel"
    tau: float = 0.9
    alg: str = "maskgit_plus"
    temperature: float = 0.0
    seed: int = 0
    lockstep: dict[str, Any] = field(default_factory=dict)

    def lockstep_cfg(self) -> Any:
        from decoding.lockstep import LockstepCfg

        fields = {"mode": self.mode, "r_len": self.canvas.r_len, "a_len": self.canvas.a_len,
                  "tau_r": self.tau, "tau_a": self.tau, "alg": self.alg, "temperature": self.temperature}
        return LockstepCfg(**{**fields, **self.lockstep})  # ``lockstep`` may refine any field (e.g. tau_a)


@dataclass
class DemoEvalResult:
    """``pass_rate`` (all tests pass), ``well_formed`` (code extracted from the A block's fence and parses),
    ``mean_nfe`` per batch, and per task the completion text and its reward status."""

    pass_rate: float
    well_formed: float
    mean_nfe: float
    completions: list[str]
    statuses: list[str]
    passed: list[bool]

    def metrics(self, prefix: str = "heldout/") -> dict[str, float]:
        return {f"{prefix}pass_rate": self.pass_rate, f"{prefix}well_formed": self.well_formed,
                f"{prefix}nfe": self.mean_nfe}


def decode_completions(
    model: torch.nn.Module, tokenizer: Any, tasks: Sequence[DemoTask], cfg: DemoEvalConfig,
    progress: bool = False
) -> tuple[list[str], float]:
    """Lockstep-decode every task (:mod:`evals.generation`, one generator stream seeded with ``cfg.seed``);
    return the completion texts (R + delimiter + A, as the rollout's reward reads them) and the mean NFE per
    batch."""
    import dataclasses

    from evals.generation import generate_in_batches

    prompts = [prompt_text(tokenizer, t) for t in tasks]
    generator = torch.Generator().manual_seed(cfg.seed)
    texts: list[str] = []
    nfes: list[int] = []
    for _, out in generate_in_batches(model, tokenizer, prompts, "lockstep",
                                      dataclasses.asdict(cfg.lockstep_cfg()), cfg.batch_size,
                                      delimiter=DEFAULT_DELIMITER, generator=generator,
                                      desc="eval" if progress else None):
        texts.extend(out.completions)
        nfes.append(int(out.nfe))
    return texts, sum(nfes) / max(len(nfes), 1)


def score_completions(tasks: Sequence[DemoTask], completions: Sequence[str],
                      reward_cfg: Any = None) -> list[Any]:
    """Score completions against their tasks' tests in the sandbox
    (:class:`rewards.api.RewardResult` list)."""
    from rewards.api import RewardConfig, score_batch

    if len(tasks) != len(completions):
        raise ValueError(f"{len(tasks)} tasks but {len(completions)} completions")
    cfg = reward_cfg or RewardConfig(test_sets=("base",))
    return score_batch(
        [(t.task_id, c) for t, c in zip(tasks, completions)], cfg=cfg, tasks=[reward_task(t) for t in tasks]
    )


def evaluate_pass_rate(
    model: torch.nn.Module, tokenizer: Any, tasks: Sequence[DemoTask], cfg: DemoEvalConfig | None = None,
    reward_cfg: Any = None, progress: bool = False,
) -> DemoEvalResult:
    """Decode and score ``tasks`` (see module docstring)."""
    if not tasks:
        raise ValueError("no tasks to evaluate")
    cfg = cfg or DemoEvalConfig()
    completions, mean_nfe = decode_completions(model, tokenizer, tasks, cfg, progress)
    results = score_completions(tasks, completions, reward_cfg)
    passed = [bool(r.all_pass) for r in results]
    return DemoEvalResult(
        pass_rate=sum(passed) / len(passed),
        well_formed=sum(r.format_reward > 0 for r in results) / len(results),
        mean_nfe=mean_nfe, completions=list(completions), statuses=[r.status for r in results], passed=passed,
    )
