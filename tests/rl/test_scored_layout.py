"""The gradient is taken on what the rollout decoded: every GRPO recipe, composed with real Hydra, decodes a
lockstep canvas (Gauss-Seidel and Jacobi) on a tiny Dream, and the Dream engine scores exactly the tokens the
sampler committed, at their canvas positions; the reward reads R text + delimiter + A text."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from decoding.tokenizer import stop_token_ids
from launch.recipes import recipe_names
from launch.train_grpo import compose_recipe
from rl.rollout_decoding import DreamSamplerConfig, load_rollout_model, reward_text, sample_batch, scored_mask
from rl.verl.config import estimator_config
from rl.verl.engine import build_dense_batch, draw_row_plans
from rl.verl.reward import REWARD_TEXT_FIELD, compute_score
from rl.verl.rollout import apply_scored_mask

GRPO_RECIPES = recipe_names("grpo")
# the 7B recipes' canvas (r_len 128 + a_len 320) takes ~30 s per decode on the tiny model on 2 cores
RECIPE_PARAMS = [pytest.param(r, marks=() if r == "demo" else pytest.mark.slow) for r in GRPO_RECIPES]


@pytest.fixture(scope="module")
def rollout_model(tiny_dream_dir):
    return load_rollout_model(str(tiny_dream_dir), dtype="float32", device="cpu")


def _expected_scored(canvas: list[int], layout, stops: set[int], whole_r: bool) -> list[int]:
    """Independently of rl/rollout_decoding: each block of the trace's layout, scored through its first stop
    (the R block whole with ``rollout.custom.dream.score_reasoning_run``)."""
    expected = [0] * len(canvas)
    for name in ("r", "a"):
        lo, hi = (i - layout.prompt_len for i in layout.span(name))
        for k in range(lo, hi):
            expected[k] = 1
            if canvas[k] in stops and not (whole_r and name == "r"):
                break
    return expected


def test_every_recipe_is_lockstep() -> None:
    assert set(GRPO_RECIPES) >= {"demo", "humaneval", "mbpp"}
    # only the demo (measured, docs/demo.md) scores R's run; the 7B recipes do not
    for recipe in GRPO_RECIPES:
        dream = compose_recipe(recipe, []).actor_rollout_ref.rollout.custom.dream
        assert (dream.sampler == "lockstep"
                and bool(dream.get("score_reasoning_run", False)) == (recipe == "demo"))


@pytest.mark.parametrize("mode", ["gauss_seidel", "jacobi"])
@pytest.mark.parametrize("recipe", RECIPE_PARAMS)
def test_scored_tokens_sit_where_the_sampler_committed_them(rollout_model, recipe: str, mode: str) -> None:
    model, tokenizer = rollout_model
    cfg = compose_recipe(recipe, [f"actor_rollout_ref.rollout.custom.dream.options.mode={mode}"])
    rollout = cfg.actor_rollout_ref.rollout
    dream = OmegaConf.to_container(rollout.custom.dream, resolve=True)
    assert dream["sampler"] == "lockstep"
    config = DreamSamplerConfig.from_dict(dream, response_length=int(rollout.response_length))
    prompts = [tokenizer.encode(t, add_special_tokens=False)
               for t in ("def add(a, b):", "Square x.\ndef sq(x):")]
    sampling = {"temperature": float(rollout.temperature), "top_p": float(rollout.top_p), "top_k": -1}
    result = sample_batch(model, tokenizer, prompts, sampling, config, seed=3)
    trace, layout = result.trace, result.trace.layout
    stops = stop_token_ids(tokenizer)

    # what verl carries: responses = the canvas after the prompt, response_mask = the scored mask (agent loop)
    responses = [torch.tensor(row) for row in result.completions]
    response_masks = [torch.tensor(apply_scored_mask([1] * len(row), scored))
                      for row, scored in zip(result.completions, result.scored_masks)]
    estimator = estimator_config(cfg)
    assert estimator.fixed_start == layout.r_len
    fixed_ids = tokenizer.encode(estimator.fixed_text, add_special_tokens=False)
    prompt_tensors = [torch.tensor(p) for p in prompts]
    _, _, positions, window = build_dense_batch(prompt_tensors, responses, pad_id=0)
    plan = draw_row_plans(prompt_tensors, responses, positions, estimator, response_masks,
                          fixed_ids=fixed_ids, step=1)

    for row, response in enumerate(responses):
        canvas = trace.sequences[row, layout.prompt_len:]
        committed = trace.commit_step[row, layout.prompt_len:] >= 0
        # the response IS the canvas: every token at its decoded position
        assert torch.equal(response, canvas)
        offset = window - response.numel()
        scored = (plan.weights[:, row, offset:] != 0).any(0)
        masked = plan.masks[:, row, offset:]
        expected = torch.tensor(_expected_scored(canvas.tolist(), layout, stops, config.score_reasoning_run),
                                dtype=torch.bool)
        assert torch.equal(scored, expected)
        assert bool(committed[scored].all())  # scored tokens are tokens the sampler committed ...
        # ... every committed token is masked in one pass
        assert torch.equal(masked[0] | masked[1], committed)
        assert not bool((masked[0] & masked[1]).any())
        delimiter = slice(layout.r_len, layout.r_len + layout.delim_len)
        assert response[delimiter].tolist() == fixed_ids and not bool(committed[delimiter].any())
        reasoning, answers = trace.texts(tokenizer)
        assert result.reward_texts[row] == reasoning[row] + estimator.fixed_text + answers[row]


def test_reward_reads_the_answer_block_not_the_runs_after_the_stops(tiny_dream_dir, monkeypatch) -> None:
    """The context runs may hold anything (R has no end guard): a longer fence there must not become the
    answer."""
    _, tokenizer = load_rollout_model(str(tiny_dream_dir), dtype="float32", device="cpu")
    monkeypatch.setenv("LOCKSTEP_REWARD_CONFIG",
                       json.dumps({"reward": "binary", "test_sets": ["base", "plus"]}))
    eos = tokenizer.eos_token_id
    junk = tokenizer.encode("```python\ndef has_close_elements(numbers, threshold):\n"
                            "    return False  # junk\n```", add_special_tokens=False)
    code = ("def has_close_elements(numbers, threshold):\n"
            "    return any(abs(a - b) < threshold for i, a in enumerate(numbers)"
            " for j, b in enumerate(numbers) if i != j)\n```")
    r_block = tokenizer.encode("Compare every pair.", add_special_tokens=False) + [eos] + junk
    delimiter = tokenizer.encode("\n```python\n", add_special_tokens=False)
    a_block = tokenizer.encode(code, add_special_tokens=False) + [eos, eos] + junk
    tokens = r_block + delimiter + a_block
    span = (len(r_block), len(delimiter))
    text = reward_text(tokenizer, tokens, span)
    assert text == "Compare every pair.\n```python\n" + code
    assert scored_mask(tokens, stop_token_ids(tokenizer), span).count(1) == len(r_block) - len(junk) + \
        len(a_block) - len(junk) - 1
    verl_decode = tokenizer.decode(tokens, skip_special_tokens=True)  # what verl hands compute_score
    extra = {"mini": True, REWARD_TEXT_FIELD: text}
    assert compute_score("humaneval", verl_decode, "HumanEval/0", extra)["score"] == 1.0
    # the junk won
    assert compute_score("humaneval", verl_decode, "HumanEval/0", {"mini": True})["score"] == 0.0
    assert compute_score("humaneval", text, "HumanEval/0", {"mini": True})["score"] == 1.0
