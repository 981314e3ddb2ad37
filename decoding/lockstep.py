"""Lockstep Reasoning/Answer decoding: a commit policy over a two-block diffusion canvas.

Canvas = prompt (left-padded) + R block (``r_len`` masks) + fixed delimiter ids + A block (``a_len`` masks).
Both blocks are filled side by side with the same sampling core as
:func:`decoding.generate.diffusion_generate` (:func:`decoding.policy.decide_block` ->
:func:`decoding.sampling.sample_masked_rows`) and the same shifted logits.

* ``mode="gauss_seidel"``: each step commits in R first, then re-runs the model so A decides on logits that
  see the freshly committed R tokens (2 forwards per step while both blocks are unfinished).
* ``mode="jacobi"``: one forward per step; R and A decide from the same logits.
* Per block and step (``policy="threshold"``): commit masked positions whose probability-scale confidence is
  ``>= tau`` (``tau_r``/``tau_a``), at most ``max_fill_frac`` of the block's remaining masks, at least the
  most confident one, so a block finishes within its length in steps. ``policy="schedule"`` uses Dream's
  linear count per block instead (single block + schedule = ``diffusion_generate``). Committed tokens and the
  delimiter never change. The end-of-text guard (:func:`decoding.policy.end_guard`) keeps A from committing an
  early EOS run; ``early_exit`` ends a row once A is confident (ICE-style). ``use_cache`` reuses the prompt's
  K/V (refreshed every ``refresh_every`` forwards).

The trace (``commit_step``, ``commit_nfe``: the forward whose logits decided each token) is what a
trajectory-consistent RL estimator needs: the canvas seen by forward ``k`` has exactly the tokens with
``commit_nfe < k`` (plus the never-masked ones) unmasked.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from .fast import FIRST_LOGIT_MODES, CanvasForward
from .lockstep_trace import CanvasLayout, LockstepResult, Trace
from .policy import CommitRule, decide_block, schedule_counts, tail_after_end

MODES = ("gauss_seidel", "jacobi")
# One source of truth for what training, rollout checks, evaluation and the tools decode with: the delimiter
# below and the field defaults of LockstepCfg (the code-task canvas of recipes/_grpo_7b.yaml).
DEFAULT_DELIMITER = "\n```python\n"  # the A block of a code task opens a Python fence
POLICIES = ("threshold", "schedule")
Hook = Callable[[int | None, torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclass(frozen=True)
class LockstepCfg:
    """Knobs of the lockstep decoder (validated on construction; see the module doc for semantics).

    The defaults are the canvas the GRPO code recipes train with (they set only what differs) and what
    checkpoint evaluation decodes with when it finds no run config (``docs/evaluation.md``).

    ``max_steps``: schedule policy = its number of steps (required); threshold policy = an optional hard cap
    (default ``max(r_len, a_len)``, the termination bound); the last step commits everything left.
    Thresholds are on the probability scale for every ``alg`` (entropy: ``exp(-H)``). ``fixed_nfe``: run
    exactly ``step_bound`` steps with every forward of each step even when blocks are complete (under FSDP
    every rank must issue the same forwards; finished rows just commit nothing).
    """

    mode: str = "gauss_seidel"
    r_len: int = 128
    a_len: int = 320
    tau_r: float = 0.9
    tau_a: float = 0.9
    max_fill_frac: float = 1.0
    policy: str = "threshold"
    max_steps: int | None = None
    eps: float = 1e-3
    alg: str = "maskgit_plus"
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    eos_guard: bool = True
    eos_guard_r: bool = False
    min_content: int = 1
    eos_penalty: float = 0.0
    early_exit: float | None = None
    use_cache: bool = False
    refresh_every: int = 16
    first_logit: str = "overlap"
    fixed_nfe: bool = False

    def __post_init__(self) -> None:
        checks = [
            (self.mode in MODES, f"mode must be one of {MODES}, got {self.mode!r}"),
            (self.policy in POLICIES, f"policy must be one of {POLICIES}, got {self.policy!r}"),
            (self.r_len >= 0 and self.a_len > 0,
             f"need r_len >= 0 and a_len > 0, got {self.r_len}, {self.a_len}"),
            (self.max_steps is None or self.max_steps > 0,
             f"max_steps must be positive, got {self.max_steps}"),
            (self.policy != "schedule" or self.max_steps is not None, "policy='schedule' needs max_steps"),
            (self.early_exit is None or 0 < self.early_exit <= 1,
             f"early_exit must be in (0, 1], got {self.early_exit}"),
            (self.refresh_every > 0, f"refresh_every must be positive, got {self.refresh_every}"),
            (self.first_logit in FIRST_LOGIT_MODES[:2],
             f"first_logit must be 'overlap' or 'last_logit', got {self.first_logit!r}"),
            (self.min_content >= 0, f"min_content must be >= 0, got {self.min_content}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.rule("r", 0), self.rule("a", 0)  # validate alg, thresholds, max_fill_frac

    def rule(self, block: str, eos_token_id: int, valid_vocab_size: int | None = None) -> CommitRule:
        """The :class:`CommitRule` of block ``"r"`` or ``"a"``."""
        guarded = self.eos_guard if block == "a" else self.eos_guard_r
        return CommitRule(
            alg=self.alg, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
            threshold=self.tau_a if block == "a" else self.tau_r, max_fill_frac=self.max_fill_frac,
            end_ids=(eos_token_id,) if guarded else (), min_content=self.min_content,
            eos_penalty=self.eos_penalty if block == "a" else 0.0, penalty_id=eos_token_id,
            valid_vocab_size=valid_vocab_size,
        )

    @property
    def step_bound(self) -> int:
        """Steps after which every block is complete."""
        return self.max_steps if self.max_steps is not None else max(self.r_len, self.a_len)


def resolve_options(options: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """(``LockstepCfg`` keyword arguments, delimiter text) from recipe-style options: null values and a
    missing or null ``delimiter`` take this module's defaults, so recipes can name a key (overridable from the
    command line) without restating its value."""
    kwargs = {k: v for k, v in options.items() if v is not None and k != "delimiter"}
    return kwargs, str(options.get("delimiter") or DEFAULT_DELIMITER)


def delimiter_ids(tokenizer, text: str = DEFAULT_DELIMITER) -> list[int]:
    """Token ids of the fixed R/A delimiter text (no special tokens added)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if not ids:
        raise ValueError("the delimiter text encodes to no tokens")
    return ids


