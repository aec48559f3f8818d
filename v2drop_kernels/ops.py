"""Python API of the v2drop ops.

Each function calls ``torch.ops.v2drop.<op>`` (``backend="cpu"`` or ``"cuda"``: the C++ kernel of
the tensors' device), ``torch.ops.v2drop_triton.<op>`` (``backend="triton"``) or the plain-PyTorch
reference (``backend="reference"``). ``backend=None`` picks the fastest available for the device.
Semantics of every op: README.md and :mod:`v2drop_kernels.reference`. The ops are for inference:
they have no autograd formula.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from . import reference

BACKENDS = ("cpu", "cuda", "triton", "reference")

# Read once at import (module constants are free to read inside torch.compile).
_HAS_CUDA_KERNELS = torch._C._dispatch_has_kernel_for_dispatch_key("v2drop::variation_topk", "CUDA")
try:  # importing the Triton backend registers torch.ops.v2drop_triton.*
    from .triton import runs_on as _triton_runs_on
except ImportError:
    _triton_runs_on = None
_TRITON_DEVICES = tuple(kind for kind in ("cpu", "cuda") if _triton_runs_on is not None and _triton_runs_on(kind))
# Further native backends, added at run time: name -> (op namespace, device type of its tensors).
# The test suite adds "cuda_emulated", the CUDA backend built for the host
# (python_tests/cuda_emulator); users have no reason to.
_EXTRA_BACKENDS: dict[str, tuple[object, str]] = {}


def available_backends(device: torch.device | str) -> list[str]:
    """Backends that run on ``device``, fastest first."""
    kind = torch.device(device).type
    native = [kind] if kind == "cpu" or (kind == "cuda" and _HAS_CUDA_KERNELS) else []
    triton = ["triton"] if kind in _TRITON_DEVICES else []
    return native + triton + ["reference"]


def _backend(backend: str | None, tensor: Tensor) -> str:
    if backend is None:
        return available_backends(tensor.device)[0]
    if backend in _EXTRA_BACKENDS:
        kind = _EXTRA_BACKENDS[backend][1]
        if tensor.device.type != kind:
            raise ValueError(f"backend={backend!r} needs tensors on {kind}, got {tensor.device}")
        return backend
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    if backend in ("cpu", "cuda") and tensor.device.type != backend:
        raise ValueError(f"backend={backend!r} needs tensors on {backend}, got {tensor.device}")
    if backend == "cuda" and not _HAS_CUDA_KERNELS:
        raise RuntimeError("v2drop_kernels was built without CUDA kernels; rebuild with a CUDA torch")
    if backend == "triton" and tensor.device.type not in _TRITON_DEVICES:
        raise RuntimeError(
            f"backend='triton' cannot run on {tensor.device} here: it needs triton and a CUDA device "
            "(or TRITON_INTERPRET=1 set before import, for CPU tensors)"
        )
    return backend


def _ops(backend: str):
    """The op namespace of a native backend."""
    if backend in _EXTRA_BACKENDS:
        return _EXTRA_BACKENDS[backend][0]
    return torch.ops.v2drop_triton if backend == "triton" else torch.ops.v2drop


class DropOutput(NamedTuple):
    """Result of :func:`variation_drop` (padded) and :func:`variation_drop_varlen` (packed)."""

    hidden: Tensor  # compacted hidden states [B, S', D] / [T', D], input dtype
    position_ids: Tensor  # original position ids of the survivors [B, S'] / [3, B, S'] / [T'] / [3, T']
    keep_pos: Tensor  # int64 original positions of the survivors, ascending (global for packed)
    vis_mask: Tensor  # bool, which survivors are visual tokens
    scores: Tensor  # float32 [B, S] / [T], ‖hidden − prev‖₂ at visual positions, 0 elsewhere
    cu_seqlens: Tensor | None = None  # packed only: int32 [B + 1] of the result


def variation_topk(hidden: Tensor, prev: Tensor, vis_mask: Tensor, k: int, *, backend: str | None = None) -> tuple[Tensor, Tensor]:
    """Scores every visual token by how much its hidden state changed and picks the top ``k``.

    Args:
        hidden: ``[B, S, D]`` float32/float16/bfloat16, input of layer ``l`` (last dim contiguous).
        prev: ``[B, S, D]``, same dtype and device, input of layer ``l − 1``.
        vis_mask: ``bool[B, S]``, visual positions; every row holds the same number ``V``.
        k: visual tokens to keep per row, ``1 <= k <= V``.

    Returns:
        ``(keep_idx int64[B, k], scores float32[B, S])``: the positions of the ``k`` visual tokens
        with the largest ``‖hidden − prev‖₂``, ascending (equal scores: lower position first; NaN
        below every number), and the scores (0 at non-visual positions).
    """
    chosen = _backend(backend, hidden)
    if chosen == "reference":
        return reference.variation_topk(hidden, prev, vis_mask, k)
    return _ops(chosen).variation_topk(hidden, prev, vis_mask, k)


def variation_drop(
    hidden: Tensor,
    prev: Tensor,
    vis_mask: Tensor,
    position_ids: Tensor | None,
    k: int,
    *,
    num_visual: int | None = None,
    backend: str | None = None,
) -> DropOutput:
    """Fused V²Drop step on the padded layout: score, keep the top ``k`` visual tokens, compact.

    Args:
        hidden, prev, vis_mask, k: as in :func:`variation_topk`.
        position_ids: int64/int32 ``[B, S]`` or ``[3, B, S]`` (M-RoPE), any strides (an expanded
            ``arange`` is fine); ``None`` means ``arange(S)`` for every row.
        num_visual: visual tokens per row ``V``. It fixes the output length ``S' = S − V + k``;
            pass it to keep shapes static (``torch.compile``, CUDA graphs). ``None`` reads it from
            ``vis_mask`` (a device-to-host sync).

    Returns:
        :class:`DropOutput` ``(hidden, position_ids, keep_pos, vis_mask, scores)``: the text tokens
        and the kept visual tokens in their original order with their original position ids.
    """
    if position_ids is None:
        position_ids = torch.arange(hidden.shape[1], device=hidden.device).expand(hidden.shape[0], -1)
    if num_visual is None:
        num_visual = int(vis_mask[0].sum()) if vis_mask.shape[0] else 0
    chosen = _backend(backend, hidden)
    if chosen == "reference":
        out = reference.variation_drop(hidden, prev, vis_mask, position_ids, num_visual, k)
    else:
        out = _ops(chosen).variation_drop(hidden, prev, vis_mask, position_ids, num_visual, k)
    return DropOutput(*out)


def variation_drop_varlen(
    hidden: Tensor,
    prev: Tensor,
    vis_mask: Tensor,
    position_ids: Tensor,
    cu_seqlens: Tensor,
    k: int | Sequence[int],
    *,
    num_visual: Sequence[int] | None = None,
    backend: str | None = None,
) -> DropOutput:
    """Fused V²Drop step on the packed variable-length layout (flash-attn's varlen convention).

    Args:
        hidden, prev: ``[T, D]``, the ``B`` sequences back to back.
        vis_mask: ``bool[T]``. position_ids: ``[T]`` or ``[3, T]``, int64/int32.
        cu_seqlens: int32 ``[B + 1]``, sequence ``b`` is ``[cu_seqlens[b], cu_seqlens[b + 1])``.
        k: visual tokens kept per sequence: a list, or one int for every sequence that has
            visual tokens (sequences without any keep 0). ``1 <= k[b] <= num_visual[b]``.
        num_visual: visual tokens per sequence; ``None`` reads them from the data (a host sync).

    Returns:
        :class:`DropOutput` with ``cu_seqlens`` of the result (feed it to the next layer's varlen
        attention) and ``keep_pos`` as global indices into the packed input.
    """
    if num_visual is None:
        bounds = cu_seqlens.tolist()
        counts = torch.zeros(len(bounds) - 1, dtype=torch.long, device=vis_mask.device)
        lengths = torch.diff(cu_seqlens.long())
        if vis_mask.numel() and lengths.numel() and bool((lengths >= 0).all()) and bounds[-1] == vis_mask.shape[0]:
            segment = torch.repeat_interleave(torch.arange(len(lengths), device=vis_mask.device), lengths)
            counts.index_add_(0, segment, vis_mask.long())
        num_visual = counts.tolist()
    if isinstance(k, int):
        k = [k if v > 0 else 0 for v in num_visual]
    num_visual, k = list(num_visual), list(k)
    chosen = _backend(backend, hidden)
    if chosen == "reference":
        out = reference.variation_drop_varlen(hidden, prev, vis_mask, position_ids, cu_seqlens, num_visual, k)
    else:
        out = _ops(chosen).variation_drop_varlen(hidden, prev, vis_mask, position_ids, cu_seqlens, num_visual, k)
    hidden_out, position_ids_out, keep_pos, vis_mask_out, cu_out, scores = out
    return DropOutput(hidden_out, position_ids_out, keep_pos, vis_mask_out, scores, cu_out)


def kv_compact(caches: Tensor | Sequence[Tensor], keep_pos: Tensor, seq_dim: int = 2, *, backend: str | None = None):
    """Gathers the kept entries of one or several KV tensors along ``seq_dim``, in one call.

    Layouts: ``[B, H, S, Dh]`` (``seq_dim=2``) or ``[B, S, H, Dh]`` (``seq_dim=1``) with
    ``keep_pos int64[B, n]``; packed ``[T, H, Dh]`` (``seq_dim=0``) with ``keep_pos int64[n]``.
    All tensors share batch size and sequence length; dtypes and head sizes may differ.
    Returns new contiguous tensors with ``n`` entries along ``seq_dim`` (a list, or one tensor when
    one tensor was given).
    """
    single = isinstance(caches, Tensor)
    tensors = [caches] if single else list(caches)
    chosen = _backend(backend, keep_pos)
    if chosen == "reference":
        outs = reference.kv_compact(tensors, keep_pos, seq_dim)
    else:
        outs = _ops(chosen).kv_compact(tensors, keep_pos, seq_dim)
    return outs[0] if single else list(outs)


def kv_compact_(caches: Tensor | Sequence[Tensor], keep_pos: Tensor, seq_dim: int = 2, *, backend: str | None = None) -> None:
    """In-place :func:`kv_compact` into the caches' own (preallocated, static) storage.

    Positions ``[0, n)`` along ``seq_dim`` receive the kept entries; positions ``[n, S)`` keep
    their old contents. Rows of ``keep_pos`` must be strictly increasing. Shapes never change,
    so a captured CUDA graph stays valid.
    """
    tensors = [caches] if isinstance(caches, Tensor) else list(caches)
    chosen = _backend(backend, keep_pos)
    if chosen == "reference":
        reference.kv_compact_(tensors, keep_pos, seq_dim)
    else:
        _ops(chosen).kv_compact_(tensors, keep_pos, seq_dim)
