"""The contract's exact rules: ties, NaN, inf, several images per row, determinism, backends."""

import pytest
import torch

import v2drop_kernels as v2d
from helpers import BACKENDS, DEVICES, DTYPES, TRITON_DEVICE, TRITON_OK, device_of, make_hidden, make_mask
from v2drop_kernels import reference
from v2drop_kernels.testing import rows_with_scores


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_go_to_the_lower_position(backend, dtype):
    device = device_of(backend)
    hidden, prev = rows_with_scores([1, 2, 2, 1, 2, 1, 3], device, dtype)
    mask = torch.ones(1, 7, dtype=torch.bool, device=device)
    assert v2d.variation_topk(hidden, prev, mask, 1, backend=backend)[0].tolist() == [[6]]
    assert v2d.variation_topk(hidden, prev, mask, 3, backend=backend)[0].tolist() == [[1, 2, 6]]
    assert v2d.variation_topk(hidden, prev, mask, 5, backend=backend)[0].tolist() == [[0, 1, 2, 4, 6]]
    # All equal (hidden == prev: every score 0): the first k visual positions.
    zero = torch.zeros(2, 9, 4, dtype=dtype, device=device)
    mask = torch.zeros(2, 9, dtype=torch.bool, device=device)
    mask[0, 2:7] = True
    mask[1, [0, 3, 4, 5, 8]] = True
    assert v2d.variation_topk(zero, zero, mask, 3, backend=backend)[0].tolist() == [[2, 3, 4], [0, 3, 4]]


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf - inf, on purpose
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_ranks_below_every_number_and_inf_above(backend, dtype):
    device = device_of(backend)
    nan, inf = float("nan"), float("inf")
    hidden, prev = rows_with_scores([nan, 0.0, nan, 5.0, inf, 0.0, nan], device, dtype)
    mask = torch.ones(1, 7, dtype=torch.bool, device=device)
    expected = {1: [4], 2: [3, 4], 4: [1, 3, 4, 5], 5: [0, 1, 3, 4, 5], 7: list(range(7))}
    for k, want in expected.items():
        keep, scores = v2d.variation_topk(hidden, prev, mask, k, backend=backend)
        assert keep.tolist() == [want], k
        assert torch.equal(keep, reference.variation_topk(hidden, prev, mask, k)[0])
    assert scores[0, [0, 2, 6]].isnan().all() and scores[0, 4].isinf()
    # inf - inf is NaN: a token whose both states are inf scores NaN.
    both_inf = torch.full((1, 2, 3), inf, dtype=dtype, device=device)
    assert v2d.variation_topk(both_inf, both_inf, mask[:, :2], 1, backend=backend)[1].isnan().all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_in_text_tokens_is_ignored(backend):
    device = device_of(backend)
    gen = torch.Generator().manual_seed(0)
    hidden, prev = make_hidden(2, 40, 16, torch.float32, device, gen)
    mask = make_mask(2, 40, 20, 2, gen).to(device)
    hidden_nan = hidden.clone()
    hidden_nan[~mask] = float("nan")
    a = v2d.variation_topk(hidden, prev, mask, 7, backend=backend)
    b = v2d.variation_topk(hidden_nan, prev, mask, 7, backend=backend)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_several_images_per_row(backend):
    """Visual tokens from several images in one row are ranked together."""
    device = device_of(backend)
    gen = torch.Generator().manual_seed(1)
    mask = torch.zeros(1, 30, dtype=torch.bool, device=device)
    mask[0, 2:10] = True  # image 1
    mask[0, 15:20] = True  # image 2
    mask[0, 25:29] = True  # image 3
    hidden, prev = make_hidden(1, 30, 8, torch.float32, device, gen, integer=True)
    for k in (1, 5, 17):
        assert torch.equal(v2d.variation_topk(hidden, prev, mask, k, backend=backend)[0], reference.variation_topk(hidden, prev, mask, k)[0])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_deterministic_across_calls_threads_and_positions(dtype):
    """Same bits on every call and for any thread count; equal rows score the same bits wherever
    they are stored (so ties in the data are ties in the scores)."""
    gen = torch.Generator().manual_seed(9)
    hidden, prev = make_hidden(2, 300, 771, dtype, "cpu", gen, layout="strided")
    hidden[1, 5:9] = hidden[0, 100]
    prev[1, 5:9] = prev[0, 100]
    mask = make_mask(2, 300, 200, 2, gen)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, threads, 3):
            torch.set_num_threads(n)
            results.append(v2d.variation_drop(hidden, prev, mask, None, 57))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0][:5], other[:5]):  # cu_seqlens is None (padded)
            assert torch.equal(a, b)
    scores = v2d.variation_topk(hidden, prev, torch.ones(2, 300, dtype=torch.bool), 5)[1]
    assert bool((scores[1, 5:9] == scores[0, 100]).all())


