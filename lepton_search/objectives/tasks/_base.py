"""The Task interface: what a user hands lepton-search.

A task gives the trained model (the *teacher*), example inputs, labelled training batches (for
distillation and calibration) and a metric. The metric is computed from a *prediction function*
(numpy in, numpy out), so the same code scores a torch module and an ONNX Runtime session.

Thread and process safety: a task instance is created inside each Ray worker from its reference;
it must be cheap to construct, and :meth:`teacher` must be safe to call from several processes at
once (write caches atomically).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

    from lepton_search.spaces import CompressionConfig

PredictFn = Callable[[np.ndarray], np.ndarray]
Split = Literal["train", "validation", "test"]


class Task(abc.ABC):
    """A workload: a teacher model, its data and its metric.

    Subclasses set :attr:`name` and implement the abstract methods. The default metric is
    maximised; set :attr:`metric_direction` to ``"minimize"`` for a loss-like metric.
    """

    name: str = "task"
    metric_name: str = "accuracy"
    metric_direction: Literal["maximize", "minimize"] = "maximize"

    @abc.abstractmethod
    def teacher(self, cache_dir: Path) -> torch.nn.Module:
        """The trained, uncompressed model in eval mode, cached under ``cache_dir``."""

    @abc.abstractmethod
    def example_inputs(self, batch_size: int) -> np.ndarray:
        """A batch of real inputs of ``batch_size`` rows, used for export and latency."""

    @abc.abstractmethod
    def train_batches(self, batch_size: int, *, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One shuffled pass over labelled training data, as ``(inputs, labels)`` batches."""

    @abc.abstractmethod
    def evaluate(self, predict: PredictFn, split: Split = "validation") -> float:
        """The task metric of ``predict`` on ``split``."""

    def before_trial(self, config: CompressionConfig) -> None:  # noqa: B027 - optional hook
        """Called in the worker before a configuration is compressed and scored; does nothing by
        default. Tasks that adapt to the configuration (or inject faults in tests) override it."""

    def fingerprint(self) -> str:
        """Identifies the task's data and teacher recipe; part of every cache key."""
        return self.name

    def prunable_ignored_layers(self, model: torch.nn.Module) -> Sequence[torch.nn.Module]:
        """Layers structured pruning must keep whole (by default: the last Linear layer)."""
        import torch

        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        return linears[-1:]

    def calibration_inputs(self, n_batches: int, batch_size: int) -> list[np.ndarray]:
        """Inputs for static-quantization calibration, drawn from the training split."""
        batches = []
        for inputs, _ in self.train_batches(batch_size, seed=0):
            batches.append(inputs)
            if len(batches) >= n_batches:
                break
        return batches
