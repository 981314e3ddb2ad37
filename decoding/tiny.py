"""Tiny Dream factory: a random-init Dream of the real architecture + a small code BPE, in the real HF layout.

Used by tests of every package and by the CPU demo. The directory holds ``config.json``
(``model_type: "Dream"``, mask/pad/eos/bos ids, a ``vocab_size`` larger than the tokenizer like the 7B's
152064 > 151667), ``generation_config.json``, (sharded) safetensors + index, and the tokenizer files
transformers writes.

The tokenizer is a byte-level BPE trained deterministically (``tokenizers``) on a fixed set of Python standard
library modules, so the demo can learn to write small Python functions. The trained tokenizer ships as
``decoding/assets/tiny_tokenizer.json`` (fast fixtures, identical across Python versions); regenerate it
with::

    python -m decoding.tiny --retrain-tokenizer
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sysconfig
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from .checkpoint import INDEX_FILE, read_dream_config
from .config import DreamConfig
from .model import DreamModel
from .tokenizer import BEGIN_OF_TEXT, CHATML_TEMPLATE, END_OF_TEXT, IM_END, IM_START, MASK

ASSET_TOKENIZER = Path(__file__).parent / "assets" / "tiny_tokenizer.json"
ASSET_META = ASSET_TOKENIZER.with_suffix(".meta.json")  # Python version + corpus the asset was trained with
TINY_BPE_VOCAB = 1536  # learned BPE vocabulary incl. the 256 byte symbols; specials are appended after it
# Qwen2's pre-tokenization split (digits one by one, letters runs, punctuation runs, newline runs), so the
# tiny tokenizer behaves like Qwen2Tokenizer (the class used for the real Dream vocab.json/merges.txt layout).
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIAL_TOKENS = (END_OF_TEXT, IM_START, IM_END, BEGIN_OF_TEXT, MASK)  # Dream order: eos/pad first, mask last
CORPUS_MODULES = (
    "textwrap.py", "string.py", "heapq.py", "bisect.py", "functools.py", "collections/__init__.py",
    "json/encoder.py", "json/decoder.py", "fractions.py", "statistics.py", "random.py", "difflib.py",
    "calendar.py", "base64.py", "shlex.py", "operator.py", "copy.py", "pprint.py", "colorsys.py",
    "keyword.py", "glob.py", "fnmatch.py", "queue.py", "graphlib.py", "numbers.py",
)


def _corpus() -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [(stdlib / name).read_text(encoding="utf-8") for name in CORPUS_MODULES
             if (stdlib / name).is_file()]
    if len(texts) < len(CORPUS_MODULES) // 2:
        raise RuntimeError(f"Python stdlib sources not found under {stdlib}; cannot train the tiny tokenizer")
    return texts


def train_tiny_tokenizer(vocab_size: int = TINY_BPE_VOCAB) -> Tokenizer:
    """Train the byte-level BPE deterministically and append Dream's special tokens after the learned
    vocab."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return tokenizer


def tiny_tokenizer(retrain: bool = False) -> Tokenizer:
    """The shipped tiny tokenizer (or a freshly trained one)."""
    if not retrain and ASSET_TOKENIZER.is_file():
        return Tokenizer.from_file(str(ASSET_TOKENIZER))
    return train_tiny_tokenizer()