@pytest.mark.parametrize("device", DEVICES)
def test_backend_choice(device):
    gen = torch.Generator().manual_seed(2)
    hidden, prev = make_hidden(1, 20, 8, torch.float32, device, gen, integer=True)
    mask = make_mask(1, 20, 12, 1, gen).to(device)
    assert v2d.available_backends(device)[0] == device
    assert "reference" in v2d.available_backends(device)
    native = v2d.variation_topk(hidden, prev, mask, 4, backend=device)
    ref = v2d.variation_topk(hidden, prev, mask, 4, backend="reference")
    assert torch.equal(native[0], ref[0]) and torch.equal(native[1], ref[1])
    if TRITON_OK and device == TRITON_DEVICE:
        assert "triton" in v2d.available_backends(device)
        tri = v2d.variation_topk(hidden, prev, mask, 4, backend="triton")
        assert torch.equal(tri[0], ref[0]) and torch.equal(tri[1], ref[1])
    with pytest.raises(ValueError, match="backend"):
        v2d.variation_topk(hidden, prev, mask, 4, backend="tpu")
    other = "cuda" if device == "cpu" else "cpu"
    if other in v2d.registered_backends():
        with pytest.raises(ValueError, match=f"backend='{other}' runs on {other} tensors, got tensors on {device}"):
            v2d.variation_topk(hidden, prev, mask, 4, backend=other)
    else:  # an extension built without CUDA kernels
        with pytest.raises(RuntimeError, match="backend='cuda' is not available here: v2drop_kernels was built without CUDA kernels"):
            v2d.variation_topk(hidden, prev, mask, 4, backend=other)


ISA_SCRIPT = """
import sys, torch, v2drop_kernels
from v2drop_kernels.testing import make_hidden, make_mask
gen = torch.Generator().manual_seed(21)
out = []
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    # D = 4096 + 37: full 16-lane blocks and a tail; the 24 MB float32 K gather takes the streaming stores
    hidden, prev = make_hidden(1, 800, 4133, dtype, "cpu", gen, layout="strided")
    mask = make_mask(1, 800, 760, 3, gen)
    drop = v2drop_kernels.variation_drop(hidden, prev, mask, None, 700, num_visual=760, backend="cpu")
    big = torch.randn(1, 8, 800, 1024, generator=gen).to(dtype)
    kv = v2drop_kernels.kv_compact(big, drop.keep_pos, 2, backend="cpu")
    out.append((drop.scores, drop.keep_pos, drop.hidden, kv))
torch.save(out, sys.argv[1])
"""


@pytest.mark.parametrize("isa", ["portable", "avx2"])
def test_cpu_paths_give_the_same_bits(isa, tmp_path):
    """The CPU kernels' AVX-512, AVX2 and portable loops (V2DROP_CPU_ISA picks a narrower one) give
    bit-equal scores, selections and gathers: the lane order and the sum tree are the same."""
    import os
    import subprocess
    import sys

    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    if isa == "avx2" and " avx2" not in flags:
        pytest.skip("no AVX2 on this CPU")
    results = {}
    for name in ("", isa):
        env = dict(os.environ, V2DROP_CPU_ISA=name)
        path = tmp_path / f"{name or 'widest'}.pt"
        proc = subprocess.run([sys.executable, "-c", ISA_SCRIPT, str(path)], env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        results[name] = torch.load(path)
    for widest, narrow in zip(results[""], results[isa]):
        for a, b in zip(widest, narrow):
            assert torch.equal(a, b)
