"""Dream model configuration (``model_type == "Dream"``, as in the checkpoint's ``config.json``).

The class defaults are Qwen-like and do NOT describe Dream-7B; a real model always takes every field from
``config.json``. :func:`dream_7b_config` gives the exact Dream-v0-Instruct-7B values (used by benchmarks and
tests that need the full-size architecture without the weights). Unknown fields in ``config.json``
(``use_mrope``, ``sliding_window``, ``max_window_layers``, ``auto_map``...) are kept as attributes so that a
save round-trips, but the model ignores them.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

DREAM_MODEL_TYPE = "Dream"


class DreamConfig(PretrainedConfig):
    """Configuration of a Dream diffusion LM (Qwen2 architecture with bidirectional attention)."""

    model_type = DREAM_MODEL_TYPE
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 151936,
        hidden_size: int = 4096,
        intermediate_size: int = 22016,
        num_hidden_layers: int = 32,
        num_attention_heads: int = 32,
        num_key_value_heads: int | None = 32,
        hidden_act: str = "silu",
        max_position_embeddings: int = 32768,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        use_cache: bool = False,
        tie_word_embeddings: bool = False,
        rope_theta: float = 10000.0,
        rope_scaling: dict[str, Any] | None = None,
        attention_dropout: float = 0.0,
        mask_token_id: int | None = 151666,
        pad_token_id: int | None = 151643,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.rope_theta = float(rope_theta)
        self.rope_scaling = rope_scaling
        self.attention_dropout = attention_dropout
        self.mask_token_id = mask_token_id
        head_dim = kwargs.pop("head_dim", None)
        if head_dim is not None and num_attention_heads and head_dim * num_attention_heads != hidden_size:
            raise ValueError(
                f"head_dim={head_dim} is inconsistent with hidden_size={hidden_size} / "
                f"num_attention_heads={num_attention_heads} (Dream derives head_dim from them)"
            )
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate_architecture(self) -> None:
        """Raise ``ValueError`` for shapes the model cannot be built with (clear message, no stack trace
        soup)."""
        if self.num_attention_heads <= 0 or self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.num_key_value_heads <= 0 or self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if self.rope_scaling not in (None, {}) and self.rope_scaling.get("rope_type", "default") != "default":
            raise ValueError("only default RoPE is supported (Dream uses none); got "
                             f"rope_scaling={self.rope_scaling}")


def dream_7b_config(**overrides: Any) -> DreamConfig:
    """The exact ``config.json`` values of Dream-org/Dream-v0-Instruct-7B (7,615,616,512 parameters)."""
    values: dict[str, Any] = dict(
        architectures=["DreamModel"],
        attention_dropout=0.0,
        bos_token_id=151643,
        eos_token_id=151643,
        hidden_act="silu",
        hidden_size=3584,
        initializer_range=0.02,
        intermediate_size=18944,
        mask_token_id=151666,
        max_position_embeddings=131072,
        max_window_layers=28,
        num_attention_heads=28,
        num_hidden_layers=28,
        num_key_value_heads=4,
        pad_token_id=151643,
        rms_norm_eps=1e-6,
        rope_scaling=None,
        rope_theta=1000000.0,
        sliding_window=None,
        tie_word_embeddings=False,
        dtype="bfloat16",
        use_cache=False,
        use_mrope=False,
        use_sliding_window=False,
        vocab_size=152064,
    )
    values.update(overrides)
    return DreamConfig(**values)
