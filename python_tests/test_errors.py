"""Bad input gets a clear RuntimeError/ValueError naming the argument, from the op itself."""

import pytest
import torch

import cuda_emulator
import v2drop_kernels  # noqa: F401
from helpers import TRITON_OK

B, S, D, V = 2, 12, 8, 6
# The C++ ops (CPU kernels here), the Triton ops and the CUDA binding built for the host
# (cuda_emulator/); all validate before any launch, so CPU tensors do for all three.
NAMESPACES = [
    "v2drop",
    pytest.param("v2drop_triton", marks=pytest.mark.skipif(not TRITON_OK, reason="needs triton")),
    pytest.param("v2drop_cuda_emulated", marks=pytest.mark.skipif(not cuda_emulator.available(), reason="needs a C++ compiler and ninja")),
]
DEVICE_CHECKED = ("v2drop_triton", "v2drop_cuda_emulated")  # data rules checked on the device


def good():
    hidden = torch.randn(B, S, D)
    mask = torch.zeros(B, S, dtype=torch.bool)
    mask[:, 3:9] = True
    return dict(hidden=hidden, prev=torch.randn(B, S, D), vis_mask=mask, position_ids=torch.arange(S).expand(B, S))


def topk(**kw):
    a = {**good(), "k": 3, **kw}
    return lambda ops: ops.variation_topk(a["hidden"], a["prev"], a["vis_mask"], a["k"])


def drop(**kw):
    a = {**good(), "num_visual": V, "k": 3, **kw}
    return lambda ops: ops.variation_drop(a["hidden"], a["prev"], a["vis_mask"], a["position_ids"], a["num_visual"], a["k"])


def uneven_mask():
    mask = good()["vis_mask"].clone()
    mask[1, 2] = True
    return mask


def noncontiguous_last_dim():
    return torch.randn(B, S, D * 2)[..., ::2]


def varlen(**kw):
    a = dict(
        hidden=torch.randn(10, D), prev=torch.randn(10, D), vis_mask=torch.tensor([0, 1, 1, 1, 0, 0, 1, 1, 0, 0], dtype=torch.bool),
        position_ids=torch.arange(10), cu_seqlens=torch.tensor([0, 5, 10], dtype=torch.int32), num_visual=[3, 2], k=[1, 2],
    )
    a.update(kw)
    return lambda ops: ops.variation_drop_varlen(*a.values())


def kv(**kw):
    a = dict(caches=[torch.randn(B, 4, S, 16), torch.randn(B, 4, S, 16)], keep_pos=torch.tensor([[0, 3, 5], [1, 2, 11]]), seq_dim=2)
    a.update(kw)
    return lambda ops: ops.kv_compact(*a.values())


def kv_(**kw):
    a = dict(caches=[torch.randn(B, 4, S, 16), torch.randn(B, 4, S, 16)], keep_pos=torch.tensor([[0, 3, 5], [1, 2, 11]]), seq_dim=2)
    a.update(kw)
    return lambda ops: ops.kv_compact_(*a.values())


buffer = torch.randn(2, B, 4, S, 16)

