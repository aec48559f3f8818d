"""The workers pruning runs in: vLLM's CPU and GPU workers, whose model runner gains pruning.

vLLM's workers build their model runner inside ``init_device`` (which also binds threads, sets up
the distributed groups and, on a GPU, measures memory around the runner's allocation). Rather than
build a second runner, the one vLLM built becomes a :class:`~.runner.PruningRunner` in place: its
class is swapped for a subclass that mixes the pruning methods in before vLLM's, and
:meth:`~.runner.PruningRunner.init_pruning` adds the pruning state; nothing else of the runner
changes. The GPU worker is untested (no GPU was available to this project when it was written).
"""

from __future__ import annotations

from vllm.v1.worker.cpu_worker import CPUWorker
from vllm.v1.worker.gpu_model_runner import GPUModelRunner
from vllm.v1.worker.gpu_worker import Worker

from .runner import PruningRunner

_CLASSES: dict[type, type] = {}


def with_pruning(runner: GPUModelRunner) -> None:
    """Turns vLLM's V1 model runner (GPU or CPU) into a pruning one."""
    if not isinstance(runner, GPUModelRunner):
        raise RuntimeError(f"v2drop: pruning extends vLLM's V1 model runner, not {type(runner).__name__} "
                           "(unset VLLM_USE_V2_MODEL_RUNNER)")
    base = type(runner)
    if base not in _CLASSES:
        _CLASSES[base] = type(f"Pruning{base.__name__}", (PruningRunner, base), {"__module__": __name__})
    runner.__class__ = _CLASSES[base]
    runner.init_pruning()


class PruningCPUWorker(CPUWorker):
    def init_device(self) -> None:
        super().init_device()
        with_pruning(self.model_runner)


class PruningGPUWorker(Worker):
    def init_device(self) -> None:
        super().init_device()
        with_pruning(self.model_runner)
