"""DreamModel: Qwen2 key layout and causal-mask oracle, bidirectional attention, padding, KV cache,
loading."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, Qwen2Config, Qwen2ForCausalLM

from decoding import (
    DreamConfig,
    DreamKVCache,
    DreamModel,
    dream_7b_config,
    key_padding_to_4d,
    load_dream,
    padding_position_ids,
)
from decoding.model import DreamRMSNorm, _unblock_empty_rows

ATOL = 1e-5


def _ids(model: DreamModel, batch: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.mask_token_id, (batch, n), generator=g)


def _qwen2_twin(model: DreamModel, attn_implementation: str) -> Qwen2ForCausalLM:
    c = model.config
    qc = Qwen2Config(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, max_position_embeddings=c.max_position_embeddings,
        rms_norm_eps=c.rms_norm_eps, rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
        tie_word_embeddings=False, pad_token_id=c.pad_token_id,
    )
    qc._attn_implementation = attn_implementation
    twin = Qwen2ForCausalLM(qc).eval()
    twin.load_state_dict(model.state_dict(), strict=True)
    return twin


def test_state_dict_layout_is_qwen2(tiny_model: DreamModel) -> None:
    twin = _qwen2_twin(tiny_model, "eager")
    ours = {k: tuple(v.shape) for k, v in tiny_model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in twin.state_dict().items()}
    assert ours == theirs
    assert ("model.layers.0.self_attn.q_proj.bias" in ours
            and "model.layers.0.self_attn.o_proj.bias" not in ours)
    assert not any("inv_freq" in k for k in ours)  # non-persistent buffer


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_causal_mask_matches_transformers_qwen2(tiny_model: DreamModel, impl: str) -> None:
    ids = _ids(tiny_model, 2, 12)
    causal = torch.tril(torch.ones(12, 12, dtype=torch.bool))[None, None].expand(2, 1, 12, 12)
    with torch.no_grad():
        ours = tiny_model(ids, attention_mask=causal).logits
        ref = _qwen2_twin(tiny_model, impl)(ids).logits
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


def test_attention_is_bidirectional_and_unshifted(tiny_model: DreamModel) -> None:
    ids = _ids(tiny_model, 1, 10)
    changed = ids.clone()
    changed[0, -1] = (changed[0, -1] + 1) % tiny_model.config.mask_token_id
    with torch.no_grad():
        a, b = tiny_model(ids).logits, tiny_model(changed).logits
        full = tiny_model(ids, attention_mask="full").logits
    assert a.shape == (1, 10, tiny_model.config.vocab_size)
    assert not torch.allclose(a[0, 0], b[0, 0])  # position 0 sees the last token
    torch.testing.assert_close(a, full, atol=0, rtol=0)


def test_rmsnorm_exact_small_case() -> None:
    norm = DreamRMSNorm(2, eps=0.0)
    norm.weight.data = torch.tensor([2.0, 0.5])
    out = norm(torch.tensor([[3.0, 4.0]]))
    rms = (12.5) ** 0.5
    torch.testing.assert_close(out, torch.tensor([[2 * 3 / rms, 0.5 * 4 / rms]]))


def _left_pad(ids: torch.Tensor, pad: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    padded = torch.cat([torch.full((1, pad), pad_id), ids], dim=1)
    mask = torch.cat([torch.zeros(1, pad, dtype=torch.long), torch.ones_like(ids)], dim=1)
    return padded, mask


def test_left_padded_row_equals_row_alone_and_no_nan(tiny_model: DreamModel) -> None:
    short, long = _ids(tiny_model, 1, 6, seed=1), _ids(tiny_model, 1, 9, seed=2)
    padded, pad_mask = _left_pad(short, 3, tiny_model.config.pad_token_id)
    batch = torch.cat([padded, long])
    mask = torch.cat([pad_mask, torch.ones_like(long)])
    pos = padding_position_ids(mask)
    assert pos[0].tolist() == [1, 1, 1, 0, 1, 2, 3, 4, 5]
    with torch.no_grad():
        out = tiny_model(batch, attention_mask=mask, position_ids=pos).logits
        alone = tiny_model(short).logits
        four_d = tiny_model(batch, attention_mask=key_padding_to_4d(mask, 0, 9), position_ids=pos).logits
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, 3:], alone[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(out, four_d, atol=0, rtol=0)
    # The reference's outer-AND mask (pad rows fully masked) gives the same real-row logits.
    outer = mask.bool()[:, None, :, None] & mask.bool()[:, None, None, :]
    with torch.no_grad():
        ref = tiny_model(batch, attention_mask=outer, position_ids=pos).logits
    torch.testing.assert_close(out[0, 3:], ref[0, 3:], atol=ATOL, rtol=0)
    assert torch.isfinite(ref).all()  # fully masked pad rows are unblocked (self-attention), never NaN


def test_pad_query_rows_attend_to_themselves() -> None:
    mask = torch.tensor([[0, 0, 1, 1]])
    m = key_padding_to_4d(mask, 0, 4)[0, 0]
    assert m.tolist() == [
        [True, False, True, True], [False, True, True, True], [False, False, True, True],
        [False, False, True, True]
    ]
    window = key_padding_to_4d(mask, 1, 2)[0, 0]  # queries at absolute positions 1, 2
    assert window.tolist() == [[False, True, True, True], [False, False, True, True]]
    outer = mask.bool()[:, None, :, None] & mask.bool()[:, None, None, :]  # the reference's 4-D mask
    fixed = _unblock_empty_rows(outer, 0)[0, 0]
    assert fixed[:2].tolist() == [[True, False, False, False], [False, True, False, False]]
    assert torch.equal(fixed[2:], outer[0, 0, 2:])


@pytest.mark.parametrize("padded", [False, True])
def test_prefix_and_dual_cache_reproduce_full_forward(tiny_model: DreamModel, padded: bool) -> None:
    n, start, end = 14, 5, 9
    ids = _ids(tiny_model, 2, n, seed=3)
    mask = torch.ones(2, n, dtype=torch.long)
    if padded:
        mask[0, :3] = 0
        ids[0, :3] = tiny_model.config.pad_token_id
    attn = mask if padded else None
    pos = padding_position_ids(mask)
    with torch.no_grad():
        full = tiny_model(ids, attention_mask=attn, position_ids=pos).logits
        cache = DreamKVCache(tiny_model.config.num_hidden_layers)
        filled = tiny_model(ids, attention_mask=attn, position_ids=pos, kv_cache=cache, store_kv=True).logits
        assert cache.length == n
        torch.testing.assert_close(filled, full, atol=0, rtol=0)
        # Dual cache: recompute only the window [start, end), keys = cache prefix + window + cached tail.
        dual = tiny_model(
            ids[:, start:end], attention_mask=attn, position_ids=pos[:, start:end], kv_cache=cache,
            cache_start=start
        ).logits
        torch.testing.assert_close(dual, full[:, start:end], atol=ATOL, rtol=0)
        # Prefix cache: keep [0, start) of a full forward (bidirectional: prefix K/V depend on the suffix),
        # then forward everything after it.
        prefix = DreamKVCache(tiny_model.config.num_hidden_layers)
        tiny_model(ids, attention_mask=attn, position_ids=pos, kv_cache=prefix, store_kv=True)
        prefix.crop(start)
        suffix = tiny_model(
            ids[:, start:], attention_mask=attn, position_ids=pos[:, start:], kv_cache=prefix,
            cache_start=start
        ).logits
    torch.testing.assert_close(suffix, full[:, start:], atol=ATOL, rtol=0)
    assert prefix.length == start  # not stored


def test_store_kv_overwrites_window_and_extends(tiny_model: DreamModel) -> None:
    ids = _ids(tiny_model, 1, 10, seed=4)
    new = ids.clone()
    new[0, 4:7] = _ids(tiny_model, 1, 3, seed=5)
    layers = tiny_model.config.num_hidden_layers
    with torch.no_grad():
        cache = DreamKVCache(layers, capacity=16)
        tiny_model(ids, kv_cache=cache, store_kv=True)
        tiny_model(new[:, 4:7], kv_cache=cache, cache_start=4, store_kv=True)
        fresh = DreamKVCache(layers)
        tiny_model(new, kv_cache=fresh, store_kv=True)
        # Positions outside the window were computed against the old tokens, the window itself is fresh.
        torch.testing.assert_close(cache.keys(0), fresh.keys(0), atol=ATOL, rtol=0)  # layer 0 K: token-local
        assert not torch.allclose(cache.keys(1)[:, :, :4], fresh.keys(1)[:, :, :4])  # stale prefix in layer 1
        tiny_model(_ids(tiny_model, 1, 3, seed=6), kv_cache=cache, cache_start=10, store_kv=True)
    assert cache.length == 13
    with pytest.raises(ValueError, match="hole"):
        tiny_model(ids[:, :2], kv_cache=cache, cache_start=14)
    cache.crop(5)
    assert cache.length == 5 and cache.keys(0).shape[2] == 5


def test_rope_stays_fp32_after_dtype_cast(tiny_dream_dir) -> None:
    model = load_dream(tiny_dream_dir, dtype=torch.bfloat16)
    rope = model.model.rotary_emb
    assert rope.inv_freq.dtype == torch.float32
    expected = 1.0 / (1e6 ** (torch.arange(0, 16, 2).float() / 16))
    torch.testing.assert_close(rope.inv_freq, expected)
    model.to(torch.bfloat16)  # casts buffers too; forward must still use fp32 frequencies
    cos, _ = rope(torch.zeros(1, 1, dtype=torch.bfloat16), torch.tensor([[1000]]))
    ref = torch.cat([1000 * expected, 1000 * expected]).cos().to(torch.bfloat16)
    torch.testing.assert_close(cos[0, 0], ref, atol=0, rtol=0)
    assert (model.lm_head.weight.dtype == torch.bfloat16
            and model(torch.tensor([[1, 2]])).logits.dtype == torch.bfloat16)


def test_auto_classes_and_save_roundtrip(tiny_dream_dir, tiny_model: DreamModel, tmp_path) -> None:
    assert isinstance(AutoConfig.from_pretrained(tiny_dream_dir), DreamConfig)
    auto = AutoModel.from_pretrained(tiny_dream_dir, dtype=torch.float32)  # meta init + load, no remote code
    ids = _ids(tiny_model, 1, 7)
    with torch.no_grad():
        torch.testing.assert_close(auto(ids).logits, tiny_model(ids).logits, atol=0, rtol=0)
    tiny_model.save_pretrained(tmp_path / "single")
    assert (tmp_path / "single" / "model.safetensors").is_file()
    again = load_dream(tmp_path / "single", dtype=None)
    assert again.config.to_dict()["vocab_size"] == tiny_model.config.vocab_size
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, tiny_model(ids).logits, atol=0, rtol=0)


def test_load_errors_are_clear(tiny_dream_dir, tmp_path) -> None:
    with pytest.raises(ValueError, match="not a directory"):
        load_dream(tmp_path / "nope")
    with pytest.raises(ValueError, match="no config.json"):
        load_dream(tmp_path)
    bad = tmp_path / "qwen"
    shutil.copytree(tiny_dream_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "model_type": "qwen2"}))
    with pytest.raises(ValueError, match="not a Dream checkpoint"):
        load_dream(bad)
    (bad / "config.json").write_text(json.dumps({**cfg, "hidden_size": 128}))
    with pytest.raises(ValueError, match="has shape"):
        load_dream(bad)
    (bad / "config.json").write_text(json.dumps(cfg))
    shard = sorted(bad.glob("model-*.safetensors"))[0]
    tensors = load_file(shard)
    dropped = sorted(tensors)[0]
    save_file({k: v for k, v in tensors.items() if k != dropped}, shard)
    with pytest.raises(ValueError, match="missing tensors"):
        load_dream(bad)


def test_gradient_checkpointing_gives_same_grads(tiny_dream_dir) -> None:
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    grads = []
    for checkpointing in (False, True):
        model = load_dream(tiny_dream_dir, dtype=torch.float32).train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            assert model.model.layers[0].gradient_checkpointing
        model(ids).logits.float().logsumexp(-1).sum().backward()
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=0)


def test_peft_lora_wraps_model(tiny_dream_dir) -> None:
    from peft import LoraConfig, get_peft_model

    model = load_dream(tiny_dream_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                  task_type="CAUSAL_LM"))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    out = peft_model(input_ids=torch.tensor([[1, 2, 3]]), attention_mask=torch.ones(1, 3, dtype=torch.long))
    assert out.logits.shape == (1, 3, model.config.vocab_size)


def test_dream_7b_parameter_count() -> None:
    config = dream_7b_config()
    with torch.device("meta"):
        model = DreamModel(config)
    assert sum(p.numel() for p in model.parameters()) == 7_615_616_512
    assert config.head_dim == 128 and config.mask_token_id == 151666 and config.vocab_size == 152064


REAL_7B_CONFIG_JSON = {  # Dream-org/Dream-v0-Instruct-7B config.json (HF hub), verbatim fields
    "architectures": ["DreamModel"], "attention_dropout": 0.0,
    "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
    "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 3584,
    "initializer_range": 0.02, "intermediate_size": 18944, "mask_token_id": 151666,
    "max_position_embeddings": 131072, "max_window_layers": 28, "model_type": "Dream",
    "num_attention_heads": 28,
    "num_hidden_layers": 28, "num_key_value_heads": 4, "pad_token_id": 151643, "rms_norm_eps": 1e-06,
    "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "transformers_version": "4.46.2", "use_cache": False, "use_mrope": False,
    "use_sliding_window": False, "vocab_size": 152064,
}


def test_reads_real_7b_config_json(tmp_path) -> None:
    from decoding import read_dream_config

    (tmp_path / "config.json").write_text(json.dumps(REAL_7B_CONFIG_JSON))
    config = read_dream_config(tmp_path)
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size", "mask_token_id", "pad_token_id", "rope_theta"):
        assert getattr(config, key) == REAL_7B_CONFIG_JSON[key], key
    assert config.head_dim == 128 and config.tie_word_embeddings is False
    with pytest.raises(ValueError, match="no model.safetensors"):
        load_dream(tmp_path)


@pytest.mark.gpu
def test_cuda_bf16_load_matches_cpu_fp32(tiny_dream_dir, tiny_model: DreamModel) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    model = load_dream(tiny_dream_dir, dtype=torch.bfloat16, device="cuda")
    assert (model.lm_head.weight.device.type == "cuda"
            and model.model.rotary_emb.inv_freq.device.type == "cuda")
    ids = _ids(tiny_model, 2, 16)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    pos = padding_position_ids(mask)
    with torch.no_grad():
        gpu = model(ids.cuda(), attention_mask=mask.cuda(), position_ids=pos.cuda()).logits.float().cpu()
        cpu = tiny_model(ids, attention_mask=mask, position_ids=pos).logits
    assert torch.isfinite(gpu).all()
    torch.testing.assert_close(gpu[:, 4:], cpu[:, 4:], atol=0.1, rtol=0.05)
