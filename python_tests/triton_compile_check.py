"""Compiles every Triton kernel specialisation for sm_80 and sm_90 (no GPU needed) with the GPU
block sizes, and reports registers and spills from ptxas -v. Run without TRITON_INTERPRET:

    python python_tests/triton_compile_check.py     # prints one JSON line per kernel and target

python_tests/test_triton_compile.py runs it and fails on spills or local memory.
"""

import json
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from v2drop_kernels.triton import launching
from v2drop_kernels.triton.gather import _compact_inplace_kernel, _gather_kernel
from v2drop_kernels.triton.score_select import _scores_kernel, _select_kernel

PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def specialisations():
    """(kernel, name, pointer/scalar types in argument order, constexprs, warps)."""
    for dtype in ("bf16", "fp16", "fp32"):
        block_t, block_d, warps = launching.scores_config(4096, tile=launching.GPU_TILE)
        yield _scores_kernel, f"scores-{dtype}", [f"*{dtype}", f"*{dtype}", "*i1", "*fp32"] + ["i64"] * 9, {"BLOCK_T": block_t, "BLOCK_D": block_d}, warps
    block, warps = launching.select_config()
    for packed, drop, npos, pos in ((False, False, 1, "i64"), (False, True, 1, "i64"), (False, True, 3, "i32"), (True, True, 1, "i64"), (True, True, 3, "i64")):
        types = ["*fp32", "i64", "*i1", "i64", "i64", "i64", "i64", "*i32", "*i64", "*i32", f"*{pos}", "i64", "i64", "i64",
                 "*i64", "i64", "*i64", f"*{pos}", "*i1", "i64", "i64"]
        name = f"select-{'packed' if packed else 'padded'}-{'drop' if drop else 'topk'}-npos{npos}-{pos}"
        yield _select_kernel, name, types, {"PACKED": packed, "DROP": drop, "NPOS": npos, "BLOCK": block}, warps
    for dtype, dh in (("bf16", 4096), ("bf16", 128), ("fp32", 3584)):
        block_r, block_d, warps = launching.gather_config(dh, tile=launching.GPU_TILE)
        yield _gather_kernel, f"gather-{dtype}-dh{dh}", [f"*{dtype}", "*i64", f"*{dtype}"] + ["i64"] * 10, {"BLOCK_R": block_r, "BLOCK_D": block_d}, warps
    block_j, block_d, warps = launching.inplace_config(128, tile=launching.GPU_TILE)
    yield _compact_inplace_kernel, "compact-inplace-bf16", ["*bf16", "*i64"] + ["i64"] * 6, {"BLOCK_J": block_j, "BLOCK_D": block_d}, warps


def main():
    for kernel, name, types, constexprs, warps in specialisations():
        names = [n for n in kernel.arg_names if n not in constexprs]
        assert len(names) == len(types), (name, names, types)
        signature = dict(zip(names, types)) | {n: "constexpr" for n in constexprs}
        for capability in (80, 90):
            compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
                                      target=GPUTarget("cuda", capability, 32), options={"num_warps": warps})
            arch = "sm_90a" if capability == 90 else "sm_80"
            with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
                f.write(compiled.asm["ptx"])
            log = subprocess.run([PTXAS, f"-arch={arch}", "-v", f.name, "-o", os.devnull], capture_output=True, text=True).stderr
            os.unlink(f.name)
            regs = re.search(r"Used (\d+) registers", log)
            spills = [int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", log)]
            stack = [int(x) for x in re.findall(r"(\d+) bytes stack frame", log)]
            lmem = [int(x) for x in re.findall(r"(\d+) bytes lmem", log)]
            print(json.dumps({"kernel": name, "arch": arch, "warps": warps, "registers": int(regs.group(1)) if regs else None,
                              "spill_bytes": sum(spills), "stack_bytes": sum(stack), "lmem_bytes": sum(lmem), "ptxas": log.strip()[-300:]}))


if __name__ == "__main__":
    main()
