"""Pruning: structured (torch-pruning removes channels, heads and neurons), depth (whole blocks),
unstructured, and 2:4 semi-structured.

Transformers. A task that names its attention heads and feed-forward neurons
(:meth:`~lepton_search.objectives.tasks.Task.pruning_units`) is channel-pruned by ``_units.py``:
per-kind ratios, importance by each unit's contribution to its layer's output, counts rounded to
the nearest unit, optional least-squares reconstruction. What follows is torch-pruning's path for
every other model.

Channel importance (``PruneConfig.importance``). ``None`` keeps the default, channels ranked by
the L1 norm of their weights. ``l1`` / ``l2`` rank by weight magnitude, ``activation`` by the mean
absolute activation on calibration batches, ``taylor`` by the first-order Taylor
estimate of the loss change, ``|w * dL/dw|`` summed over each channel's group (Molchanov et al.
2019), from gradients of the task loss on a few training batches (cross-entropy against the
labels for classifiers; for embedding models an in-batch contrastive loss against the model's own
embeddings, whose gradient is not zero at the unpruned model). Layers the task keeps whole (its
residual-stream outputs, its classifier) keep their width.

Scope (``PruneConfig.scope``). ``uniform`` (and ``None``) removes ``ratio`` of every prunable
layer's channels (and heads); ``global`` ranks all layers' channels together (torch-pruning's
``global_pruning``, importance normalised per group), so layers lose different fractions, no
layer more than :data:`GLOBAL_MAX_LAYER_RATIO`.

Depth (``method = "depth"``). The task names its droppable blocks
(:meth:`~lepton_search.objectives.tasks.Task.depth_blocks`: transformer layers, residual blocks
whose input and output shapes match). Each block's importance is how much the model's output moves
when that block alone is skipped, on calibration batches (KL divergence of the class distribution
for classifiers, one minus the cosine of the embeddings for embedding models); it is computed once
per task fingerprint and cached as JSON under ``<cache_dir>/depth-importance/``. The least
important ``round(ratio * blocks)`` blocks (at least one) are then removed from their container,
so the exported graph has fewer nodes; distillation then trains the shallower student, and
hidden-state distillation matches each kept block to the teacher block it came from
(:func:`kept_blocks`).

2:4 semi-structured (``method = "2:4"``). :func:`apply_semi_structured_mask` zeroes the two
smallest-magnitude weights of every four consecutive inputs of each linear layer whose shape the
kernels take; the mask is kept through distillation. Dense kernels (ONNX Runtime, torch on a CPU)
run the zeros at full cost; :func:`to_semi_structured` converts the masked layers to
``torch.sparse`` semi-structured tensors on an NVIDIA GPU of compute capability 8.0 or newer, which
is what the ``torch-cuda`` backend runs.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lepton_search._atomic import write_json_atomically
from lepton_search.errors import CompressionError
from lepton_search.objectives._handlers import HandlerRegistry
from lepton_search.objectives._inputs import first_rows, run_model, to_torch
from lepton_search.objectives._units import prune_units
from lepton_search.spaces import PruneConfig

if TYPE_CHECKING:
    import torch

    from lepton_search.objectives.tasks import Task
    from lepton_search.objectives.tasks._base import Inputs

# With a global ratio, no layer loses more than this fraction of its channels (or heads): a layer
# pruned to nothing would disconnect the network.
GLOBAL_MAX_LAYER_RATIO = 0.9
# Training batches whose task-loss gradients the Taylor importance sums.
TAYLOR_BATCHES = 4
# Calibration batches for activation importance and for depth importance.
CALIBRATION_BATCHES = 4
DEPTH_IMPORTANCE_VERSION = 1
# Attribute set on a depth-pruned model: {its block name: the teacher block name it came from}.
KEPT_BLOCKS_ATTR = "_lepton_kept_blocks"
# Shape constraints of the 2:4 kernels (torch.sparse, CUTLASS for fp16/bf16/fp32): rows (output
# features) a multiple of 32, columns (input features) a multiple of 64.
SEMI_STRUCTURED_ROWS = 32
SEMI_STRUCTURED_COLS = 64
SEMI_STRUCTURED_MIN_CAPABILITY = (8, 0)

SEMI_STRUCTURED_NOTE = (
    "2:4 semi-structured sparsity: the exported ONNX model holds the zeros densely and runs at dense cost; "
    "only the torch-cuda backend (NVIDIA GPU, compute capability 8.0 or newer) runs 2:4 sparse kernels"
)


# ------------------------------------------------------------------------------ importance


def _accumulate_activations(model: torch.nn.Module, batches: list[Inputs]) -> None:
    """Stores on each Linear and Conv2d layer (as ``_importance``) the summed absolute value of its
    input per input channel, over ``batches``: torch-pruning's activation importance reads it (its
    own hook keeps only the last forward pass). A channel's score is its activation where it enters
    the next layer, so a head is scored by its attention output and a feed-forward neuron by its
    activation after the nonlinearity."""
    import torch

    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]

    def hook(module: torch.nn.Module, args: tuple[Any, ...], _output: Any) -> None:
        x = args[0].detach().abs()
        if isinstance(module, torch.nn.Conv2d):
            x = x.transpose(0, 1).reshape(x.shape[1], -1).sum(1)
        else:
            x = x.reshape(-1, x.shape[-1]).sum(0)
        previous = getattr(module, "_importance", None)
        module._importance = x if previous is None else previous + x

    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with torch.no_grad():
            for batch in batches:
                run_model(model, to_torch(batch))
    finally:
        for handle in handles:
            handle.remove()


def _clear_activation_importance(model: torch.nn.Module) -> None:
    for module in model.modules():
        if hasattr(module, "_importance"):
            del module._importance


def task_loss(model: torch.nn.Module, task: Task, inputs: Any, labels: torch.Tensor) -> torch.Tensor:
    """The loss whose gradients Taylor importance uses: cross-entropy against ``labels`` for a
    classifier; for an embedding model (``task.output_kind == "embedding"``), which has no labels,
    the in-batch contrastive cross-entropy of its embeddings against its own detached embeddings
    (each row's own embedding is its class), the hard-target loss of embedding distillation."""
    import torch
    from torch.nn import functional as F

    from lepton_search.objectives._distill import SIMILARITY_SCALE

    out = run_model(model, inputs)
    if task.output_kind == "embedding":
        s = F.normalize(out, dim=-1)
        return F.cross_entropy(s @ s.detach().T * SIMILARITY_SCALE, torch.arange(len(s), device=s.device))
    return F.cross_entropy(out, labels)


def _accumulate_gradients(model: torch.nn.Module, task: Task, n_batches: int) -> None:
    """Sums the task loss's gradients over ``n_batches`` training batches into ``.grad``; the model
    stays in eval mode (batch norm keeps its running statistics, no dropout)."""
    import numpy as np
    import torch

    model.eval()
    model.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.requires_grad_(True)
    with torch.enable_grad():
        for i, (inputs, labels) in enumerate(task.train_batches(task.train_batch_size, seed=0)):
            if i >= n_batches:
                break
            loss = task_loss(model, task, to_torch(inputs), torch.from_numpy(np.asarray(labels)))
            if not torch.isfinite(loss):
                raise CompressionError(
                    f"The task loss for Taylor importance is {loss.item()} on training batch {i + 1}; use "
                    "importance 'l1', 'l2' or 'activation' for this model."
                )
            loss.backward()


def channel_importance(name: str, model: torch.nn.Module, task: Task) -> Any:
    """The torch-pruning importance called ``name`` (``activation``, ``l1``, ``l2``, ``taylor``),
    with what it needs already stored on ``model`` (activations or gradients)."""
    import torch_pruning as tp

    if name == "l1":
        return tp.importance.MagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.MagnitudeImportance(p=2)
    if name == "activation":
        _accumulate_activations(model, task.calibration_inputs(CALIBRATION_BATCHES, task.train_batch_size))
        return tp.importance.ActivationImportance()
    if name == "taylor":
        _accumulate_gradients(model, task, TAYLOR_BATCHES)
        return tp.importance.GroupTaylorImportance()
    raise CompressionError(f"Unknown channel importance {name!r}; use one of ['activation', 'l1', 'l2', 'taylor'].")


# ------------------------------------------------------------------------------ channel


def _prune_channels(model: torch.nn.Module, config: PruneConfig, task: Task, example: Inputs) -> None:
    import torch_pruning as tp

    ignored = list(task.prunable_ignored_layers(model))
    heads = dict(task.attention_heads(model))
    name = config.importance or ("activation" if heads else "l1")
    global_pruning = config.scope == "global"
    try:
        importance = channel_importance(name, model, task)
        options: dict[str, Any] = {}
        if heads:
            options = {
                "num_heads": heads,
                "prune_num_heads": True,
                "prune_head_dims": False,
                "head_pruning_ratio": config.ratio,
            }
        pruner = tp.pruner.MetaPruner(
            model,
            to_torch(first_rows(example, 1)),
            importance=importance,
            pruning_ratio=config.ratio,
            ignored_layers=ignored,
            global_pruning=global_pruning,
            max_pruning_ratio=GLOBAL_MAX_LAYER_RATIO if global_pruning else 1.0,
            **options,
        )
        pruner.step()
        task.after_pruning(model)
    except CompressionError:
        raise
    except Exception as e:  # torch-pruning raises bare exceptions on untraceable graphs
        raise CompressionError(
            f"Channel pruning at ratio {config.ratio} ({name} importance, {config.scope or 'uniform'} scope) failed "
            f"for this model: {type(e).__name__}: {e}. Exclude 'channel' from space.pruning.method, or list "
            "layers to keep in the task's prunable_ignored_layers()."
        ) from e
    finally:
        _clear_activation_importance(model)
        model.zero_grad(set_to_none=True)


# ------------------------------------------------------------------------------ depth


def _locate(model: torch.nn.Module, name: str) -> tuple[torch.nn.Module, str]:
    """The container holding block ``name`` and the block's key in it."""
    import torch

    parent_name, _, key = name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name) if parent_name else model
    except AttributeError as e:
        raise CompressionError(f"Depth block {name!r} is not a submodule of the model: {e}") from e
    if not isinstance(parent, (torch.nn.Sequential, torch.nn.ModuleList)) or key not in parent._modules:
        raise CompressionError(
            f"Depth block {name!r} must be an item of an nn.Sequential or nn.ModuleList (so that removing it "
            f"removes it from the forward pass), but its parent is a {type(parent).__name__}; fix the task's "
            "depth_blocks()."
        )
    return parent, key


