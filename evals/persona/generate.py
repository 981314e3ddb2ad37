"""Batched answer generation for persona prompts through our samplers (plain Dream diffusion or lockstep).

Why here and not in ``run``: generation is the only model-dependent step; keeping it apart lets the rest of
the task (prompts, parsing, metric) be tested without a model and lets other eval tasks reuse the batching.

Contract: ``generate_completions(model, tokenizer, texts, conf)`` returns one completion string per prompt,
in input order, cut at the first end-of-text / ``<|im_end|>``. Prompts are batched longest-first so rows of
a batch have similar lengths (less left padding). With ``sampler="lockstep"`` the canvas is
[R block of ``lockstep_r_len`` scratch tokens][delimiter][A block of ``max_new_tokens``]; only the A block
is the answer. Randomness comes from one ``torch.Generator`` seeded with ``conf.seed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

SAMPLERS = ("plain", "lockstep")


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _generate_batch(model: Any, tokenizer: Any, texts: Sequence[str], conf: Any, generator: torch.Generator):
    from decoding.tokenizer import decode_completions, encode_prompts

    device = _device(model)
    input_ids, attention_mask = encode_prompts(tokenizer, list(texts))
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    vocab = len(tokenizer)
    if conf.sampler == "plain":
        from decoding.generate import diffusion_generate

        sequences = diffusion_generate(
            model,
            input_ids,
            attention_mask,
            max_new_tokens=conf.max_new_tokens,
            steps=conf.steps,
            alg=conf.alg,
            temperature=conf.temperature,
            generator=generator,
            valid_vocab_size=vocab,
        )
        return decode_completions(tokenizer, sequences, input_ids.shape[1]), [None] * len(texts)
    from decoding.lockstep import LockstepCfg, lockstep_sample

    cfg = LockstepCfg(
        r_len=conf.lockstep_r_len,
        a_len=conf.max_new_tokens,
        max_steps=conf.steps,
        alg=conf.alg,
        temperature=conf.temperature,
    )
    delimiter = tokenizer.encode(conf.lockstep_delimiter, add_special_tokens=False)
    result = lockstep_sample(
        model,
        input_ids,
        attention_mask,
        cfg,
        delimiter_ids=delimiter,
        valid_vocab_size=vocab,
        generator=generator,
    )
    reasoning, answers = result.texts(tokenizer)
    return answers, reasoning


def generate_completions(
    model: Any, tokenizer: Any, texts: Sequence[str], conf: Any
) -> tuple[list[str], list[str | None]]:
    """(answers, reasoning) per prompt in input order; reasoning is None with the plain sampler.

    ``conf`` needs: sampler, batch_size, max_new_tokens, steps, alg, temperature, seed (+ lockstep_r_len,
    lockstep_delimiter for the lockstep sampler).
    """
    if conf.sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, not {conf.sampler!r}")
    generator = torch.Generator(device=_device(model)).manual_seed(int(conf.seed))
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    answers: list[str] = [""] * len(texts)
    reasoning: list[str | None] = [None] * len(texts)
    batches = [order[k : k + conf.batch_size] for k in range(0, len(order), conf.batch_size)]
    with torch.no_grad():
        for batch in tqdm(batches, desc=f"persona generation ({conf.sampler})", unit="batch"):
            outs, thoughts = _generate_batch(model, tokenizer, [texts[i] for i in batch], conf, generator)
            for i, text, thought in zip(batch, outs, thoughts):
                answers[i], reasoning[i] = text, thought
    return answers, reasoning
