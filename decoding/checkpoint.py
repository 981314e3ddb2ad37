"""Load a Dream checkpoint directory (HF layout) straight to a device, with clear errors for wrong inputs.

Layout: ``config.json`` (``model_type: "Dream"``) plus either ``model.safetensors`` or sharded
``model-0000i-of-0000n.safetensors`` with ``model.safetensors.index.json``. The model is built on the meta
device and every tensor is read by ``safetensors`` directly onto the target device in the target dtype, so a
7B model never materialises a random-init copy in CPU memory. ``DreamModel.save_pretrained`` writes the same
layout (sharded above ``max_shard_size``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .config import DREAM_MODEL_TYPE, DreamConfig
from .devices import pick_dtype
from .integrity import SAFETENSORS_INDEX, SAFETENSORS_SINGLE, dream_weight_files
from .model import DreamModel

SINGLE_FILE, INDEX_FILE = SAFETENSORS_SINGLE, SAFETENSORS_INDEX
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
            f"{root} holds a {model_type!r} model, not a Dream checkpoint (config.json model_type must be "
            "'Dream')"
        )
    raw.pop("model_type", None)
    config = DreamConfig(**raw)
    config.validate_architecture()
    return config


def _iter_tensors(files: list[Path], device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
    target = "cpu" if device.type == "meta" else str(device)
    for file in files:
        try:
            with safe_open(str(file), framework="pt", device=target) as handle:
                for key in handle.keys():  # noqa: SIM118 - safe_open handles are not iterable
                    yield key, handle.get_tensor(key)
        except (SafetensorError, OSError) as err:  # truncated download, disk error, not a safetensors file
            raise ValueError(f"{file} is not a readable safetensors file ({err}); re-download or "
                             "re-export it") from None


def load_dream(
    path: str | Path,
    dtype: torch.dtype | str | None = "auto",
    device: torch.device | str | None = None,
) -> DreamModel:
    """Load a Dream checkpoint directory as a :class:`DreamModel` in eval mode.

    Args:
        path: HF checkpoint directory (single or sharded safetensors).
        dtype: parameter dtype; ``"auto"`` (default) = :func:`decoding.devices.pick_dtype` for ``device``:
            bf16 on CUDA, fp32 elsewhere (Dream's config.json says bfloat16, which CPUs without bf16 matrix
            units run ~10x slower); ``None`` keeps the dtype stored in the checkpoint.
        device: target device (default CPU); tensors are read directly onto it.

    Raises:
        ValueError: not a directory / no config.json / wrong ``model_type`` / no weights / missing, unexpected
            or mis-shaped tensors versus the config.
    """
    root = Path(path)
    config = read_dream_config(root)
    files = dream_weight_files(root)
    device = torch.device(device if device is not None else "cpu")
    if dtype == "auto":
        dtype = pick_dtype("auto", device)
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
                f"{root}: tensor {key} has shape {tuple(tensor.shape)} but config.json implies "
                f"{expected[key]}"
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


REMOTE_CODE_CONFIGS = ("config.json", "tokenizer_config.json")


def _auto_map_files(auto_map: dict) -> set[str]:
    """Module files an ``auto_map`` refers to (``"modeling_dream.DreamModel"`` -> ``modeling_dream.py``)."""
    refs: list[str] = []
    for value in auto_map.values():
        refs += [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str)]
    return {ref.split("--")[-1].rsplit(".", 1)[0] + ".py" for ref in refs}


def sync_remote_code(folder: str | Path, base: str | Path | None) -> None:
    """Make an exported Dream folder honest about remote code: no ``auto_map`` that points at a missing file.

    Why: ``save_pretrained`` (and verl's checkpoint manager, which also copies the defining module of the
    wrapped model class, e.g. ``_fsdp_*.py``) writes ``auto_map`` entries and ``.py`` files of its own. Users
    also load our exports with the hub's remote code (``trust_remote_code=True``), so: every ``.py`` file in
    ``folder`` is removed; for ``config.json`` and ``tokenizer_config.json``, if the user's ``base`` folder
    has an ``auto_map`` whose files all exist there, those files are copied from ``base`` (never from us) and
    the ``auto_map`` is the base's; otherwise the key is dropped. Our own loaders need neither.
    """
    out = Path(folder)
    for stray in out.glob("*.py"):
        stray.unlink()
    for name in REMOTE_CODE_CONFIGS:
        target = out / name
        if not target.is_file():
            continue
        values = json.loads(target.read_text())
        base_map = None
        if base is not None and (Path(base) / name).is_file():
            base_map = json.loads((Path(base) / name).read_text()).get("auto_map")
        files = _auto_map_files(base_map) if base_map else set()
        if base_map and all((Path(base) / f).is_file() for f in files):
            for f in sorted(files):
                shutil.copy2(Path(base) / f, out / f)
            values["auto_map"] = base_map
        elif "auto_map" not in values:
            continue
        else:
            values.pop("auto_map")
        target.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