CASES = {
    # variation_topk
    "topk-hidden-rank": (topk(hidden=torch.randn(S, D), prev=torch.randn(S, D)), RuntimeError, "hidden must have 3 dims"),
    "topk-prev-shape": (topk(prev=torch.randn(B, S, D + 1)), RuntimeError, "prev must have the shape of hidden"),
    "topk-prev-dtype": (topk(prev=torch.randn(B, S, D).half()), RuntimeError, "prev must have the dtype of hidden"),
    "topk-hidden-dtype": (topk(hidden=torch.randn(B, S, D).double(), prev=torch.randn(B, S, D).double()), RuntimeError, "hidden must be float32, float16 or bfloat16"),
    "topk-int-hidden": (topk(hidden=torch.ones(B, S, D, dtype=torch.int32), prev=torch.ones(B, S, D, dtype=torch.int32)), RuntimeError, "hidden must be float32"),
    "topk-mask-dtype": (topk(vis_mask=good()["vis_mask"].int()), RuntimeError, "vis_mask must be bool"),
    "topk-mask-shape": (topk(vis_mask=torch.ones(B, S + 1, dtype=torch.bool)), RuntimeError, "vis_mask must have shape"),
    "topk-k-zero": (topk(k=0), ValueError, "k must be >= 1"),
    "topk-k-negative": (topk(k=-2), ValueError, "k must be >= 1"),
    "topk-k-above-V": (topk(k=V + 1), ValueError, r"k must be in \[1, V=6\]", (RuntimeError, r"k must be in \[1, V\]")),
    "topk-uneven-rows": (topk(vis_mask=uneven_mask()), ValueError, "row 1 holds 7", (RuntimeError, "every row of vis_mask must hold the same number")),
    "topk-hidden-last-dim": (topk(hidden=noncontiguous_last_dim()), RuntimeError, "hidden must have a contiguous last dim"),
    "topk-prev-last-dim": (topk(prev=noncontiguous_last_dim()), RuntimeError, "prev must have a contiguous last dim"),
    # variation_drop
    "drop-k-zero": (drop(k=0), ValueError, r"k must be in \[1, num_visual=6\]"),
    "drop-k-above": (drop(k=7), ValueError, r"k must be in \[1, num_visual=6\]"),
    "drop-num-visual-wrong": (drop(num_visual=5), ValueError, "every row of vis_mask must hold 5 visual tokens, row 0 holds 6", (RuntimeError, "every row of vis_mask must hold num_visual=5")),
    "drop-num-visual-zero": (drop(num_visual=0), ValueError, "num_visual must be in"),
    "drop-uneven-rows": (drop(vis_mask=uneven_mask()), ValueError, "row 1 holds 7", (RuntimeError, "every row of vis_mask must hold num_visual=6")),
    "drop-pos-dtype": (drop(position_ids=torch.arange(S).float().expand(B, S)), RuntimeError, "position_ids must be int64 or int32"),
    "drop-pos-shape": (drop(position_ids=torch.arange(S + 1).expand(B, S + 1)), RuntimeError, "position_ids must have shape"),
    "drop-pos-mrope-shape": (drop(position_ids=torch.zeros(4, B, S, dtype=torch.long)), RuntimeError, "position_ids must have shape"),
    "drop-mask-dtype": (drop(vis_mask=good()["vis_mask"].float()), RuntimeError, "vis_mask must be bool"),
    # variation_drop_varlen
    "varlen-rank": (varlen(hidden=torch.randn(1, 10, D), prev=torch.randn(1, 10, D)), RuntimeError, "hidden must have 2 dims"),
    "varlen-cu-dtype": (varlen(cu_seqlens=torch.tensor([0, 5, 10])), RuntimeError, "cu_seqlens must be int32"),
    "varlen-cu-short": (varlen(cu_seqlens=torch.tensor([0], dtype=torch.int32), num_visual=[], k=[]), RuntimeError, r"cu_seqlens must have shape \[B \+ 1\]"),
    "varlen-cu-first": (varlen(cu_seqlens=torch.tensor([1, 5, 10], dtype=torch.int32)), ValueError, r"cu_seqlens\[0\] must be 0", (RuntimeError, r"cu_seqlens\[0\] must be 0")),
    "varlen-cu-last": (varlen(cu_seqlens=torch.tensor([0, 5, 9], dtype=torch.int32)), ValueError, r"cu_seqlens\[-1\] must equal T=10", (RuntimeError, r"cu_seqlens\[-1\] must equal T=10")),
    "varlen-cu-decreasing": (varlen(cu_seqlens=torch.tensor([0, 6, 4, 10], dtype=torch.int32), num_visual=[3, 0, 2], k=[1, 0, 1]), ValueError, "cu_seqlens must be non-decreasing", (RuntimeError, "cu_seqlens must be non-decreasing")),
    "varlen-num-visual-len": (varlen(num_visual=[3]), ValueError, "num_visual must have B=2 entries"),
    "varlen-k-len": (varlen(k=[1, 1, 1]), ValueError, "k must have B=2 entries"),
    "varlen-k-zero": (varlen(k=[0, 1]), ValueError, r"k\[0\] must be in \[1, num_visual\[0\]=3\]"),
    "varlen-k-above": (varlen(k=[1, 3]), ValueError, r"k\[1\] must be in \[1, num_visual\[1\]=2\]"),
    "varlen-num-visual-wrong": (varlen(num_visual=[2, 2], k=[1, 1]), ValueError, r"sequence 0 must hold num_visual\[0\]=2 visual tokens, vis_mask marks 3", (RuntimeError, r"sequence b must hold num_visual\[b\] visual tokens")),
    "varlen-pos-shape": (varlen(position_ids=torch.arange(11)), RuntimeError, "position_ids must have shape"),
    # kv_compact / kv_compact_
    "kv-empty": (kv(caches=[]), RuntimeError, "caches must hold at least one tensor"),
    "kv-keep-dtype": (kv(keep_pos=torch.tensor([[0, 3, 5], [1, 2, 11]], dtype=torch.int32)), RuntimeError, "keep_pos must be int64"),
    "kv-keep-rank": (kv(keep_pos=torch.zeros(1, 2, 3, dtype=torch.long)), RuntimeError, r"keep_pos must have shape \[B, n\]"),
    "kv-cache-rank": (kv(caches=[torch.randn(B, S, 16)]), RuntimeError, "caches must have 4 dims"),
    "kv-seq-dim": (kv(seq_dim=3), ValueError, "seq_dim must be 1"),
    "kv-seq-dim-packed": (kv(caches=[torch.randn(S, 4, 16)], keep_pos=torch.tensor([0, 3]), seq_dim=1), ValueError, "seq_dim must be 0"),
    "kv-batch": (kv(keep_pos=torch.tensor([[0, 3, 5]])), RuntimeError, r"caches\[0\] must have batch size 1"),
    "kv-seq-mismatch": (kv(caches=[torch.randn(B, 4, S, 16), torch.randn(B, 4, S + 1, 16)]), RuntimeError, r"caches\[1\] must have sequence length 12"),
    "kv-range-high": (kv(keep_pos=torch.tensor([[0, 3, 12], [1, 2, 11]])), ValueError, r"keep_pos values must be in \[0, 12\)", (RuntimeError, r"keep_pos values must be in \[0, 12\)")),
    "kv-range-negative": (kv(keep_pos=torch.tensor([[0, -1, 5], [1, 2, 11]])), ValueError, r"keep_pos values must be in \[0, 12\)", (RuntimeError, r"keep_pos values must be in \[0, 12\)")),
    "kv-last-dim": (kv(caches=[torch.randn(B, 4, S, 32)[..., ::2]]), RuntimeError, r"caches\[0\] must have a contiguous last dim"),
    "kv_-not-increasing": (kv_(keep_pos=torch.tensor([[0, 5, 3], [1, 2, 11]])), ValueError, "strictly increasing", (RuntimeError, "strictly increasing")),
    "kv_-duplicate": (kv_(keep_pos=torch.tensor([[0, 3, 3], [1, 2, 11]])), ValueError, "strictly increasing", (RuntimeError, "strictly increasing")),
    "kv_-shared-memory": (kv_(caches=[buffer[0], buffer[0][:, :2]]), RuntimeError, r"caches\[0\] and caches\[1\] share memory"),
    "kv_-expanded": (kv_(caches=[torch.randn(B, 1, S, 16).expand(B, 4, S, 16)]), RuntimeError, "overlapping elements"),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("namespace", NAMESPACES)
def test_bad_input(namespace, name):
    """Each case: (call, error, message[, (error, message) of the GPU backends]). The Triton and
    CUDA ops check rules that need the data on the device (no host sync), which raises
    RuntimeError."""
    call, error, message, *on_device = CASES[name]
    if namespace in DEVICE_CHECKED and on_device:
        error, message = on_device[0]
    with pytest.raises(error, match=message):
        call(getattr(torch.ops, namespace))


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_disjoint_views_of_one_buffer_are_fine(namespace):
    keep = torch.tensor([[0, 3, 5], [1, 2, 11]])
    k_ref, v_ref = buffer[0].clone(), buffer[1].clone()
    getattr(torch.ops, namespace).kv_compact_([buffer[0], buffer[1]], keep, 2)
    from v2drop_kernels import reference

    reference.kv_compact_([k_ref, v_ref], keep, 2)
    assert torch.equal(buffer[0], k_ref) and torch.equal(buffer[1], v_ref)


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_failed_in_place_call_leaves_caches_untouched(namespace):
    caches = [torch.randn(B, 4, S, 16)]
    before = caches[0].clone()
    with pytest.raises((ValueError, RuntimeError), match="keep_pos values must be in"):
        getattr(torch.ops, namespace).kv_compact_(caches, torch.tensor([[0, 3, 5], [1, 2, 12]]), 2)
    assert torch.equal(caches[0], before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_device_mismatch():
    with pytest.raises(RuntimeError, match="prev must be on the device of hidden"):
        topk(prev=torch.randn(B, S, D, device="cuda"))(torch.ops.v2drop)
    with pytest.raises(RuntimeError, match="vis_mask must be on the device of hidden"):
        topk(hidden=torch.randn(B, S, D, device="cuda"), prev=torch.randn(B, S, D, device="cuda"))(torch.ops.v2drop)
