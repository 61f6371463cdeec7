"""The Task interface: what a user hands lepton-search.

A task gives the trained model (the *teacher*), example inputs, labelled training batches (for
distillation and calibration) and a metric. The metric is computed from a *prediction function*
(numpy in, numpy out), so the same code scores a torch module and an ONNX Runtime session.

Inputs are one array (a model with one input, such as an image classifier) or a mapping of input
name to array (a model with several inputs, such as a text encoder's ``input_ids`` and
``attention_mask``). With a mapping, the names are the keyword arguments of the model's
``forward`` and become the input names of the exported ONNX graph; every array has the batch on
axis 0, and the other axes may vary between batches (a sequence length, for example).

Thread and process safety: a task instance is created inside each Ray worker from its reference;
it must be cheap to construct, and :meth:`teacher` must be safe to call from several processes at
once (write caches atomically).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Union

import numpy as np

if TYPE_CHECKING:
    import torch

    from lepton_search.spaces import CompressionConfig

Inputs = Union[np.ndarray, Mapping[str, np.ndarray]]  # noqa: UP007 - a runtime alias, valid on Python 3.11
PredictFn = Callable[[Inputs], np.ndarray]
Split = Literal["train", "validation", "test"]


class Task(abc.ABC):
    """A workload: a teacher model, its data and its metric.

    Subclasses set :attr:`name` and implement the abstract methods. The default metric is
    maximised; set :attr:`metric_direction` to ``"minimize"`` for a loss-like metric.

    :attr:`output_kind` says what the model outputs, which decides the distillation loss:
    ``"logits"`` (class scores; soft targets with a KL loss, or the teacher's argmax) or
    ``"embedding"`` (one vector per row; a softmax over the in-batch similarity scores, see
    ``objectives/_compress.py``). :attr:`train_batch_size` is the batch size distillation asks
    :meth:`train_batches` for.
    """

    name: str = "task"
    metric_name: str = "accuracy"
    metric_direction: Literal["maximize", "minimize"] = "maximize"
    output_kind: Literal["logits", "embedding"] = "logits"
    train_batch_size: int = 64

    @abc.abstractmethod
    def teacher(self, cache_dir: Path) -> torch.nn.Module:
        """The trained, uncompressed model in eval mode, cached under ``cache_dir``."""

    @abc.abstractmethod
    def example_inputs(self, batch_size: int) -> Inputs:
        """A batch of real inputs of ``batch_size`` rows, used for export and latency."""

    @abc.abstractmethod
    def train_batches(self, batch_size: int, *, seed: int) -> Iterator[tuple[Inputs, np.ndarray]]:
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

    def attention_heads(self, model: torch.nn.Module) -> Mapping[torch.nn.Module, int]:
        """The layers whose outputs are attention heads (a transformer's query, key and value
        projections), each with its number of heads. Channel pruning removes whole heads from them
        (keeping the head size) instead of single channels. None by default."""
        return {}

    def after_pruning(self, model: torch.nn.Module) -> None:  # noqa: B027 - optional hook
        """Called after channel or depth pruning has removed channels, heads or blocks from
        ``model``, to update attributes that cache layer sizes (a transformer's head or layer count,
        say). Does nothing by default."""

    def depth_blocks(self, model: torch.nn.Module) -> Sequence[tuple[str, torch.nn.Module]]:
        """The blocks depth pruning may drop, in forward order, as ``(qualified name, module)``
        (names as ``model.named_modules()`` gives them): transformer layers, or residual blocks
        whose input and output shapes match, so that the model still runs without them. Each must
        be an item of an ``nn.Sequential`` or ``nn.ModuleList``, which is what depth pruning removes
        it from. None by default: depth pruning is then refused."""
        return []

    def hidden_layers(self, model: torch.nn.Module) -> Sequence[tuple[str, torch.nn.Module]]:
        """The layers whose outputs are the model's intermediate representations, as ``(qualified
        name, module)``, for hidden-state distillation (``distillation.hidden_weight``): the student's
        are matched to the teacher's of the same name (a depth-pruned student's kept blocks to the
        teacher blocks they came from). By default the :meth:`depth_blocks`; with none, hidden-state
        distillation is refused."""
        return self.depth_blocks(model)

    def calibration_inputs(self, n_batches: int, batch_size: int) -> list[Inputs]:
        """Inputs for static-quantization calibration, drawn from the training split."""
        batches = []
        for inputs, _ in self.train_batches(batch_size, seed=0):
            batches.append(inputs)
            if len(batches) >= n_batches:
                break
        return batches


def contiguous_inputs(inputs: Inputs) -> Inputs:
    """``inputs`` with every array C-contiguous (what inference sessions are fed)."""
    if isinstance(inputs, Mapping):
        return {name: np.ascontiguousarray(array) for name, array in inputs.items()}
    return np.ascontiguousarray(inputs)
