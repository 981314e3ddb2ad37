"""Held-out pass rate of a Dream policy on the demo tasks: lockstep R/A decoding + the sandboxed reward worker.

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
from tqdm.auto import tqdm

from cpu_demo.tasks import CanvasSpec, DemoTask, prompt_text, reward_task
from decoding.lockstep import DEFAULT_DELIMITER, delimiter_ids


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

        fields = {"mode": self.mode, "r_len": self.canvas.r_len, "a_len": self.canvas.a_len, "tau_r": self.tau,
                  "tau_a": self.tau, "alg": self.alg, "temperature": self.temperature}
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


@torch.no_grad()
def decode_completions(
    model: torch.nn.Module, tokenizer: Any, tasks: Sequence[DemoTask], cfg: DemoEvalConfig, progress: bool = False
) -> tuple[list[str], float]:
    """Lockstep-decode every task; return the compacted completion texts and the mean NFE per batch."""
    from decoding.lockstep import lockstep_sample
    from decoding.tokenizer import encode_prompts

    lockstep = cfg.lockstep_cfg()
    delimiter = delimiter_ids(tokenizer)
    generator = torch.Generator().manual_seed(cfg.seed)
    was_training = model.training
    model.eval()
    texts: list[str] = []
    nfes: list[int] = []
    starts = range(0, len(tasks), cfg.batch_size)
    for start in tqdm(starts, desc="eval", disable=not progress):
        chunk = tasks[start : start + cfg.batch_size]
        input_ids, attention_mask = encode_prompts(tokenizer, [prompt_text(tokenizer, t) for t in chunk])
        device = next(model.parameters()).device
        result = lockstep_sample(
            model, input_ids.to(device), attention_mask.to(device), lockstep, delimiter_ids=delimiter,
            mask_token_id=tokenizer.mask_token_id, eos_token_id=tokenizer.eos_token_id,
            valid_vocab_size=len(tokenizer), generator=generator,
        )
        reasonings, answers = result.texts(tokenizer)
        texts.extend(r + DEFAULT_DELIMITER + a for r, a in zip(reasonings, answers))
        nfes.append(result.nfe)
    model.train(was_training)
    return texts, sum(nfes) / max(len(nfes), 1)


def score_completions(tasks: Sequence[DemoTask], completions: Sequence[str], reward_cfg: Any = None) -> list[Any]:
    """Score completions against their tasks' tests in the sandbox (:class:`rewards.api.RewardResult` list)."""
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
