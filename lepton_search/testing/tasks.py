"""Tasks that fail on purpose, for fault-injection tests and benchmarks.

Each is the real digits task with one real fault: the worker process exits, an exception is
raised, the evaluation hangs, memory is exhausted, the metric is NaN, or the model cannot be
exported. Faults fire only for configurations that match ``when`` so a study mixes good and bad
trials. Reference them from a study file as ``lepton_search.testing.tasks:FaultyDigitsTask``.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from lepton_search.errors import ConfigError
from lepton_search.objectives.tasks._base import PredictFn, Split
from lepton_search.objectives.tasks.digits import DigitsCNNTask

if TYPE_CHECKING:
    from pathlib import Path

    import torch

    from lepton_search.spaces import CompressionConfig

Fault = Literal["none", "crash", "raise", "hang", "oom", "nan", "export"]
FAULTS = ("none", "crash", "raise", "hang", "oom", "nan", "export")


def small_digits_task(**options: Any) -> DigitsCNNTask:
    """A narrower, faster-training digits CNN for tests (width 16, 4 epochs)."""
    return DigitsCNNTask(**{"width": 16, "epochs": 4, **options})


def untraceable(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` behind a branch on the value of its output, which torch.export cannot trace."""
    from torch import nn

    class DataDependent(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.inner(x)
            if out.sum() > 0:  # data-dependent control flow
                return out
            return -out

    return DataDependent(model).eval()


class _ExportTrap:
    """A model wrapper that torch.export can trace, except while a trial that should fail is armed.

    ``armed`` is a class attribute so that the deep copy the pipeline makes of the teacher sees it.
    """

    armed = False

    @classmethod
    def wrap(cls, model: torch.nn.Module) -> torch.nn.Module:
        from torch import nn

        class Trap(nn.Module):
            def __init__(self, inner: nn.Module) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                out = self.inner(x)
                if cls.armed and out.sum() > 0:  # data-dependent branch only while armed
                    return out * 1.0
                return out

        return Trap(model).eval()


class FaultyDigitsTask(DigitsCNNTask):
    """The digits task with an injected fault.

    ``export`` makes the compressed model of a matching trial untraceable, so its ONNX export
    fails; the baseline and other trials export normally.

    Args:
        fault: What goes wrong.
        when: Fire only when the trial's config has ``prune_method`` equal to this
            (``"any"`` fires always). The fault fires while the compressed model is scored.
        hang_s: How long ``hang`` sleeps.
    """

    # Same name and recipe as the plain task: they share the trained teacher in the cache.
    name = "digits-cnn"

    def __init__(self, *, fault: Fault = "none", when: str = "any", hang_s: float = 3600.0, **options: Any) -> None:
        if fault not in FAULTS:
            raise ConfigError(f"fault = {fault!r} is not allowed; use one of {list(FAULTS)}.")
        super().__init__(**{"width": 16, "epochs": 4, **options})
        self.fault = fault
        self.when = when
        self.hang_s = hang_s
        self._armed = False

    def before_trial(self, config: CompressionConfig) -> None:
        self._armed = self.when in ("any", config.pruning.method)
        if self.fault == "export":
            _ExportTrap.armed = self._armed

    def teacher(self, cache_dir: Path) -> torch.nn.Module:
        model = super().teacher(cache_dir)
        return _ExportTrap.wrap(model) if self.fault == "export" else model

    def evaluate(self, predict: PredictFn, split: Split = "validation") -> float:
        if self._armed and split == "validation" and self.fault != "export":
            if self.fault == "nan":
                return float("nan")
            self._fire()
        return super().evaluate(predict, split)

    def _fire(self) -> None:
        if self.fault == "crash":
            os._exit(17)
        if self.fault == "raise":
            raise RuntimeError("injected failure: the task's evaluation raised")
        if self.fault == "hang":
            time.sleep(self.hang_s)
        if self.fault == "oom":
            self._exhaust_memory()

    @staticmethod
    def _exhaust_memory() -> None:
        # A real allocation failure, but bounded: the address space of this worker is capped
        # 1 GiB above what it uses, then 2 GiB are requested. The cap is lifted again afterwards
        # so the worker process can serve later trials.
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        used = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (used + (1 << 30), hard))
        try:
            hog = np.ones((2 << 30) // 8)
            hog[0] = 1.0
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
