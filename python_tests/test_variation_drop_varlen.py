"""v2drop.variation_drop_varlen (packed [T, D] + cu_seqlens) against the reference."""

import pytest
import torch

import v2drop_kernels as v2d
from helpers import BACKENDS, DTYPES, device_of, skip_if_too_big_for_interpreter, assert_scores_close, assert_selection, assert_unchanged, make_hidden, make_mask
from v2drop_kernels import reference
from v2drop_kernels.testing import make_packed

# Per sequence: (length, visual tokens, images, k). Rows differ in V; one has no image.
ROWS = {
    "llava-mix": [(640, 576, 1, 288), (83, 0, 0, 0), (700, 576, 2, 1), (7, 3, 1, 3)],
    "one-row": [(3000, 2880, 5, 1440)],
    "tiny": [(1, 1, 1, 1), (2, 0, 0, 0), (5, 5, 1, 2)],
}


@pytest.mark.parametrize("mrope", [False, True], ids=["pos1d", "mrope"])
@pytest.mark.parametrize("rows", list(ROWS), ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_reference(backend, dtype, rows, mrope):
    gen = torch.Generator().manual_seed(11)
    spec = ROWS[rows]
    skip_if_too_big_for_interpreter(backend, sum(r[0] for r in spec) * 769)
    device = device_of(backend)
    num_visual, k = [r[1] for r in spec], [r[3] for r in spec]
    for integer in (True, False):
        hidden, prev, vis_mask, position_ids, cu = make_packed([r[:3] for r in spec], 769, dtype, device, gen, integer=integer, mrope=mrope)
        inputs = [t.clone() for t in (hidden, prev, vis_mask, position_ids, cu)]
        out = v2d.variation_drop_varlen(hidden, prev, vis_mask, position_ids, cu, k, num_visual=num_visual, backend=backend)
        ref = reference.variation_drop_varlen(hidden, prev, vis_mask, position_ids, cu, num_visual, k)
        assert_unchanged(inputs, [hidden, prev, vis_mask, position_ids, cu])
        assert out.cu_seqlens.dtype == torch.int32 and torch.equal(out.cu_seqlens, ref[4])
        assert out.hidden.dtype == dtype and out.position_ids.dtype == position_ids.dtype
        if integer:  # exact scores: everything bit for bit
            for got, want in zip((out.hidden, out.position_ids, out.keep_pos, out.vis_mask, out.scores), (*ref[:4], ref[5])):
                assert torch.equal(got, want)
            continue
        bound = assert_scores_close(out.scores[None], hidden[None], prev[None], vis_mask[None])
        bounds = cu.tolist()
        for b, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
            if not num_visual[b]:
                continue
            seg = slice(start, end)
            sel = out.keep_pos[out.cu_seqlens[b] : out.cu_seqlens[b + 1]]
            sel = sel[vis_mask[sel]] - start
            assert_selection(sel[None], out.scores[None, seg], hidden[None, seg], prev[None, seg], vis_mask[None, seg], k[b], tol=2 * bound)
        # Given the selection, the compaction is exact.
        assert torch.equal(out.hidden, hidden[out.keep_pos])
        assert torch.equal(out.position_ids, position_ids[..., out.keep_pos])
        assert torch.equal(out.vis_mask, vis_mask[out.keep_pos])


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_as_padded_per_row(backend):
    """Packing B equal rows gives the padded op's result, row by row."""
    gen = torch.Generator().manual_seed(2)
    device = device_of(backend)
    batch, seq, dim, num_visual, k = 3, 83, 64, 60, 17
    hidden, prev = make_hidden(batch, seq, dim, torch.bfloat16, device, gen)
    vis_mask = make_mask(batch, seq, num_visual, 2, gen).to(device)
    position_ids = torch.arange(seq, device=device).expand(batch, seq)
    padded = v2d.variation_drop(hidden, prev, vis_mask, position_ids, k, num_visual=num_visual, backend=backend)
    cu = torch.arange(0, (batch + 1) * seq, seq, dtype=torch.int32, device=device)
    packed = v2d.variation_drop_varlen(hidden.flatten(0, 1), prev.flatten(0, 1), vis_mask.flatten(), position_ids.flatten(), cu, k, backend=backend)
    offsets = torch.arange(batch, device=device)[:, None] * seq
    assert torch.equal(packed.keep_pos, (padded.keep_pos + offsets).flatten())
    assert torch.equal(packed.hidden, padded.hidden.flatten(0, 1))
    assert torch.equal(packed.scores, padded.scores.flatten())
    assert packed.cu_seqlens.tolist() == [i * (seq - num_visual + k) for i in range(batch + 1)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_num_visual_and_int_k_defaults(backend):
    gen = torch.Generator().manual_seed(4)
    device = device_of(backend)
    spec = ROWS["llava-mix"]
    hidden, prev, vis_mask, position_ids, cu = make_packed([r[:3] for r in spec], 32, torch.float32, device, gen)
    out = v2d.variation_drop_varlen(hidden, prev, vis_mask, position_ids, cu, 3, backend=backend)
    ref = reference.variation_drop_varlen(hidden, prev, vis_mask, position_ids, cu, [576, 0, 576, 3], [3, 0, 3, 3])
    assert torch.equal(out.keep_pos, ref[2]) and torch.equal(out.cu_seqlens, ref[4])
