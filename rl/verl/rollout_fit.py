"""Device choice and decode-batch sizing of the Dream rollout server (``rl/verl/rollout.py``).

Why: the server keeps a full copy of the model on its GPU next to the training engine, and one decode batch of
``max_batch`` rows needs the forward's logits for the whole canvas window (``rows x window x vocabulary``;
152,064 ids for Dream-7B), the key/value cache of prompt + canvas, and the commit step's sampling scratch (at
most ~0.5x the block's logits since the sampler works in chunks, ``bench/bench_sampler_memory.py``). A
recipe's ``max_batch`` that fits an H200 can run an H100 out of memory, so the server shrinks it to what the
free memory of its device holds (:func:`fit_max_batch`, logged once). And a recipe that says ``cuda`` must not
silently decode a 7B on the CPU in fp32 when the worker finds no GPU (:func:`rollout_device`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)

# Recipe's trainer.device, exported to every worker by rl/verl/config.py:prepare_runtime.
DEVICE_ENV = "LOCKSTEP_DEVICE"
FREE_MEMORY_SHARE = 0.8  # of the free memory at server start: the rest absorbs fragmentation and the engine


def rollout_device(wanted: str | None, cuda_available: bool | None = None) -> str:
    """``cuda`` or ``cpu`` for the server: the recipe's device (``$LOCKSTEP_DEVICE``); without one, a GPU if
    any.

    Raises ``RuntimeError`` (one line) when the recipe says ``cuda`` and this worker has no CUDA GPU.
    """
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if wanted == "cuda" and not available:
        raise RuntimeError("trainer.device=cuda but the Dream rollout server finds no CUDA GPU on its node "
                           "(torch.cuda.is_available() is False); refusing to decode on the CPU in fp32")
    if wanted == "cpu":
        return "cpu"
    return "cuda" if available else "cpu"


def decode_row_bytes(config: Any, prompt_len: int, canvas_len: int, dtype_bytes: int) -> int:
    """Estimated device memory one decode row needs at its peak (a commit step of a whole-canvas forward).

    logits of the canvas window x 1.5 (the logits and the sampler's scratch), the key/value cache of prompt +
    canvas, and one layer's transient activations (hidden x 4 + MLP intermediate x 3 per position).
    """
    seq = prompt_len + canvas_len
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(config.hidden_size) // heads
    kv_cache = 2 * int(config.num_hidden_layers) * kv_heads * head_dim * seq
    logits = canvas_len * int(config.vocab_size) * 3 // 2
    activations = seq * (4 * int(config.hidden_size) + 3 * int(config.intermediate_size))
    return (kv_cache + logits + activations) * dtype_bytes


def fit_max_batch(configured: int, free_bytes: int, row_bytes: int, share: float = FREE_MEMORY_SHARE) -> int:
    """The recipe's ``max_batch``, lowered to the rows ``share`` of the free memory holds (at least 1)."""
    if configured < 1 or row_bytes < 1:
        raise ValueError(f"need max_batch >= 1 and row_bytes >= 1, got {configured}, {row_bytes}")
    return max(1, min(configured, int(free_bytes * share) // row_bytes))


def fit_to_gpu(sampler_config: Any, model: torch.nn.Module, prompt_len: int, who: str) -> Any:
    """``sampler_config`` (a :class:`rl.rollout_decoding.DreamSamplerConfig`) with ``max_batch`` lowered to
    what the current CUDA device's free memory holds for ``model``'s rows; logs a warning when it lowers
    it."""
    free, _ = torch.cuda.mem_get_info()
    dtype_bytes = next(model.parameters()).element_size()
    row = decode_row_bytes(model.config, prompt_len, sampler_config.response_length, dtype_bytes)
    fitted = fit_max_batch(sampler_config.max_batch, free, row)
    if fitted >= sampler_config.max_batch:
        return sampler_config
    logger.warning("%s: max_batch %d -> %d to fit the GPU (%.1f GiB free, ~%.2f GiB per row)", who,
                   sampler_config.max_batch, fitted, free / 2**30, row / 2**30)
    return dataclasses.replace(sampler_config, max_batch=fitted)


def release_cache(device: str) -> None:
    """Give the allocator's cached blocks back after a decode batch, so the training engine on the same GPU
    can use them (the decode's logits and KV cache are transient)."""
    if device == "cuda":
        torch.cuda.empty_cache()
