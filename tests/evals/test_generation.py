"""The shared generation loop (checkpoint eval, demo, persona): batching, seeding and the lockstep text
layout."""

from __future__ import annotations

import pytest
import torch

from evals.code.model import ModelSource, load_model
from evals.generation import check_sampler_kwargs, generate_in_batches

PROMPTS = ["def add(a, b):", "x = 1", "import os\n", "class A:", "print(", "for i in range(3):", "s = 'a'"]
PLAIN = {"max_new_tokens": 8, "steps": 8, "alg": "maskgit_plus", "temperature": 0.8}
LOCKSTEP = {"r_len": 5, "a_len": 6, "mode": "jacobi", "temperature": 0.8}


@pytest.fixture(scope="module")
def model_and_tok(tiny_dream_dir):
    return load_model(ModelSource(tiny_dream_dir, None, None), torch.float32, torch.device("cpu"))


def collect(batches) -> list[str]:
    return [text for _, out in batches for text in out.completions]


def test_per_batch_seeds_let_a_resumed_run_reproduce_the_remaining_batches(model_and_tok) -> None:
    model, tok = model_and_tok

    def seed_of(start: int) -> int:
        return 1000 + start

    full = collect(generate_in_batches(model, tok, PROMPTS, "plain", PLAIN, 3, seed_of=seed_of))
    starts = [start for start, _ in generate_in_batches(model, tok, PROMPTS, "plain", PLAIN, 3,
                                                        seed_of=seed_of)]
    assert starts == [0, 3, 6] and len(full) == len(PROMPTS)
    # resuming after the first batch: the remaining prompts, seeded as they were in the full run
    resumed = collect(generate_in_batches(model, tok, PROMPTS[3:], "plain", PLAIN, 3,
                                          seed_of=lambda start: seed_of(start + 3)))
    assert resumed == full[3:]


def test_one_generator_stream_continues_across_batches(model_and_tok) -> None:
    model, tok = model_and_tok
    same = ["def add(a, b):"] * 4  # two identical batches of two

    def run(**randomness) -> list[str]:
        return collect(generate_in_batches(model, tok, same, "lockstep", LOCKSTEP, 2, **randomness))

    stream = run(generator=torch.Generator().manual_seed(7))
    assert stream == run(generator=torch.Generator().manual_seed(7))  # reproducible from the seed
    assert stream[:2] != stream[2:]  # the second batch continues the stream: new draws for the same prompts
    reseeded = run(seed_of=lambda start: 7)
    assert reseeded[:2] == reseeded[2:]  # a per-batch seed repeats itself on identical batches


def test_lockstep_completion_is_reasoning_delimiter_answer_and_training_mode_is_restored(
    model_and_tok
) -> None:
    model, tok = model_and_tok
    model.train()
    [(_, out)] = list(generate_in_batches(model, tok, PROMPTS[:2], "lockstep", LOCKSTEP, 4,
                                          delimiter="\n[A] ", seed_of=lambda start: 0))
    assert model.training
    assert out.completions == [r + "\n[A] " + a for r, a in zip(out.reasoning, out.answers)]
    assert out.nfe is not None and out.nfe > 0
    assert out.canvas_tokens == 2 * (5 + len(tok.encode("\n[A] ", add_special_tokens=False)) + 6)
    model.eval()


def test_unknown_sampler_settings_are_named_before_any_decoding() -> None:
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['stepz'\]"):
        check_sampler_kwargs("plain", {"stepz": 3})
    with pytest.raises(ValueError, match="not one of plain, fast, lockstep"):
        check_sampler_kwargs("beam", {})
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        next(generate_in_batches(torch.nn.Linear(1, 1), None, ["a"], "plain", {}, 0))
