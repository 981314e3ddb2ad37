"""The one generation loop of every evaluation: prompt texts in, decoded completions out, batch by batch.

Why one: checkpoint evaluation (``evals/code/run.py``), the CPU demo's held-out pass rate
(``cpu_demo/evaluate.py``) and persona simulation (``evals/persona/generate.py``) all decode chat-formatted
prompt texts with one of our samplers; they differ only in what they do with each batch (journal it, score it,
parse it). :func:`generate_texts` runs one batch through the configured sampler and reads the canvas back the
way the GRPO reward does (lockstep: ``reasoning + delimiter + answer``); :func:`generate_in_batches` walks a
prompt list in batches and hands each decoded batch to the caller before decoding the next. Training
validation runs inside verl's own loop (our rollout server decodes, ``rl/verl/reward.py`` scores: see
``docs/architecture.md``), so it shares the decoder and the scorer, not this loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

SAMPLERS = ("plain", "fast", "lockstep")


def sampler_function(name: str) -> Callable[..., Any]:
    """The generation function of sampler ``name`` (imported lazily: each lives in its own module)."""
    if name == "plain":
        from decoding.generate import diffusion_generate

        return diffusion_generate
    if name == "fast":
        from decoding.fast import fast_generate

        return fast_generate
    if name == "lockstep":
        from decoding.lockstep import lockstep_sample

        return lockstep_sample
    raise ValueError(f"generation.sampler={name} is not one of {', '.join(SAMPLERS)}")


def check_sampler_kwargs(sampler: str, kwargs: dict[str, Any]) -> None:
    """ValueError naming the unknown settings (or invalid values, for lockstep) before any model is loaded."""
    import inspect

    if sampler == "lockstep":
        import dataclasses

        from decoding.lockstep import LockstepCfg

        known = {f.name for f in dataclasses.fields(LockstepCfg)}
    else:
        params = inspect.signature(sampler_function(sampler)).parameters
        known = {n for n, p in params.items() if p.kind == p.KEYWORD_ONLY}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(f"generation.{sampler}: unknown setting(s) {unknown}; known: {sorted(known)}")
    if sampler == "lockstep":
        LockstepCfg(**kwargs)  # validates values with clear messages


def _sequences(output: Any) -> torch.Tensor:
    """The ``[B, P+G]`` token tensor of any sampler's return value."""
    if isinstance(output, torch.Tensor):
        return output
    for attr in ("sequences", "tokens"):
        value = getattr(output, attr, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"sampler returned {type(output).__name__} without a sequences tensor")


@dataclass
class BatchOutput:
    """One decoded batch, rows in prompt order.

    ``completions``: the text to score (lockstep: ``reasoning + delimiter + answer``); ``answers``: the A
    block alone (plain/fast: the completion); ``reasoning``: the R block (None without lockstep);
    ``num_tokens``: content tokens up to the first stop token (R + A for lockstep); ``canvas_tokens``:
    completion positions the sampler decoded for the whole batch (what it paid for); ``nfe``: model forwards,
    when the sampler counts them.
    """

    completions: list[str]
    answers: list[str]
    reasoning: list[str | None]
    num_tokens: list[int]
    canvas_tokens: int
    seconds: float
    nfe: int | None = None


def _content_length(row: list[int], stops: set[int]) -> int:
    return next((i for i, t in enumerate(row) if t in stops), len(row))


def generate_texts(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], sampler: str,
                   kwargs: dict[str, Any], seed: int | None = None, delimiter: str = "",
                   progress: bool = False, generator: torch.Generator | None = None) -> BatchOutput:
    """Generate one completion per (chat-formatted) prompt text.

    ``plain``/``fast``: ``kwargs`` go to the sampler; the completion is the decoded text after the prompt.
    ``lockstep``: ``kwargs`` build a ``LockstepCfg``; ``delimiter`` (fixed text between the R and A blocks) is
    tokenized, and ids beyond the tokenizer are banned as in the GRPO rollout (``rl/rollout_decoding.py``).
    Randomness: ``generator`` drives every draw when given (a stream continued across batches); otherwise
    ``seed`` reseeds torch's global RNG first (None: leave it as it is). ``progress``: the sampler's own bar
    over the batch's steps.
    """
    from decoding.tokenizer import decode_completion, encode_prompts, stop_token_ids

    generate = sampler_function(sampler)
    device = next(model.parameters()).device
    input_ids, attention_mask = encode_prompts(tokenizer, list(prompts))
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    call_kwargs = dict(kwargs)
    if sampler == "lockstep":
        from decoding.lockstep import LockstepCfg

        call_kwargs = {"cfg": LockstepCfg(**kwargs), "valid_vocab_size": len(tokenizer),
                       "delimiter_ids": tokenizer.encode(delimiter, add_special_tokens=False)
                                        if delimiter else ()}
    if generator is not None:
        call_kwargs["generator"] = generator
    elif seed is not None:
        torch.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.manual_seed_all(seed)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with torch.no_grad():
        output = generate(model, input_ids, attention_mask, **call_kwargs, progress=progress)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    stops = stop_token_ids(tokenizer)
    prompt_len = input_ids.shape[1]
    nfe = getattr(output, "nfe", None)
    if sampler == "lockstep":
        reasoning, answers = output.texts(tokenizer)
        counts = [_content_length(r, stops) + _content_length(a, stops)
                  for r, a in zip(output.reasoning_ids.tolist(), output.answer_ids.tolist())]
        canvas = output.sequences.shape[0] * (output.sequences.shape[1] - prompt_len)
        texts = [r + delimiter + a for r, a in zip(reasoning, answers)]
        return BatchOutput(texts, list(answers), list(reasoning), counts, canvas, seconds, nfe)
    completion_ids = _sequences(output)[:, prompt_len:].cpu()
    counts = [_content_length(row, stops) for row in completion_ids.tolist()]
    texts = [decode_completion(tokenizer, row) for row in completion_ids]
    return BatchOutput(texts, list(texts), [None] * len(texts), counts, completion_ids.numel(), seconds, nfe)


def generate_in_batches(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], sampler: str,
                        kwargs: dict[str, Any], batch_size: int, *, delimiter: str = "",
                        seed_of: Callable[[int], int] | None = None, generator: torch.Generator | None = None,
                        desc: str | None = None, progress: bool = False) -> Iterator[tuple[int, BatchOutput]]:
    """Decode ``prompts`` ``batch_size`` at a time; yield ``(start, batch)`` (rows ``start .. start+len``).

    The caller consumes each batch (journals, scores, collects it) before the next is decoded, so an
    interrupted run loses at most one batch. Randomness: one ``generator`` continued across batches, or
    ``seed_of(start)`` reseeding per batch (a batch's samples then do not depend on the batches before it:
    what resuming needs). The model is put in eval mode and its train/eval mode restored afterwards.
    ``desc``: a bar over batches; ``progress``: each batch's sampler bar.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    starts = range(0, len(prompts), batch_size)
    try:
        for start in tqdm(starts, desc=desc, unit="batch", disable=desc is None, dynamic_ncols=True):
            seed = seed_of(start) if seed_of is not None else None
            yield start, generate_texts(model, tokenizer, prompts[start : start + batch_size], sampler,
                                        kwargs, seed, delimiter, progress, generator)
    finally:
        model.train(was_training)
