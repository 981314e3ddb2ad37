"""Dream diffusion LM: our own model, cache, tokenizer helpers, tiny-model factory and samplers.

Importing the package registers ``DreamConfig``/``DreamModel``/``DreamTokenizer`` with
``AutoConfig``/``AutoModel``/``AutoTokenizer`` (model_type ``"Dream"``), so the Auto classes load a hub Dream
folder (whose ``auto_map`` names remote code) with our classes, without ``trust_remote_code``.

Why the public names are imported lazily (PEP 562 ``__getattr__``): several submodules are also command-line
programs (``python -m decoding.generate``, ``decoding.fast``, ``decoding.viz``, ``decoding.tiny``). ``runpy``
imports this package before it runs the submodule as ``__main__``; if the package had already imported that
submodule, the program would run a second copy of it and Python warns (``RuntimeWarning: 'decoding.generate'
found in sys.modules ...``). So only the model and its config (needed for the registration, and no CLI) are
imported eagerly (and the tokenizer class, no CLI either); ``from decoding import load_dream`` and friends
import their module on first use.
"""

import contextlib
import importlib
from typing import Any

from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig

from .config import DreamConfig, dream_7b_config
from .model import DreamModel, DreamOutput, key_padding_to_4d, padding_position_ids
from .tokenizer import DreamTokenizer

# public name -> submodule that defines it (imported on first access)
_LAZY = {
    "DreamKVCache": "cache",
    "load_dream": "checkpoint",
    "read_dream_config": "checkpoint",
    "FastResult": "fast",
    "fast_generate": "fast",
    "DreamGenerateOutput": "generate",
    "diffusion_generate": "generate",
    "LockstepCfg": "lockstep",
    "lockstep_sample": "lockstep",
    "LockstepResult": "lockstep_trace",
    "confidence_for": "sampling",
    "invalid_token_mask": "sampling",
    "sample_tokens": "sampling",
    "shift_logits": "sampling",
    "make_tiny_dream": "tiny",
    "build_chat_prompt": "tokenizer",
    "decode_completion": "tokenizer",
    "decode_completions": "tokenizer",
    "encode_prompts": "tokenizer",
    "load_tokenizer": "tokenizer",
    "stop_token_ids": "tokenizer",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class TokenizerNameKey(PretrainedConfig):
    """Registration key that makes ``AutoTokenizer`` find :class:`DreamTokenizer` by the name in
    ``tokenizer_config.json`` only. Keyed by :class:`DreamConfig` instead, transformers would treat the hub's
    ``auto_map`` as the model's own tokenizer code and run it whenever a caller passes
    ``trust_remote_code=True`` (verl's reward loop always does); registered by name, ours counts as explicit
    local code and wins."""

    model_type = "dream-tokenizer-name"


def _register() -> None:
    # ValueError = already registered (e.g. a module reload); registration is idempotent for us.
    with contextlib.suppress(ValueError):
        AutoConfig.register("Dream", DreamConfig)
    with contextlib.suppress(ValueError):
        AutoModel.register(DreamConfig, DreamModel)
    with contextlib.suppress(ValueError):
        AutoTokenizer.register(TokenizerNameKey, fast_tokenizer_class=DreamTokenizer)


_register()

__all__ = [
    "DreamConfig",
    "DreamGenerateOutput",
    "DreamKVCache",
    "DreamModel",
    "DreamOutput",
    "DreamTokenizer",
    "FastResult",
    "LockstepCfg",
    "LockstepResult",
    "build_chat_prompt",
    "confidence_for",
    "decode_completion",
    "decode_completions",
    "diffusion_generate",
    "dream_7b_config",
    "encode_prompts",
    "fast_generate",
    "invalid_token_mask",
    "key_padding_to_4d",
    "load_dream",
    "load_tokenizer",
    "lockstep_sample",
    "make_tiny_dream",
    "padding_position_ids",
    "read_dream_config",
    "sample_tokens",
    "shift_logits",
    "stop_token_ids",
]
