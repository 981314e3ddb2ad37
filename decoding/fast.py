"""Fast diffusion decoding: block-wise KV-cached windows and confidence-threshold parallel commits.

Why: the reference sampler runs one full forward per step over prompt + canvas and commits a fixed count per
step. Here (Fast-dLLM-style, but batched with left padding) the canvas is decoded block by block; each block
starts with one *refresh* forward over the whole sequence that stores K/V in a :class:`DreamKVCache`, and the
block's later steps only forward a window: ``[s-1, N)`` (prefix cache) or ``[s-1, e)`` (dual cache, stale
suffix K/V). A masked block position is committed when its confidence clears ``threshold`` (at least the most
confident one per unfinished block and step, so a block of ``W`` positions takes at most ``W`` steps).

The shifted logit of the first window position (``[L0, L0, L1, ...]``: position i is predicted from i-1):
``first_logit="overlap"`` (default) starts each window one position early so that logit is recomputed every
step from the current tokens; ``"last_logit"`` (D2F) reuses the prediction of the block start made by the
block's refresh forward; ``"commit_first"`` commits the block start at the refresh step, like Fast-dLLM;
unlike Fast-dLLM (only that token in that forward) it also commits every other position above the threshold in
the same step, by the commit rule shared with the other samplers (:mod:`decoding.policy`).

The commit policy itself lives in :mod:`decoding.policy` (shared with the lockstep R/A decoder).

CLI (the same as ``python -m decoding.generate --sampler fast``)::

    python -m decoding.fast --model DIR --prompt "Write a function ..." [--max-new-tokens 256 --block-size 32
        --threshold 0.9 --cache prefix --first-logit overlap --refresh full --min-content 1 --dtype auto
        --device auto]
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .cache import DreamKVCache
from .model import padding_position_ids
from .policy import CommitRule, decide_block, tail_after_end

CACHE_MODES = ("none", "prefix", "dual")
FIRST_LOGIT_MODES = ("overlap", "last_logit", "commit_first")
REFRESH_MODES = ("full", "incremental")


# --------------------------------------------------------------------------------------------- forward
class CanvasForward:
    """Shifted logits for canvas positions ``[lo, hi)``, from a full or a KV-cached window forward.

    ``predict(x, lo, hi, refresh=True)`` runs a full forward (storing K/V when caching; with
    ``refresh_from > 0`` only ``[refresh_from, N)`` is recomputed and stored, the cache before it is kept);
    afterwards ``refresh=False`` forwards only the window (see module doc). Counts forwards in ``nfe``.
    ``lo >= 1`` always (the prompt is non-empty).

    Only the needed positions go through the LM head (decoder and head called separately), except in
    ``root_forward`` mode, which calls ``model(...)`` itself and slices its logits: needed when the root
    module has hooks of its own, e.g. FSDP2's ``fully_shard`` (auto-detected from DTensor parameters).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        attention_mask: torch.Tensor | None,
        cache: str = "none",
        first_logit: str = "overlap",
        compile: bool = False,
        root_forward: bool | None = None,
    ) -> None:
        if cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}")
        if first_logit not in FIRST_LOGIT_MODES:
            raise ValueError(f"first_logit must be one of {FIRST_LOGIT_MODES}, got {first_logit!r}")
        if root_forward is None:
            root_forward = any(type(p).__name__ == "DTensor" for p in model.parameters())
        self.root_forward = root_forward
        self.model = torch.compile(model, dynamic=True) if compile and root_forward else model
        self.decoder = model.get_decoder()
        self.lm_head = model.get_output_embeddings()
        if compile and not root_forward:
            self.decoder = torch.compile(self.decoder, dynamic=True)
        has_pad = attention_mask is not None and bool((attention_mask == 0).any())
        self.key_mask = attention_mask if has_pad else None
        self.position_ids = padding_position_ids(attention_mask) if has_pad else None
        self.cache_mode = cache
        self.overlap = first_logit == "overlap"
        num_layers = model.config.num_hidden_layers
        self.kv = None if cache == "none" else DreamKVCache(num_layers, capacity=None)
        self.last_logit: torch.Tensor | None = None
        self.nfe = 0

    def _logits(
        self, x: torch.Tensor, start: int, end: int, store: bool, picks: list[tuple[int, int]]
    ) -> list[torch.Tensor]:
        """Forward ``x[:, start:end]``; logits of the window-relative position ranges ``picks``."""
        self.nfe += 1
        kwargs = dict(
            input_ids=x[:, start:end], attention_mask=self.key_mask, kv_cache=self.kv, cache_start=start,
            store_kv=store,
            position_ids=None if self.position_ids is None else self.position_ids[:, start:end],
        )
        if self.root_forward:
            logits = self.model(**kwargs).logits
            return [logits[:, a:b] for a, b in picks]
        hidden = self.decoder(**kwargs)
        return [self.lm_head(hidden[:, a:b]) for a, b in picks]

    def predict(
        self, x: torch.Tensor, lo: int, hi: int, refresh: bool = False, window_start: int | None = None,
        refresh_from: int = 0,
    ) -> torch.Tensor:
        """Logits ``[B, hi-lo, V]`` predicting positions ``[lo, hi)`` of ``x`` (Dream's one-position shift).

        ``window_start`` (default ``lo``, ``<= lo``): first position a cached forward recomputes; the cache is
        trusted only before it (e.g. the prompt for the lockstep canvas, the committed prefix for a block).
        """
        window_start = lo if window_start is None else window_start
        if not 1 <= window_start <= lo:
            raise ValueError("position 0 cannot be predicted (Dream's shift): the prompt must be non-empty")
        n = x.shape[1]
        if refresh or self.kv is None:
            start = refresh_from if self.kv is not None and 0 < refresh_from < window_start else 0
            if self.kv is not None and start == 0:
                self.kv.crop(0)
            picks = [(lo - 1 - start, hi - 1 - start)]
            if not self.overlap:
                picks.append((window_start - 1 - start, window_start - start))
            out = self._logits(x, start, n, self.kv is not None, picks)
            if not self.overlap:
                self.last_logit = out[1][:, 0]
            return out[0]
        start = window_start - 1 if self.overlap else window_start
        end = n if self.cache_mode == "prefix" else hi
        if lo - 1 >= start:
            return self._logits(x, start, end, False, [(lo - 1 - start, hi - 1 - start)])[0]
        rest = self._logits(x, start, end, False, [(0, hi - lo - 1)])[0]
        return torch.cat([self.last_logit[:, None].to(rest.dtype), rest], dim=1)


