"""The backends of the v2drop ops, behind one door.

A backend is an object holding the ops under their schema names and signatures
(``variation_topk(hidden, prev, vis_mask, k)``, ``variation_drop(...)``, ... as in
``csrc/schemas.h``), the device types whose tensors it takes, and a priority. The Python API
(:mod:`v2drop_kernels.ops`) finds it here by name, or picks the available one of lowest priority
for the tensors' device when ``backend=None``. The built-in backends register themselves below
like any other:

============  =========================  ==========  ========  ====================================
name          ops                        devices     priority  rules that need the data
============  =========================  ==========  ========  ====================================
cpu           ``torch.ops.v2drop``       cpu         0         host checks, ValueError
cuda          ``torch.ops.v2drop``       cuda        0         device asserts, RuntimeError
triton        ``torch.ops.v2drop_triton``cuda (cpu*) 10        device asserts, RuntimeError
reference     :class:`ReferenceOps`      any         1000      host checks, ValueError
============  =========================  ==========  ========  ====================================

(*) under the Triton interpreter (``TRITON_INTERPRET=1`` set before the import). ``cuda`` exists
when the extension was built with CUDA kernels, ``triton`` when triton imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from . import checks, fake, reference


@dataclass(frozen=True)
class Backend:
    name: str
    ops: Any  # the op functions by schema name: torch.ops.<namespace>, or any object with them
    devices: tuple[str, ...] | None  # device types whose tensors it takes (None: any)
    priority: int  # backend=None picks the lowest available for the device
    device_checks: bool  # data rules raise RuntimeError from the device (no host sync), not ValueError

    def runs_on(self, device_type: str) -> bool:
        return self.devices is None or device_type in self.devices


_REGISTRY: dict[str, Backend] = {}
_MISSING: dict[str, str] = {}  # known backends this installation lacks -> why


def register_backend(name: str, ops: Any, devices: Sequence[str] | None, *, priority: int = 100,
                     device_checks: bool = False) -> Backend:
    """Makes ``ops`` usable as ``backend=name`` in every op of :mod:`v2drop_kernels.ops`.

    ``ops`` holds the ops by schema name and signature (``csrc/schemas.h``); ``devices`` are the
    device types whose tensors it takes (``None``: any); ``priority`` orders the backends that
    ``backend=None`` picks from (built-in: 0 for the C++ kernels, 10 Triton, 1000 the reference);
    ``device_checks`` says that the rules that need the data raise RuntimeError from the device.
    Registering a name again replaces it.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"backend name must be a non-empty str, got {name!r}")
    backend = Backend(name, ops, None if devices is None else tuple(devices), int(priority), bool(device_checks))
    _REGISTRY[name] = backend
    _MISSING.pop(name, None)
    return backend


def registered_backends() -> dict[str, Backend]:
    """Every registered backend by name (a copy)."""
    return dict(_REGISTRY)


def available_backends(device: torch.device | str) -> list[str]:
    """Names of the backends that run on ``device``, in the order ``backend=None`` prefers them."""
    kind = torch.device(device).type
    usable = [b for b in _REGISTRY.values() if b.runs_on(kind)]
    return [b.name for b in sorted(usable, key=lambda b: b.priority)]


def resolve(backend: str | None, tensor: Tensor) -> Backend:
    """The backend named ``backend`` (checked against ``tensor``'s device), or the preferred one
    for that device."""
    kind = tensor.device.type
    if backend is None:
        return _REGISTRY[available_backends(kind)[0]]
    chosen = _REGISTRY.get(backend)
    if chosen is None:
        if backend in _MISSING:
            raise RuntimeError(f"backend={backend!r} is not available here: {_MISSING[backend]}")
        raise ValueError(f"backend must be one of {sorted(_REGISTRY)} or None, got {backend!r}")
    if not chosen.runs_on(kind):
        raise ValueError(f"backend={backend!r} runs on {', '.join(chosen.devices)} tensors, got tensors on {tensor.device}")
    return chosen


