"""The workers pruning runs in: vLLM's CPU and GPU workers, whose model runner gains pruning.

The model runner is vLLM's V1 runner with :class:`~.runner.PruningRunner` mixed in before it
(:func:`pruning_class`). vLLM's GPU worker builds its runner in ``_make_model_runner`` (meant for
subclasses to override), so :class:`PruningGPUWorker` builds the pruning class there. vLLM's CPU worker
builds its runner inside ``init_device`` (which also binds threads and sets up the distributed
groups) with no such hook, so :class:`PruningCPUWorker` turns the runner vLLM built into the
pruning class in place (its class is swapped for the subclass; nothing else of it changes). Either
way :meth:`~.runner.PruningRunner.init_pruning` then adds the pruning state. The GPU worker is
untested (no GPU was available to this project when it was written).
"""

from __future__ import annotations

from vllm.v1.worker.cpu_worker import CPUWorker
from vllm.v1.worker.gpu_model_runner import GPUModelRunner
from vllm.v1.worker.gpu_worker import Worker

from .runner import PruningRunner

_CLASSES: dict[type, type] = {}


def pruning_class(base: type) -> type:
    """``base`` (vLLM's V1 model runner, GPU or CPU) with the pruning methods before its own."""
    if not issubclass(base, GPUModelRunner):
        raise RuntimeError(f"v2drop: pruning extends vLLM's V1 model runner, not {base.__name__} "
                           "(unset VLLM_USE_V2_MODEL_RUNNER)")
    if base not in _CLASSES:
        _CLASSES[base] = type(f"Pruning{base.__name__}", (PruningRunner, base), {"__module__": __name__})
    return _CLASSES[base]


class PruningCPUWorker(CPUWorker):
    def init_device(self) -> None:
        super().init_device()
        self.model_runner.__class__ = pruning_class(type(self.model_runner))
        self.model_runner.init_pruning()


class PruningGPUWorker(Worker):
    def _make_model_runner(self) -> GPUModelRunner:
        if self.use_v2_model_runner:
            raise RuntimeError("v2drop: pruning extends vLLM's V1 model runner: unset VLLM_USE_V2_MODEL_RUNNER")
        runner = pruning_class(GPUModelRunner)(self.vllm_config, self.device)
        runner.init_pruning()
        return runner