def build_canvas(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    cfg: LockstepCfg,
    delimiter_ids: Sequence[int],
    mask_token_id: int,
) -> tuple[torch.Tensor, torch.Tensor | None, CanvasLayout]:
    """``prompt + [mask]*r_len + delimiter + [mask]*a_len`` for every row, its key mask and layout."""
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be a non-empty [B, P] tensor, got shape {tuple(input_ids.shape)}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must match input_ids "
                         f"{tuple(input_ids.shape)}")
    delim = torch.as_tensor(list(delimiter_ids), dtype=input_ids.dtype, device=input_ids.device)
    if bool((input_ids == mask_token_id).any()) or bool((delim == mask_token_id).any()):
        raise ValueError("prompt and delimiter must not contain the mask token")
    batch = input_ids.shape[0]
    layout = CanvasLayout(prompt_len=input_ids.shape[1], r_len=cfg.r_len, delim_len=len(delim),
                          a_len=cfg.a_len)
    masks = input_ids.new_full((batch, cfg.r_len), mask_token_id)
    x = torch.cat([input_ids, masks, delim[None].expand(batch, -1),
                   masks.new_full((batch, cfg.a_len), mask_token_id)], 1)
    full_mask = None
    if attention_mask is not None:
        full_mask = torch.cat([attention_mask,
                               attention_mask.new_ones(batch, layout.total - layout.prompt_len)], 1)
    return x, full_mask, layout


