"""Per-layer KV cache whose length differs from layer to layer.

Layer ``l`` stores the keys and values of the tokens that reached it, so after V²Drop's drops the
deep layers hold far fewer entries than the shallow ones: that is where the memory goes down.
Each layer is one preallocated ``[B, Hkv, capacity, Dh]`` buffer (prefill length plus the tokens
still to generate), so a decode step writes in place and never reallocates.

``valid bool[B, capacity]`` marks real entries: left padding of a padded prompt, and the holes of
a packed prompt whose rows have different lengths (each row is laid out from column 0; generated
tokens go to a shared column, so shorter rows skip a few columns).
"""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    def __init__(self, num_layers: int, extra: int):
        self.extra = extra  # decode steps the buffers leave room for
        self.k: list[Tensor | None] = [None] * num_layers
        self.v: list[Tensor | None] = [None] * num_layers
        self.valid: list[Tensor | None] = [None] * num_layers  # None: every entry is valid
        self.length = [0] * num_layers  # columns in use
        self.orig_pos: list[Tensor | None] = [None] * num_layers  # prompt index of each prefill entry

    def store(self, layer: int, k: Tensor, v: Tensor, tokens) -> None:
        """Keeps the prefill keys/values of ``layer`` (``[B, Hkv, S, Dh]`` or packed ``[T, Hkv, Dh]``)."""
        if tokens.packed:
            k, v, valid, orig = self._unpack(k, v, tokens)
        else:
            valid, orig = tokens.valid, tokens.orig_pos
        b, h, s, d = k.shape
        kbuf = k.new_empty(b, h, s + self.extra, d)
        vbuf = v.new_empty(b, h, s + self.extra, d)
        kbuf[:, :, :s] = k
        vbuf[:, :, :s] = v
        if valid is not None:
            valid = torch.cat([valid, valid.new_ones(b, self.extra)], dim=1)
        self.k[layer], self.v[layer], self.valid[layer] = kbuf, vbuf, valid
        self.length[layer], self.orig_pos[layer] = s, orig

    @staticmethod
    def _unpack(k: Tensor, v: Tensor, tokens):
        """Packed ``[T, Hkv, Dh]`` → ``[B, Hkv, L, Dh]``, row ``b`` in columns ``[0, len_b)``."""
        cu = tokens.cu_seqlens.long()
        lengths = torch.diff(cu)
        b, width = lengths.numel(), tokens.max_len
        rows = torch.repeat_interleave(torch.arange(b, device=k.device), lengths)
        cols = torch.arange(k.shape[0], device=k.device) - cu[rows]
        kp = k.new_zeros(b, k.shape[1], width, k.shape[2])
        vp = v.new_zeros(b, v.shape[1], width, v.shape[2])
        kp[rows, :, cols] = k
        vp[rows, :, cols] = v
        valid = torch.zeros(b, width, dtype=torch.bool, device=k.device)
        valid[rows, cols] = True
        orig = torch.full((b, width), -1, dtype=torch.long, device=k.device)
        orig[rows, cols] = tokens.orig_pos
        return kp, vp, (None if bool(valid.all()) else valid), orig

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Writes one decode step (``[B, Hkv, 1, Dh]``); returns the layer's keys, values and validity."""
        col = self.length[layer]
        if col >= self.k[layer].shape[2]:
            raise RuntimeError(f"KV cache of layer {layer} is full ({col} entries); raise max_new_tokens")
        self.k[layer][:, :, col : col + 1] = k
        self.v[layer][:, :, col : col + 1] = v
        self.length[layer] = n = col + 1
        valid = None if self.valid[layer] is None else self.valid[layer][:, :n]
        return self.k[layer][:, :, :n], self.v[layer][:, :, :n], valid

    def lengths(self) -> list[int]:
        """Entries in use per layer (columns, padding included)."""
        return list(self.length)

    def nbytes(self) -> int:
        """Bytes of the entries in use (keys and values, all layers)."""
        return sum(2 * k[:, :, :n].numel() * k.element_size() for k, n in zip(self.k, self.length) if k is not None)