def _without(model: torch.nn.Module, names: Sequence[str]) -> dict[torch.nn.Module, OrderedDict[str, Any]]:
    """Removes blocks ``names`` from their containers (the survivors renumbered from 0); returns
    each changed container's previous contents, so that :func:`_restore` can put them back."""
    by_parent: dict[torch.nn.Module, set[str]] = {}
    for name in names:
        parent, key = _locate(model, name)
        by_parent.setdefault(parent, set()).add(key)
    saved: dict[torch.nn.Module, OrderedDict[str, Any]] = {}
    for parent, keys in by_parent.items():
        saved[parent] = OrderedDict(parent._modules)
        survivors = [m for k, m in parent._modules.items() if k not in keys]
        parent._modules = OrderedDict((str(i), m) for i, m in enumerate(survivors))
    return saved


def _restore(saved: dict[torch.nn.Module, OrderedDict[str, Any]]) -> None:
    for parent, modules in saved.items():
        parent._modules = modules


@contextlib.contextmanager
def skipped(model: torch.nn.Module, names: Sequence[str]) -> Iterator[None]:
    """``model`` with blocks ``names`` taken out of the forward pass, put back on exit."""
    saved = _without(model, names)
    try:
        yield
    finally:
        _restore(saved)


def _output_change(reference: torch.Tensor, output: torch.Tensor, task: Task) -> float:
    from torch.nn import functional as F

    if task.output_kind == "embedding":
        return float((1.0 - F.cosine_similarity(output.float(), reference.float(), dim=-1)).mean())
    return float(
        F.kl_div(
            F.log_softmax(output.float(), dim=-1),
            F.log_softmax(reference.float(), dim=-1),
            log_target=True,
            reduction="batchmean",
        )
    )


