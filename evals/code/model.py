"""Checkpoint resolution and model loading for checkpoint evaluation.

Why: checkpoints come in three shapes — a full HF Dream directory, a peft LoRA adapter directory (whose base
is ``base_model=`` or the adapter's ``base_model_name_or_path``), or a trainer step directory
(``<run>/global_step_N``) holding one of those a few levels down (verl writes ``actor/lora_adapter`` /
``actor/huggingface``). :func:`resolve_checkpoint` turns any of them into a :class:`ModelSource` with clear
errors; :func:`load_model` loads base + adapter (merged or not). Generation is :mod:`evals.generation`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from evals.results import parse_step

ADAPTER_FILE = "adapter_config.json"
MODEL_FILE = "config.json"
# Where trainers put the loadable model inside a step directory, most specific first.
KNOWN_SUBDIRS = ("actor/lora_adapter", "lora_adapter", "adapter", "actor/huggingface", "huggingface", "model")


@dataclass(frozen=True)
class ModelSource:
    """What to load: ``model_dir`` (a full Dream dir) plus an optional peft ``adapter_dir`` on top of it."""

    model_dir: Path
    adapter_dir: Path | None
    step: int | None

    def describe(self) -> str:
        return f"{self.model_dir}" + (f" + adapter {self.adapter_dir}" if self.adapter_dir else "")


def _find_loadable(root: Path) -> Path | None:
    """``root`` itself when it holds a model/adapter, else a known subdir, else the shallowest match
    (depth 3)."""
    if (root / ADAPTER_FILE).is_file() or (root / MODEL_FILE).is_file():
        return root
    for sub in KNOWN_SUBDIRS:
        if (root / sub / ADAPTER_FILE).is_file() or (root / sub / MODEL_FILE).is_file():
            return root / sub
    for depth in (2, 3):
        hits = sorted(
            p.parent for name in (ADAPTER_FILE, MODEL_FILE)
            for p in root.glob("/".join(["*"] * (depth - 1) + [name]))
        )
        if hits:
            return hits[0]
    return None


def resolve_checkpoint(checkpoint: str | Path, base_model: str | Path | None = None,
                       step: int | None = None) -> ModelSource:
    """Resolve ``checkpoint`` (+ ``base_model`` for adapters) into a :class:`ModelSource`.

    Raises ValueError with the reason when the path is missing, holds no model or adapter, or an adapter's
    base cannot be found.
    """
    root = Path(checkpoint).expanduser()
    if not root.is_dir():
        raise ValueError(f"checkpoint {root} is not a directory")
    found = _find_loadable(root)
    if found is None:
        raise ValueError(f"checkpoint {root} holds no Dream model ({MODEL_FILE}) "
                         f"or LoRA adapter ({ADAPTER_FILE})")
    step = step if step is not None else parse_step(found)
    if not (found / ADAPTER_FILE).is_file():
        return ModelSource(found, None, step)
    if base_model is None:
        base_model = json.loads((found / ADAPTER_FILE).read_text()).get("base_model_name_or_path")
        if not base_model:
            raise ValueError(f"adapter {found} names no base model: pass base_model=PATH")
    base = Path(base_model).expanduser()
    if not (base / MODEL_FILE).is_file():
        raise ValueError(f"base model {base} (for adapter {found}) is not a Dream checkpoint dir: "
                         "pass base_model=PATH")
    return ModelSource(base, found, step)


def load_model(source: ModelSource, dtype: torch.dtype, device: torch.device, merge_adapter: bool = True
               ) -> tuple[torch.nn.Module, Any]:
    """Load the Dream model (+ LoRA adapter, merged when ``merge_adapter``) in eval mode, and its tokenizer.

    The tokenizer comes from the adapter dir when it ships one (trainers may save it there), else the model
    dir.
    """
    from decoding import load_dream
    from decoding.tokenizer import load_tokenizer

    model = load_dream(source.model_dir, dtype=dtype, device=device)
    tok_dir = source.model_dir
    if source.adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(source.adapter_dir))
        if merge_adapter:
            model = model.merge_and_unload()
        if (source.adapter_dir / "tokenizer_config.json").is_file():
            tok_dir = source.adapter_dir
    model.eval()
    return model, load_tokenizer(tok_dir)