class ReferenceOps:
    """The reference (:mod:`v2drop_kernels.reference`) as a backend: the same argument rules as
    every other backend (:mod:`v2drop_kernels.checks`, data rules checked on the host), then the
    plain-PyTorch specification. An empty padded batch is answered with the fake kernels' (empty)
    outputs."""

    @staticmethod
    def variation_topk(hidden: Tensor, prev: Tensor, vis_mask: Tensor, k: int):
        checks.variation_topk(hidden, prev, vis_mask, k)
        if not hidden.shape[0]:
            return fake.variation_topk(hidden, prev, vis_mask, k)
        checks.host_rows("v2drop.variation_topk", vis_mask, None, k)
        return reference.variation_topk(hidden, prev, vis_mask, k)

    @staticmethod
    def variation_drop(hidden: Tensor, prev: Tensor, vis_mask: Tensor, position_ids: Tensor, num_visual: int, k: int):
        checks.variation_drop(hidden, prev, vis_mask, position_ids, num_visual, k)
        if not hidden.shape[0]:
            return fake.variation_drop(hidden, prev, vis_mask, position_ids, num_visual, k)
        checks.host_rows("v2drop.variation_drop", vis_mask, num_visual, k)
        return reference.variation_drop(hidden, prev, vis_mask, position_ids, num_visual, k)

    @staticmethod
    def variation_drop_varlen(hidden: Tensor, prev: Tensor, vis_mask: Tensor, position_ids: Tensor, cu_seqlens: Tensor,
                              num_visual: Sequence[int], k: Sequence[int]):
        checks.variation_drop_varlen(hidden, prev, vis_mask, position_ids, cu_seqlens, num_visual, k)
        checks.host_varlen("v2drop.variation_drop_varlen", cu_seqlens, vis_mask, num_visual)
        return reference.variation_drop_varlen(hidden, prev, vis_mask, position_ids, cu_seqlens, num_visual, k)

    @staticmethod
    def select_drop(scores: Tensor, vis_mask: Tensor, position_ids: Tensor, num_visual: int, k: int):
        checks.select_drop(scores, vis_mask, position_ids, num_visual, k)
        if not scores.shape[0]:
            return fake.select_drop(scores, vis_mask, position_ids, num_visual, k)
        checks.host_rows("v2drop.select_drop", vis_mask, num_visual, k)
        return reference.select_drop(scores, vis_mask, position_ids, num_visual, k)

    @staticmethod
    def select_drop_varlen(scores: Tensor, vis_mask: Tensor, position_ids: Tensor, cu_seqlens: Tensor,
                           num_visual: Sequence[int], k: Sequence[int]):
        checks.select_drop_varlen(scores, vis_mask, position_ids, cu_seqlens, num_visual, k)
        checks.host_varlen("v2drop.select_drop_varlen", cu_seqlens, vis_mask, num_visual)
        return reference.select_drop_varlen(scores, vis_mask, position_ids, cu_seqlens, num_visual, k)

    @staticmethod
    def kv_compact(caches: Sequence[Tensor], keep_pos: Tensor, seq_dim: int):
        dim = checks.kv_compact(caches, keep_pos, seq_dim)
        checks.host_keep_pos("v2drop.kv_compact", keep_pos, caches[0].shape[dim], False)
        return reference.kv_compact(caches, keep_pos, dim)

    @staticmethod
    def kv_compact_(caches: Sequence[Tensor], keep_pos: Tensor, seq_dim: int) -> None:
        dim = checks.kv_compact_(caches, keep_pos, seq_dim)
        checks.host_keep_pos("v2drop.kv_compact_", keep_pos, caches[0].shape[dim], True)
        reference.kv_compact_(caches, keep_pos, dim)


def _register_builtins() -> None:
    register_backend("cpu", torch.ops.v2drop, ("cpu",), priority=0)
    if torch._C._dispatch_has_kernel_for_dispatch_key("v2drop::variation_topk", "CUDA"):
        register_backend("cuda", torch.ops.v2drop, ("cuda",), priority=0, device_checks=True)
    else:
        _MISSING["cuda"] = "v2drop_kernels was built without CUDA kernels (rebuild with a CUDA build of torch and nvcc)"
    try:  # importing the Triton backend registers torch.ops.v2drop_triton.*
        from .triton import DEVICES as triton_devices
    except ImportError as e:
        _MISSING["triton"] = f"it does not import here ({e})"
    else:
        if triton_devices:
            register_backend("triton", torch.ops.v2drop_triton, triton_devices, priority=10, device_checks=True)
        else:
            _MISSING["triton"] = "it needs a CUDA device, or TRITON_INTERPRET=1 set before import for CPU tensors"
    register_backend("reference", ReferenceOps, None, priority=1000)


_register_builtins()
