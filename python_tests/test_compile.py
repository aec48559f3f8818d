"""torch.library.opcheck for every op, and torch.compile(fullgraph=True) through the ops."""

import pytest
import torch

import v2drop_kernels as v2d
from helpers import HAS_CUDA, TRITON_OK, DTYPES, device_of, make_hidden, make_mask
from v2drop_kernels import reference

# Under the Triton interpreter, triton_op runs eagerly but not through opcheck or torch.compile:
# those checks run for the Triton backend on a GPU only.
BACKENDS = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")),
    pytest.param("triton", marks=pytest.mark.skipif(not (TRITON_OK and HAS_CUDA), reason="Triton opcheck/compile need a GPU")),
]


def namespace(backend):
    return torch.ops.v2drop_triton if backend == "triton" else torch.ops.v2drop


def padded_samples(device):
    gen = torch.Generator().manual_seed(0)
    for dtype in DTYPES:
        for batch, seq, dim, num_visual, k in [(1, 7, 8, 3, 1), (3, 83, 33, 64, 20), (2, 30, 16, 30, 30)]:
            hidden, prev = make_hidden(batch, seq, dim, dtype, device, gen)
            mask = make_mask(batch, seq, num_visual, 2, gen).to(device)
            yield hidden, prev, mask, num_visual, k, batch, seq


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_variation_topk(backend):
    ops, device = namespace(backend), device_of(backend)
    for hidden, prev, mask, _, k, _, _ in padded_samples(device):
        torch.library.opcheck(ops.variation_topk.default, (hidden, prev, mask, k))


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_variation_drop(backend):
    ops, device = namespace(backend), device_of(backend)
    for hidden, prev, mask, num_visual, k, batch, seq in padded_samples(device):
        for pos in (torch.arange(seq, device=device).expand(batch, seq), torch.zeros(3, batch, seq, dtype=torch.int32, device=device)):
            torch.library.opcheck(ops.variation_drop.default, (hidden, prev, mask, pos, num_visual, k))


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_variation_drop_varlen(backend):
    ops, device = namespace(backend), device_of(backend)
    gen = torch.Generator().manual_seed(1)
    mask = torch.cat([make_mask(1, 20, 12, 1, gen)[0], torch.zeros(5, dtype=torch.bool), make_mask(1, 9, 9, 1, gen)[0]]).to(device)
    cu = torch.tensor([0, 20, 25, 34], dtype=torch.int32, device=device)
    for dtype in DTYPES:
        hidden, prev = make_hidden(1, 34, 16, dtype, device, gen)
        for pos in (torch.arange(34, device=device), torch.arange(3 * 34, device=device).view(3, 34)):
            torch.library.opcheck(ops.variation_drop_varlen.default, (hidden[0], prev[0], mask, pos, cu, [12, 0, 9], [4, 0, 9]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_select_drop(backend):
    ops, device = namespace(backend), device_of(backend)
    gen = torch.Generator().manual_seed(4)
    for batch, seq, num_visual, k in [(1, 7, 3, 1), (3, 83, 64, 20), (2, 30, 30, 30)]:
        mask = make_mask(batch, seq, num_visual, 2, gen).to(device)
        scores = torch.rand(batch, seq, generator=gen).to(device)
        for pos in (torch.arange(seq, device=device).expand(batch, seq), torch.zeros(3, batch, seq, dtype=torch.int32, device=device)):
            torch.library.opcheck(ops.select_drop.default, (scores, mask, pos, num_visual, k))
    mask = torch.cat([make_mask(1, 20, 12, 1, gen)[0], torch.zeros(5, dtype=torch.bool), make_mask(1, 9, 9, 1, gen)[0]]).to(device)
    cu = torch.tensor([0, 20, 25, 34], dtype=torch.int32, device=device)
    scores = torch.rand(34, generator=gen).to(device)
    for pos in (torch.arange(34, device=device), torch.arange(3 * 34, device=device).view(3, 34)):
        torch.library.opcheck(ops.select_drop_varlen.default, (scores, mask, pos, cu, [12, 0, 9], [4, 0, 9]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_kv_compact(backend):
    ops, device = namespace(backend), device_of(backend)
    gen = torch.Generator().manual_seed(2)
    keep = torch.stack([torch.randperm(30, generator=gen)[:11].sort().values for _ in range(2)]).to(device)
    for seq_dim, shape in ((2, (2, 4, 30, 16)), (1, (2, 30, 4, 16))):
        caches = [torch.randn(shape, generator=gen).to(device, dtype) for dtype in DTYPES]
        torch.library.opcheck(ops.kv_compact.default, (caches, keep, seq_dim))
        torch.library.opcheck(ops.kv_compact_.default, ([c.clone() for c in caches], keep, seq_dim))
    packed = [torch.randn(30, 4, 16, generator=gen).to(device)]
    torch.library.opcheck(ops.kv_compact.default, (packed, keep[0], 0))
    torch.library.opcheck(ops.kv_compact_.default, (packed, keep[0], 0))


def pipeline(hidden, prev, vis_mask, position_ids, k_cache, v_cache, num_visual: int, k: int, backend: str):
    """A pruning step as a decoder would write it: drop, then compact that layer's K/V."""
    out = v2d.variation_drop(hidden, prev, vis_mask, position_ids, k, num_visual=num_visual, backend=backend)
    k_out, v_out = v2d.kv_compact([k_cache, v_cache], out.keep_pos, 2, backend=backend)
    v2d.kv_compact_([k_cache, v_cache], out.keep_pos, 2, backend=backend)
    keep_idx, scores = v2d.variation_topk(out.hidden * 2, out.hidden, out.vis_mask, 1, backend=backend)
    sel = v2d.select_drop(out.scores, vis_mask, position_ids, 1, num_visual=num_visual, backend=backend)
    return out.hidden + 1, out.position_ids, out.keep_pos, k_out, v_out, keep_idx, scores, sel.keep_pos


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend, dynamic):
    torch._dynamo.reset()
    device = device_of(backend)
    gen = torch.Generator().manual_seed(3)
    batch, seq, dim, num_visual, k = 2, 83, 32, 64, 17
    hidden, prev = make_hidden(batch, seq, dim, torch.bfloat16, device, gen)
    mask = make_mask(batch, seq, num_visual, 2, gen).to(device)
    pos = torch.arange(seq, device=device).expand(batch, seq)
    k_cache = torch.randn(batch, 4, seq, 8, generator=gen).to(device)
    v_cache = torch.randn(batch, 4, seq, 8, generator=gen).to(device)

    compiled = torch.compile(pipeline, fullgraph=True, dynamic=dynamic)
    k_c, v_c = k_cache.clone(), v_cache.clone()
    got = compiled(hidden, prev, mask, pos, k_c, v_c, num_visual, k, backend)

    drop = reference.variation_drop(hidden, prev, mask, pos, num_visual, k)
    k_ref, v_ref = reference.kv_compact([k_cache, v_cache], drop[2], 2)
    vis_out = drop[3]
    keep_idx, scores = reference.variation_topk(drop[0] * 2, drop[0], vis_out, 1)
    sel_keep = reference.select_drop(drop[4], mask, pos, num_visual, 1)[1]
    want = (drop[0] + 1, drop[1], drop[2], k_ref, v_ref, keep_idx, scores, sel_keep)
    for name, a, b in zip(["hidden", "position_ids", "keep_pos", "k", "v", "keep_idx", "scores", "select_keep_pos"], got, want):
        if name == "scores":
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(a, b), name
    assert torch.equal(k_c[:, :, : seq - num_visual + k], k_ref) and torch.equal(v_c[:, :, : seq - num_visual + k], v_ref)


@pytest.mark.skipif(not (TRITON_OK and not HAS_CUDA), reason="the interpreter variant of the Triton opcheck")
def test_opcheck_triton_schema_under_interpreter():
    """What opcheck can check of the Triton ops under the interpreter (its fake-tensor and AOT
    checks need a GPU, see test_opcheck_* above): schemas and autograd registration."""
    for hidden, prev, mask, num_visual, k, batch, seq in padded_samples("cpu"):
        pos = torch.arange(seq).expand(batch, seq)
        scores = hidden[..., 0].float().abs()
        for op, args in ((torch.ops.v2drop_triton.variation_topk, (hidden, prev, mask, k)),
                         (torch.ops.v2drop_triton.variation_drop, (hidden, prev, mask, pos, num_visual, k)),
                         (torch.ops.v2drop_triton.select_drop, (scores.contiguous(), mask, pos, num_visual, k))):
            torch.library.opcheck(op.default, args, test_utils=("test_schema", "test_autograd_registration"))
