"""Cheap integrity checks of checkpoint files, run before a long job reads them.

Why: a copy interrupted by a full disk or a killed job leaves a truncated ``model.safetensors`` or ``.pt``
file. Loading it fails deep inside a worker process (for GRPO: inside a Ray actor, minutes after start-up)
with a stack trace that does not name the file. These checks read only file headers (safetensors: the JSON
header and the byte range it declares; torch ``.pt``: the zip central directory at the end of the file), so
they cost milliseconds even for a 15 GB file, and raise ``ValueError`` naming the file.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

SAFETENSORS_SINGLE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"


def check_safetensors(path: str | Path) -> None:
    """ValueError if ``path`` is not a complete safetensors file (header unreadable or data cut short)."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ValueError(f"{path} is truncated or corrupt ({size} bytes, no safetensors header)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - 8:
            raise ValueError(f"{path} is truncated or corrupt (its header needs {header_len} bytes, the file "
                             f"has {size})")
        try:
            header = json.loads(handle.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError(f"{path} is corrupt (unreadable safetensors header)") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} is corrupt (unreadable safetensors header)")
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"
               and isinstance(v, dict) and "data_offsets" in v), default=0)
    if 8 + header_len + end > size:
        raise ValueError(f"{path} is truncated ({size} bytes; its header declares {8 + header_len + end})")


def check_torch_file(path: str | Path) -> None:
    """ValueError if ``path`` (written by ``torch.save``: a zip archive) is truncated or corrupt."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise ValueError(f"{path} is truncated or corrupt ({err})") from None


def dream_weight_files(root: str | Path) -> list[Path]:
    """The safetensors files of a Dream/HF checkpoint directory (ValueError when none or some are missing)."""
    root = Path(root)
    index = root / SAFETENSORS_INDEX
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
        except json.JSONDecodeError as err:
            raise ValueError(f"{index} is not valid JSON ({err})") from None
        missing = [n for n in names if not (root / n).is_file()]
        if not names or missing:
            raise ValueError(f"{root} has no weights: {SAFETENSORS_INDEX} lists "
                             f"{'no shards' if not names else f'missing shards {missing[:3]}'}")
        return [root / n for n in names]
    if (root / SAFETENSORS_SINGLE).is_file():
        return [root / SAFETENSORS_SINGLE]
    raise ValueError(f"{root} has a config.json but no weights: no {SAFETENSORS_SINGLE} or "
                     f"{SAFETENSORS_INDEX} (Dream checkpoints load from safetensors only)")


def check_dream_weights(root: str | Path) -> None:
    """ValueError unless every weight file of the checkpoint directory ``root`` exists and is complete."""
    for file in dream_weight_files(root):
        check_safetensors(file)