# --------------------------------------------------------------------------------------------- fast path
@dataclass
class FastResult:
    """Output of :func:`fast_generate`.

    ``sequences [B, P+G]`` (prompt incl. left pads + completion); ``commit_step [B, P+G]`` = the step (global
    forward index) at which each completion position was committed, -1 for positions never masked; ``nfe`` =
    forwards run (shared by the batch); ``wall_s``; ``block_steps [num_blocks]`` steps spent per block.
    """

    sequences: torch.Tensor
    commit_step: torch.Tensor
    nfe: int
    wall_s: float
    prompt_len: int
    block_steps: list[int] = field(default_factory=list)

    def metrics(self, prefix: str = "fast/") -> dict[str, float]:
        """Scalar metrics for a W&B log (the caller logs them)."""
        gen = self.commit_step[:, self.prompt_len :]
        n_tokens = int((gen >= 0).sum())
        return {
            f"{prefix}nfe": float(self.nfe),
            f"{prefix}tokens_per_nfe": n_tokens / max(self.nfe, 1) / max(gen.shape[0], 1),
            f"{prefix}tokens_per_s": n_tokens / max(self.wall_s, 1e-9),
            f"{prefix}wall_s": self.wall_s,
        }


def _check_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, mask_token_id: int) -> None:
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be a non-empty [B, P] tensor, got shape {tuple(input_ids.shape)}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must match input_ids "
                         f"{tuple(input_ids.shape)}")
    if bool((input_ids == mask_token_id).any()):
        raise ValueError("the prompt contains the mask token; prompts must be fully given")


