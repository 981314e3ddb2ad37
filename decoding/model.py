"""Our own Dream model: Qwen2 weights and numerics with bidirectional attention (no remote code).

State-dict keys are exactly ``Qwen2ForCausalLM``'s (``model.embed_tokens``,
``model.layers.N.self_attn.{q,k,v,o}_proj`` with biases on q/k/v only, ``mlp.{gate,up,down}_proj``,
``{input,post_attention}_layernorm``, ``model.norm``, untied ``lm_head``), so an HF Dream checkpoint loads as
is. Numerics follow the reference: RMSNorm in fp32 then cast back before the weight multiply; rotate-half RoPE
with fp32 ``inv_freq``/cos/sin (autocast off) cast to the activation dtype; SDPA with ``is_causal=False``;
logits over all positions with **no shift** (samplers shift).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from .cache import DreamKVCache
from .config import DreamConfig


@dataclass
class DreamOutput(ModelOutput):
    """Forward output: ``logits`` ``[B, n, V]`` in the model dtype (not shifted)."""

    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None


def padding_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch: ``cumsum(mask) - 1`` with pads set to 1 (Dream's ``tok_idx``).

    The first real token of every row gets position 0 whatever the amount of left padding.
    """
    mask = attention_mask.long()
    pos = mask.cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)


def key_padding_to_4d(key_mask: torch.Tensor, query_start: int, num_queries: int) -> torch.Tensor:
    """Bidirectional bool mask ``[B, 1, n, S]`` (True = attend) from a ``[B, S]`` key-padding mask.

    Query ``i`` sits at absolute position ``query_start + i``. Real queries attend to every real key (as the
    reference's outer AND). Pad queries attend to the real keys and to themselves, so no row is fully masked
    (a fully masked row is NaN in eager/additive attention and leaks into the next layer); real-token outputs
    are unaffected because pad keys stay masked for real queries.
    """
    keys = key_mask.bool()
    batch, num_keys = keys.shape
    if query_start + num_queries > num_keys:
        raise ValueError(
            f"attention_mask covers {num_keys} keys but the queries reach position "
            f"{query_start + num_queries}"
        )
    query_is_pad = ~keys[:, query_start : query_start + num_queries]
    rows = torch.arange(num_queries, device=keys.device)
    diagonal = torch.zeros(num_queries, num_keys, dtype=torch.bool, device=keys.device)
    diagonal[rows, rows + query_start] = True
    mask = keys[:, None, None, :] | (diagonal[None, None] & query_is_pad[:, None, :, None])
    return mask


def _unblock_empty_rows(mask: torch.Tensor, query_start: int) -> torch.Tensor:
    """Let fully masked query rows (e.g. pads in the reference's outer-AND mask) attend to themselves.

    A row with no key gives NaN in the math/eager kernels, and 0 * NaN leaks into real rows at the next layer.
    """
    n, num_keys = mask.shape[-2], mask.shape[-1]
    if query_start + n > num_keys:
        return mask
    empty = ~mask.any(dim=-1, keepdim=True)
    rows = torch.arange(n, device=mask.device)
    diagonal = torch.zeros(n, num_keys, dtype=torch.bool, device=mask.device)
    diagonal[rows, rows + query_start] = True
    return mask | (empty & diagonal)


class DreamRMSNorm(nn.Module):
    """RMSNorm computed in fp32, cast back to the input dtype, then scaled by the weight (reference order)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        h = hidden_states.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * h.to(input_dtype)


class DreamRotaryEmbedding(nn.Module):
    """Default (non-interleaved) RoPE; ``inv_freq`` is a non-persistent fp32 buffer recomputed after
    loading."""

    def __init__(self, config: DreamConfig, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.dim = config.head_dim
        self.base = config.rope_theta
        self.register_buffer("inv_freq", self.compute_inv_freq(device), persistent=False)

    def compute_inv_freq(self, device: torch.device | str | None = None) -> torch.Tensor:
        exponent = torch.arange(0, self.dim, 2, dtype=torch.int64, device=device).float() / self.dim
        return 1.0 / (self.base**exponent)

    @torch.no_grad()
    def reset_inv_freq(self, device: torch.device | str | None = None) -> None:
        """Recompute ``inv_freq`` in fp32 (meta-device init / ``empty_like`` loading leaves it garbage)."""
        if device is None:
            device = self.inv_freq.device
            if device.type == "meta":
                device = torch.device("cpu")
        self.inv_freq = self.compute_inv_freq(device)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = self.inv_freq
        if inv_freq.dtype != torch.float32 or inv_freq.device != x.device:
            inv_freq = self.compute_inv_freq(x.device)  # a .to(bf16) of the module must not degrade RoPE
        with torch.autocast(device_type=x.device.type, enabled=False):
            freqs = position_ids[:, :, None].float() * inv_freq[None, None, :]
            emb = torch.cat((freqs, freqs), dim=-1)
            cos, sin = emb.cos(), emb.sin()
        return cos.to(x.dtype), sin.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x`` is ``[B, H, n, D]``; cos/sin are ``[B, n, D]``."""
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    if n_rep == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


