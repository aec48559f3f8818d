"""v2drop.variation_drop (fused score + select + compaction) against the reference."""

import pytest
import torch

import v2drop_kernels as v2d
from helpers import BACKENDS, DTYPES, LAYOUTS, device_of, skip_if_too_big_for_interpreter, assert_scores_close, assert_selection, assert_unchanged, k_values, make_hidden, make_mask
from test_variation_topk import SHAPES, shape_id
from v2drop_kernels import reference
from v2drop_kernels.testing import POSITION_KINDS, make_position_ids


def check_drop(out, hidden, prev, vis_mask, position_ids, num_visual, k, *, exact):
    batch, seq, dim = hidden.shape
    seq_out = seq - num_visual + k
    assert out.hidden.shape == (batch, seq_out, dim) and out.hidden.dtype == hidden.dtype
    assert out.position_ids.shape == (*position_ids.shape[:-2], batch, seq_out)
    assert out.position_ids.dtype == position_ids.dtype
    assert out.keep_pos.shape == (batch, seq_out) and out.keep_pos.dtype == torch.int64
    assert out.vis_mask.shape == (batch, seq_out) and out.vis_mask.dtype == torch.bool
    keep_idx = out.keep_pos[out.vis_mask].view(batch, k)
    if exact:
        ref = reference.variation_drop(hidden, prev, vis_mask, position_ids, num_visual, k)
        for got, want in zip(out, ref):
            assert torch.equal(got, want)
        return
    bound = assert_scores_close(out.scores, hidden, prev, vis_mask)
    assert_selection(keep_idx, out.scores, hidden, prev, vis_mask, k, tol=2 * bound)
    # Given the scores, the selection and compaction are exact.
    ref = reference.select_drop(out.scores, vis_mask, position_ids, num_visual, k)
    for got, want in zip((out.position_ids, out.keep_pos, out.vis_mask), ref):
        assert torch.equal(got, want)
    assert torch.equal(out.hidden, hidden.gather(1, out.keep_pos[..., None].expand(-1, -1, dim)))


@pytest.mark.parametrize("k_kind", ["one", "mid", "all"])
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_reference(backend, dtype, shape, k_kind):
    batch, seq, dim, num_visual, images = shape
    skip_if_too_big_for_interpreter(backend, batch * seq * dim)
    device = device_of(backend)
    gen = torch.Generator().manual_seed(7 + seq * 1_000_003 + dim * 1009 + num_visual)  # same inputs every run
    hidden, prev = make_hidden(batch, seq, dim, dtype, device, gen)
    vis_mask = make_mask(batch, seq, num_visual, images, gen).to(device)
    position_ids = make_position_ids(batch, seq, "int64", device, gen)
    k = k_values(num_visual)[k_kind]
    inputs = [hidden.clone(), prev.clone(), vis_mask.clone(), position_ids.clone()]

    out = v2d.variation_drop(hidden, prev, vis_mask, position_ids, k, num_visual=num_visual, backend=backend)

    check_drop(out, hidden, prev, vis_mask, position_ids, num_visual, k, exact=False)
    assert_unchanged(inputs, [hidden, prev, vis_mask, position_ids])


@pytest.mark.parametrize("pos_kind", POSITION_KINDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_on_integer_data(backend, dtype, layout, pos_kind):
    batch, seq, dim, num_visual = 3, 83, 769, 64
    device = device_of(backend)
    gen = torch.Generator().manual_seed(7)
    hidden, prev = make_hidden(batch, seq, dim, dtype, device, gen, integer=True, layout=layout)
    vis_mask = make_mask(batch, seq, num_visual, 3, gen).to(device)
    position_ids = make_position_ids(batch, seq, pos_kind, device, gen)
    for k in k_values(num_visual).values():
        out = v2d.variation_drop(hidden, prev, vis_mask, position_ids, k, num_visual=num_visual, backend=backend)
        check_drop(out, hidden, prev, vis_mask, position_ids, num_visual, k, exact=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_progressive_schedule(backend):
    """The LLaVA-1.5 V²Drop schedule 576 -> 288 -> 144 -> 1: each stage feeds the next with the
    compacted hidden states, position ids and mask; positions stay the original ones."""
    gen = torch.Generator().manual_seed(3)
    device = device_of(backend)
    batch, seq, dim, num_visual = 2, 640, 64, 576
    hidden, prev = make_hidden(batch, seq, dim, torch.bfloat16, device, gen)
    vis_mask = make_mask(batch, seq, num_visual, 1, gen).to(device)
    position_ids = torch.arange(seq, device=device).expand(batch, seq)
    original = torch.arange(seq, device=device).expand(batch, seq)
    for k in (288, 144, 1):
        out = v2d.variation_drop(hidden, prev, vis_mask, position_ids, k, num_visual=num_visual, backend=backend)
        ref = reference.variation_drop(hidden, prev, vis_mask, position_ids, num_visual, k)
        assert torch.equal(out.keep_pos, ref[2]) and torch.equal(out.hidden, ref[0])
        original = original.gather(1, out.keep_pos)
        assert torch.equal(out.position_ids, original)
        assert int(out.vis_mask.sum(1).unique()) == k
        # The next stage: the layer's output is a new state; the dropped layer's input the old one.
        prev = out.hidden
        hidden = out.hidden + torch.randn(out.hidden.shape, generator=gen).to(device, torch.bfloat16)
        vis_mask, position_ids, num_visual = out.vis_mask, out.position_ids, k
    assert hidden.shape == (batch, seq - 576 + 1, dim)


@pytest.mark.parametrize("backend", BACKENDS)
def test_defaults(backend):
    """position_ids=None means arange(S); num_visual=None reads V from the mask."""
    gen = torch.Generator().manual_seed(5)
    device = device_of(backend)
    hidden, prev = make_hidden(2, 50, 16, torch.float32, device, gen)
    vis_mask = make_mask(2, 50, 30, 2, gen).to(device)
    out = v2d.variation_drop(hidden, prev, vis_mask, None, 10, backend=backend)
    ref = reference.variation_drop(hidden, prev, vis_mask, torch.arange(50, device=device).expand(2, 50), 30, 10)
    assert torch.equal(out.keep_pos, ref[2]) and torch.equal(out.position_ids, ref[1])