class _Decoder:
    """One lockstep run: owns the canvas, the forward engine and the trace."""

    def __init__(
        self, x: torch.Tensor, layout: CanvasLayout, cfg: LockstepCfg, mask_token_id: int, eos_token_id: int,
        fwd: CanvasForward | None = None, logits_hook: Hook | None = None,
        valid_vocab_size: int | None = None, generator: torch.Generator | None = None,
    ) -> None:
        self.x, self.layout, self.cfg = x, layout, cfg
        self.mask_id, self.eos_id = mask_token_id, eos_token_id
        self.fwd, self.logits_hook = fwd, logits_hook
        self.rules = {b: cfg.rule(b, eos_token_id, valid_vocab_size) for b in ("r", "a")}
        self.generator = generator
        self.trace = Trace(x, layout)
        self.latest_x0 = torch.full_like(x, mask_token_id)
        self.latest_prob = torch.full(x.shape, float("-inf"), device=x.device)
        self.since_refresh = 0
        self.nfe_index = -1

    def open_blocks(self, names: Sequence[str]) -> list[str]:
        """The named blocks that still hold a mask in some row."""
        return [b for b in names if self.layout.span(b)[1] > self.layout.span(b)[0]
                and bool((self.x[:, slice(*self.layout.span(b))] == self.mask_id).any())]

    def forward(self, step: int, names: Sequence[str]) -> tuple[torch.Tensor, int]:
        """Shifted logits covering the blocks ``names`` (the whole canvas when a logits hook is set)."""
        lo, hi = (self.layout.prompt_len, self.layout.total) if self.logits_hook else self.layout.cover(names)
        refresh = self.fwd.nfe == 0 or self.since_refresh >= self.cfg.refresh_every
        self.since_refresh = 1 if refresh else self.since_refresh + 1
        logits = self.fwd.predict(self.x, lo, hi, refresh=refresh, window_start=self.layout.prompt_len)
        self.nfe_index = self.fwd.nfe - 1
        if self.logits_hook is not None:
            logits = self.logits_hook(step, self.x, logits)
        return logits, lo

    def decide(self, step: int, name: str, logits: torch.Tensor, offset: int, final: bool) -> None:
        lo, hi = self.layout.span(name)
        n_commit = None
        if self.cfg.policy == "schedule" and not final:
            n_commit = schedule_counts((self.x[:, lo:hi] == self.mask_id).sum(-1), step, self.cfg.max_steps,
                                       self.cfg.eps)
        dec = decide_block(
            self.x, logits[:, lo - offset : hi - offset], lo, hi, self.rules[name], self.mask_id,
            n_commit=n_commit, commit_all=final, generator=self.generator,
        )
        self.latest_x0[:, lo:hi] = torch.where(dec.prob > float("-inf"), dec.x0, self.mask_id)
        self.latest_prob[:, lo:hi] = dec.prob
        self.apply(step, lo, hi, dec.commit, dec.x0, dec.prob)
        if bool(dec.ended.any()):
            tail = tail_after_end(self.x, dec.ended, lo, hi, self.mask_id)
            self.apply(step, lo, hi, tail, torch.full_like(dec.x0, self.eos_id), torch.ones_like(dec.prob))

    def apply(self, step: int, lo: int, hi: int, commit: torch.Tensor, x0: torch.Tensor,
              prob: torch.Tensor) -> None:
        commit = commit & (self.x[:, lo:hi] == self.mask_id)
        self.x[:, lo:hi] = torch.where(commit, x0, self.x[:, lo:hi])
        self.trace.record(lo, hi, commit, step, self.nfe_index, prob)

    def early_exit(self, step: int) -> None:
        """ICE-style exit: once the still-masked A positions are confident on average (this step's scores),
        commit them all; once A is complete, finish R at once from this step's proposals."""
        a_lo, a_hi = self.layout.span("a")
        a_masked = self.x[:, a_lo:a_hi] == self.mask_id
        prob = self.latest_prob[:, a_lo:a_hi].clamp(min=0.0)
        mean = (prob * a_masked).sum(-1) / a_masked.sum(-1).clamp(min=1)
        sure = a_masked.any(-1) & (mean >= self.cfg.early_exit)
        if bool(sure.any()):
            bulk = a_masked & sure[:, None]
            self.apply(step, a_lo, a_hi, bulk, self.latest_x0[:, a_lo:a_hi], prob)
            ended = bulk & (self.x[:, a_lo:a_hi] == self.eos_id)
            if self.rules["a"].end_ids and bool(ended.any()):
                tail = tail_after_end(self.x, ended, a_lo, a_hi, self.mask_id)
                self.apply(step, a_lo, a_hi, tail, torch.full_like(bulk, self.eos_id, dtype=self.x.dtype),
                           torch.ones_like(prob))
        r_lo, r_hi = self.layout.span("r")
        a_done = ~(self.x[:, a_lo:a_hi] == self.mask_id).any(-1)
        finish_r = (self.x[:, r_lo:r_hi] == self.mask_id) & a_done[:, None]
        finish_r &= self.latest_x0[:, r_lo:r_hi] != self.mask_id
        if bool(finish_r.any()):
            self.apply(step, r_lo, r_hi, finish_r, self.latest_x0[:, r_lo:r_hi],
                       self.latest_prob[:, r_lo:r_hi])
        self.trace.mark_exit(step, sure | finish_r.any(-1))

    def step(self, step: int) -> None:
        final = step == self.cfg.step_bound - 1
        blocks = tuple(b for b in ("r", "a") if self.layout.span(b)[1] > self.layout.span(b)[0])
        phases = [blocks] if self.cfg.mode == "jacobi" else [(b,) for b in blocks]
        for names in phases:
            open_names = self.open_blocks(names)
            if not open_names and not self.cfg.fixed_nfe:
                continue
            logits, offset = self.forward(step, open_names or names)
            for name in open_names:
                self.decide(step, name, logits, offset, final)
        if self.cfg.early_exit is not None:
            self.early_exit(step)


