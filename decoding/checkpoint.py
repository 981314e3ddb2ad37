"""Load a Dream checkpoint directory (HF layout) straight to a device, with clear errors for wrong inputs.

Layout: ``config.json`` (``model_type: "Dream"``) plus either ``model.safetensors`` or sharded
``model-0000i-of-0000n.safetensors`` with ``model.safetensors.index.json``. The model is built on the meta
device and every tensor is read by ``safetensors`` directly onto the target device in the target dtype, so a
7B model never materialises a random-init copy in CPU memory. ``DreamModel.save_pretrained`` writes the same
layout (sharded above ``max_shard_size``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from .config import DREAM_MODEL_TYPE, DreamConfig
from .model import DreamModel

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_IGNORED_KEYS = ("rotary_emb.inv_freq",)


def read_dream_config(path: str | Path) -> DreamConfig:
    """Read and validate ``config.json`` of a Dream checkpoint directory (``ValueError`` if it is not one)."""
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory; expected a Dream checkpoint directory (HF layout)")
    config_file = root / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{root} has no config.json; it is not a Hugging Face model directory")
    try:
        raw = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_file} is not valid JSON: {err}") from None
    model_type = raw.get("model_type")
    if str(model_type).lower() != DREAM_MODEL_TYPE.lower():
        raise ValueError(
            f"{root} holds a {model_type!r} model, not a Dream checkpoint (config.json model_type must be 'Dream')"
        )
    raw.pop("model_type", None)
    config = DreamConfig(**raw)
    config.validate_architecture()
    return config


def _weight_files(root: Path) -> list[Path]:
    index = root / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        if not weight_map:
            raise ValueError(f"{index} has an empty weight_map")
        files = sorted({root / name for name in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ValueError(f"{root}: shards listed in {INDEX_FILE} are missing: {missing}")
        return files
    single = root / SINGLE_FILE
    if single.is_file():
        return [single]
    raise ValueError(
        f"{root} has no {SINGLE_FILE} or {INDEX_FILE}; Dream checkpoints are loaded from safetensors only"
    )


def _iter_tensors(files: list[Path], device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
    target = "cpu" if device.type == "meta" else str(device)
    for file in files:
        with safe_open(str(file), framework="pt", device=target) as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open handles are not iterable
                yield key, handle.get_tensor(key)


def load_dream(
    path: str | Path,
    dtype: torch.dtype | None = torch.bfloat16,
    device: torch.device | str | None = None,
) -> DreamModel:
    """Load a Dream checkpoint directory as a :class:`DreamModel` in eval mode.

    Args:
        path: HF checkpoint directory (single or sharded safetensors).
        dtype: parameter dtype (default bf16); ``None`` keeps the dtype stored in the checkpoint.
        device: target device (default CPU); tensors are read directly onto it.

    Raises:
        ValueError: not a directory / no config.json / wrong ``model_type`` / no weights / missing, unexpected
            or mis-shaped tensors versus the config.
    """
    root = Path(path)
    config = read_dream_config(root)
    files = _weight_files(root)
    device = torch.device(device if device is not None else "cpu")
    with torch.device("meta"):
        model = DreamModel(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, tensor in _iter_tensors(files, device):
        if key.endswith(_IGNORED_KEYS):
            continue
        if key not in expected:
            unexpected.append(key)
            continue
        if tuple(tensor.shape) != expected[key]:
            raise ValueError(
                f"{root}: tensor {key} has shape {tuple(tensor.shape)} but config.json implies {expected[key]}"
            )
        state[key] = tensor if dtype is None else tensor.to(dtype)
    if config.tie_word_embeddings and "lm_head.weight" not in state and "model.embed_tokens.weight" in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    missing = sorted(set(expected) - set(state))
    if missing or unexpected:
        raise ValueError(
            f"{root} does not match its config.json: missing tensors {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}; unexpected tensors {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''}"
        )
    model.load_state_dict(state, strict=True, assign=True)
    model.reset_rope(device)
    param_dtype = next(iter(state.values())).dtype
    model.config.dtype = param_dtype
    return model.eval()
