"""v2drop.select_drop and v2drop.select_drop_varlen (ranking by given scores) against the reference."""

import pytest
import torch

import v2drop_kernels as v2d
from helpers import BACKENDS, assert_unchanged, device_of, skip_if_too_big_for_interpreter
from v2drop_kernels import reference
from v2drop_kernels.testing import POSITION_KINDS, k_values, make_hidden, make_mask, make_packed, make_position_ids, make_scores

# (B, S, V, images per row)
SHAPES = [(1, 7, 3, 1), (3, 83, 64, 2), (2, 640, 576, 1), (1, 3000, 2880, 5), (2, 12545, 12544, 64)]


def with_nan(scores: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Every 11th score NaN (a few of them on visual tokens)."""
    flat = scores.reshape(-1).clone()
    flat[torch.randint(0, 11, (1,), generator=gen).item() :: 11] = float("nan")
    return flat.view(scores.shape)


@pytest.mark.parametrize("pos_kind", POSITION_KINDS)
@pytest.mark.parametrize("k_kind", ["one", "mid", "all"])
@pytest.mark.parametrize("scores_kind", ["uniform", "ties", "nan"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-S{}-V{}-img{}".format(*s))
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_reference(backend, shape, scores_kind, k_kind, pos_kind):
    batch, seq, num_visual, images = shape
    skip_if_too_big_for_interpreter(backend, batch * seq * 8)
    device = device_of(backend)
    gen = torch.Generator().manual_seed(seq * 31 + num_visual)
    vis_mask = make_mask(batch, seq, num_visual, images, gen).to(device)
    scores = make_scores((batch, seq), device, gen, ties=scores_kind == "ties")
    if scores_kind == "nan":
        scores = with_nan(scores, gen)
    position_ids = make_position_ids(batch, seq, pos_kind, device, gen)
    k = k_values(num_visual)[k_kind]
    inputs = [scores.clone(), vis_mask.clone(), position_ids.clone()]

    out = v2d.select_drop(scores, vis_mask, position_ids, k, num_visual=num_visual, backend=backend)

    want = reference.select_drop(scores, vis_mask, position_ids, num_visual, k)
    seq_out = seq - num_visual + k
    assert out.keep_pos.shape == (batch, seq_out) and out.keep_pos.dtype == torch.int64
    assert out.position_ids.dtype == position_ids.dtype and out.cu_seqlens is None
    for got, ref in zip(out[:3], want):
        assert torch.equal(got, ref)
    assert_unchanged(inputs, [scores, vis_mask, position_ids])


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_nan_and_strided_scores(backend):
    """The contract's ranking on given scores: equal scores to the lower position, NaN below
    -inf; scores may be a strided view with a contiguous last dim; non-visual scores are ignored."""
    device = device_of(backend)
    nan, inf = float("nan"), float("inf")
    values = torch.tensor([[9.0, 2, nan, 2, -inf, 2, 1, nan, 7.0]], device=device)
    buffer = torch.full((3, 12), 5.0, device=device)
    buffer[1, 2:11] = values[0]
    scores = buffer[1:2, 2:11]  # row stride 12, offset 14
    mask = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 1, 0]], dtype=torch.bool, device=device)
    expected = {1: [1], 2: [1, 3], 3: [1, 3, 5], 4: [1, 3, 5, 6], 5: [1, 3, 4, 5, 6], 6: [1, 2, 3, 4, 5, 6]}
    for k, kept in expected.items():
        out = v2d.select_drop(scores, mask, None, k, num_visual=7, backend=backend)
        assert out.keep_pos.tolist() == [sorted({0, 8} | set(kept))], k
        assert out.vis_mask.tolist() == [[p in kept for p in out.keep_pos[0].tolist()]]
        assert torch.equal(out.keep_pos, reference.select_drop(scores, mask, torch.arange(9, device=device)[None], 7, k)[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_selection_as_variation_drop(backend):
    """select_drop ranking variation_drop's own scores keeps the same tokens."""
    device = device_of(backend)
    gen = torch.Generator().manual_seed(4)
    hidden, prev = make_hidden(2, 83, 40, torch.bfloat16, device, gen)
    vis_mask = make_mask(2, 83, 60, 2, gen).to(device)
    drop = v2d.variation_drop(hidden, prev, vis_mask, None, 17, num_visual=60, backend=backend)
    sel = v2d.select_drop(drop.scores, vis_mask, None, 17, num_visual=60, backend=backend)
    assert torch.equal(sel.keep_pos, drop.keep_pos) and torch.equal(sel.position_ids, drop.position_ids)
    assert torch.equal(sel.vis_mask, drop.vis_mask)


# Per sequence: (length, visual tokens, images, k). Rows differ in V; one has no image, one is empty.
VARLEN_ROWS = {
    "llava-mix": [(640, 576, 1, 288), (83, 0, 0, 0), (700, 576, 2, 1), (7, 3, 1, 3)],
    "tiny": [(1, 1, 1, 1), (2, 0, 0, 0), (0, 0, 0, 0), (5, 5, 1, 2)],
}


@pytest.mark.parametrize("mrope", [False, True], ids=["pos1d", "mrope"])
@pytest.mark.parametrize("scores_kind", ["uniform", "ties", "nan"])
@pytest.mark.parametrize("rows", list(VARLEN_ROWS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_varlen_matches_reference(backend, rows, scores_kind, mrope):
    device = device_of(backend)
    gen = torch.Generator().manual_seed(12)
    spec = VARLEN_ROWS[rows]
    _, _, vis_mask, position_ids, cu = make_packed([r[:3] for r in spec], 1, torch.float32, device, gen, mrope=mrope)
    scores = make_scores(vis_mask.shape, device, gen, ties=scores_kind == "ties")
    if scores_kind == "nan":
        scores = with_nan(scores, gen)
    num_visual, k = [r[1] for r in spec], [r[3] for r in spec]
    inputs = [t.clone() for t in (scores, vis_mask, position_ids, cu)]

    out = v2d.select_drop_varlen(scores, vis_mask, position_ids, cu, k, num_visual=num_visual, backend=backend)

    want = reference.select_drop_varlen(scores, vis_mask, position_ids, cu, num_visual, k)
    assert out.cu_seqlens.dtype == torch.int32
    for got, ref in zip(out, want):
        assert torch.equal(got, ref)
    assert_unchanged(inputs, [scores, vis_mask, position_ids, cu])


@pytest.mark.parametrize("backend", BACKENDS)
def test_varlen_same_as_padded_per_row(backend):
    device = device_of(backend)
    gen = torch.Generator().manual_seed(6)
    batch, seq, num_visual, k = 3, 50, 30, 11
    vis_mask = make_mask(batch, seq, num_visual, 2, gen).to(device)
    scores = make_scores((batch, seq), device, gen, ties=True)
    padded = v2d.select_drop(scores, vis_mask, None, k, num_visual=num_visual, backend=backend)
    cu = torch.arange(0, (batch + 1) * seq, seq, dtype=torch.int32, device=device)
    packed = v2d.select_drop_varlen(scores.flatten(), vis_mask.flatten(), torch.arange(seq, device=device).repeat(batch), cu, k,
                                    backend=backend)
    offsets = torch.arange(batch, device=device)[:, None] * seq
    assert torch.equal(packed.keep_pos, (padded.keep_pos + offsets).flatten())
    assert torch.equal(packed.position_ids, padded.position_ids.flatten())
    assert packed.cu_seqlens.tolist() == [i * (seq - num_visual + k) for i in range(batch + 1)]