def measure_block_importance(model: torch.nn.Module, task: Task) -> dict[str, float]:
    """Each depth block's importance: the mean change of ``model``'s output when that block alone
    is skipped, on calibration batches (see the module documentation). Larger is more important."""
    import torch

    names = [name for name, _ in task.depth_blocks(model)]
    batches = [to_torch(b) for b in task.calibration_inputs(CALIBRATION_BATCHES, task.train_batch_size)]
    was_training = model.training
    model.eval()
    scores: dict[str, float] = {}
    try:
        with torch.no_grad():
            references = [run_model(model, b) for b in batches]
            for name in names:
                with skipped(model, [name]):
                    changes = [_output_change(r, run_model(model, b), task) for r, b in zip(references, batches)]
                scores[name] = float(sum(changes) / len(changes))
    except CompressionError:
        raise
    except Exception as e:
        raise CompressionError(
            f"Skipping a depth block broke the model ({type(e).__name__}: {e}); depth_blocks() must name only "
            "blocks whose input and output shapes match."
        ) from e
    finally:
        model.train(was_training)
    return scores


def block_importance(model: torch.nn.Module, task: Task, cache_dir: Path | None = None) -> dict[str, float]:
    """:func:`measure_block_importance`, cached under ``cache_dir`` (when given) as
    ``depth-importance/<task name>-<fingerprint>.json``, written atomically. ``model`` must be the
    task's unpruned teacher (or a copy): the cache is keyed by the task alone."""
    names = [name for name, _ in task.depth_blocks(model)]
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / "depth-importance" / f"{task.name}-{task.fingerprint()}.json"
        try:
            data = json.loads(path.read_text())
            scores = data["blocks"]
            if data.get("version") == DEPTH_IMPORTANCE_VERSION and sorted(scores) == sorted(names):
                return {name: float(scores[name]) for name in names}
        except (OSError, ValueError, KeyError, TypeError):
            pass  # missing or damaged: measure and (re)write it
    scores = measure_block_importance(model, task)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "version": DEPTH_IMPORTANCE_VERSION,
            "task": task.name,
            "fingerprint": task.fingerprint(),
            "measure": "kl-divergence" if task.output_kind != "embedding" else "one-minus-cosine",
            "blocks": scores,
        }
        write_json_atomically(path, payload, indent=2)  # a concurrent reader never sees half a file
    return scores


