"""Input builders and comparison rules shared by the tests (and imported by the benchmarks)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import cuda_emulator
import v2drop_kernels as v2d
from v2drop_kernels import reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
HAS_CUDA = torch.cuda.is_available()
TRITON_DEVICE = "cuda" if HAS_CUDA else "cpu"
TRITON_OK = TRITON_DEVICE in v2d.ops._TRITON_DEVICES
INTERPRETED = TRITON_OK and TRITON_DEVICE == "cpu"  # Triton on CPU tensors, slow: small shapes only

# Every backend of the ops, as the `backend` argument of the Python API. "cuda_emulated" is the
# CUDA backend's kernels and binding built for the host and run on CPU tensors (cuda_emulator/;
# conftest.py builds and registers it when a test first asks for it).
CUDA_EMULATED = pytest.param("cuda_emulated", marks=pytest.mark.skipif(not cuda_emulator.available(), reason="needs a C++ compiler and ninja"))
BACKENDS = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")),
    pytest.param("triton", marks=pytest.mark.skipif(not TRITON_OK, reason="needs triton (GPU, or TRITON_INTERPRET=1)")),
    CUDA_EMULATED,
]
# Backends that accept a device (the tests where the device alone picks the kernel).
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")),
]
INTERPRETER_MAX_ELEMENTS = 600_000  # tokens × hidden size the interpreter is given


def register_cuda_emulated() -> None:
    """Builds (once) the host build of the CUDA backend and makes it the backend "cuda_emulated"."""
    v2d.ops._EXTRA_BACKENDS["cuda_emulated"] = (cuda_emulator.load(), "cpu")


def device_of(backend: str) -> str:
    if backend == "cuda_emulated":
        return "cpu"
    return TRITON_DEVICE if backend == "triton" else backend


def skip_if_too_big_for_interpreter(backend: str, elements: int) -> None:
    if backend == "triton" and INTERPRETED and elements > INTERPRETER_MAX_ELEMENTS:
        pytest.skip("large shape: the Triton backend runs it on a GPU (too slow for the interpreter)")
LAYOUTS = ["contiguous", "strided", "transposed"]


def k_values(num_visual: int) -> dict[str, int]:
    """k = 1, a middle value, and V (all kept)."""
    return {"one": 1, "mid": num_visual // 2 + 1 if num_visual > 1 else 1, "all": num_visual}


def make_mask(batch: int, seq: int, num_visual: int, num_images: int, gen: torch.Generator) -> Tensor:
    """bool[B, S]: each row holds ``num_visual`` visual tokens in ``num_images`` runs (images) at
    random offsets, different in every row."""
    mask = torch.zeros(batch, seq, dtype=torch.bool)
    num_images = max(1, min(num_images, num_visual))
    for b in range(batch):
        cuts = sorted(torch.randperm(num_visual - 1, generator=gen)[: num_images - 1].add(1).tolist())
        sizes = [e - s for s, e in zip([0, *cuts], [*cuts, num_visual])]
        text = seq - num_visual
        gaps = sorted(torch.randint(0, text + 1, (num_images,), generator=gen).tolist())
        pos = 0
        for i, size in enumerate(sizes):
            start = gaps[i] + pos
            mask[b, start : start + size] = True
            pos += size
    assert bool((mask.sum(1) == num_visual).all())
    return mask


def _place(values: Tensor, layout: str) -> Tensor:
    """The same values [B, S, D] in a buffer with the given layout (last dim always contiguous)."""
    batch, seq, dim = values.shape
    if layout == "contiguous":
        return values.contiguous()
    if layout == "strided":  # a slice of a larger buffer: padded batch/sequence strides, odd offset
        buf = torch.full((2 * batch, seq + 3, dim + 5), float("nan"), dtype=values.dtype, device=values.device)
        view = buf[::2, 1 : seq + 1, 3 : dim + 3]
        view.copy_(values)
        return view
    if layout == "transposed":  # stored [S, B, D]
        return values.transpose(0, 1).contiguous().transpose(0, 1)
    raise ValueError(layout)


def make_hidden(
    batch: int,
    seq: int,
    dim: int,
    dtype: torch.dtype,
    device: str,
    gen: torch.Generator,
    *,
    integer: bool = False,
    layout: str = "contiguous",
) -> tuple[Tensor, Tensor]:
    """(hidden, prev) [B, S, D]. ``integer``: small integers, so every score is exact in float32
    (and ties are common); otherwise prev ~ N(0, 1) plus a per-token amount of change."""
    if integer:
        prev = torch.randint(-3, 4, (batch, seq, dim), generator=gen).float()
        hidden = torch.randint(-3, 4, (batch, seq, dim), generator=gen).float()
    else:
        prev = torch.randn(batch, seq, dim, generator=gen)
        amount = torch.rand(batch, seq, 1, generator=gen) * 2
        hidden = prev + amount * torch.randn(batch, seq, dim, generator=gen)
    hidden = _place(hidden.to(dtype=dtype, device=device), layout)
    prev = _place(prev.to(dtype=dtype, device=device), layout)
    return hidden, prev


def score_error_bound(hidden: Tensor, prev: Tensor, vis_mask: Tensor) -> tuple[Tensor, float]:
    """(float64 truth, bound): the flash-attention rule — a kernel's error against the float64
    truth may be at most twice the reference's own float32 error, plus a few ulps of the largest
    score (the reference can be exact where the kernel rounds differently)."""
    norm = torch.linalg.vector_norm(hidden.double() - prev.double(), dim=-1)
    truth = torch.where(vis_mask, norm, torch.zeros_like(norm))
    ref = reference.variation_scores(hidden, prev, vis_mask).double()
    ref_err = _abs_err(ref, truth)
    finite = truth[torch.isfinite(truth)]
    floor = 4 * torch.finfo(torch.float32).eps * (float(finite.abs().max()) if finite.numel() else 0.0)
    return truth, 2 * ref_err + floor


def _abs_err(x: Tensor, truth: Tensor) -> float:
    same = (x == truth) | (x.isnan() & truth.isnan())
    err = torch.where(same, torch.zeros_like(truth), (x - truth).abs())
    return float(err.max()) if err.numel() else 0.0


def assert_scores_close(scores: Tensor, hidden: Tensor, prev: Tensor, vis_mask: Tensor) -> float:
    """Checks dtype, shape, NaN placement, zeros off the visual tokens and the error bound; returns
    the bound."""
    assert scores.dtype == torch.float32 and scores.shape == vis_mask.shape
    truth, bound = score_error_bound(hidden.cpu(), prev.cpu(), vis_mask.cpu())
    scores = scores.cpu()
    assert torch.equal(scores.isnan(), truth.isnan()), "NaN scores in the wrong places"
    assert bool((scores[~vis_mask.cpu()] == 0).all()), "non-visual scores must be 0"
    err = _abs_err(scores.double(), truth)
    assert err <= bound, f"score error {err:.3g} > bound {bound:.3g}"
    return bound


def assert_selection(keep_idx: Tensor, scores: Tensor, hidden: Tensor, prev: Tensor, vis_mask: Tensor, k: int, tol: float) -> None:
    """The selection is exactly the contract's ranking of the returned scores, and it is the
    reference's selection up to tokens whose reference score lies within ``tol`` of the row's
    k-th best (near-ties that float32 rounding may order either way)."""
    keep_idx, scores, vis_mask = keep_idx.cpu(), scores.cpu(), vis_mask.cpu()
    assert keep_idx.dtype == torch.int64 and keep_idx.shape == (vis_mask.shape[0], k)
    assert torch.equal(keep_idx, reference.select_topk(scores, vis_mask, k))
    ref_scores = reference.variation_scores(hidden.cpu(), prev.cpu(), vis_mask)
    ref_idx = reference.select_topk(ref_scores, vis_mask, k)
    for b in range(keep_idx.shape[0]):
        got, want = set(keep_idx[b].tolist()), set(ref_idx[b].tolist())
        if got == want:
            continue
        kth = ref_scores[b, ref_idx[b]].nan_to_num(-1.0).min()
        for pos in got ^ want:
            assert abs(float(ref_scores[b, pos]) - float(kth)) <= tol, f"row {b}: position {pos} is not a near-tie"


def assert_unchanged(before: list[Tensor], after: list[Tensor]) -> None:
    for x, y in zip(before, after):
        torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True)
