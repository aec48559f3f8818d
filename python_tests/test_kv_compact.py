"""v2drop.kv_compact / kv_compact_ (several layers' K and V in one call) against the reference."""

import pytest
import torch

import v2drop_kernels as v2d
from helpers import BACKENDS, DTYPES, assert_unchanged, device_of, skip_if_too_big_for_interpreter
from v2drop_kernels import reference

# layout name -> (seq_dim, shape builder (B, S, H, Dh) -> tensor shape)
LAYOUTS = {
    "BHSD": (2, lambda b, s, h, d: (b, h, s, d)),
    "BSHD": (1, lambda b, s, h, d: (b, s, h, d)),
    "packed": (0, lambda b, s, h, d: (s, h, d)),
}
# (B, S, H, Dh, n kept)
SHAPES = [(1, 7, 1, 8, 3), (3, 83, 4, 7, 40), (2, 640, 8, 128, 289), (1, 3000, 2, 96, 1)]


def make_keep(batch, seq, n, gen, packed):
    rows = [torch.randperm(seq, generator=gen)[:n].sort().values for _ in range(1 if packed else batch)]
    return rows[0] if packed else torch.stack(rows)


def make_caches(layout, shape, dtype, device, layers, gen, *, static_capacity=0):
    """2 tensors (K, V) per layer; with static_capacity, views of length S into larger buffers."""
    batch, seq, heads, dh, _ = shape
    seq_dim, build = LAYOUTS[layout]
    caches = []
    for i in range(2 * layers):
        full = list(build(batch, seq + static_capacity, heads, dh + i % 2))  # V may differ from K
        t = (torch.randn(full, generator=gen) * 8).to(dtype=dtype, device=device)
        caches.append(t.narrow(seq_dim if layout != "packed" else 0, 0, seq))
    return caches


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-S{}-H{}-Dh{}-n{}".format(*s))
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", [*DTYPES, torch.int8], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_out_of_place(backend, dtype, layout, shape):
    skip_if_too_big_for_interpreter(backend, shape[0] * shape[1] * shape[2] * shape[3])
    device = device_of(backend)
    gen = torch.Generator().manual_seed(shape[1] + shape[3])
    seq_dim = LAYOUTS[layout][0]
    caches = make_caches(layout, shape, dtype, device, 3, gen, static_capacity=5)
    keep = make_keep(shape[0], shape[1], shape[4], gen, layout == "packed").to(device)
    before = [c.clone() for c in caches]
    outs = v2d.kv_compact(caches, keep, seq_dim, backend=backend)
    ref = reference.kv_compact(caches, keep, seq_dim)
    assert len(outs) == len(caches)
    for out, want in zip(outs, ref):
        assert out.is_contiguous() and out.dtype == dtype
        assert torch.equal(out, want)
    assert_unchanged(before, caches)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-S{}-H{}-Dh{}-n{}".format(*s))
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_in_place_static_cache(backend, dtype, layout, shape):
    """Compaction inside views of larger (static) buffers: [0, n) gets the kept entries, the rest
    of each buffer is untouched."""
    skip_if_too_big_for_interpreter(backend, shape[0] * shape[1] * shape[2] * shape[3])
    device = device_of(backend)
    gen = torch.Generator().manual_seed(shape[1] * 3 + shape[3])
    seq_dim = LAYOUTS[layout][0]
    caches = make_caches(layout, shape, dtype, device, 2, gen, static_capacity=4)
    keep = make_keep(shape[0], shape[1], shape[4], gen, layout == "packed").to(device)
    expected = [c.clone() for c in caches]
    reference.kv_compact_(expected, keep, seq_dim)
    bases = [c._base for c in caches]
    untouched = [b.narrow(seq_dim, shape[1], 4).clone() for b in bases]
    v2d.kv_compact_(caches, keep, seq_dim, backend=backend)
    for cache, want, base, tail in zip(caches, expected, bases, untouched):
        assert torch.equal(cache, want)
        assert torch.equal(base.narrow(seq_dim, shape[1], 4), tail)


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_tensor_and_negative_seq_dim(backend):
    gen = torch.Generator().manual_seed(0)
    device = device_of(backend)
    cache = torch.randn(2, 4, 30, 16, generator=gen).to(device)
    keep = make_keep(2, 30, 9, gen, False).to(device)
    out = v2d.kv_compact(cache, keep, -2, backend=backend)
    assert isinstance(out, torch.Tensor) and torch.equal(out, reference.kv_compact([cache], keep, 2)[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_after_variation_drop(backend):
    """PyramidDrop's use: the boundary layer's K/V of every token, compacted with the op's keep_pos."""
    gen = torch.Generator().manual_seed(1)
    device = device_of(backend)
    batch, seq, dim = 2, 83, 32
    hidden = torch.randn(batch, seq, dim, generator=gen).to(device)
    prev = torch.randn(batch, seq, dim, generator=gen).to(device)
    vis_mask = torch.zeros(batch, seq, dtype=torch.bool, device=device)
    vis_mask[:, 10:74] = True
    out = v2d.variation_drop(hidden, prev, vis_mask, None, 16, num_visual=64, backend=backend)
    k_cache = torch.randn(batch, 4, seq, 8, generator=gen).to(device)
    compacted = v2d.kv_compact([k_cache], out.keep_pos, 2, backend=backend)[0]
    assert torch.equal(compacted, k_cache.gather(2, out.keep_pos[:, None, :, None].expand(-1, 4, -1, 8)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_disjoint_views_of_one_buffer_are_fine(backend):
    """In place on two caches that are disjoint slices of one buffer (keys and values in one
    allocation): not an overlap."""
    device = device_of(backend)
    buffer = torch.randn(2, 2, 4, 12, 16, generator=torch.Generator().manual_seed(0)).to(device)
    keep = torch.tensor([[0, 3, 5], [1, 2, 11]], device=device)
    k_ref, v_ref = buffer[0].clone(), buffer[1].clone()
    v2d.kv_compact_([buffer[0], buffer[1]], keep, 2, backend=backend)
    reference.kv_compact_([k_ref, v_ref], keep, 2)
    assert torch.equal(buffer[0], k_ref) and torch.equal(buffer[1], v_ref)
