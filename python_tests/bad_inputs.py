"""Every bad input of every op, and a runner that tries them all on one backend in its own process.

    python python_tests/bad_inputs.py BACKEND     # one JSON line per case, on stdout

Each case is (op, arguments, expected error, message regex[, error and regex on backends that
check the data on the device]). ``python_tests/test_errors.py`` runs this file once per backend in
a fresh process, so a crash is a failing test that names the signal and the case instead of the
end of the test run, and compares the errors of all backends with each other.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, NamedTuple

import torch

B, S, D, V = 2, 12, 8, 6


class Case(NamedTuple):
    op: str
    args: Callable[[str], tuple]  # device -> the op's arguments
    error: type[Exception]
    message: str  # regex, searched
    on_device: tuple[type[Exception], str] | None = None  # backends that check the data on the device


def _mask(device):
    mask = torch.zeros(B, S, dtype=torch.bool, device=device)
    mask[:, 3:9] = True
    return mask


def _uneven_mask(device):
    mask = _mask(device)
    mask[1, 2] = True
    return mask


def _noncontiguous(*shape, device):
    return torch.randn(*shape[:-1], shape[-1] * 2, device=device)[..., ::2]


def topk(**over) -> Callable[[str], tuple]:
    def args(device):
        a = dict(hidden=torch.randn(B, S, D, device=device), prev=torch.randn(B, S, D, device=device), vis_mask=_mask(device), k=3)
        a.update({key: value(device) if callable(value) else value for key, value in over.items()})
        return a["hidden"], a["prev"], a["vis_mask"], a["k"]
    return args


def drop(**over) -> Callable[[str], tuple]:
    def args(device):
        a = dict(hidden=torch.randn(B, S, D, device=device), prev=torch.randn(B, S, D, device=device), vis_mask=_mask(device),
                 position_ids=torch.arange(S, device=device).expand(B, S), num_visual=V, k=3)
        a.update({key: value(device) if callable(value) else value for key, value in over.items()})
        return a["hidden"], a["prev"], a["vis_mask"], a["position_ids"], a["num_visual"], a["k"]
    return args


def select(**over) -> Callable[[str], tuple]:
    def args(device):
        a = dict(scores=torch.rand(B, S, device=device), vis_mask=_mask(device), position_ids=torch.arange(S, device=device).expand(B, S),
                 num_visual=V, k=3)
        a.update({key: value(device) if callable(value) else value for key, value in over.items()})
        return a["scores"], a["vis_mask"], a["position_ids"], a["num_visual"], a["k"]
    return args


VARLEN_MASK = [0, 1, 1, 1, 0, 0, 1, 1, 0, 0]  # sequences [0, 5) with 3 and [5, 10) with 2 visual tokens


def varlen(**over) -> Callable[[str], tuple]:
    def args(device):
        a = dict(hidden=torch.randn(10, D, device=device), prev=torch.randn(10, D, device=device),
                 vis_mask=torch.tensor(VARLEN_MASK, dtype=torch.bool, device=device), position_ids=torch.arange(10, device=device),
                 cu_seqlens=torch.tensor([0, 5, 10], dtype=torch.int32, device=device), num_visual=[3, 2], k=[1, 2])
        a.update({key: value(device) if callable(value) else value for key, value in over.items()})
        return tuple(a.values())
    return args


def select_varlen(**over) -> Callable[[str], tuple]:
    def args(device):
        a = dict(scores=torch.rand(10, device=device), vis_mask=torch.tensor(VARLEN_MASK, dtype=torch.bool, device=device),
                 position_ids=torch.arange(10, device=device), cu_seqlens=torch.tensor([0, 5, 10], dtype=torch.int32, device=device),
                 num_visual=[3, 2], k=[1, 2])
        a.update({key: value(device) if callable(value) else value for key, value in over.items()})
        return tuple(a.values())
    return args


def kv(**over) -> Callable[[str], tuple]:
    def args(device):
        a = dict(caches=[torch.randn(B, 4, S, 16, device=device), torch.randn(B, 4, S, 16, device=device)],
                 keep_pos=torch.tensor([[0, 3, 5], [1, 2, 11]], device=device), seq_dim=2)
        a.update({key: value(device) if callable(value) else value for key, value in over.items()})
        return a["caches"], a["keep_pos"], a["seq_dim"]
    return args


def _views_of_one_buffer(device):
    buffer = torch.randn(2, B, 4, S, 16, device=device)
    return [buffer[0], buffer[0][:, :2]]


CU_MSG = r"cu_seqlens must start at 0, never decrease and end at T=10, and sequence b must hold num_visual\[b\] visual tokens"
CASES: dict[str, Case] = {
    # variation_topk
    "topk-hidden-rank": Case("variation_topk", topk(hidden=lambda d: torch.randn(S, D, device=d), prev=lambda d: torch.randn(S, D, device=d)), RuntimeError, r"v2drop\.variation_topk: hidden must have 3 dims, got shape \[12, 8\]"),
    "topk-prev-shape": Case("variation_topk", topk(prev=lambda d: torch.randn(B, S, D + 1, device=d)), RuntimeError, r"prev must have the shape of hidden \[2, 12, 8\], got \[2, 12, 9\]"),
    "topk-prev-dtype": Case("variation_topk", topk(prev=lambda d: torch.randn(B, S, D, device=d).half()), RuntimeError, r"prev must have the dtype of hidden \(torch.float32\), got torch.float16"),
    "topk-prev-device": Case("variation_topk", topk(prev=lambda d: torch.randn(B, S, D, device="meta")), RuntimeError, r"prev must be on the device of hidden \((cpu|cuda:0)\), got meta"),
    "topk-hidden-dtype": Case("variation_topk", topk(hidden=lambda d: torch.randn(B, S, D, device=d).double(), prev=lambda d: torch.randn(B, S, D, device=d).double()), RuntimeError, "hidden must be float32, float16 or bfloat16, got torch.float64"),
    "topk-int-hidden": Case("variation_topk", topk(hidden=lambda d: torch.ones(B, S, D, dtype=torch.int32, device=d), prev=lambda d: torch.ones(B, S, D, dtype=torch.int32, device=d)), RuntimeError, "hidden must be float32, float16 or bfloat16, got torch.int32"),
    "topk-mask-dtype": Case("variation_topk", topk(vis_mask=lambda d: _mask(d).int()), RuntimeError, "vis_mask must be bool, got torch.int32"),
    "topk-mask-shape": Case("variation_topk", topk(vis_mask=lambda d: torch.ones(B, S + 1, dtype=torch.bool, device=d)), RuntimeError, r"vis_mask must have shape \[2, 12\], got \[2, 13\]"),
    "topk-k-zero": Case("variation_topk", topk(k=0), ValueError, r"k must be in \[1, S=12\], got 0"),
    "topk-k-negative": Case("variation_topk", topk(k=-2), ValueError, r"k must be in \[1, S=12\], got -2"),
    "topk-k-above-S": Case("variation_topk", topk(k=S + 1), ValueError, r"k must be in \[1, S=12\], got 13"),
    "topk-k-above-V": Case("variation_topk", topk(k=V + 1), ValueError, r"k must be at most V, the visual tokens per row of vis_mask, got k=7 and V=6$",
                           (RuntimeError, r"k must be at most V, the visual tokens per row of vis_mask, got k=7")),
    "topk-uneven-rows": Case("variation_topk", topk(vis_mask=_uneven_mask), ValueError, "every row of vis_mask must hold the same number of visual tokens, row 1 holds 7, row 0 holds 6",
                             (RuntimeError, "every row of vis_mask must hold the same number of visual tokens")),
    "topk-hidden-last-dim": Case("variation_topk", topk(hidden=lambda d: _noncontiguous(B, S, D, device=d)), RuntimeError, r"hidden must have a contiguous last dim, got strides \[192, 16, 2\]"),
    "topk-prev-last-dim": Case("variation_topk", topk(prev=lambda d: _noncontiguous(B, S, D, device=d)), RuntimeError, "prev must have a contiguous last dim"),
    # variation_drop
    "drop-k-zero": Case("variation_drop", drop(k=0), ValueError, r"v2drop\.variation_drop: k must be in \[1, num_visual=6\], got 0"),
    "drop-k-above": Case("variation_drop", drop(k=7), ValueError, r"k must be in \[1, num_visual=6\], got 7"),
    "drop-num-visual-wrong": Case("variation_drop", drop(num_visual=5), ValueError, "every row of vis_mask must hold num_visual=5 visual tokens, row 0 holds 6",
                                  (RuntimeError, "every row of vis_mask must hold num_visual=5 visual tokens")),
    "drop-num-visual-zero": Case("variation_drop", drop(num_visual=0), ValueError, r"num_visual must be in \[1, S=12\], got 0"),
    "drop-uneven-rows": Case("variation_drop", drop(vis_mask=_uneven_mask), ValueError, "every row of vis_mask must hold num_visual=6 visual tokens, row 1 holds 7",
                             (RuntimeError, "every row of vis_mask must hold num_visual=6 visual tokens")),
    "drop-pos-dtype": Case("variation_drop", drop(position_ids=lambda d: torch.arange(S, device=d).float().expand(B, S)), RuntimeError, "position_ids must be int64 or int32, got torch.float32"),
    "drop-pos-shape": Case("variation_drop", drop(position_ids=lambda d: torch.arange(S + 1, device=d).expand(B, S + 1)), RuntimeError, r"position_ids must have shape \[2, 12\] or \[3, \[2, 12\]\], got \[2, 13\]"),
    "drop-pos-mrope-shape": Case("variation_drop", drop(position_ids=lambda d: torch.zeros(4, B, S, dtype=torch.long, device=d)), RuntimeError, "position_ids must have shape"),
    "drop-pos-device": Case("variation_drop", drop(position_ids=lambda d: torch.zeros(B, S, dtype=torch.long, device="meta")), RuntimeError, r"position_ids must be on the device of hidden \((cpu|cuda:0)\), got meta"),
    "drop-mask-dtype": Case("variation_drop", drop(vis_mask=lambda d: _mask(d).float()), RuntimeError, "vis_mask must be bool, got torch.float32"),
    # select_drop
    "select-scores-rank": Case("select_drop", select(scores=lambda d: torch.rand(B, S, 1, device=d)), RuntimeError, r"v2drop\.select_drop: scores must have 2 dims, got shape \[2, 12, 1\]"),
    "select-scores-dtype": Case("select_drop", select(scores=lambda d: torch.rand(B, S, device=d).half()), RuntimeError, "scores must be float32, got torch.float16"),
    "select-scores-last-dim": Case("select_drop", select(scores=lambda d: _noncontiguous(B, S, device=d)), RuntimeError, "scores must have a contiguous last dim"),
    "select-mask-shape": Case("select_drop", select(vis_mask=lambda d: torch.ones(B, S - 1, dtype=torch.bool, device=d)), RuntimeError, r"vis_mask must have shape \[2, 12\], got \[2, 11\]"),
    "select-mask-device": Case("select_drop", select(vis_mask=lambda d: torch.ones(B, S, dtype=torch.bool, device="meta")), RuntimeError, r"vis_mask must be on the device of scores \((cpu|cuda:0)\), got meta"),
    "select-k-above": Case("select_drop", select(k=7), ValueError, r"k must be in \[1, num_visual=6\], got 7"),
    "select-num-visual-wrong": Case("select_drop", select(num_visual=4), ValueError, "every row of vis_mask must hold num_visual=4 visual tokens, row 0 holds 6",
                                    (RuntimeError, "every row of vis_mask must hold num_visual=4 visual tokens")),
    "select-varlen-rank": Case("select_drop_varlen", select_varlen(scores=lambda d: torch.rand(1, 10, device=d)), RuntimeError, r"v2drop\.select_drop_varlen: scores must have 1 dims"),
    "select-varlen-cu-first": Case("select_drop_varlen", select_varlen(cu_seqlens=lambda d: torch.tensor([1, 5, 10], dtype=torch.int32, device=d)), ValueError, CU_MSG + r": cu_seqlens\[0\] is 1$",
                                   (RuntimeError, CU_MSG)),
    "select-varlen-k-above": Case("select_drop_varlen", select_varlen(k=[4, 1]), ValueError, r"k\[0\] must be in \[1, num_visual\[0\]=3\], got 4"),
    # variation_drop_varlen
    "varlen-rank": Case("variation_drop_varlen", varlen(hidden=lambda d: torch.randn(1, 10, D, device=d), prev=lambda d: torch.randn(1, 10, D, device=d)), RuntimeError, "hidden must have 2 dims"),
    "varlen-cu-dtype": Case("variation_drop_varlen", varlen(cu_seqlens=lambda d: torch.tensor([0, 5, 10], device=d)), RuntimeError, "cu_seqlens must be int32, got torch.int64"),
    "varlen-cu-short": Case("variation_drop_varlen", varlen(cu_seqlens=lambda d: torch.tensor([0], dtype=torch.int32, device=d), num_visual=[], k=[]), RuntimeError, r"cu_seqlens must have shape \[B \+ 1\] with B >= 1, got \[1\]"),
    "varlen-cu-first": Case("variation_drop_varlen", varlen(cu_seqlens=lambda d: torch.tensor([1, 5, 10], dtype=torch.int32, device=d)), ValueError, CU_MSG + r": cu_seqlens\[0\] is 1$",
                            (RuntimeError, CU_MSG)),
    "varlen-cu-last": Case("variation_drop_varlen", varlen(cu_seqlens=lambda d: torch.tensor([0, 5, 9], dtype=torch.int32, device=d)), ValueError, CU_MSG + r": cu_seqlens\[-1\] is 9$",
                           (RuntimeError, CU_MSG)),
    "varlen-cu-decreasing": Case("variation_drop_varlen", varlen(cu_seqlens=lambda d: torch.tensor([0, 6, 4, 10], dtype=torch.int32, device=d), num_visual=[3, 0, 2], k=[1, 0, 1]),
                                 ValueError, CU_MSG + r": cu_seqlens\[2\]=4 < cu_seqlens\[1\]=6$", (RuntimeError, CU_MSG)),
    "varlen-num-visual-len": Case("variation_drop_varlen", varlen(num_visual=[3]), ValueError, "num_visual must have B=2 entries, got 1"),
    "varlen-k-len": Case("variation_drop_varlen", varlen(k=[1, 1, 1]), ValueError, "k must have B=2 entries, got 3"),
    "varlen-k-zero": Case("variation_drop_varlen", varlen(k=[0, 1]), ValueError, r"k\[0\] must be in \[1, num_visual\[0\]=3\], got 0"),
    "varlen-k-above": Case("variation_drop_varlen", varlen(k=[1, 3]), ValueError, r"k\[1\] must be in \[1, num_visual\[1\]=2\], got 3"),
    "varlen-num-visual-negative": Case("variation_drop_varlen", varlen(num_visual=[3, -1], k=[1, 0]), ValueError, r"num_visual\[1\] must be >= 0, got -1"),
    "varlen-visual-above-T": Case("variation_drop_varlen", varlen(num_visual=[8, 8], k=[1, 1]), ValueError, "num_visual sums to more than the T=10 tokens"),
    "varlen-num-visual-wrong": Case("variation_drop_varlen", varlen(num_visual=[2, 2], k=[1, 1]), ValueError, CU_MSG + r": sequence 0 holds 3, num_visual\[0\]=2$",
                                    (RuntimeError, CU_MSG)),
    "varlen-pos-shape": Case("variation_drop_varlen", varlen(position_ids=lambda d: torch.arange(11, device=d)), RuntimeError, r"position_ids must have shape \[10\] or \[3, \[10\]\], got \[11\]"),
    # kv_compact / kv_compact_
    "kv-empty": Case("kv_compact", kv(caches=[]), RuntimeError, "caches must hold at least one tensor"),
    "kv-keep-dtype": Case("kv_compact", kv(keep_pos=lambda d: torch.tensor([[0, 3, 5], [1, 2, 11]], dtype=torch.int32, device=d)), RuntimeError, "keep_pos must be int64, got torch.int32"),
    "kv-keep-rank": Case("kv_compact", kv(keep_pos=lambda d: torch.zeros(1, 2, 3, dtype=torch.long, device=d)), RuntimeError, r"keep_pos must have shape \[B, n\] or \[n\] \(packed\), got \[1, 2, 3\]"),
    "kv-cache-rank": Case("kv_compact", kv(caches=lambda d: [torch.randn(B, S, 16, device=d)]), RuntimeError, "caches must have 4 dims"),
    "kv-seq-dim": Case("kv_compact", kv(seq_dim=3), ValueError, r"seq_dim must be 1 or -3 \(\[B, S, H, Dh\]\) or 2 or -2 \(\[B, H, S, Dh\]\), got 3$"),
    "kv-seq-dim-negative": Case("kv_compact", kv(seq_dim=-1), ValueError, r"seq_dim must be 1 or -3 .*, got -1$"),
    "kv-seq-dim-packed": Case("kv_compact", kv(caches=lambda d: [torch.randn(S, 4, 16, device=d)], keep_pos=lambda d: torch.tensor([0, 3], device=d), seq_dim=1), ValueError, r"seq_dim must be 0 or -3 for packed \[T, H, Dh\] caches, got 1"),
    "kv-batch": Case("kv_compact", kv(keep_pos=lambda d: torch.tensor([[0, 3, 5]], device=d)), RuntimeError, r"caches\[0\] must have batch size 1"),
    "kv-seq-mismatch": Case("kv_compact", kv(caches=lambda d: [torch.randn(B, 4, S, 16, device=d), torch.randn(B, 4, S + 1, 16, device=d)]), RuntimeError, r"caches\[1\] must have sequence length 12"),
    "kv-cache-device": Case("kv_compact", kv(caches=lambda d: [torch.randn(B, 4, S, 16, device=d), torch.randn(B, 4, S, 16, device="meta")]), RuntimeError, r"caches\[1\] must be on the device of keep_pos \((cpu|cuda:0)\), got meta"),
    "kv-range-high": Case("kv_compact", kv(keep_pos=lambda d: torch.tensor([[0, 3, 12], [1, 2, 11]], device=d)), ValueError, r"v2drop\.kv_compact: keep_pos values must be in \[0, 12\), got 12 at \[0, 2\]$",
                          (RuntimeError, r"keep_pos values must be in \[0, 12\)")),
    "kv-range-negative": Case("kv_compact", kv(keep_pos=lambda d: torch.tensor([[0, -1, 5], [1, 2, 11]], device=d)), ValueError, r"keep_pos values must be in \[0, 12\), got -1 at \[0, 1\]$",
                              (RuntimeError, r"keep_pos values must be in \[0, 12\)")),
    "kv-last-dim": Case("kv_compact", kv(caches=lambda d: [_noncontiguous(B, 4, S, 16, device=d)]), RuntimeError, r"caches\[0\] must have a contiguous last dim"),
    "kv_-not-increasing": Case("kv_compact_", kv(keep_pos=lambda d: torch.tensor([[0, 5, 3], [1, 2, 11]], device=d)), ValueError, r"v2drop\.kv_compact_: keep_pos rows must be strictly increasing for in-place compaction, row 0 has 5 then 3$",
                               (RuntimeError, "keep_pos rows must be strictly increasing for in-place compaction")),
    "kv_-duplicate": Case("kv_compact_", kv(keep_pos=lambda d: torch.tensor([[0, 3, 3], [1, 2, 11]], device=d)), ValueError, "strictly increasing for in-place compaction, row 0 has 3 then 3",
                          (RuntimeError, "keep_pos rows must be strictly increasing for in-place compaction")),
    "kv_-range": Case("kv_compact_", kv(keep_pos=lambda d: torch.tensor([[0, 3, 5], [1, 2, 12]], device=d)), ValueError, r"keep_pos values must be in \[0, 12\), got 12 at \[1, 2\]",
                      (RuntimeError, r"keep_pos values must be in \[0, 12\)")),
    "kv_-too-many": Case("kv_compact_", kv(keep_pos=lambda d: torch.arange(S + 1, device=d).expand(B, -1)), ValueError, "keep_pos has 13 entries per row, more than S=12"),
    "kv_-shared-memory": Case("kv_compact_", kv(caches=_views_of_one_buffer), RuntimeError, r"caches\[0\] and caches\[1\] share memory"),
    "kv_-expanded": Case("kv_compact_", kv(caches=lambda d: [torch.randn(B, 1, S, 16, device=d).expand(B, 4, S, 16)]), RuntimeError, "overlapping elements"),
}


def expected(case: Case, device_checks: bool) -> tuple[type[Exception], str]:
    """The error type and message regex of a case on a backend."""
    if device_checks and case.on_device:
        return case.on_device
    return case.error, case.message


def _tensors(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for item in x for t in _tensors(item)]
    return []


def device_of(backend: str) -> str:
    """Where a backend's cases put their tensors."""
    return "cuda" if backend in ("cuda", "triton") and torch.cuda.is_available() else "cpu"