def blocks_to_drop(scores: dict[str, float], ratio: float) -> list[str]:
    """The ``round(ratio * len(scores))`` (at least one) least important blocks, in model order."""
    n = len(scores)
    count = min(n, max(1, math.floor(ratio * n + 0.5 + 1e-9)))
    order = list(scores)
    ranked = sorted(order, key=lambda name: (scores[name], order.index(name)))
    dropped = set(ranked[:count])
    return [name for name in order if name in dropped]


def _prune_depth(
    model: torch.nn.Module, config: PruneConfig, task: Task, example: Inputs, cache_dir: Path | None
) -> None:
    import torch

    blocks = [name for name, _ in task.depth_blocks(model)]
    if not blocks:
        raise CompressionError(
            f"Depth pruning needs blocks to drop, but task {task.name!r} names none (Task.depth_blocks returns "
            "nothing). Remove 'depth' from space.pruning.method, or implement depth_blocks() in the task."
        )
    scores = block_importance(model, task, cache_dir)
    dropped = blocks_to_drop(scores, config.ratio)
    kept = [name for name in blocks if name not in dropped]
    _without(model, dropped)  # for good: the containers no longer hold the dropped blocks
    task.after_pruning(model)
    renamed = [name for name, _ in task.depth_blocks(model)]
    if len(renamed) != len(kept):
        raise CompressionError(
            f"After dropping {dropped}, task.depth_blocks() names {len(renamed)} blocks, expected {len(kept)}."
        )
    previous = dict(getattr(model, KEPT_BLOCKS_ATTR, {}))
    setattr(model, KEPT_BLOCKS_ATTR, {new: previous.get(old, old) for new, old in zip(renamed, kept)})
    try:
        with torch.no_grad():
            run_model(model.eval(), to_torch(first_rows(example, 1)))
    except Exception as e:
        raise CompressionError(
            f"The model no longer runs after dropping blocks {dropped} ({type(e).__name__}: {e}); depth_blocks() "
            "must name only blocks whose input and output shapes match."
        ) from e


def kept_blocks(model: torch.nn.Module) -> dict[str, str]:
    """For a depth-pruned model, {its block name: the teacher block name it came from}; else {}."""
    return dict(getattr(model, KEPT_BLOCKS_ATTR, {}))


# ------------------------------------------------------------------------------ 2:4


def semi_structured_mask(weight: torch.Tensor) -> torch.Tensor:
    """The 2:4 mask of a 2-D ``weight`` (out x in, ``in`` a multiple of 4): in each group of four
    consecutive inputs of a row, True for the two largest magnitudes (ties: the earlier)."""
    import torch

    if weight.dim() != 2 or weight.shape[1] % 4:
        raise CompressionError(f"2:4 masks need a 2-D weight with a multiple of 4 columns, got {tuple(weight.shape)}.")
    groups = weight.detach().abs().reshape(weight.shape[0], -1, 4)
    keep = groups.topk(2, dim=-1, sorted=False).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.reshape(weight.shape)


