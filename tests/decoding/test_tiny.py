"""Tiny Dream factory: real HF layout, Dream ids, logit width > tokenizer, deterministic tokenizer."""

from __future__ import annotations

import json
import platform

import pytest
import torch

from decoding import load_dream
from decoding.tiny import ASSET_META, ASSET_TOKENIZER, main, make_tiny_dream, train_tiny_tokenizer
from decoding.tokenizer import load_tokenizer


def test_layout_and_config(tiny_dream_dir) -> None:
    names = {p.name for p in tiny_dream_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json",
            "tokenizer_config.json"} <= names
    index = json.loads((tiny_dream_dir / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and shards <= names
    config = json.loads((tiny_dream_dir / "config.json").read_text())
    tok = load_tokenizer(tiny_dream_dir)
    assert config["model_type"] == "Dream"
    assert config["vocab_size"] > len(tok)
    assert config["mask_token_id"] == tok.mask_token_id
    assert config["pad_token_id"] == config["eos_token_id"] == tok.eos_token_id == tok.pad_token_id
    assert config["bos_token_id"] == tok.eos_token_id  # as Dream-7B's config.json
    assert 1000 <= len(tok) <= 2100
    generation = json.loads((tiny_dream_dir / "generation_config.json").read_text())
    assert generation["alg"] == "origin" and generation["mask_token_id"] is None


def test_tokenizer_compresses_python(tiny_dream_dir) -> None:
    tok = load_tokenizer(tiny_dream_dir)
    code = "def add(a, b):\n    return a + b\n"
    ids = tok.encode(code, add_special_tokens=False)
    assert len(ids) < len(code) / 2
    assert tok.decode(ids) == code


def test_same_seed_same_weights_single_file(tmp_path, tiny_dream_dir) -> None:
    path = make_tiny_dream(tmp_path / "again", seed=0, shard=False)
    assert (path / "model.safetensors").is_file() and not (path / "model.safetensors.index.json").exists()
    a = load_dream(path, dtype=torch.float32).state_dict()
    b = load_dream(tiny_dream_dir, dtype=torch.float32).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = load_dream(make_tiny_dream(tmp_path / "seed1", seed=1), dtype=torch.float32).state_dict()
    assert not torch.equal(other["lm_head.weight"], a["lm_head.weight"])


@pytest.mark.slow
def test_shipped_tokenizer_matches_retraining() -> None:
    """The cached asset must be what `python -m decoding.tiny --retrain-tokenizer` produces.

    The corpus is the running Python's stdlib, so the check only applies on the Python minor version that
    trained the asset (recorded next to it).
    """
    meta = json.loads(ASSET_META.read_text())
    if meta["python"].rsplit(".", 1)[0] != platform.python_version().rsplit(".", 1)[0]:
        pytest.skip(f"asset trained on Python {meta['python']}; stdlib corpus differs on this interpreter")
    retrained = train_tiny_tokenizer()
    shipped = json.loads(ASSET_TOKENIZER.read_text())
    fresh = json.loads(retrained.to_str())
    assert fresh["model"]["vocab"] == shipped["model"]["vocab"]
    assert fresh["model"]["merges"] == shipped["model"]["merges"]


def test_cli_writes_checkpoint(tmp_path, capsys) -> None:
    main(["--out", str(tmp_path / "cli"), "--num-layers", "1", "--no-shard"])
    assert "wrote tiny Dream checkpoint" in capsys.readouterr().out
    model = load_dream(tmp_path / "cli", dtype=torch.float32)
    assert len(model.model.layers) == 1


def test_tiny_model_names_no_remote_code(tiny_dream_dir) -> None:
    """An ``auto_map`` must not point at code files that are not there (tools loading with remote code
    break)."""
    for name in ("config.json", "tokenizer_config.json"):
        assert "auto_map" not in json.loads((tiny_dream_dir / name).read_text()), name
    assert not list(tiny_dream_dir.glob("*.py"))
