"""Rollout-side decoding and weight installs of the Dream verl rollout (no Ray, no verl)."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
from PIL import Image

from decoding import load_dream
from decoding.tokenizer import decode_completion, left_pad, stop_token_ids
from rl.rollout_decoding import (
    DreamSamplerConfig,
    apply_weights,
    cut_after_stop,
    load_rollout_model,
    sample_batch,
    save_fill_gif,
    scored_mask,
)

SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": -1}


@pytest.fixture(scope="module")
def rollout_model(tiny_dream_dir):
    return load_rollout_model(str(tiny_dream_dir), dtype="bfloat16", device="cpu")


def _prompts(tokenizer) -> list[list[int]]:
    texts = ["def add(a, b):", "Write a function that returns the square of x.\ndef square(x):"]
    return [tokenizer.encode(t, add_special_tokens=False) for t in texts]


def test_cut_after_stop_and_left_pad() -> None:
    assert cut_after_stop([5, 6, 9, 7, 9], {9}) == [5, 6, 9]
    assert cut_after_stop([5, 6], {9}) == [5, 6]
    ids, mask = left_pad([[1, 2, 3], [4]], pad_id=0, device="cpu")
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="empty prompt"):
        left_pad([[]], pad_id=0, device="cpu")


def test_config_rejects_unknown_keys_and_samplers() -> None:
    with pytest.raises(ValueError, match="unknown rollout.custom.dream keys"):
        DreamSamplerConfig.from_dict({"stepz": 3}, response_length=8)
    with pytest.raises(ValueError, match="sampler must be one of"):
        DreamSamplerConfig.from_dict({"sampler": "vllm"}, response_length=8)


@pytest.mark.parametrize("sampler,options", [
    ("fast", {"alg": "entropy", "block_size": 4, "threshold": 0.9}),
    ("diffusion", {"alg": "entropy", "steps": 6}),
])
def test_sample_batch_is_seeded_and_scores_through_the_first_stop(rollout_model, sampler, options) -> None:
    model, tokenizer = rollout_model
    assert next(model.parameters()).dtype == torch.float32  # CPU rollouts always run fp32
    config = DreamSamplerConfig(sampler=sampler, response_length=12, options=options)
    prompts = _prompts(tokenizer)
    first = sample_batch(model, tokenizer, prompts, SAMPLING, config, seed=7)
    again = sample_batch(model, tokenizer, prompts, SAMPLING, config, seed=7)
    assert first.completions == again.completions
    stops = stop_token_ids(tokenizer)
    for tokens, scored, text in zip(first.completions, first.scored_masks, first.reward_texts):
        assert len(tokens) == 12 and tokenizer.mask_token_id not in tokens  # the whole decoded canvas
        kept = len(cut_after_stop(tokens, stops))
        # scored through the first stop, the run after: context
        assert scored == [1] * kept + [0] * (12 - kept)
        assert text == decode_completion(tokenizer, tokens)


def test_scored_mask_and_reward_text_per_block() -> None:
    assert scored_mask([5, 9, 7, 1, 2, 6, 9, 9], {9}, (3, 2)) == [1, 1, 0, 0, 0, 1, 1, 0]
    assert scored_mask([5, 6, 1, 2, 7], {9}, (2, 2)) == [1, 1, 0, 0, 1]  # no stop: the whole block is scored
    assert scored_mask([9, 5], {9}, None) == [1, 0]
    assert scored_mask([5, 9, 7, 1, 2, 6, 9, 9], {9}, (3, 2),
                       score_reasoning_run=True) == [1, 1, 1, 0, 0, 1, 1, 0]


def test_lockstep_completion_is_the_decoded_canvas(rollout_model, tmp_path) -> None:
    model, tokenizer = rollout_model
    delimiter = "\n```python\n"
    config = DreamSamplerConfig(sampler="lockstep", response_length=24, options={
        "r_len": 6, "a_len": 8, "tau_r": 0.9, "tau_a": 0.9, "delimiter": delimiter})
    result = sample_batch(model, tokenizer, _prompts(tokenizer), SAMPLING, config, seed=0)
    delimiter_ids = tokenizer.encode(delimiter, add_special_tokens=False)
    canvas = result.trace.sequences[:, result.trace.layout.prompt_len:].tolist()
    for row, (tokens, span) in enumerate(zip(result.completions, result.fixed_spans)):
        # R whole, delimiter, A whole
        assert tokens == canvas[row] and len(tokens) == 6 + len(delimiter_ids) + 8
        assert tokens[6:6 + len(delimiter_ids)] == delimiter_ids and span == (6, len(delimiter_ids))
        reasoning, answer = result.trace.texts(tokenizer)
        assert result.reward_texts[row] == reasoning[row] + delimiter + answer[row]
    gif = save_fill_gif(result.trace, tokenizer, str(tmp_path), global_steps=4)
    with Image.open(gif) as image:
        assert gif.endswith("fill_step4.gif") and image.n_frames == result.trace.steps + 1 > 1
    with pytest.raises(ValueError, match="exceeds the response length"):
        sample_batch(model, tokenizer, _prompts(tokenizer), SAMPLING,
                     DreamSamplerConfig(sampler="lockstep", response_length=10,
                                        options={"r_len": 6, "a_len": 8}), seed=0)


def test_lora_adapter_sync_reproduces_the_trained_policy(tiny_dream_dir, rollout_model) -> None:
    """Adapter tensors in peft state-dict names make the rollout copy compute the training model's logits."""
    tokenizer = rollout_model[1]
    torch.manual_seed(0)
    trained = get_peft_model(load_dream(tiny_dream_dir, dtype=torch.float32),
                             LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, param in trained.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    adapter = {k: v.clone() for k, v in get_peft_model_state_dict(trained).items()}
    rollout = load_dream(tiny_dream_dir, dtype=torch.float32)
    ids = torch.tensor([_prompts(tokenizer)[0]])
    before = rollout(input_ids=ids).logits
    rollout = apply_weights(rollout, adapter, trained.peft_config["default"].to_dict())
    expected = trained(input_ids=ids).logits
    torch.testing.assert_close(rollout(input_ids=ids).logits, expected)
    assert not torch.allclose(before, expected)
    # a second sync overwrites the adapter in place (no re-wrapping)
    wrapped = rollout
    assert apply_weights(rollout, adapter, trained.peft_config["default"].to_dict()) is wrapped
    with pytest.raises(ValueError, match="not in the rollout model"):
        apply_weights(load_dream(tiny_dream_dir, dtype=torch.float32), {"nope.weight": torch.zeros(1)}, None)
