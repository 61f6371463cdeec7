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
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

import numpy as np

if TYPE_CHECKING:
    import torch

    from lepton_search.spaces import CompressionConfig


@dataclasses.dataclass(frozen=True)
class PruningUnit:
    """A set of channels that structured pruning removes together, the transformer way.

    Group ``g`` of the unit is output rows ``g * group_size ... (g + 1) * group_size - 1`` of every
    ``producers`` layer (and of their biases) and the same input columns of ``consumer``: an
    attention head (query, key and value rows; the attention output projection's columns; the head
    size as ``group_size``) or a feed-forward neuron (the first projection's row; the second
    projection's column; ``group_size`` 1). ``kind`` names what a group is (``"head"``,
    ``"neuron"``): each kind has its own ratio.
    """

    name: str
    kind: str
    producers: tuple[Any, ...]
    consumer: Any
    group_size: int = 1


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

    def accuracy_resolution(self) -> float:
        """The smallest metric difference that means something: two configurations closer than
        this on the validation split are equally accurate for the frontier's tie groups. The default
        is a stated tolerance of 0.001; classification tasks return one validation example's share."""
        return 1e-3

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

    def pruning_units(self, model: torch.nn.Module) -> Sequence[PruningUnit]:
        """The units of a transformer that channel pruning removes whole (attention heads and
        feed-forward neurons), in forward order; pruning them keeps the residual stream's width.
        Tasks that name units are pruned by ``objectives/_prune.py``'s unit pruner (per-kind
        ratios, optional least-squares reconstruction); the rest by torch-pruning. None by default."""
        return []

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

    #: Whether :meth:`train_batches` labels each row with a stable row number and
    #: :meth:`training_inputs` rebuilds the inputs of given rows (embedding tasks): distillation then
    #: caches the teacher's outputs by row (``objectives/_targets.py``).
    indexed_training: bool = False

    def training_inputs(self, rows: Sequence[int]) -> Inputs:
        """The inputs of training rows ``rows`` (row numbers as :meth:`train_batches` labels them),
        for tasks with :attr:`indexed_training`."""
        raise NotImplementedError(f"task {self.name!r} does not index its training rows")

    def training_rows(self) -> int:
        """How many training rows :meth:`train_batches` yields in one pass (tasks with
        :attr:`indexed_training`)."""
        raise NotImplementedError(f"task {self.name!r} does not index its training rows")

    def frozen_in_distillation(self, model: torch.nn.Module) -> Sequence[torch.nn.Module]:
        """Modules whose parameters distillation leaves as they are (a transformer's embedding
        tables: pruning keeps them, and a few thousand passages would only overfit them). None by
        default."""
        return []

    def relation_layers(self, model: torch.nn.Module) -> tuple[torch.nn.Module, ...] | None:
        """The query, key and value projections of the attention layer whose self-attention
        relations ``distillation.relation_weight`` distils (MiniLM v2: the last), or None (the loss
        is then refused)."""
        return None

    def token_mask(self, inputs: Inputs) -> np.ndarray | None:
        """For sequence inputs, which positions are real tokens (1) rather than padding (0), as
        batch x sequence; None for models without a sequence axis."""
        return None

    #: ONNX Runtime's transformer-optimizer model type of the teacher (``"bert"``, ``"gpt2"``, ...),
    #: needed for ``graph.fusion``; None: the task's model is not a transformer ONNX Runtime fuses.
    onnx_model_type: str | None = None

    def export_module(self, model: torch.nn.Module) -> torch.nn.Module | None:
        """A module computing what ``model`` computes, written in the operator pattern that ONNX
        Runtime's transformer optimizer fuses, sharing ``model``'s parameters; exported with the
        TorchScript exporter for the graph knobs (``graph.fusion``, ``graph.skip_layer_norm``).
        None by default: those knobs are then refused."""
        return None

    def expected_fusions(self, model: torch.nn.Module) -> Mapping[str, int]:
        """How many of each fused operator ``graph.fusion = "transformer"`` must produce for
        ``model`` (a pruned student included), e.g. ``{"Attention": layers}``; a trial whose graph
        has fewer fails with that reason. Empty by default (nothing is checked)."""
        return {}

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