def run(backend: str, names: list[str]) -> None:
    """Runs the cases ``names`` (all when empty) on ``backend`` and prints one JSON line a case: the
    error's type and first line, and whether the inputs were left as they were. A "start" line
    comes first, so that a crash names its case. On a GPU a device-side assert leaves the CUDA
    context unusable, so the test runs each such case in a process of its own; its message is
    printed by the device, on stderr."""
    import v2drop_kernels as v2d

    if backend == "cuda_emulated":
        from helpers import register_cuda_emulated

        register_cuda_emulated()
    chosen = v2d.registered_backends()[backend]
    device = device_of(backend)
    for name in names or list(CASES):
        case = CASES[name]
        print(json.dumps({"start": name}), flush=True)
        torch.manual_seed(0)
        args = case.args(device)
        before = [t.clone() for t in _tensors(args)]
        result = {"case": name, "error": None, "message": None, "inputs_unchanged": None}
        try:
            getattr(chosen.ops, case.op)(*args)
            if device == "cuda":
                torch.cuda.synchronize()  # a device-side assert surfaces here
        except Exception as e:  # noqa: BLE001  (the test compares the type)
            result.update(error=type(e).__name__, message=str(e).splitlines()[0] if str(e) else "")
        if not (result["message"] or "").startswith("CUDA error"):  # else the device cannot be read any more
            result["inputs_unchanged"] = all(a.is_meta or torch.equal(a, b) for a, b in zip(_tensors(args), before))
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")  # as conftest.py: before v2drop_kernels is imported
    run(sys.argv[1], sys.argv[2:])
