"""Property tests (hypothesis): on random small problems with many ties and NaNs, every op equals
the reference exactly (integer-valued data makes every score exact)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import v2drop_kernels as v2d
from helpers import DEVICES, INTERPRETED, TRITON_OK, device_of
from v2drop_kernels import reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
EXAMPLES = 150
TRITON_EXAMPLES = 30 if INTERPRETED else EXAMPLES  # the interpreter takes ~0.5 s an example
triton_only = pytest.mark.skipif(not TRITON_OK, reason="needs triton (GPU, or TRITON_INTERPRET=1)")


@st.composite
def problems(draw):
    batch = draw(st.integers(1, 3))
    seq = draw(st.integers(1, 40))
    dim = draw(st.integers(1, 40))
    num_visual = draw(st.integers(1, seq))
    k = draw(st.integers(1, num_visual))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**31 - 1))
    nan_fraction = draw(st.sampled_from([0.0, 0.0, 0.1, 0.5]))
    spread = draw(st.sampled_from([0, 1, 3]))  # 0: every score ties
    gen = torch.Generator().manual_seed(seed)
    mask = torch.stack([torch.randperm(seq, generator=gen) < num_visual for _ in range(batch)])
    prev = torch.randint(-spread, spread + 1, (batch, seq, dim), generator=gen).float()
    hidden = torch.randint(-spread, spread + 1, (batch, seq, dim), generator=gen).float()
    hidden[torch.rand(batch, seq, generator=gen) < nan_fraction] = float("nan")
    position_ids = torch.randint(0, 1000, (3, batch, seq), generator=gen) if draw(st.booleans()) else torch.arange(seq).expand(batch, seq)
    return hidden.to(dtype), prev.to(dtype), mask, position_ids, num_visual, k


def check_topk_and_drop(backend, problem):
    device = device_of(backend)
    hidden, prev, mask, position_ids, num_visual, k = (t.to(device) if isinstance(t, torch.Tensor) else t for t in problem)
    got = v2d.variation_topk(hidden, prev, mask, k, backend=backend)
    want = reference.variation_topk(hidden, prev, mask, k)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=0, equal_nan=True)
    out = v2d.variation_drop(hidden, prev, mask, position_ids, k, num_visual=num_visual, backend=backend)
    ref = reference.variation_drop(hidden, prev, mask, position_ids, num_visual, k)
    for a, b in zip(out[:4], ref[:4]):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    # The kept visual tokens are exactly the top-k.
    assert torch.equal(out.keep_pos[out.vis_mask].view(-1, k), got[0])


@pytest.mark.parametrize("backend", DEVICES)
@settings(max_examples=EXAMPLES, deadline=None)
@given(problem=problems())
def test_topk_and_drop_equal_reference(backend, problem):
    check_topk_and_drop(backend, problem)


@triton_only
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # NaN rows, interpreter
@settings(max_examples=TRITON_EXAMPLES, deadline=None)
@given(problem=problems())
def test_topk_and_drop_equal_reference_triton(problem):
    check_topk_and_drop("triton", problem)


VARLEN = dict(rows=st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), min_size=1, max_size=5), seed=st.integers(0, 2**31 - 1), dim=st.integers(1, 24))


@pytest.mark.parametrize("backend", DEVICES)
@settings(max_examples=EXAMPLES, deadline=None)
@given(**VARLEN)
def test_varlen_equals_reference(backend, rows, seed, dim):
    check_varlen(backend, rows, seed, dim)


@triton_only
@settings(max_examples=TRITON_EXAMPLES, deadline=None)
@given(**VARLEN)
def test_varlen_equals_reference_triton(rows, seed, dim):
    check_varlen("triton", rows, seed, dim)


def check_varlen(backend, rows, seed, dim):
    gen = torch.Generator().manual_seed(seed)
    lengths = [text + visual for text, visual in rows]
    mask = torch.cat([torch.randperm(n, generator=gen) < v for n, (_, v) in zip(lengths, rows)]) if sum(lengths) else torch.zeros(0, dtype=torch.bool)
    total = mask.numel()
    hidden = torch.randint(-2, 3, (total, dim), generator=gen).float()
    prev = torch.randint(-2, 3, (total, dim), generator=gen).float()
    cu = torch.tensor([0, *lengths]).cumsum(0).int()
    num_visual = [v for _, v in rows]
    k = [int(torch.randint(1, v + 1, (1,), generator=gen)) if v else 0 for v in num_visual]
    position_ids = torch.arange(total)
    device = device_of(backend)
    hidden, prev, mask, position_ids, cu = (t.to(device) for t in (hidden, prev, mask, position_ids, cu))
    out = v2d.variation_drop_varlen(hidden, prev, mask, position_ids, cu, k, num_visual=num_visual, backend=backend)
    ref = reference.variation_drop_varlen(hidden, prev, mask, position_ids, cu, num_visual, k)
    for a, b in zip((out.hidden, out.position_ids, out.keep_pos, out.vis_mask, out.cu_seqlens, out.scores), ref):
        assert torch.equal(a, b)


KV = dict(
    batch=st.integers(1, 3), seq=st.integers(1, 30), heads=st.integers(1, 4), dh=st.integers(1, 9),
    seq_dim=st.sampled_from([1, 2]), seed=st.integers(0, 2**31 - 1), in_place=st.booleans(),
)


@pytest.mark.parametrize("backend", DEVICES)
@settings(max_examples=EXAMPLES, deadline=None)
@given(**KV)
def test_kv_compact_equals_reference(backend, **problem):
    check_kv_compact(backend, **problem)


@triton_only
@settings(max_examples=TRITON_EXAMPLES, deadline=None)
@given(**KV)
def test_kv_compact_equals_reference_triton(**problem):
    check_kv_compact("triton", **problem)


def check_kv_compact(backend, batch, seq, heads, dh, seq_dim, seed, in_place):
    gen = torch.Generator().manual_seed(seed)
    device = device_of(backend)
    n = int(torch.randint(1, seq + 1, (1,), generator=gen))
    keep = torch.stack([torch.randperm(seq, generator=gen)[:n].sort().values for _ in range(batch)])
    shape = (batch, seq, heads, dh) if seq_dim == 1 else (batch, heads, seq, dh)
    keep = keep.to(device)
    caches = [torch.randn(shape, generator=gen).to(device) for _ in range(3)]
    expected = [c.clone() for c in caches]
    if in_place:
        v2d.kv_compact_(caches, keep, seq_dim, backend=backend)
        reference.kv_compact_(expected, keep, seq_dim)
        outs = caches
    else:
        outs = v2d.kv_compact(caches, keep, seq_dim, backend=backend)
        expected = reference.kv_compact(expected, keep, seq_dim)
    for a, b in zip(outs, expected):
        assert torch.equal(a, b)
