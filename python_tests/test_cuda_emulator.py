"""The CUDA emulator (cuda_emulator/) that runs the CUDA backend's kernels on the CPU: that it
can fail (a missing barrier, a divergent barrier, a shuffle with an exited lane, a read past a
tensor), and the memory check of the CUDA kernels under AddressSanitizer, this project's
stand-in for compute-sanitizer when no GPU is at hand. The kernels' results are checked in the
other test files, where "cuda_emulated" is one of the backends."""

import os
import subprocess
import sys

import pytest
import torch

import cuda_emulator

pytestmark = pytest.mark.skipif(not cuda_emulator.available(), reason="needs a C++ compiler and ninja")
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def selftest():
    cuda_emulator.load()
    return torch.ops.cuda_emulator_selftest


def block_sum(seed):  # what the block_sum kernel's 256 threads add up to
    return 256 * seed + 255 * 256 // 2


def test_barrier_shares_writes(selftest):
    for seed in range(5):
        assert selftest.run("block_sum", seed) == block_sum(seed)


def test_missing_barrier_is_caught(selftest):
    """Without the barrier thread 0 reads values that other threads have not written yet."""
    assert any(selftest.run("block_sum_without_barrier", seed) != block_sum(seed) for seed in range(100, 105))


def test_warp_shuffle(selftest):
    for seed in range(3):
        assert selftest.run("warp_sum", seed) == 32 * seed + 31 * 32 // 2


def test_shuffle_with_exited_lane_fails(selftest):
    with pytest.raises(RuntimeError, match="exited_lane: unspecified launch failure.*lane 31, which has exited"):
        selftest.run("exited_lane", 0)


def test_divergent_barriers_fail(selftest):
    with pytest.raises(RuntimeError, match="divergent: .*deadlock"):
        selftest.run("divergent", 0)
    assert selftest.run("block_sum", 1) == block_sum(1)  # the next launch runs normally


def run_sanitized(args, timeout):
    preload = cuda_emulator.asan_preload()
    if preload is None:
        pytest.skip("the compiler has no AddressSanitizer runtime")
    env = dict(os.environ, LD_PRELOAD=preload, CUDA_EMULATOR_SANITIZE="address",
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:halt_on_error=1")
    return subprocess.run([sys.executable, *args], cwd=HERE, env=env, capture_output=True, text=True, timeout=timeout)


def test_sanitizer_catches_a_read_past_the_end():
    code = "import cuda_emulator, torch; cuda_emulator.load(); print(torch.ops.cuda_emulator_selftest.read_past_end(torch.ones(37)))"
    result = run_sanitized(["-c", code], timeout=600)
    assert result.returncode != 0 and "heap-buffer-overflow" in result.stderr, result.stderr[-3000:]


def test_cuda_kernels_memcheck():
    """The CUDA backend's tests (all of them but the float16/bfloat16 runs of the random-data
    comparisons), with every memory access of the kernels and the binding checked."""
    selection = "cuda_emulated and (not test_matches_reference or float32) and not long_video"
    result = run_sanitized(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", selection,
                            "test_variation_topk.py", "test_variation_drop.py", "test_variation_drop_varlen.py", "test_select_drop.py", "test_kv_compact.py",
                            "test_semantics.py", "test_errors.py"], timeout=1500)
    output = result.stdout[-3000:] + result.stderr[-5000:]
    assert "AddressSanitizer" not in result.stderr, output
    assert result.returncode == 0, output
    assert " passed" in result.stdout, output
