"""Every Triton kernel specialisation compiles for sm_80 and sm_90 with the GPU block sizes (no GPU
needed: triton.compile with an explicit target, then ptxas -v), with no spills, stack frame or local
memory. Runs triton_compile_check.py in a subprocess: the kernels must be defined without
TRITON_INTERPRET, which the rest of the suite sets on machines without a GPU."""

import json
import os
import subprocess
import sys

import pytest

try:
    import triton  # noqa: F401
except ImportError:
    triton = None

SCRIPT = os.path.join(os.path.dirname(__file__), "triton_compile_check.py")


@pytest.mark.skipif(triton is None, reason="needs triton")
def test_triton_kernels_compile_without_spills():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the package, also when built in place
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    kernels = {r["kernel"] for r in reports}
    assert {"scores-bf16", "select-padded-drop-npos3-i32", "select-packed-drop-npos1-i64", "gather-bf16-dh128", "compact-inplace-bf16"} <= kernels
    assert {r["arch"] for r in reports} == {"sm_80", "sm_90a"}
    for r in reports:
        assert r["registers"] is not None, r
        assert r["spill_bytes"] == 0 and r["stack_bytes"] == 0 and r["lmem_bytes"] == 0, r