def is_semi_structured(weight: torch.Tensor) -> bool:
    """Whether every group of four consecutive inputs of each row holds at most two non-zeros."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    return bool(((weight.detach().reshape(weight.shape[0], -1, 4) != 0).sum(-1) <= 2).all())


def semi_structured_layers(
    model: torch.nn.Module, ignored: Sequence[torch.nn.Module] = ()
) -> list[tuple[str, torch.nn.Linear]]:
    """The Linear layers whose weight shape the 2:4 kernels take (output features a multiple of 32,
    input features a multiple of 64), other than ``ignored``."""
    import torch

    skip = {id(m) for m in ignored}
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
        and id(m) not in skip
        and m.out_features % SEMI_STRUCTURED_ROWS == 0
        and m.in_features % SEMI_STRUCTURED_COLS == 0
    ]


def apply_semi_structured_mask(model: torch.nn.Module, ignored: Sequence[torch.nn.Module] = ()) -> list[Any]:
    """Zeroes 2 of every 4 consecutive weights (the smallest in magnitude) of each layer of
    :func:`semi_structured_layers`, on any device, with ``torch.nn.utils.prune`` masks so that
    fine-tuning keeps the pattern.

    Returns:
        The (module, "weight") pairs carrying masks; :func:`finalize_pruning` makes them permanent.

    Raises:
        CompressionError: no Linear layer of the model fits the kernels' shape constraints.
    """
    from torch.nn.utils import prune as torch_prune

    layers = semi_structured_layers(model, ignored)
    if not layers:
        raise CompressionError(
            f"2:4 sparsity found no Linear layer with output features a multiple of {SEMI_STRUCTURED_ROWS} and "
            f"input features a multiple of {SEMI_STRUCTURED_COLS} (what the kernels take) in this model; remove "
            "'2:4' from space.pruning.method."
        )
    masked = []
    for _, module in layers:
        torch_prune.custom_from_mask(module, "weight", semi_structured_mask(module.weight))
        masked.append((module, "weight"))
    return masked


def semi_structured_support(device: Any = None) -> str | None:
    """``None`` when torch can run 2:4 semi-structured kernels on ``device`` (default: the current
    CUDA device), else the reason it cannot."""
    import torch

    if not torch.cuda.is_available():
        return "torch sees no CUDA device (2:4 semi-structured kernels run only on NVIDIA GPUs)"
    capability = torch.cuda.get_device_capability(device)
    if capability < SEMI_STRUCTURED_MIN_CAPABILITY:
        return (
            f"the GPU has compute capability {capability[0]}.{capability[1]}; 2:4 semi-structured kernels need "
            f"{SEMI_STRUCTURED_MIN_CAPABILITY[0]}.{SEMI_STRUCTURED_MIN_CAPABILITY[1]} or newer (Ampere and later)"
        )
    return None


def to_semi_structured(model: torch.nn.Module) -> list[str]:
    """Replaces, in place, the weight of every Linear layer of ``model`` that holds a 2:4 pattern
    (as :func:`apply_semi_structured_mask` left it) and fits the kernels' shape constraints with a
    ``torch.sparse`` semi-structured tensor, so that its matmuls run on 2:4 sparse kernels.

    Call it on the finished student after moving it to the GPU and casting it to the dtype it will
    run in (fp16 or bf16, where the kernels pay off; fp32 uses the CUTLASS kernels), and before
    ``torch.compile`` or export. Returns the names of the layers converted.

    Raises:
        CompressionError: no usable GPU (see :func:`semi_structured_support`), the model is not on
            it, or no layer holds a 2:4 pattern.
    """
    import torch
    from torch.sparse import SparseSemiStructuredTensorCUTLASS, to_sparse_semi_structured

    reason = semi_structured_support()
    if reason is not None:
        raise CompressionError(f"Cannot convert to 2:4 semi-structured sparse tensors: {reason}.")
    converted = []
    for name, module in semi_structured_layers(model):
        weight = module.weight
        if not weight.is_cuda:
            raise CompressionError(f"Layer {name!r} is on {weight.device}; move the model to the GPU first.")
        if not is_semi_structured(weight):
            continue
        dense = weight.detach().contiguous()
        if dense.dtype == torch.float32:
            sparse = SparseSemiStructuredTensorCUTLASS.from_dense(dense)
        else:
            sparse = to_sparse_semi_structured(dense)
        module.weight = torch.nn.Parameter(sparse, requires_grad=False)
        converted.append(name)
    if not converted:
        raise CompressionError(
            "No Linear layer holds a 2:4 pattern; prune the model with method '2:4' (apply_semi_structured_mask) "
            "before converting it."
        )
    return converted


# ------------------------------------------------------------------------------ entry points


def _check_generic_channel(config: PruneConfig, task: Task) -> None:
    """Refuses the unit-pruner knobs for a task without pruning units (torch-pruning's path)."""
    unit_only = [
        f"{name} = {value!r}"
        for name, value in (
            ("head_ratio", config.head_ratio),
            ("reconstruction", config.reconstruction),
            ("importance", "contribution" if config.importance == "contribution" else None),
        )
        if value is not None
    ]
    if unit_only:
        raise CompressionError(
            f"pruning {', '.join(unit_only)} needs a task that names its attention heads and feed-forward neurons "
            f"(Task.pruning_units), and task {task.name!r} names none; remove them from space.pruning for this task."
        )


#: A pruner prunes ``model`` in place and returns the (module, name) pairs still carrying torch's
#: pruning masks (see :func:`prune`).
Pruner = Callable[..., list[Any]]
PRUNERS: HandlerRegistry[Pruner] = HandlerRegistry("pruning.method")


def prune(
    model: torch.nn.Module,
    config: PruneConfig,
    task: Task,
    example: Inputs,
    *,
    cache_dir: Path | None = None,
    fraction: float = 1.0,
) -> list[Any]:
    """Prunes ``model`` in place with the handler registered for ``config.method`` (:data:`PRUNERS`).

    ``channel`` removes ``ratio`` of the channels ranked by ``config.importance`` within each layer
    or, with ``scope = "global"``, across layers (for tasks with pruning units, ``ratio`` of the
    feed-forward neurons and ``head_ratio`` of the attention heads, see ``_units.py``; ``fraction``
    takes that share of the ratios, a step of iterative pruning);
    ``depth`` removes ``ratio`` of the task's depth blocks, the least important first (importance
    cached under ``cache_dir``); ``unstructured`` and ``2:4`` zero weights.

    Returns:
        The (module, name) pairs still carrying torch's pruning masks (unstructured and 2:4 pruning
        keep them through distillation, so fine-tuning cannot revive pruned weights); pass them to
        :func:`finalize_pruning`.
    """
    return PRUNERS.get(config.method)(model, config, task, example, cache_dir=cache_dir, fraction=fraction)


@PRUNERS.register("none")
def _prune_nothing(model: torch.nn.Module, config: PruneConfig, task: Task, example: Inputs, **_: Any) -> list[Any]:
    return []


@PRUNERS.register("channel")
def _prune_structured(
    model: torch.nn.Module, config: PruneConfig, task: Task, example: Inputs, *, fraction: float, **_: Any
) -> list[Any]:
    if task.pruning_units(model):
        prune_units(model, config, task, fraction=fraction)
    else:
        _check_generic_channel(config, task)
        _prune_channels(model, config, task, example)
    return []


@PRUNERS.register("depth")
def _prune_blocks(
    model: torch.nn.Module, config: PruneConfig, task: Task, example: Inputs, *, cache_dir: Path | None, **_: Any
) -> list[Any]:
    _prune_depth(model, config, task, example, cache_dir)
    return []


@PRUNERS.register("2:4")
def _prune_semi_structured(
    model: torch.nn.Module, config: PruneConfig, task: Task, example: Inputs, **_: Any
) -> list[Any]:
    import torch

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return apply_semi_structured_mask(model, ignored=linears[-1:])  # the classifier / output layer


@PRUNERS.register("unstructured")
def _prune_unstructured(
    model: torch.nn.Module, config: PruneConfig, task: Task, example: Inputs, **_: Any
) -> list[Any]:
    import torch
    from torch.nn.utils import prune as torch_prune

    targets = [
        (m, "weight")
        for m in model.modules()
        if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear))
    ]
    torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=config.ratio)
    return targets


def finalize_pruning(masked: list[Any]) -> None:
    """Makes unstructured pruning permanent (removes the masks, keeps the zeros)."""
    from torch.nn.utils import prune as torch_prune

    for module, name in masked:
        torch_prune.remove(module, name)


def sparsity(model: torch.nn.Module) -> float:
    """Fraction of exactly-zero weights over all weight tensors of rank >= 2."""
    total = zeros = 0
    for name, p in model.named_parameters():
        if p.dim() >= 2 and name.endswith("weight"):
            total += p.numel()
            zeros += int((p == 0).sum())
    return zeros / total if total else 0.0
