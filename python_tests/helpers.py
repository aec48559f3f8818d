"""What the tests share: the backends to parametrize over, and the comparison rules. The input
builders are :mod:`v2drop_kernels.testing` (the benchmarks use them too)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import cuda_emulator
import v2drop_kernels as v2d
from v2drop_kernels import reference
from v2drop_kernels.testing import DTYPES, LAYOUTS, k_values, make_hidden, make_mask  # noqa: F401  (re-exported for the tests)

HAS_CUDA = torch.cuda.is_available()
TRITON_DEVICE = "cuda" if HAS_CUDA else "cpu"
TRITON_OK = "triton" in v2d.available_backends(TRITON_DEVICE)
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
    """Builds (once) the host build of the CUDA backend and registers it as the backend
    "cuda_emulated" (last in preference, so backend=None never picks it)."""
    if "cuda_emulated" not in v2d.registered_backends():
        v2d.register_backend("cuda_emulated", cuda_emulator.load(), ("cpu",), priority=2000, device_checks=True)


def device_of(backend: str) -> str:
    if backend == "cuda_emulated":
        return "cpu"
    if backend == "reference":
        return "cpu"
    return TRITON_DEVICE if backend == "triton" else backend


def skip_if_too_big_for_interpreter(backend: str, elements: int) -> None:
    if backend == "triton" and INTERPRETED and elements > INTERPRETER_MAX_ELEMENTS:
        pytest.skip("large shape: the Triton backend runs it on a GPU (too slow for the interpreter)")


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
