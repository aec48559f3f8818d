"""Per-layer KV cache whose length differs from layer to layer, with static decode shapes.

Layer ``l`` stores the keys and values of the tokens that reached it, so after V²Drop's drops the
deep layers hold far fewer entries than the shallow ones: that is where the memory goes down.
Each layer is one ``[B, Hkv, capacity_l, Dh]`` buffer: its prefill length ``length_l`` plus room for
the tokens still to generate. A decode step writes column ``length_l + step`` of every layer, with
``step`` a device tensor, and attends over the whole buffer through a mask, so every step has the
same shapes and addresses (a CUDA graph captures it) and nothing is read back from the device.

``valid bool[B, capacity_l]`` marks real prefill entries: left padding of a padded prompt, and the
holes of a packed prompt whose rows have different lengths (each row is laid out from column 0;
generated tokens go to a shared column, so shorter rows skip a few columns). Unwritten columns are
masked, and buffers start zeroed, so masked entries are always finite.

A linear-attention layer of a hybrid decoder (Qwen3.5) has no keys and values: it keeps each row's
fixed-size state instead (:meth:`KVCache.store_state`: the convolution window and the recurrent
state), which its decode step updates in place (:meth:`KVCache.linear_state`).

Buffers come from a :class:`BufferPool` when one is given: the same shapes get the same tensors on
the next call, which is what lets a captured decode graph be replayed by the next generation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .tokens import packed_coordinates


def row_positions(tokens) -> Tensor:
    """int64 ``[B, S]``: the prompt index of each token, row by row (packed rows from column 0;
    -1 on padding and past a row's end)."""
    if not tokens.packed:
        return tokens.orig_pos
    rows, columns = packed_coordinates(tokens.lengths, tokens.orig_pos.device)
    orig = torch.full((tokens.batch, tokens.max_len), -1, dtype=torch.long, device=tokens.orig_pos.device)
    orig[rows, columns] = tokens.orig_pos
    return orig


class BufferPool:
    """Tensors by name that keep their storage from call to call while their shape, dtype and device
    stay the same. ``allocations`` counts new tensors: a graph captured over pooled tensors is valid
    while it has not changed."""

    def __init__(self):
        self._buffers: dict[str, Tensor] = {}
        self.allocations = 0

    def get(self, name: str, shape, dtype: torch.dtype, device: torch.device) -> Tensor:
        buf = self._buffers.get(name)
        if buf is None or buf.shape != tuple(shape) or buf.dtype != dtype or buf.device != device:
            buf = self._buffers[name] = torch.zeros(shape, dtype=dtype, device=device)
            self.allocations += 1
        return buf

    def clear(self) -> None:
        self._buffers.clear()
        self.allocations += 1


class KVCache:
    def __init__(self, num_layers: int, extra: int, pool: BufferPool | None = None):
        self.extra = extra  # decode steps the buffers leave room for
        self.pool = pool
        self.k: list[Tensor | None] = [None] * num_layers
        self.v: list[Tensor | None] = [None] * num_layers
        self.valid: list[Tensor | None] = [None] * num_layers  # bool [B, capacity]; None: every prefill entry is valid
        self.length = [0] * num_layers  # prefill entries (columns) per layer, on the host
        self.orig_pos: list[Tensor | None] = [None] * num_layers  # prompt index of each prefill entry
        self._columns: list[Tensor | None] = [None] * num_layers  # arange(capacity), for the step mask
        self.states: dict[int, tuple[Tensor, Tensor]] = {}  # linear-attention layers: (conv window, recurrent state)

    def _buffer(self, name: str, shape, dtype, device) -> Tensor:
        if self.pool is not None:
            return self.pool.get(name, shape, dtype, device)
        return torch.zeros(shape, dtype=dtype, device=device)

    def store(self, layer: int, k: Tensor, v: Tensor, tokens) -> None:
        """Keeps the prefill keys/values of ``layer`` (``[B, Hkv, S, Dh]`` or packed ``[T, Hkv, Dh]``)."""
        if tokens.packed:
            b, s, (h, d) = tokens.batch, tokens.max_len, k.shape[1:]
        else:
            b, h, s, d = k.shape
        cap = s + self.extra
        kbuf = self._buffer(f"k{layer}", (b, h, cap, d), k.dtype, k.device)
        vbuf = self._buffer(f"v{layer}", (b, h, cap, d), v.dtype, v.device)
        orig = row_positions(tokens)
        if tokens.packed:  # row r's tokens go to columns [0, lengths[r]): one scatter, indices from host counts
            rows, columns = packed_coordinates(tokens.lengths, k.device)
            kbuf[rows, :, columns] = k
            vbuf[rows, :, columns] = v
            valid = None
            if min(tokens.lengths) < s:
                valid = (torch.arange(s)[None, :] < torch.tensor(tokens.lengths)[:, None]).to(k.device)
        else:
            kbuf[:, :, :s] = k
            vbuf[:, :, :s] = v
            valid = tokens.valid
        if valid is not None:  # decode columns are always valid
            valid_buf = self._buffer(f"valid{layer}", (b, cap), torch.bool, k.device)
            valid_buf[:, :s] = valid
            valid_buf[:, s:] = True
            valid = valid_buf
        columns = self._buffer(f"columns{layer}", (cap,), torch.long, k.device)
        columns.copy_(torch.arange(cap, device=k.device))
        self.k[layer], self.v[layer], self.valid[layer], self._columns[layer] = kbuf, vbuf, valid, columns
        self.length[layer], self.orig_pos[layer] = s, orig

    def store_state(self, layer: int, window: Tensor, state: Tensor, tokens) -> None:
        """Keeps a linear-attention layer's state after prefill: the convolution window ``[B, C, W]``
        and the recurrent state ``[B, Hv, dk, dv]`` (float32), copied into buffers the decode steps
        update in place; and the prompt index of each token the layer saw (``orig_pos``)."""
        self.orig_pos[layer] = row_positions(tokens)
        bufs = tuple(self._buffer(f"{name}{layer}", x.shape, x.dtype, x.device)
                     for name, x in (("window", window), ("state", state)))
        for buf, x in zip(bufs, (window, state)):
            buf.copy_(x)
        self.states[layer] = bufs

    def linear_state(self, layer: int) -> tuple[Tensor, Tensor]:
        """The ``(window, state)`` buffers of a linear-attention layer, for a decode step to update."""
        return self.states[layer]

    def write_step(self, layer: int, k: Tensor, v: Tensor, step: Tensor) -> None:
        """Writes one decode step's ``k, v [B, Hkv, 1, Dh]`` at column ``length + step``."""
        column = (step + self.length[layer]).view(1)
        self.k[layer].index_copy_(2, column, k)
        self.v[layer].index_copy_(2, column, v)

    def step_mask(self, layer: int, step: Tensor) -> Tensor:
        """``bool [B | 1, 1, 1, capacity]``: the entries the query of decode step ``step`` attends to."""
        allowed = self._columns[layer] <= step + self.length[layer]
        if self.valid[layer] is not None:
            allowed = allowed & self.valid[layer]
        return allowed.view(-1, 1, 1, allowed.shape[-1])

    def lengths(self) -> list[int]:
        """Prefill entries per layer (columns, padding included)."""
        return list(self.length)

    def nbytes(self) -> int:
        """Bytes of the prefill entries (keys and values, all layers; a linear-attention layer's fixed
        state is :meth:`state_nbytes`)."""
        return sum(2 * k[:, :, :n].numel() * k.element_size() for k, n in zip(self.k, self.length) if k is not None)

    def state_nbytes(self) -> int:
        """Bytes of the linear-attention layers' states (the same whatever was pruned)."""
        return sum(x.numel() * x.element_size() for pair in self.states.values() for x in pair)