def _hf_tokenizer(raw: Tokenizer) -> PreTrainedTokenizerFast:
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        bos_token=BEGIN_OF_TEXT,
        mask_token=MASK,
        additional_special_tokens=[IM_START, IM_END],
        padding_side="left",
        model_max_length=2048,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def tiny_config(tokenizer_size: int, token_ids: dict[str, int], **overrides) -> DreamConfig:
    """Dream config of the tiny model: logit width rounded up past the tokenizer (like the 7B)."""
    vocab_size = (tokenizer_size // 128 + 1) * 128
    values = dict(
        architectures=["DreamModel"],
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_act="silu",
        max_position_embeddings=2048,
        initializer_range=0.1,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        rope_scaling=None,
        tie_word_embeddings=False,
        use_cache=False,
        attention_dropout=0.0,
        mask_token_id=token_ids[MASK],
        pad_token_id=token_ids[END_OF_TEXT],
        bos_token_id=token_ids[END_OF_TEXT],
        eos_token_id=token_ids[END_OF_TEXT],
    )
    values.update(overrides)
    return DreamConfig(**values)


def make_tiny_dream(
    out_dir: str | Path,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    shard: bool = True,
    dtype: torch.dtype = torch.float32,
    initializer_range: float = 0.1,
    retrain_tokenizer: bool = False,
) -> Path:
    """Write a random-init tiny Dream (weights + tokenizer + configs) to ``out_dir`` and return its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    raw = tiny_tokenizer(retrain=retrain_tokenizer)
    hf_tok = _hf_tokenizer(raw)
    ids = {t: raw.token_to_id(t) for t in SPECIAL_TOKENS}
    config = tiny_config(
        len(hf_tok), ids, hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, num_key_value_heads=num_kv_heads, intermediate_size=intermediate_size,
        initializer_range=initializer_range, dtype=str(dtype).removeprefix("torch."),
    )
    torch.manual_seed(seed)
    model = DreamModel(config).to(dtype)
    n_params = sum(p.numel() for p in model.parameters())
    shard_size = max(n_params * dtype.itemsize // 3, 1) if shard else 10**12
    model.save_pretrained(out, max_shard_size=shard_size)
    hf_tok.save_pretrained(out)
    generation = dict(
        alg="origin", alg_temp=None, eps=0.001, steps=512, temperature=0.0, top_p=None, top_k=None,
        output_history=False, bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id, mask_token_id=None,
    )
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return out


# Files of the hub folder that a hub-layout tiny model rewrites (config, index) or that describe our copy
# only.
_HUB_REWRITTEN = ("config.json", INDEX_FILE, "README.md")
HUB_SHARDS = 4  # Dream-v0-Instruct-7B ships model-0000{1..4}-of-00004.safetensors


def make_hub_layout_dream(
    out_dir: str | Path,
    hub_dir: str | Path,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
) -> Path:
    """A random-init Dream in exactly the layout of a downloaded hub folder, dims shrunk.

    ``hub_dir`` holds the real hub files minus weights (``../shared/data/dream-v0-instruct-7b``): every file
    is copied verbatim (the real ``vocab.json``/``merges.txt``, ``tokenizer_config.json`` naming the remote
    ``DreamTokenizer``, ``config.json`` with its ``auto_map``) except that ``config.json`` gets the tiny dims
    (``vocab_size`` stays 152,064) and the weights are written, in the checkpoint's dtype, as
    ``model-0000i-of-00004.safetensors`` shards with ``model.safetensors.index.json``. No remote-code ``.py``
    files: whatever loads it must not need them.
    """
    from safetensors.torch import save_file

    hub, out = Path(hub_dir), Path(out_dir)
    raw = json.loads((hub / "config.json").read_text())
    raw.update(hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
               num_key_value_heads=num_kv_heads, intermediate_size=intermediate_size,
               max_window_layers=num_layers, initializer_range=0.1)
    out.mkdir(parents=True, exist_ok=True)
    for file in sorted(hub.iterdir()):
        if file.is_file() and file.name not in _HUB_REWRITTEN:
            shutil.copy2(file, out / file.name)
    (out / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
    config = read_dream_config(out)
    torch.manual_seed(seed)
    state = DreamModel(config).to(getattr(torch, raw.get("torch_dtype", "bfloat16"))).state_dict()
    # embed, layer 0 ... layer n-1, norm, lm_head: contiguous groups, like the hub's shards
    keys = list(state)
    bounds = [round(i * len(keys) / HUB_SHARDS) for i in range(HUB_SHARDS + 1)]
    weight_map: dict[str, str] = {}
    for i in range(HUB_SHARDS):
        name = f"model-{i + 1:05d}-of-{HUB_SHARDS:05d}.safetensors"
        shard = {k: state[k].contiguous() for k in keys[bounds[i]:bounds[i + 1]]}
        save_file(shard, str(out / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a tiny random-init Dream checkpoint (HF layout).")
    parser.add_argument("--out", type=Path, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--no-shard", action="store_true", help="write a single model.safetensors")
    parser.add_argument(
        "--retrain-tokenizer", action="store_true",
        help=f"retrain the BPE on the stdlib corpus and overwrite {ASSET_TOKENIZER.name} in decoding/assets/",
    )
    args = parser.parse_args(argv)
    if args.retrain_tokenizer:
        ASSET_TOKENIZER.parent.mkdir(parents=True, exist_ok=True)
        train_tiny_tokenizer().save(str(ASSET_TOKENIZER))
        meta = {"python": platform.python_version(), "corpus_modules": list(CORPUS_MODULES),
                "bpe_vocab": TINY_BPE_VOCAB, "special_tokens": list(SPECIAL_TOKENS)}
        ASSET_META.write_text(json.dumps(meta, indent=2) + "\n")
        print(f"wrote {ASSET_TOKENIZER}")
    if args.out is None:
        if not args.retrain_tokenizer:
            parser.error("--out is required (unless only --retrain-tokenizer)")
        return
    path = make_tiny_dream(
        args.out, seed=args.seed, hidden_size=args.hidden_size, num_layers=args.num_layers,
        shard=not args.no_shard
    )
    print(f"wrote tiny Dream checkpoint to {path}")


if __name__ == "__main__":
    main()
