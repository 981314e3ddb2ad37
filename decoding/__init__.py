"""Dream diffusion LM: our own model, cache, tokenizer helpers, tiny-model factory and samplers.

Importing the package registers ``DreamConfig``/``DreamModel``/``DreamTokenizer`` with
``AutoConfig``/``AutoModel``/``AutoTokenizer`` (model_type ``"Dream"``), so the Auto classes load a hub Dream
folder (whose ``auto_map`` names remote code) with our classes, without ``trust_remote_code``.
"""

import contextlib

from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig

from .cache import DreamKVCache
from .checkpoint import load_dream, read_dream_config
from .config import DreamConfig, dream_7b_config
from .fast import FastResult, fast_generate
from .generate import DreamGenerateOutput, diffusion_generate
from .lockstep import LockstepCfg, lockstep_sample
from .lockstep_trace import LockstepResult
from .model import DreamModel, DreamOutput, key_padding_to_4d, padding_position_ids
from .sampling import confidence_for, invalid_token_mask, sample_tokens, shift_logits
from .tiny import make_tiny_dream
from .tokenizer import (
    DreamTokenizer,
    build_chat_prompt,
    decode_completion,
    decode_completions,
    encode_prompts,
    load_tokenizer,
    stop_token_ids,
)


class TokenizerNameKey(PretrainedConfig):
    """Registration key that makes ``AutoTokenizer`` find :class:`DreamTokenizer` by the name in
    ``tokenizer_config.json`` only. Keyed by :class:`DreamConfig` instead, transformers would treat the hub's
    ``auto_map`` as the model's own tokenizer code and run it whenever a caller passes ``trust_remote_code=True``
    (verl's reward loop always does); registered by name, ours counts as explicit local code and wins."""

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
    "FastResult",
    "LockstepCfg",
    "LockstepResult",
    "DreamGenerateOutput",
    "DreamKVCache",
    "DreamModel",
    "DreamOutput",
    "DreamTokenizer",
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
