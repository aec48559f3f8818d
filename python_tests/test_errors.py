"""Bad input gets a clear RuntimeError/ValueError naming the argument, the same on every backend,
and never a crash.

Every case of ``bad_inputs.py`` runs on every backend in a fresh process (``bad_inputs.py BACKEND``),
so a crash is a failing test that names its signal and case. The backends are held to one rule:
for each bad input, every backend that checks the data on the host (cpu, reference) raises the same
exception type with the same message, and every backend that checks it on the device (cuda,
triton, cuda_emulated) raises the same RuntimeError; where a rule needs no data, all of them agree.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import cuda_emulator
import v2drop_kernels as v2d
from bad_inputs import CASES, device_of, expected
from helpers import HAS_CUDA, TRITON_OK
from v2drop_kernels import reference

HERE = os.path.dirname(os.path.abspath(__file__))
BACKENDS = [
    "cpu",
    "reference",
    pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")),
    pytest.param("triton", marks=pytest.mark.skipif(not TRITON_OK, reason="needs triton (GPU, or TRITON_INTERPRET=1)")),
    pytest.param("cuda_emulated", marks=pytest.mark.skipif(not cuda_emulator.available(), reason="needs a C++ compiler and ninja")),
]
DEVICE_CHECKS = {"cpu": False, "reference": False, "cuda": True, "triton": True, "cuda_emulated": True}


def _groups(backend: str) -> list[list[str]]:
    """The cases each process runs: all in one, except on a GPU, where a device-side assert ends the
    CUDA context, so each case that raises one gets a process of its own."""
    if device_of(backend) != "cuda" or not DEVICE_CHECKS[backend]:
        return [list(CASES)]
    data = [name for name, case in CASES.items() if case.on_device]
    return [[name for name in CASES if name not in data]] + [[name] for name in data]


def _run_group(backend: str, names: list[str]) -> dict[str, dict]:
    proc = subprocess.run([sys.executable, os.path.join(HERE, "bad_inputs.py"), backend, *names],
                          capture_output=True, text=True, timeout=600, cwd=os.path.dirname(HERE))
    results, started = {}, None
    for line in proc.stdout.splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        if "start" in record:
            started = record["start"]
        else:
            record["stderr"] = proc.stderr if len(names) == 1 else ""
            results[record["case"]] = record
    if proc.returncode != 0:
        how = f"signal {signal.Signals(-proc.returncode).name}" if proc.returncode < 0 else f"exit code {proc.returncode}"
        crash = {"crashed": f"the process died with {how} in case {started!r}:\n{proc.stderr[-3000:]}"}
        for name in names:
            results.setdefault(name, crash)
    return results


@pytest.fixture(scope="module")
def outcomes():
    """backend -> case -> what the case did there (computed once, lazily per backend)."""
    cache: dict[str, dict[str, dict]] = {}

    def get(backend: str) -> dict[str, dict]:
        if backend not in cache:
            groups = _groups(backend)
            with ThreadPoolExecutor(max_workers=min(8, len(groups))) as pool:
                parts = list(pool.map(lambda names: _run_group(backend, names), groups))
            cache[backend] = {name: record for part in parts for name, record in part.items()}
        return cache[backend]

    return get


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input(outcomes, backend, name):
    """Each case raises its error with its message, and leaves the inputs as they were."""
    got = outcomes(backend)[name]
    assert "crashed" not in got, got.get("crashed")
    error, message = expected(CASES[name], DEVICE_CHECKS[backend])
    assert got["error"] == error.__name__, f"{backend}: expected {error.__name__} matching {message!r}, got {got['error']}: {got['message']}"
    if got["message"].startswith("CUDA error"):  # a device-side assert on a GPU: the device printed the message
        assert re.search(message, got["stderr"]), got["stderr"][-2000:]
    else:
        assert re.search(message, got["message"]), got["message"]
    assert got["inputs_unchanged"] is not False, "the failed call modified its inputs"


@pytest.mark.parametrize("name", list(CASES))
def test_same_error_on_every_backend(outcomes, name):
    """Backends that check alike raise the same type and message (the op's name included); where
    the rule needs no data, all of them do; a device message starts the host one."""
    backends = ["cpu", "reference"] + (["cuda"] if HAS_CUDA else []) + (["triton"] if TRITON_OK else [])
    backends += ["cuda_emulated"] if cuda_emulator.available() else []
    seen = {b: outcomes(b)[name] for b in backends}
    seen = {b: (r["error"], r["message"]) for b, r in seen.items() if "crashed" not in r and not r["message"].startswith("CUDA error")}
    host = {seen[b] for b in seen if not DEVICE_CHECKS[b]}
    device = {seen[b] for b in seen if DEVICE_CHECKS[b]}
    assert len(host) <= 1 and len(device) <= 1, seen
    if host and device:
        (host_error, host_message), (device_error, device_message) = host.pop(), device.pop()
        if CASES[name].on_device:
            assert device_error == "RuntimeError" and host_message.startswith(device_message), seen
        else:
            assert (host_error, host_message) == (device_error, device_message), seen


# -- rules of the Python API, and edge cases that are not errors --------------------------------------

@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_python_api_rejects_bools_and_floats_as_counts(backend):
    hidden, prev = torch.randn(2, 12, 8), torch.randn(2, 12, 8)
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[:, 3:9] = True
    with pytest.raises(ValueError, match=r"k must be an int, got a bool \(True\)"):
        v2d.variation_topk(hidden, prev, mask, True, backend=backend)
    with pytest.raises(ValueError, match=r"k must be an int, got float \(2.0\)"):
        v2d.variation_drop(hidden, prev, mask, None, 2.0, backend=backend)
    with pytest.raises(ValueError, match=r"num_visual must be an int, got a bool"):
        v2d.variation_drop(hidden, prev, mask, None, 2, num_visual=True, backend=backend)
    with pytest.raises(ValueError, match=r"seq_dim must be an int, got a bool"):
        v2d.kv_compact(torch.randn(2, 4, 12, 8), torch.zeros(2, 3, dtype=torch.long), True, backend=backend)
    cu = torch.tensor([0, 5, 12], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"k\[1\] must be an int, got a bool"):
        v2d.variation_drop_varlen(hidden[0], prev[0], mask[0], torch.arange(12), cu, [1, False], backend=backend)
    assert torch.equal(v2d.variation_topk(hidden, prev, mask, torch.tensor(3), backend=backend)[0],
                       v2d.variation_topk(hidden, prev, mask, 3, backend=backend)[0])  # integer scalars are fine


@pytest.mark.parametrize("backend", ["cpu", "reference", pytest.param("triton", marks=pytest.mark.skipif(not TRITON_OK, reason="needs triton")),
                                     pytest.param("cuda_emulated", marks=pytest.mark.skipif(not cuda_emulator.available(), reason="needs a C++ compiler"))])
def test_empty_batch_is_the_same_through_the_op_and_the_wrapper(backend):
    """B = 0: the raw op and the wrapper (given num_visual) return the same empty outputs; the
    wrapper cannot read V from an empty mask and says so."""
    if backend == "cuda_emulated":
        from helpers import register_cuda_emulated

        register_cuda_emulated()
    ops = v2d.registered_backends()[backend].ops
    hidden, prev = torch.randn(0, 12, 8), torch.randn(0, 12, 8)
    mask, pos = torch.zeros(0, 12, dtype=torch.bool), torch.zeros(0, 12, dtype=torch.long)
    raw = ops.variation_drop(hidden, prev, mask, pos, 6, 2)
    api = v2d.variation_drop(hidden, prev, mask, pos, 2, num_visual=6, backend=backend)
    for a, b, shape in zip(raw, api, [(0, 8, 8), (0, 8), (0, 8), (0, 8), (0, 12)]):
        assert a.shape == b.shape == shape and a.dtype == b.dtype
    with pytest.raises(ValueError, match="the batch is empty; pass num_visual"):
        v2d.variation_drop(hidden, prev, mask, pos, 2, backend=backend)
    keep, scores = v2d.variation_topk(hidden, prev, mask, 3, backend=backend)
    assert keep.shape == (0, 3) and scores.shape == (0, 12)
    sel = v2d.select_drop(torch.zeros(0, 12), mask, None, 2, num_visual=6, backend=backend)
    assert [t.shape for t in sel[:3]] == [(0, 8)] * 3
    assert v2d.kv_compact(torch.randn(0, 4, 12, 8), torch.zeros(0, 3, dtype=torch.long), backend=backend).shape == (0, 4, 3, 8)


def test_reference_raises_like_the_kernels():
    """The reference backend validates: k above the visual tokens is a ValueError (it used to
    return something), as on the CPU kernels."""
    hidden, prev = torch.randn(2, 12, 8), torch.randn(2, 12, 8)
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[:, 3:9] = True
    with pytest.raises(ValueError, match="k must be at most V"):
        v2d.variation_topk(hidden, prev, mask, 7, backend="reference")
    assert torch.equal(v2d.variation_topk(hidden, prev, mask, 6, backend="reference")[0],
                       reference.variation_topk(hidden, prev, mask, 6)[0])


@pytest.mark.skipif(not (TRITON_OK and HAS_CUDA), reason="the Triton backend on a GPU (CPU tensors are its only input here)")
def test_triton_ops_name_the_device_of_cpu_tensors():
    """On a GPU machine the Triton ops take CUDA tensors; CPU ones get a clear error, not a fault
    inside Triton."""
    hidden, prev = torch.randn(2, 12, 8), torch.randn(2, 12, 8)
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[:, 3:9] = True
    with pytest.raises(RuntimeError, match="the Triton backend takes CUDA tensors .* got hidden on cpu"):
        torch.ops.v2drop_triton.variation_topk(hidden, prev, mask, 3)
    with pytest.raises(RuntimeError, match="got keep_pos on cpu"):
        torch.ops.v2drop_triton.kv_compact_([torch.randn(2, 4, 12, 16)], torch.tensor([[0, 3, 5], [1, 2, 11]]), 2)