@torch.no_grad()
def lockstep_sample(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    cfg: LockstepCfg | None = None,
    *,
    delimiter_ids: Sequence[int] = (),
    mask_token_id: int | None = None,
    eos_token_id: int | None = None,
    logits_hook: Hook | None = None,
    tokens_hook: Hook | None = None,
    valid_vocab_size: int | None = None,
    generator: torch.Generator | None = None,
    num_samples: int = 1,
    progress: bool = False,
) -> LockstepResult:
    """Decode the R and A blocks after each (left-padded) prompt row; returns a :class:`LockstepResult`.

    ``delimiter_ids`` sit between R and A (e.g. :func:`delimiter_ids` of :data:`DEFAULT_DELIMITER`).
    ``num_samples`` repeats every prompt row that many times (``repeat_interleave``: the samples of a prompt
    are adjacent rows), for RL groups; sample with ``temperature > 0``.
    Hooks follow Dream's signature: ``logits_hook(step, x, logits) -> logits`` with ``logits`` covering the
    completion canvas ``x[:, P:]`` (called once per forward: twice per Gauss-Seidel step);
    ``tokens_hook(step, x, logits) -> x`` once with ``(None, x, None)`` and after every step (positions it
    unmasks are recorded as committed at that step). ``valid_vocab_size`` (opt-in) bans the mask id and ids
    beyond the tokenizer; ``generator`` drives every random draw (None = torch's global RNG).
    """
    cfg = cfg or LockstepCfg()
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if num_samples > 1:
        input_ids = input_ids.repeat_interleave(num_samples, dim=0)
        attention_mask = None if attention_mask is None \
            else attention_mask.repeat_interleave(num_samples, dim=0)
    mask_token_id = model.config.mask_token_id if mask_token_id is None else mask_token_id
    eos_token_id = model.config.eos_token_id if eos_token_id is None else eos_token_id
    x, full_mask, layout = build_canvas(input_ids, attention_mask, cfg, delimiter_ids, mask_token_id)
    t0 = time.perf_counter()
    fwd = CanvasForward(model, full_mask, cache="prefix" if cfg.use_cache else "none",
                        first_logit=cfg.first_logit)
    dec = _Decoder(x, layout, cfg, mask_token_id, eos_token_id, fwd, logits_hook, valid_vocab_size, generator)
    if tokens_hook is not None:
        dec.x = tokens_hook(None, dec.x, None)
    steps = 0
    for step in tqdm(range(cfg.step_bound), desc="lockstep", disable=not progress, leave=False):
        if not cfg.fixed_nfe and not bool((dec.x[:, layout.prompt_len :] == mask_token_id).any()):
            break
        dec.step(step)
        if tokens_hook is not None:
            before = dec.x.clone()
            dec.x = tokens_hook(step, dec.x, None)
            dec.trace.record_hook(before, dec.x, step, dec.nfe_index, mask_token_id)
        dec.trace.snapshot(dec.x, mask_token_id)
        steps = step + 1
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    return dec.trace.result(dec.x, nfe=dec.fwd.nfe, steps=steps, wall_s=time.perf_counter() - t0)


