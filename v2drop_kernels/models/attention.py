"""Attention for the reference decoder: padded (SDPA) and packed variable-length.

No pruning policy needs attention weights from these kernels: PyramidDrop and FastV compute their
one-query scores themselves (:func:`last_query_attention`), so any fused kernel can be used here.

- Padded ``[B, H, S, Dh]``: ``torch.nn.functional.scaled_dot_product_attention``. Without padding
  the call is ``is_causal=True`` with no mask, which lets SDPA pick its FlashAttention backend on
  CUDA. Pruning keeps survivors in their original order, so the causal mask stays the plain lower
  triangle of the compacted sequence.
- Packed ``[T, H, Dh]`` + ``cu_seqlens`` (flash-attn's varlen convention): flash-attn's
  ``flash_attn_varlen_func`` when ``flash_attn`` is importable, else torch's own
  ``torch.nn.attention.varlen.varlen_attn`` on CUDA, else one SDPA call per sequence.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import Tensor

try:
    from flash_attn import flash_attn_varlen_func as _flash_attn_varlen
except ImportError:  # not installable on the project's machines; the adapter below keeps its interface
    _flash_attn_varlen = None

try:
    from torch.nn.attention.varlen import varlen_attn as _torch_varlen
    _TORCH_VARLEN_ARGS = set(inspect.signature(_torch_varlen).parameters)
except ImportError:  # torch < 2.10
    _torch_varlen, _TORCH_VARLEN_ARGS = None, set()


def sdpa(q: Tensor, k: Tensor, v: Tensor, **kwargs) -> Tensor:
    """``scaled_dot_product_attention``, grouped-query only when the head counts differ (asking for
    it with equal counts can rule out a fused backend)."""
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=q.shape[-3] != k.shape[-3], **kwargs)


def padded_attention(q: Tensor, k: Tensor, v: Tensor, key_valid: Tensor | None, causal: bool) -> Tensor:
    """Attention of ``q [B, H, Sq, Dh]`` over ``k, v [B, Hkv, Sk, Dh]`` (grouped-query).

    ``key_valid bool[B, Sk]`` masks padding (``None``: every key is valid). With ``causal`` the
    last query sees every key, query ``i`` sees keys ``<= i + Sk − Sq``. A padding query (left
    padding of a prompt) still sees itself, so that no row is all-masked (no NaN anywhere).
    """
    if key_valid is None:
        return sdpa(q, k, v, is_causal=causal and q.shape[2] > 1)
    sq, sk = q.shape[2], k.shape[2]
    allowed = key_valid[:, None, None, :]  # [B, 1, 1, Sk]
    if causal and sq > 1:
        qi = torch.arange(sq, device=q.device)[:, None] + (sk - sq)
        kj = torch.arange(sk, device=q.device)[None, :]
        allowed = (allowed & (kj <= qi)) | (kj == qi)
    return sdpa(q, k, v, attn_mask=allowed)


def varlen_attention(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, bounds: list[int]) -> Tensor:
    """Causal attention over packed sequences: ``q [T, H, Dh]``, ``k, v [T, Hkv, Dh]``, int32
    ``cu_seqlens`` and the same bounds on the host (the kernels take the longest length as an int;
    the fallback slices), so nothing is read back from the device."""
    max_len = max((e - s for s, e in zip(bounds[:-1], bounds[1:])), default=0)
    if _flash_attn_varlen is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        return _flash_attn_varlen(q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, causal=True)
    if _torch_varlen is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        return _torch_varlen_causal(q, k, v, cu_seqlens, max_len)
    out = torch.empty_like(q)
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end > start:
            seg = [t[start:end].transpose(0, 1)[None] for t in (q, k, v)]  # [1, H, L, Dh]
            out[start:end] = sdpa(*seg, is_causal=True)[0].transpose(0, 1)
    return out


def _torch_varlen_causal(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_len: int) -> Tensor:
    """``torch.nn.attention.varlen.varlen_attn`` across its signatures (torch 2.10 and later)."""
    kwargs = {}
    if "is_causal" in _TORCH_VARLEN_ARGS:
        kwargs["is_causal"] = True
    else:
        kwargs["window_size"] = (-1, 0)
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in _TORCH_VARLEN_ARGS:
            kwargs["enable_gqa"] = True
        else:
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return _torch_varlen(q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, **kwargs)


def last_query_attention(q_last: Tensor, k: Tensor, key_valid: Tensor | None) -> Tensor:
    """Softmax attention of one query per row over its keys, averaged over heads, in float32.

    ``q_last [B, H, 1, Dh]`` (RoPE applied), ``k [B, Hkv, S, Dh]``, ``key_valid bool[B, S]``.
    Returns ``float32[B, S]``: the attention map row that PyramidDrop and FastV rank tokens by.
    The query heads are viewed in their key groups (``[B, Hkv, H / Hkv, Dh]``), so K is never
    repeated per query head; it is read in float32 once (no copy when it is float32 already).
    """
    b, h, _, dh = q_last.shape
    hkv = k.shape[1]
    grouped = q_last.float().reshape(b, hkv, h // hkv, dh)  # query heads h = g * (H / Hkv) + j share key head g
    logits = (grouped @ k.float().transpose(-1, -2)).reshape(b, h, -1) * dh ** -0.5  # [B, H, S]
    if key_valid is not None:
        logits = logits.masked_fill(~key_valid[:, None, :], float("-inf"))
    return logits.softmax(dim=-1).mean(dim=1)
