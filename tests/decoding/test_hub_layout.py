"""The real ``Dream-org/Dream-v0-Instruct-7B`` folder layout loads with our code only, through our loaders and
the Auto classes other libraries (verl) call, whatever ``trust_remote_code`` they pass; our exports stay valid
hub-style folders. Uses the tiny model in the hub's exact layout (fixture ``hub_dream_dir``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

from decoding import DreamModel, DreamTokenizer, build_chat_prompt, load_dream, load_tokenizer
from decoding.checkpoint import sync_remote_code

ROOT = Path(__file__).resolve().parents[2]
REMOTE_CODE = ("configuration_dream.py", "modeling_dream.py", "tokenization_dream.py", "generation_utils.py")


def test_hub_layout_is_the_real_folder_with_tiny_dims(hub_dream_dir: Path) -> None:
    config = json.loads((hub_dream_dir / "config.json").read_text())
    assert config["model_type"] == "Dream" and config["vocab_size"] == 152064 and "auto_map" in config
    assert config["hidden_size"] == 64 and config["torch_dtype"] == "bfloat16"
    tok_config = json.loads((hub_dream_dir / "tokenizer_config.json").read_text())
    assert tok_config["tokenizer_class"] == "DreamTokenizer" and "auto_map" in tok_config
    index = json.loads((hub_dream_dir / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == [f"model-0000{i}-of-00004.safetensors"
                                                         for i in range(1, 5)]
    assert (hub_dream_dir / "vocab.json").is_file() and (hub_dream_dir / "merges.txt").is_file()
    assert not list(hub_dream_dir.glob("*.py")) and not (hub_dream_dir / "tokenizer.json").exists()


def test_real_tokenizer_loads_without_remote_code_with_dreams_ids(hub_dream_dir: Path) -> None:
    tokenizer = load_tokenizer(hub_dream_dir)
    assert isinstance(tokenizer, DreamTokenizer) and len(tokenizer) == 151667
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id,
            tokenizer.mask_token_id) == (
        151643, 151643, 151665, 151666)
    assert tokenizer.padding_side == "left"
    prompt = build_chat_prompt(tokenizer, "Write add(a, b).")
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>") == 151644
    assert tokenizer.decode(ids) == prompt
    code = "def add(a, b):\n    return a + b\n"
    assert tokenizer.decode(tokenizer.encode(code, add_special_tokens=False)) == code


@pytest.mark.parametrize("trust_remote_code", [None, False, True])
def test_auto_classes_and_verl_pick_our_classes(hub_dream_dir: Path, trust_remote_code) -> None:
    """verl's reward loop calls ``hf_tokenizer(path, trust_remote_code=True)``: the hub's auto_map must not
    win."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from verl.utils import hf_tokenizer

    kwargs = {} if trust_remote_code is None else {"trust_remote_code": trust_remote_code}
    assert isinstance(AutoTokenizer.from_pretrained(hub_dream_dir, **kwargs), DreamTokenizer)
    assert isinstance(hf_tokenizer(str(hub_dream_dir), trust_remote_code=bool(trust_remote_code)),
                      DreamTokenizer)
    assert type(AutoConfig.from_pretrained(hub_dream_dir, **kwargs)).__module__ == "decoding.config"
    assert isinstance(AutoModel.from_pretrained(hub_dream_dir, **kwargs), DreamModel)


def test_verl_model_config_reads_the_hub_folder(hub_dream_dir: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from verl.workers.config import HFModelConfig

    config = HFModelConfig(path=str(hub_dream_dir))
    assert isinstance(config.tokenizer, DreamTokenizer)
    assert config.hf_config.model_type == "Dream" and config.hf_config.vocab_size == 152064


def test_load_dream_defaults_to_fp32_on_cpu_although_the_config_says_bf16(hub_dream_dir: Path) -> None:
    model = load_dream(hub_dream_dir)
    assert next(model.parameters()).dtype == torch.float32
    assert next(load_dream(hub_dream_dir, dtype=None).parameters()).dtype == torch.bfloat16  # as stored


def test_truncated_shard_is_a_clear_error_naming_the_file(hub_dream_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(hub_dream_dir, broken)
    shard = broken / "model-00002-of-00004.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(ValueError,
                       match="model-00002-of-00004.safetensors is not a readable safetensors file"):
        load_dream(broken)


def _export(tmp_path: Path, base: Path) -> Path:
    """What verl's checkpoint manager leaves in ``actor/huggingface``: config and tokenizer saved by
    transformers (auto_map included) and a copy of the wrapped model class's module."""
    out = tmp_path / "export"
    load_dream(base).config.save_pretrained(out)
    load_tokenizer(base).save_pretrained(out)
    (out / "_fsdp_dream_model.py").write_text("# copied by custom_object_save\n")
    return out


def test_export_drops_auto_map_when_the_base_has_no_remote_code(hub_dream_dir: Path, tmp_path: Path) -> None:
    out = _export(tmp_path, hub_dream_dir)
    # what save_pretrained writes
    assert "auto_map" in json.loads((out / "tokenizer_config.json").read_text())
    sync_remote_code(out, hub_dream_dir)
    assert not list(out.glob("*.py"))
    for name in ("config.json", "tokenizer_config.json"):
        assert "auto_map" not in json.loads((out / name).read_text()), name
    assert isinstance(AutoTokenizer.from_pretrained(out, trust_remote_code=True), DreamTokenizer)


def test_export_carries_the_users_remote_code_over(hub_dream_dir: Path, tmp_path: Path) -> None:
    user = tmp_path / "user-folder"
    shutil.copytree(hub_dream_dir, user)
    for name in REMOTE_CODE:
        (user / name).write_text(f"# the user's {name}\n")
    out = _export(tmp_path, user)
    sync_remote_code(out, user)
    assert sorted(p.name for p in out.glob("*.py")) == sorted(REMOTE_CODE[:3])  # what the auto_maps name
    assert (out / "modeling_dream.py").read_text() == "# the user's modeling_dream.py\n"
    for name in ("config.json", "tokenizer_config.json"):
        assert (json.loads((out / name).read_text())["auto_map"]
                == json.loads((user / name).read_text())["auto_map"])


@pytest.mark.parametrize("sampler_args", [
    ["--sampler", "plain", "--max-new-tokens", "8", "--steps", "4"],
    ["--sampler", "fast", "--max-new-tokens", "8", "--block-size", "4"],
    ["--sampler", "lockstep", "--r-len", "4", "--a-len", "8"],
], ids=["plain", "fast", "lockstep"])
def test_generate_cli_runs_every_sampler_on_the_hub_folder(hub_dream_dir: Path,
                                                           sampler_args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "decoding.generate", "--model", str(hub_dream_dir), "--prompt",
         "Write add(a, b).", *sampler_args],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
