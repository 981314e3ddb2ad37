"""Canvas layout, commit trace and result of the lockstep R/A decoder (:mod:`decoding.lockstep`).

Kept apart from the controller so that RL code and the visualiser can use the result type without the
decoding loop. Every tensor is ``[B, N]`` over the whole canvas (prompt included) unless stated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

BLOCK_NAMES = ("prompt", "r", "delim", "a")


@dataclass(frozen=True)
class CanvasLayout:
    """Positions of the canvas: ``[0, P)`` prompt, then R, delimiter and A blocks (same for every row)."""

    prompt_len: int
    r_len: int
    delim_len: int
    a_len: int

    @property
    def total(self) -> int:
        return self.prompt_len + self.r_len + self.delim_len + self.a_len

    def span(self, name: str) -> tuple[int, int]:
        """``(lo, hi)`` of block ``"prompt"``, ``"r"``, ``"delim"`` or ``"a"``."""
        r_end = self.prompt_len + self.r_len
        a_start = r_end + self.delim_len
        spans = {"prompt": (0, self.prompt_len), "r": (self.prompt_len, r_end), "delim": (r_end, a_start),
                 "a": (a_start, self.total)}
        if name not in spans:
            raise ValueError(f"unknown block {name!r}; expected one of {BLOCK_NAMES}")
        return spans[name]

    def cover(self, names: Sequence[str]) -> tuple[int, int]:
        """Smallest ``(lo, hi)`` containing the named blocks."""
        spans = [self.span(n) for n in names]
        return min(s[0] for s in spans), max(s[1] for s in spans)

    def block_index(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Long ``[N]``: 0 prompt, 1 R, 2 delimiter, 3 A (index into :data:`BLOCK_NAMES`)."""
        out = torch.empty(self.total, dtype=torch.long, device=device)
        for i, name in enumerate(BLOCK_NAMES):
            lo, hi = self.span(name)
            out[lo:hi] = i
        return out


