"""Tokenizer helpers: loading (incl. the remote-code layout), ChatML prompts, left padding, safe decoding."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from decoding.tokenizer import (
    build_chat_prompt,
    decode_completion,
    decode_completions,
    encode_prompts,
    load_tokenizer,
)

CHAT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nWrite add(a, b).<|im_end|>\n<|im_start|>assistant\n"
)


def test_special_tokens_match_dream_roles(tiny_tok) -> None:
    vocab = tiny_tok.get_vocab()
    assert tiny_tok.eos_token == tiny_tok.pad_token == "<|endoftext|>"
    assert tiny_tok.mask_token == "<|mask|>" and tiny_tok.mask_token_id == vocab["<|mask|>"]
    assert tiny_tok.bos_token == "<|beginoftext|>"
    assert {"<|im_start|>", "<|im_end|>"} <= set(vocab)
    assert tiny_tok.padding_side == "left"


def test_chat_prompt_is_chatml_with_default_system(tiny_tok) -> None:
    assert build_chat_prompt(tiny_tok, "Write add(a, b).") == CHAT
    messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}]
    assert build_chat_prompt(tiny_tok, messages).startswith("<|im_start|>system\nBe terse.<|im_end|>\n")
    no_system = build_chat_prompt(tiny_tok, "hi", system=None, add_generation_prompt=False)
    assert no_system == "<|im_start|>user\nhi<|im_end|>\n"


def test_encode_prompts_left_pads_and_keeps_specials(tiny_tok) -> None:
    ids, mask = encode_prompts(tiny_tok, [CHAT, "x = 1"])
    assert ids.shape == mask.shape and ids.dtype == torch.long
    n_short = int(mask[1].sum())
    assert mask[1, : ids.shape[1] - n_short].eq(0).all() and mask[1, -n_short:].eq(1).all()
    assert ids[1, 0] == tiny_tok.pad_token_id
    assert ids[0, 0] == tiny_tok.convert_tokens_to_ids("<|im_start|>")
    assert tiny_tok.decode(ids[0]) == CHAT
    with pytest.raises(ValueError, match="empty prompt"):
        encode_prompts(tiny_tok, [""])


def test_decode_completion_stops_and_never_crashes(tiny_tok) -> None:
    body = tiny_tok.encode("return a + b", add_special_tokens=False)
    eos, im_end = tiny_tok.eos_token_id, tiny_tok.convert_tokens_to_ids("<|im_end|>")
    beyond = len(tiny_tok) + 50  # the logit width exceeds the tokenizer, as in the 7B
    assert decode_completion(tiny_tok, body + [im_end] + body) == "return a + b"
    assert decode_completion(tiny_tok, body + [eos, eos]) == "return a + b"
    assert decode_completion(tiny_tok, [tiny_tok.mask_token_id, beyond] + body) == "return a + b"
    rows = torch.tensor([[7, 8] + body + [eos]])
    assert decode_completions(tiny_tok, rows, 2) == ["return a + b"]


def test_remote_code_layout_loads_as_qwen2_with_same_ids(tiny_dream_dir, tiny_tok, tmp_path) -> None:
    """Real Dream dirs ship vocab.json + merges.txt and tokenizer_class DreamTokenizer (hub remote code)."""
    slow = tmp_path / "slow"
    shutil.copytree(tiny_dream_dir, slow)
    fast = json.loads((slow / "tokenizer.json").read_text())
    (slow / "vocab.json").write_text(json.dumps(fast["model"]["vocab"]))
    merges = "\n".join(" ".join(pair) for pair in fast["model"]["merges"])
    (slow / "merges.txt").write_text("#version: 0.2\n" + merges + "\n")
    (slow / "tokenizer.json").unlink()
    config = json.loads((slow / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "DreamTokenizer"
    config["auto_map"] = {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]}
    config["added_tokens_decoder"] = {
        str(t["id"]): {"content": t["content"], "special": True, "lstrip": False, "rstrip": False,
                       "normalized": False, "single_word": False}
        for t in fast["added_tokens"]
    }
    (slow / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_tokenizer(slow)
    texts = [CHAT, "def f(x):\n    return x * 12345  # héllo\n\n\tz = 'it''s'"]
    assert torch.equal(encode_prompts(tok, texts)[0], encode_prompts(tiny_tok, texts)[0])
    assert tok.mask_token_id == tiny_tok.mask_token_id and tok.pad_token_id == tiny_tok.pad_token_id


def test_load_tokenizer_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="not a directory"):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(ValueError, match="no tokenizer files"):
        load_tokenizer(tmp_path)
