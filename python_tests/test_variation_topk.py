"""v2drop.variation_topk against the reference: backend x dtype x odd shapes x k."""

import pytest
import torch

import v2drop_kernels as v2d
from helpers import BACKENDS, DTYPES, LAYOUTS, device_of, skip_if_too_big_for_interpreter, assert_scores_close, assert_selection, assert_unchanged, k_values, make_hidden, make_mask
from v2drop_kernels import reference

# (B, S, D, V, images per row): D in 8, 769, 4096; S in 7, 83, 640, 3000; B in 1, 3.
SHAPES = [
    (1, 7, 8, 3, 1),
    (3, 7, 769, 5, 2),
    (3, 83, 8, 64, 2),
    (1, 83, 4096, 60, 3),
    (3, 640, 769, 576, 1),
    (1, 640, 4096, 576, 1),
    (3, 3000, 8, 2880, 5),
    (1, 3000, 769, 2880, 5),
    (1, 3000, 4096, 2880, 5),
]


def shape_id(shape):
    return "B{}-S{}-D{}-V{}-img{}".format(*shape)


@pytest.mark.parametrize("k_kind", ["one", "mid", "all"])
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_reference(backend, dtype, shape, k_kind):
    batch, seq, dim, num_visual, images = shape
    skip_if_too_big_for_interpreter(backend, batch * seq * dim)
    device = device_of(backend)
    gen = torch.Generator().manual_seed(seq * 1_000_003 + dim * 1009 + num_visual)  # same inputs every run
    hidden, prev = make_hidden(batch, seq, dim, dtype, device, gen)
    vis_mask = make_mask(batch, seq, num_visual, images, gen).to(device)
    k = k_values(num_visual)[k_kind]
    inputs = [hidden.clone(), prev.clone(), vis_mask.clone()]

    keep_idx, scores = v2d.variation_topk(hidden, prev, vis_mask, k, backend=backend)

    assert keep_idx.device == hidden.device and scores.device == hidden.device
    bound = assert_scores_close(scores, hidden, prev, vis_mask)
    assert_selection(keep_idx, scores, hidden, prev, vis_mask, k, tol=2 * bound)
    assert_unchanged(inputs, [hidden, prev, vis_mask])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(1, 7, 8, 3, 1), (3, 83, 769, 64, 2), (3, 640, 4096, 576, 2)], ids=shape_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_on_integer_data(backend, dtype, shape, layout):
    """Small integers make every score exact, so indices and scores must equal the reference's
    bit for bit, with many ties — whatever the batch/sequence strides."""
    batch, seq, dim, num_visual, images = shape
    skip_if_too_big_for_interpreter(backend, batch * seq * dim)
    device = device_of(backend)
    gen = torch.Generator().manual_seed(seq + dim)
    hidden, prev = make_hidden(batch, seq, dim, dtype, device, gen, integer=True, layout=layout)
    vis_mask = make_mask(batch, seq, num_visual, images, gen).to(device)
    for k in k_values(num_visual).values():
        keep_idx, scores = v2d.variation_topk(hidden, prev, vis_mask, k, backend=backend)
        ref_idx, ref_scores = reference.variation_topk(hidden, prev, vis_mask, k)
        assert torch.equal(keep_idx, ref_idx)
        assert torch.equal(scores, ref_scores)


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_video_rows(backend):
    """A row of 64k+ visual tokens (a long video): many 512-token chunks of the CUDA selection and
    many merged blocks of the Triton one, with scores that tie in large groups."""
    batch, seq, dim, num_visual = 2, 66_000, 8, 65_600
    skip_if_too_big_for_interpreter(backend, batch * seq * dim)
    device = device_of(backend)
    gen = torch.Generator().manual_seed(64)
    hidden, prev = make_hidden(batch, seq, dim, torch.float32, device, gen, integer=True)
    vis_mask = make_mask(batch, seq, num_visual, 7, gen).to(device)
    for k in (1, 32_801, num_visual - 1):
        keep_idx, scores = v2d.variation_topk(hidden, prev, vis_mask, k, backend=backend)
        ref_idx, ref_scores = reference.variation_topk(hidden, prev, vis_mask, k)
        assert torch.equal(keep_idx, ref_idx)
        assert torch.equal(scores, ref_scores)