@dataclass
class LockstepResult:
    """Output of :func:`decoding.lockstep.lockstep_sample`.

    * ``sequences [B, N]``: prompt (with left pads) + R + delimiter + A.
    * ``commit_step [B, N]``: step at which each position was committed; -1 = never masked (prompt,
      delimiter).
    * ``commit_nfe [B, N]``: index of the forward whose logits decided the token (-1 never masked). The canvas
      seen by forward ``k`` = tokens with ``commit_nfe < k`` unmasked; in Gauss-Seidel, A commits of a step
      have a larger ``commit_nfe`` than the R commits of the same step.
    * ``commit_prob [B, N]``: probability-scale confidence at commit (nan = never masked; 1 for guard
      padding).
    * ``fill_r``, ``fill_a`` ``[steps, B]``: fraction of the block committed after each step.
    * ``exit_step [B]``: step of an early exit (-1 none). ``nfe``, ``steps``, ``wall_s`` as named.
    """

    sequences: torch.Tensor
    commit_step: torch.Tensor
    commit_nfe: torch.Tensor
    commit_prob: torch.Tensor
    layout: CanvasLayout
    nfe: int
    steps: int
    wall_s: float
    fill_r: torch.Tensor
    fill_a: torch.Tensor
    exit_step: torch.Tensor

    def block(self, name: str, values: torch.Tensor | None = None) -> torch.Tensor:
        """Slice ``values`` (default ``sequences``) to block ``name``."""
        lo, hi = self.layout.span(name)
        return (self.sequences if values is None else values)[:, lo:hi]

    @property
    def reasoning_ids(self) -> torch.Tensor:
        return self.block("r")

    @property
    def answer_ids(self) -> torch.Tensor:
        return self.block("a")

    def canvas_at(self, nfe_index: int, mask_token_id: int) -> torch.Tensor:
        """The canvas that forward ``nfe_index`` saw: tokens decided by earlier forwards, the rest masked.

        For trajectory-consistent RL replays (TraceRL-style): re-run the policy on ``canvas_at(k)`` and score
        the tokens with ``commit_nfe == k``.
        """
        seen = (self.commit_nfe == -1) | (self.commit_nfe < nfe_index)
        return torch.where(seen, self.sequences, torch.full_like(self.sequences, mask_token_id))

    def block_steps(self, name: str) -> torch.Tensor:
        """Per row, the number of steps until block ``name`` was complete (0 for an empty block)."""
        steps = self.block(name, self.commit_step)
        if steps.shape[1] == 0:
            return torch.zeros(steps.shape[0], dtype=torch.long, device=steps.device)
        return steps.max(-1).values + 1

    def texts(self, tokenizer) -> tuple[list[str], list[str]]:
        """(reasoning texts, answer texts), each cut at the first end-of-text / ``<|im_end|>``."""
        from .tokenizer import decode_completion

        reasoning = [decode_completion(tokenizer, row) for row in self.reasoning_ids]
        answers = [decode_completion(tokenizer, row) for row in self.answer_ids]
        return reasoning, answers

    def metrics(self, prefix: str = "lockstep/") -> dict[str, float]:
        """Scalars for W&B (logged by the caller): NFE, steps, throughput, per-block steps and fill rates."""
        committed = int((self.commit_step[:, self.layout.prompt_len :] >= 0).sum())
        batch = self.sequences.shape[0]
        r_steps, a_steps = self.block_steps("r").float(), self.block_steps("a").float()
        out = {
            "nfe": float(self.nfe),
            "steps": float(self.steps),
            "wall_s": self.wall_s,
            "tokens_per_s": committed / max(self.wall_s, 1e-9),
            "tokens_per_step": committed / batch / max(self.steps, 1),
            "tokens_per_nfe": committed / batch / max(self.nfe, 1),
            "r_steps_mean": r_steps.mean().item(),
            "a_steps_mean": a_steps.mean().item(),
            "r_tokens_per_step":
                self.layout.r_len / r_steps.clamp(min=1).mean().item() if self.layout.r_len else 0.0,
            "a_tokens_per_step": self.layout.a_len / a_steps.clamp(min=1).mean().item(),
            "early_exit_frac": (self.exit_step >= 0).float().mean().item(),
        }
        if self.steps:
            half = max(self.steps // 2 - 1, 0)
            out["a_fill_at_half"] = self.fill_a[half].mean().item()
            out["r_fill_at_half"] = self.fill_r[half].mean().item()
        return {prefix + k: v for k, v in out.items()}


class Trace:
    """Mutable commit trace of one run; :meth:`result` freezes it into a :class:`LockstepResult`."""

    def __init__(self, x: torch.Tensor, layout: CanvasLayout) -> None:
        self.layout = layout
        self.commit_step = torch.full_like(x, -1)
        self.commit_nfe = torch.full_like(x, -1)
        self.commit_prob = torch.full(x.shape, float("nan"), device=x.device)
        self.exit_step = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
        self.fill_r: list[torch.Tensor] = []
        self.fill_a: list[torch.Tensor] = []

    def record(self, lo: int, hi: int, commit: torch.Tensor, step: int, nfe: int, prob: torch.Tensor) -> None:
        """Record commits ``commit [B, hi-lo]`` made at ``step`` from forward ``nfe``."""
        self.commit_step[:, lo:hi] = torch.where(commit, step, self.commit_step[:, lo:hi])
        self.commit_nfe[:, lo:hi] = torch.where(commit, nfe, self.commit_nfe[:, lo:hi])
        self.commit_prob[:, lo:hi] = torch.where(commit, prob.float(), self.commit_prob[:, lo:hi])

    def record_hook(self, before: torch.Tensor, after: torch.Tensor, step: int, nfe: int,
                    mask_token_id: int) -> None:
        """Positions a tokens hook unmasked count as committed at ``step`` (confidence 1)."""
        pinned = (before == mask_token_id) & (after != mask_token_id)
        self.record(0, before.shape[1], pinned, step, nfe, torch.ones_like(self.commit_prob))

    def mark_exit(self, step: int, rows: torch.Tensor) -> None:
        self.exit_step = torch.where(rows & (self.exit_step < 0), step, self.exit_step)

    def snapshot(self, x: torch.Tensor, mask_token_id: int) -> None:
        """Append the fill fraction of R and A after a step."""
        for name, store in (("r", self.fill_r), ("a", self.fill_a)):
            lo, hi = self.layout.span(name)
            filled = (x[:, lo:hi] != mask_token_id).float()
            store.append(filled.mean(-1) if hi > lo else torch.ones(x.shape[0], device=x.device))

    def result(self, x: torch.Tensor, nfe: int, steps: int, wall_s: float) -> LockstepResult:
        def stack(values: list[torch.Tensor]) -> torch.Tensor:
            return torch.stack(values) if values else torch.zeros(0, x.shape[0], device=x.device)

        return LockstepResult(
            sequences=x, commit_step=self.commit_step, commit_nfe=self.commit_nfe,
            commit_prob=self.commit_prob, layout=self.layout, nfe=nfe, steps=steps, wall_s=wall_s,
            fill_r=stack(self.fill_r), fill_a=stack(self.fill_a), exit_step=self.exit_step,
        )
