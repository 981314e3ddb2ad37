"""Device and dtype choice shared by every command-line entry point.

Why: a CLI that loads a checkpoint in the dtype its ``config.json`` names (bfloat16 for Dream) runs on a CPU
without native bf16 matmuls about 10x slower than fp32 (docs/benchmarks.md). Every entry point therefore takes
``--dtype auto`` (the default) = bfloat16 on CUDA, float32 on CPU, and passes the resolved dtype to
``load_dream`` explicitly.
"""

from __future__ import annotations

import torch

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "fp32": torch.float32, "float32": torch.float32}
DTYPE_CHOICES = ("auto", *DTYPES)


def pick_device(name: str | None = None, label: str | None = None) -> torch.device:
    """``None``/``auto`` = CUDA when available, else CPU; ValueError for CUDA without a GPU or a bad name.

    ``label``: how the setting is spelled where the user wrote it (``device=cuda`` for a Hydra key); default
    ``device 'cuda'``."""
    label = label or f"device {name!r}"
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{label} is not one of auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{label} but CUDA is not available (use cpu)")
    return device


def pick_dtype(name: str | None, device: torch.device, label: str | None = None) -> torch.dtype:
    """``None``/``auto`` = bfloat16 on CUDA, float32 elsewhere; else one of :data:`DTYPES` (ValueError if not,
    naming the setting as ``label``, default ``dtype 'x'``)."""
    if name in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"{label or f'dtype {name!r}'} is not one of {', '.join(DTYPE_CHOICES)}")
    return DTYPES[name]