class DreamAttention(nn.Module):
    def __init__(self, config: DreamConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.attention_dropout = config.attention_dropout
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)

    def forward(
        self,
        hidden_states: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn_mask: torch.Tensor | None,
        kv_cache: DreamKVCache | None,
        cache_start: int,
        store_kv: bool,
    ) -> torch.Tensor:
        bsz, n, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(bsz, n, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden_states).view(bsz, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden_states).view(bsz, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.attend_kv(self.layer_idx, k, v, cache_start, store_kv)
        n_rep = self.num_heads // self.num_kv_heads
        dropout = self.attention_dropout if self.training else 0.0
        if attn_mask is None and n_rep > 1:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=False, enable_gqa=True)
        else:
            out = F.scaled_dot_product_attention(
                q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), attn_mask=attn_mask, dropout_p=dropout,
                is_causal=False
            )
        return self.o_proj(out.transpose(1, 2).reshape(bsz, n, self.num_heads * self.head_dim))


class DreamMLP(nn.Module):
    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        if config.hidden_act != "silu":
            raise ValueError(f"Dream uses hidden_act='silu'; got {config.hidden_act!r}")
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DreamDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm residual block; the FSDP wrap unit (``_no_split_modules``)."""

    def __init__(self, config: DreamConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = DreamAttention(config, layer_idx)
        self.mlp = DreamMLP(config)
        self.input_layernorm = DreamRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = DreamRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        kv_cache: DreamKVCache | None = None,
        cache_start: int = 0,
        store_kv: bool = False,
    ) -> torch.Tensor:
        attn = self.self_attn(
            self.input_layernorm(hidden_states), cos, sin, attn_mask, kv_cache, cache_start, store_kv
        )
        hidden_states = hidden_states + attn
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class DreamPreTrainedModel(PreTrainedModel):
    config_class = DreamConfig
    config: DreamConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DreamDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    _supports_flash_attn = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, DreamRotaryEmbedding):
            module.reset_inv_freq()
            return
        super()._init_weights(module)


class DreamBaseModel(DreamPreTrainedModel):
    """Embeddings + decoder stack + final norm (``model.*`` keys)."""

    def __init__(self, config: DreamConfig) -> None:
        super().__init__(config)
        config.validate_architecture()
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([DreamDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = DreamRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = DreamRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | str | None = None,
        position_ids: torch.Tensor | None = None,
        kv_cache: DreamKVCache | None = None,
        cache_start: int = 0,
        store_kv: bool = False,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final-norm hidden states ``[B, n, H]``; arguments as :meth:`DreamModel.forward`."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        hidden = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        bsz, n, _ = hidden.shape
        if kv_cache is None and cache_start != 0:
            raise ValueError("cache_start needs a kv_cache")
        if position_ids is None:
            position_ids = torch.arange(cache_start, cache_start + n,
                                        device=hidden.device)[None].expand(bsz, n)
        elif position_ids.dim() == 1:
            position_ids = position_ids[None].expand(bsz, n)
        attn_mask = self._attention_mask(attention_mask, kv_cache, cache_start, n)
        cos, sin = self.rotary_emb(hidden, position_ids)
        for layer in self.layers:
            hidden = layer(
                hidden, cos=cos, sin=sin, attn_mask=attn_mask, kv_cache=kv_cache, cache_start=cache_start,
                store_kv=store_kv,
            )
        return self.norm(hidden)

    @staticmethod
    def _attention_mask(
        attention_mask: torch.Tensor | str | None, kv_cache: DreamKVCache | None, cache_start: int, n: int
    ) -> torch.Tensor | None:
        if attention_mask is None or isinstance(attention_mask, str):
            if attention_mask not in (None, "full"):
                raise ValueError(f"attention_mask string must be 'full', got {attention_mask!r}")
            return None
        if attention_mask.dim() == 2:
            return key_padding_to_4d(attention_mask, cache_start, n)
        if attention_mask.dim() == 4:
            if attention_mask.dtype != torch.bool:
                return attention_mask  # additive float mask, used as given
            return _unblock_empty_rows(attention_mask, cache_start)
        raise ValueError("attention_mask must be None, 'full', [B, S] or [B, 1, n, S]; got "
                         f"{tuple(attention_mask.shape)}")


class DreamModel(DreamPreTrainedModel):
    """Dream diffusion LM: :class:`DreamBaseModel` (``model``) + untied ``lm_head``.

    ``forward(input_ids [B, n], attention_mask=None, position_ids=None, kv_cache=None, cache_start=0,
    store_kv=False, **kw) -> DreamOutput`` with ``.logits [B, n, V]`` in the model dtype, **unshifted**
    (logit i is the model's output at position i; Dream samplers use ``[L0, L0, L1, ...]``).

    * ``attention_mask``: ``None``/``"full"`` = every query attends every key; a 0/1 or bool ``[B, S_keys]``
      key-padding mask (the model builds the bidirectional 4-D mask; pad queries attend to themselves so
      nothing is NaN); or a ready bool ``[B, 1, n, S_keys]`` mask (True = attend) or float additive mask.
    * ``position_ids``: ``[B, n]`` or ``[n]``; default ``arange(cache_start, cache_start + n)``. For
      left-padded batches pass :func:`padding_position_ids` of the full mask (sliced to the window).
    * ``kv_cache`` (:class:`DreamKVCache`): the ``n`` new tokens sit at absolute positions
      ``[cache_start, cache_start + n)``; attention sees
      ``cache[:cache_start] ++ new ++ cache[cache_start+n:]`` (tail only where the cache covers it; ``S_keys``
      = max(cache length, cache_start + n)). ``store_kv=True`` writes the new K/V (after RoPE) at
      ``[cache_start, cache_start + n)``.
    * ``logits_to_keep``: int k > 0 keeps only the last k positions' logits (saves the lm_head on long
      prompts).
    """

    def __init__(self, config: DreamConfig) -> None:
        super().__init__(config)
        self.model = DreamBaseModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def can_generate(cls) -> bool:
        """Dream has no autoregressive ``generate``; use :func:`decoding.generate.diffusion_generate`."""
        return False

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head = new_embeddings

    def get_decoder(self) -> DreamBaseModel:
        return self.model

    def reset_rope(self, device: torch.device | str | None = None) -> None:
        """Recompute the RoPE ``inv_freq`` buffer (call after any meta-device / low-level load)."""
        if device is None:
            device = self.model.embed_tokens.weight.device
        self.model.rotary_emb.reset_inv_freq(device)

    def prepare_inputs_for_generation(self, input_ids: torch.Tensor, **kwargs) -> dict:
        """Needed by peft's ``PeftModelForCausalLM``; Dream has no AR generate, so inputs pass through."""
        return {"input_ids": input_ids, "attention_mask": kwargs.get("attention_mask")}

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | str | None = None,
        position_ids: torch.Tensor | None = None,
        kv_cache: DreamKVCache | None = None,
        cache_start: int = 0,
        store_kv: bool = False,
        inputs_embeds: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> DreamOutput:
        hidden = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, kv_cache=kv_cache,
            cache_start=cache_start, store_kv=store_kv, inputs_embeds=inputs_embeds,
        )
        kept = hidden[:, -logits_to_keep:] if logits_to_keep > 0 else hidden
        return DreamOutput(logits=self.lm_head(kept), last_hidden_state=hidden)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):  # noqa: D102 - same as PreTrainedModel, plus a RoPE refresh
        model = super().from_pretrained(*args, **kwargs)
        model.reset_rope()
        return model
