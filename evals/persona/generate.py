"""Batched answer generation for persona prompts through our samplers (plain Dream diffusion or lockstep).

Why here and not in ``run``: generation is the only model-dependent step; keeping it apart lets the rest of
the task (prompts, parsing, metric) be tested without a model. The batching and samplers are
:mod:`evals.generation`'s, shared with checkpoint evaluation and the demo; this module maps persona settings
onto them.

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

SAMPLERS = ("plain", "lockstep")


def sampler_settings(conf: Any, vocab: int) -> dict[str, Any]:
    """``conf``'s decoding settings as keyword arguments of the sampler (:mod:`evals.generation`)."""
    if conf.sampler == "plain":
        return {"max_new_tokens": conf.max_new_tokens, "steps": conf.steps, "alg": conf.alg,
                "temperature": conf.temperature, "valid_vocab_size": vocab}
    return {"r_len": conf.lockstep_r_len, "a_len": conf.max_new_tokens, "max_steps": conf.steps,
            "alg": conf.alg, "temperature": conf.temperature}


def generate_completions(
    model: Any, tokenizer: Any, texts: Sequence[str], conf: Any
) -> tuple[list[str], list[str | None]]:
    """(answers, reasoning) per prompt in input order; reasoning is None with the plain sampler.

    ``conf`` needs: sampler, batch_size, max_new_tokens, steps, alg, temperature, seed (+ lockstep_r_len,
    lockstep_delimiter for the lockstep sampler).
    """
    from evals.generation import generate_in_batches

    if conf.sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, not {conf.sampler!r}")
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(int(conf.seed))
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    answers: list[str] = [""] * len(texts)
    reasoning: list[str | None] = [None] * len(texts)
    delimiter = conf.lockstep_delimiter if conf.sampler == "lockstep" else ""
    batches = generate_in_batches(model, tokenizer, [texts[i] for i in order], conf.sampler,
                                  sampler_settings(conf, len(tokenizer)), conf.batch_size,
                                  delimiter=delimiter, generator=generator,
                                  desc=f"persona generation ({conf.sampler})")
    for start, out in batches:
        for i, answer, thought in zip(order[start:], out.answers, out.reasoning):
            answers[i], reasoning[i] = answer, thought
    return answers, reasoning
