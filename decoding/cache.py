"""Key/value cache for Dream's bidirectional attention.

Dream attends over the whole canvas, so a cache here is not an autoregressive append-only log: a forward can
recompute any contiguous window ``[start, start + n)`` of absolute positions while reusing cached keys/values
on both sides of it (the "dual cache" of Fast-dLLM). The cache stores per layer K and V **after RoPE** with
shape ``[B, n_kv_heads, S, head_dim]`` for absolute positions ``[0, S)``.

Contract used by :meth:`decoding.model.DreamModel.forward`:

* keys/values seen by the attention of a forward with ``n`` new tokens at ``cache_start`` are
  ``cache[:cache_start] ++ new ++ cache[cache_start + n:]`` (the tail only where the cache already covers
  those positions);
* ``store_kv=True`` writes the new K/V into ``[cache_start, cache_start + n)`` (extending the cache).

Storage is allocated with spare capacity (``reserve``) so that in-place writes of a sliding window never
re-allocate; ``length`` is the number of valid positions.
"""

from __future__ import annotations

import torch


class DreamKVCache:
    """Per-layer K/V store over absolute positions ``[0, length)``.

    Args:
        num_layers: number of decoder layers of the model using the cache.
        capacity: optional number of positions to pre-allocate on first write (e.g. the full canvas length),
            which makes later writes in-place and lets attention read a view instead of a concatenation.
    """

    def __init__(self, num_layers: int, capacity: int | None = None) -> None:
        if num_layers <= 0:
            raise ValueError(f"num_layers must be positive, got {num_layers}")
        self.num_layers = num_layers
        self.capacity_hint = capacity
        self._keys: list[torch.Tensor | None] = [None] * num_layers
        self._values: list[torch.Tensor | None] = [None] * num_layers
        self._lengths: list[int] = [0] * num_layers

    # ------------------------------------------------------------------ queries
    @property
    def length(self) -> int:
        """Number of cached absolute positions (of layer 0; all layers agree after a full forward)."""
        return self._lengths[0]

    def layer_length(self, layer_idx: int) -> int:
        return self._lengths[layer_idx]

    def keys(self, layer_idx: int) -> torch.Tensor | None:
        """Valid cached keys ``[B, H_kv, length, D]`` of one layer (a view), or None if empty."""
        k = self._keys[layer_idx]
        return None if k is None else k[:, :, : self._lengths[layer_idx]]

    def values(self, layer_idx: int) -> torch.Tensor | None:
        v = self._values[layer_idx]
        return None if v is None else v[:, :, : self._lengths[layer_idx]]

    def __len__(self) -> int:
        return self.length

    # ------------------------------------------------------------------ mutation
    def reset(self) -> None:
        """Forget everything (storage is released)."""
        self._keys = [None] * self.num_layers
        self._values = [None] * self.num_layers
        self._lengths = [0] * self.num_layers

    def crop(self, length: int) -> None:
        """Keep only positions ``[0, length)`` (storage is kept for reuse)."""
        if length < 0:
            raise ValueError(f"crop length must be >= 0, got {length}")
        self._lengths = [min(n, length) for n in self._lengths]

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only the given batch rows (index tensor or bool mask), e.g. to drop finished sequences."""
        for i in range(self.num_layers):
            if self._keys[i] is not None:
                self._keys[i] = self._keys[i][rows]
                self._values[i] = self._values[i][rows]

    def _ensure_capacity(self, layer_idx: int, like: torch.Tensor, needed: int) -> None:
        store = self._keys[layer_idx]
        if store is not None and store.shape[2] >= needed:
            return
        capacity = max(needed, self.capacity_hint or 0)
        shape = (like.shape[0], like.shape[1], capacity, like.shape[3])
        new_k = like.new_empty(shape)
        new_v = like.new_empty(shape)
        old_len = self._lengths[layer_idx]
        if store is not None and old_len > 0:
            new_k[:, :, :old_len] = store[:, :, :old_len]
            new_v[:, :, :old_len] = self._values[layer_idx][:, :, :old_len]
        self._keys[layer_idx] = new_k
        self._values[layer_idx] = new_v

    def attend_kv(
        self,
        layer_idx: int,
        new_k: torch.Tensor,
        new_v: torch.Tensor,
        start: int,
        store: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values for attention of ``n`` new tokens at absolute positions ``[start, start + n)``.

        Returns ``cache[:start] ++ new ++ cache[start + n:]`` along the sequence axis. With ``store=True``
        the new K/V are first written into the cache (in place when capacity allows) and a view is returned.
        """
        cached = self._lengths[layer_idx]
        n = new_k.shape[2]
        if start < 0 or start > cached:
            raise ValueError(
                f"cache_start={start} leaves a hole: layer {layer_idx} caches positions [0, {cached}); "
                "a forward must start at or before the end of the cache"
            )
        end = start + n
        if cached > 0:
            held = self._keys[layer_idx]
            if held.shape[0] != new_k.shape[0]:
                raise ValueError(f"batch size {new_k.shape[0]} does not match the cache's {held.shape[0]}")
        if store:
            self._ensure_capacity(layer_idx, new_k, end)
            self._keys[layer_idx][:, :, start:end] = new_k
            self._values[layer_idx][:, :, start:end] = new_v
            self._lengths[layer_idx] = total = max(cached, end)
            return self._keys[layer_idx][:, :, :total], self._values[layer_idx][:, :, :total]
        if cached == 0:
            return new_k, new_v
        k_store, v_store = self._keys[layer_idx], self._values[layer_idx]
        k_parts = [k_store[:, :, :start], new_k]
        v_parts = [v_store[:, :, :start], new_v]
        if end < cached:
            k_parts.append(k_store[:, :, end:cached])
            v_parts.append(v_store[:, :, end:cached])
        return torch.cat(k_parts, dim=2), torch.cat(v_parts, dim=2)
