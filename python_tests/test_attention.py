"""The decoder's attention paths: padded SDPA with masks, packed varlen and its adapters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from v2drop_kernels.models import attention


def naive(q, k, v, allowed):
    """Plain softmax attention with a boolean mask, float64; GQA by repeating heads."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1).double(), v.repeat_interleave(rep, 1).double()
    logits = (q.double() @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return (logits.masked_fill(~allowed, float("-inf")).softmax(-1) @ v).to(q.dtype)


def test_padded_attention_with_left_padding_matches_naive():
    gen = torch.Generator().manual_seed(0)
    b, h, hkv, s, d = 2, 4, 2, 9, 8
    q, k, v = (torch.randn(b, n, s, d, generator=gen) for n in (h, hkv, hkv))
    valid = torch.ones(b, s, dtype=torch.bool)
    valid[1, :3] = False  # row 1 is left-padded by 3
    out = attention.padded_attention(q, k, v, valid, causal=True)
    i = torch.arange(s)
    allowed = ((i[None, :] <= i[:, None])[None] & valid[:, None, :]) | torch.eye(s, dtype=torch.bool)[None]
    torch.testing.assert_close(out, naive(q, k, v, allowed[:, None]), atol=1e-5, rtol=1e-5)
    assert torch.isfinite(out).all()  # padding rows see themselves: no NaN to leak into real rows
    # no padding: the mask-free causal call
    torch.testing.assert_close(attention.padded_attention(q, k, v, None, causal=True),
                               naive(q, k, v, (i[None, :] <= i[:, None])[None, None]), atol=1e-5, rtol=1e-5)
    # one decode query over a cache with holes
    out1 = attention.padded_attention(q[:, :, -1:], k, v, valid, causal=False)
    torch.testing.assert_close(out1, naive(q[:, :, -1:], k, v, valid[:, None, None, :]), atol=1e-5, rtol=1e-5)


def packed(gen, lengths, h=4, hkv=2, d=8):
    t = sum(lengths)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return [torch.randn(t, n, d, generator=gen) for n in (h, hkv, hkv)], cu


def test_varlen_fallback_is_causal_per_sequence():
    gen = torch.Generator().manual_seed(1)
    (q, k, v), cu = packed(gen, [5, 1, 7])
    out = attention.varlen_attention(q, k, v, cu, cu.tolist())
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist()):
        seg = [x[start:end].transpose(0, 1)[None] for x in (q, k, v)]
        n = end - start
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        torch.testing.assert_close(out[start:end], naive(*seg, causal)[0].transpose(0, 1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("signature", ["is_causal", "window_size"])
def test_torch_varlen_adapter_speaks_both_signatures(monkeypatch, signature):
    """torch 2.10 takes is_causal, later releases window_size=(-1, 0) and enable_gqa."""
    calls = []

    def fake(q, k, v, cu_q, cu_k, max_q, max_k, **kwargs):
        calls.append((kwargs, k.shape[1]))
        return attention.varlen_attention(q, k, v, cu_q, cu_q.tolist())

    args = {"is_causal"} if signature == "is_causal" else {"window_size", "enable_gqa"}
    monkeypatch.setattr(attention, "_torch_varlen", fake)
    monkeypatch.setattr(attention, "_TORCH_VARLEN_ARGS", args)
    gen = torch.Generator().manual_seed(2)
    (q, k, v), cu = packed(gen, [3, 6])
    out = attention._torch_varlen_causal(q, k, v, cu, 6)
    torch.testing.assert_close(out, attention.varlen_attention(q, k, v, cu, cu.tolist()))
    kwargs, heads = calls[0]
    if signature == "is_causal":
        assert kwargs == {"is_causal": True} and heads == 4  # K/V heads repeated for GQA
    else:
        assert kwargs == {"window_size": (-1, 0), "enable_gqa": True} and heads == 2


def test_last_query_attention_is_the_softmax_row():
    gen = torch.Generator().manual_seed(3)
    q, k = torch.randn(2, 4, 1, 8, generator=gen), torch.randn(2, 2, 6, 8, generator=gen)
    valid = torch.tensor([[True] * 6, [False, False, True, True, True, True]])
    got = attention.last_query_attention(q, k, valid)
    logits = q @ k.repeat_interleave(2, 1).transpose(-1, -2) / 8 ** 0.5
    expected = logits.masked_fill(~valid[:, None, None], float("-inf")).softmax(-1).mean(1)[:, 0]
    torch.testing.assert_close(got, expected)
    assert torch.all(got[1, :2] == 0)


@pytest.mark.parametrize("budget", [None, 100])  # one group of rows; a group per row or two
@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (6, 2)])
def test_packed_last_query_scores_are_each_rows_own(heads, kv_heads, budget, monkeypatch):
    """The packed scores (PyramidDrop, FastV) come from one call over the batch (or over groups of
    rows, past a memory budget): each row's equal its own last query's attention over its own
    keys, as if the row ran alone."""
    from v2drop_kernels.models.policies import base
    from v2drop_kernels.models.policies.base import _last_query_scores
    from v2drop_kernels.models.tokens import Tokens, cu_seqlens

    if budget is not None:
        monkeypatch.setattr(base, "_SCORE_BUDGET", budget)
    lengths = [5, 1, 9, 3]
    gen = torch.Generator().manual_seed(3)
    total = sum(lengths)
    q = torch.randn(total, heads, 8, generator=gen).to(torch.bfloat16)
    k = torch.randn(total, kv_heads, 8, generator=gen).to(torch.bfloat16)
    tokens = Tokens(torch.zeros(total, 4), torch.zeros(total, dtype=torch.long), torch.zeros(total, dtype=torch.long),
                    torch.zeros(total, dtype=torch.bool), [0] * len(lengths), cu_seqlens=cu_seqlens(lengths, "cpu"),
                    lengths=lengths)
    got = _last_query_scores(tokens, q, k)
    start = 0
    for n in lengths:
        row = slice(start, start + n)
        alone = attention.last_query_attention(q[start + n - 1][None, :, None], k[row].transpose(0, 1)[None], None)[0]
        torch.testing.assert_close(got[row], alone, atol=1e-6, rtol=0)
        start += n
    assert got.dtype == torch.float32 and got.shape == (total,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_varlen_on_cuda_matches_sdpa_per_sequence():
    gen = torch.Generator().manual_seed(4)
    (q, k, v), cu = packed(gen, [37, 5, 120], h=8, hkv=2, d=64)
    q, k, v = (x.cuda().bfloat16() for x in (q, k, v))
    out = attention.varlen_attention(q, k, v, cu.cuda(), cu.tolist())
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist()):
        seg = [x[start:end].transpose(0, 1)[None] for x in (q, k, v)]
        ref = F.scaled_dot_product_attention(*seg, is_causal=True, enable_gqa=True)[0].transpose(0, 1)
        torch.testing.assert_close(out[start:end], ref, atol=2e-2, rtol=2e-2)