class LockstepTokensHook:
    """The lockstep commit policy (Jacobi) as Dream's ``generation_tokens_hook_func``.

    Use: ``hook = LockstepTokensHook(P, cfg, delimiter_ids, mask_id, eos_id, steps)``, then
    ``diffusion_generate(model, ids, mask, max_new_tokens=hook.layout.total - P, steps=steps,
    generation_tokens_hook_func=hook)``. At ``(None, x, None)`` it writes the delimiter; at every step it
    discards the sampler's own commits and applies the lockstep rule to the shifted (hooked) logits of the
    canvas it returned last time. ``hook.result(nfe)`` gives the trace. Rows need ``steps >= cfg.step_bound``
    to finish by the threshold rule; the last step commits everything left.
    """

    def __init__(
        self, prompt_len: int, cfg: LockstepCfg, delimiter_ids: Sequence[int], mask_token_id: int,
        eos_token_id: int, steps: int, valid_vocab_size: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if cfg.mode != "jacobi" or cfg.use_cache:
            raise ValueError("the tokens-hook form runs inside diffusion_generate: mode='jacobi', "
                             "use_cache=False")
        self.cfg, self.steps = cfg, steps
        self.delim = list(delimiter_ids)
        self.layout = CanvasLayout(prompt_len, cfg.r_len, len(self.delim), cfg.a_len)
        self.mask_id, self.eos_id = mask_token_id, eos_token_id
        self.valid_vocab_size, self.generator = valid_vocab_size, generator
        self.dec: _Decoder | None = None
        self.t0 = time.perf_counter()

    def __call__(self, step: int | None, x: torch.Tensor, logits: torch.Tensor | None) -> torch.Tensor:
        if step is None:
            if x.shape[1] != self.layout.total:
                raise ValueError(f"canvas has {x.shape[1]} positions, the layout needs {self.layout.total}")
            x = x.clone()
            lo, hi = self.layout.span("delim")
            x[:, lo:hi] = torch.as_tensor(self.delim, dtype=x.dtype, device=x.device)
            self.dec = _Decoder(x, self.layout, self.cfg, self.mask_id, self.eos_id,
                                valid_vocab_size=self.valid_vocab_size, generator=self.generator)
            self.t0 = time.perf_counter()
            return x.clone()
        dec = self.dec
        if not bool((dec.x[:, self.layout.prompt_len :] == self.mask_id).any()):
            return dec.x.clone()
        final = step >= min(self.steps, self.cfg.step_bound) - 1
        dec.nfe_index = step
        for name in dec.open_blocks(("r", "a")):
            dec.decide(step, name, logits, 0, final)
        if self.cfg.early_exit is not None:
            dec.early_exit(step)
        dec.trace.snapshot(dec.x, self.mask_id)
        self.steps_run = step + 1
        return dec.x.clone()

    def result(self) -> LockstepResult:
        """Trace of the run (``nfe`` = sampler steps run: one forward each)."""
        steps = getattr(self, "steps_run", 0)
        return self.dec.trace.result(self.dec.x, nfe=steps, steps=steps, wall_s=time.perf_counter() - self.t0)


# ``python -m decoding.lockstep`` = ``python -m decoding.generate --sampler lockstep``
if __name__ == "__main__":
    from decoding.generate import main

    raise SystemExit(main(prog="python -m decoding.lockstep", sampler="lockstep"))