@torch.no_grad()
def fast_generate(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int,
    block_size: int = 32,
    threshold: float = 0.9,
    cache: str = "prefix",
    first_logit: str = "overlap",
    refresh: str = "full",
    alg: str = "maskgit_plus",
    temperature: float = 0.0,
    top_p: float | None = None,
    top_k: int | None = None,
    steps_per_block: int | None = None,
    eos_guard: bool = True,
    min_content: int = 1,
    eos_penalty: float = 0.0,
    mask_token_id: int | None = None,
    eos_token_id: int | None = None,
    valid_vocab_size: int | None = None,
    generator: torch.Generator | None = None,
    compile: bool = False,
    progress: bool = False,
) -> FastResult:
    """Block-wise threshold decoding of ``max_new_tokens`` tokens after a (left-padded) prompt batch.

    Blocks of ``block_size`` are decoded left to right, all rows in lockstep (a row whose block is done idles
    until the batch moves on). Per step, each masked position of the active block is scored with ``alg``
    (after temperature/top-p/top-k); every position with probability-scale score ``>= threshold`` is
    committed, and at least the top-1 of every unfinished row. ``steps_per_block`` caps the steps per block
    (the last one commits everything left). ``eos_guard``: end-of-text only at the leftmost masked position
    and after ``min_content`` generated tokens; once committed, the rest of the canvas is padded with
    end-of-text. ``cache``: ``"none"`` (full forward every step), ``"prefix"`` or ``"dual"``;
    ``first_logit``: see the module doc. ``refresh``: ``"full"`` (each block starts with a full forward, exact
    at that step) or ``"incremental"`` (it recomputes only from the previous block's start: the finished
    block's K/V are updated, earlier ones kept; cheaper, approximate). ``valid_vocab_size``/``generator`` as
    in ``diffusion_generate``; ``compile`` wraps the decoder in ``torch.compile(dynamic=True)``. Committed
    tokens never change. Returns :class:`FastResult`.
    """
    cfg = model.config
    mask_token_id = cfg.mask_token_id if mask_token_id is None else mask_token_id
    eos_token_id = cfg.eos_token_id if eos_token_id is None else eos_token_id
    _check_inputs(input_ids, attention_mask, mask_token_id)
    if max_new_tokens <= 0 or block_size <= 0:
        raise ValueError(f"max_new_tokens and block_size must be positive, got {max_new_tokens}, "
                         f"{block_size}")
    if steps_per_block is not None and steps_per_block <= 0:
        raise ValueError(f"steps_per_block must be positive, got {steps_per_block}")
    if refresh not in REFRESH_MODES:
        raise ValueError(f"refresh must be one of {REFRESH_MODES}, got {refresh!r}")
    rule = CommitRule(
        alg=alg, temperature=temperature, top_p=top_p, top_k=top_k, threshold=threshold,
        end_ids=(eos_token_id,) if eos_guard else (), min_content=min_content, eos_penalty=eos_penalty,
        penalty_id=eos_token_id, valid_vocab_size=valid_vocab_size,
    )
    batch, prompt_len = input_ids.shape
    total = prompt_len + max_new_tokens
    x = torch.cat([input_ids, input_ids.new_full((batch, max_new_tokens), mask_token_id)], dim=1)
    full_mask = None
    if attention_mask is not None:
        full_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, max_new_tokens)], dim=1)
    fwd = CanvasForward(model, full_mask, cache=cache, first_logit=first_logit, compile=compile)
    commit_step = torch.full_like(x, -1)
    block_steps: list[int] = []
    step = 0
    t0 = time.perf_counter()
    previous = 0
    for lo in tqdm(range(prompt_len, total, block_size), desc="blocks", disable=not progress, leave=False):
        hi = min(lo + block_size, total)
        limit = steps_per_block or (hi - lo)
        used = 0
        while used < limit and bool((x[:, lo:hi] == mask_token_id).any()):
            logits = fwd.predict(x, lo, hi, refresh=used == 0,
                                 refresh_from=previous if refresh == "incremental" else 0)
            dec = decide_block(
                x, logits, lo, hi, rule, mask_token_id, commit_all=used == limit - 1,
                force_first=first_logit == "commit_first" and used == 0, content_offset=lo - prompt_len,
                generator=generator,
            )
            x[:, lo:hi] = torch.where(dec.commit, dec.x0, x[:, lo:hi])
            commit_step[:, lo:hi] = torch.where(dec.commit, step, commit_step[:, lo:hi])
            if bool(dec.ended.any()):
                tail = tail_after_end(x, dec.ended, lo, total, mask_token_id)
                x[:, lo:] = torch.where(tail, eos_token_id, x[:, lo:])
                commit_step[:, lo:] = torch.where(tail, step, commit_step[:, lo:])
            used += 1
            step += 1
        block_steps.append(used)
        previous = lo if used else previous
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    return FastResult(
        sequences=x, commit_step=commit_step, nfe=fwd.nfe, wall_s=time.perf_counter() - t0,
        prompt_len=prompt_len, block_steps=block_steps,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m decoding.fast`` = ``python -m decoding.generate --sampler fast`` (one CLI for all
    samplers)."""
    from .generate import main as generate_main

    return generate_main(argv, prog="python -m decoding.fast", sampler="fast")


if __name__ == "__main__":
    raise SystemExit(main())
