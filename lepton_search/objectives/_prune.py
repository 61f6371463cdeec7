"""Pruning: structured (torch-pruning removes channels, heads and neurons) and unstructured.

Transformers. Channel pruning of a model whose task names its attention projections
(:meth:`~lepton_search.objectives.tasks.Task.attention_heads`) removes whole attention heads and
feed-forward neurons, ranked by their mean absolute activation on calibration batches, at the
configured ratio each; the layers the task keeps whole (its residual-stream outputs) keep the
hidden size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lepton_search.errors import CompressionError
from lepton_search.objectives._inputs import first_rows, run_model, to_torch
from lepton_search.spaces import PruneConfig

if TYPE_CHECKING:
    import torch

    from lepton_search.objectives.tasks import Task
    from lepton_search.objectives.tasks._base import Inputs


def _activation_importance(model: torch.nn.Module, batches: list[Inputs]) -> Any:
    """torch-pruning's activation importance, accumulated over ``batches`` (its own hook keeps only
    the last forward pass): a channel's score is the summed absolute value of its activation where
    it enters the next layer, so a head is scored by its attention output and a feed-forward
    neuron by its activation after the nonlinearity."""
    import torch
    import torch_pruning as tp

    importance = tp.importance.ActivationImportance()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]

    def hook(module: torch.nn.Module, args: tuple[Any, ...], _output: Any) -> None:
        x = args[0].detach().abs().reshape(-1, args[0].shape[-1]).sum(0)
        previous = getattr(module, "_importance", None)
        module._importance = x if previous is None else previous + x

    handles = [m.register_forward_hook(hook) for m in linears]
    try:
        with torch.no_grad():
            for batch in batches:
                run_model(model, to_torch(batch))
    finally:
        for handle in handles:
            handle.remove()
    return importance


def _clear_activation_importance(model: torch.nn.Module) -> None:
    for module in model.modules():
        if hasattr(module, "_importance"):
            del module._importance


def prune(model: torch.nn.Module, config: PruneConfig, task: Task, example: Inputs) -> list[Any]:
    """Prunes ``model`` in place.

    ``channel`` on a model whose task names attention projections (``task.attention_heads``) removes
    ``ratio`` of the attention heads and ``ratio`` of the other prunable channels (a transformer's
    feed-forward neurons), ranked by activation on calibration batches; otherwise it removes
    ``ratio`` of the channels of every prunable layer, ranked by weight magnitude.

    Returns:
        The (module, name) pairs still carrying torch's pruning masks (unstructured pruning keeps
        them through distillation, so fine-tuning cannot revive pruned weights); pass them to
        :func:`finalize_pruning`.
    """
    import torch

    if config.method == "none":
        return []
    if config.method == "channel":
        import torch_pruning as tp

        ignored = list(task.prunable_ignored_layers(model))
        heads = dict(task.attention_heads(model))
        try:
            if heads:
                importance = _activation_importance(model, task.calibration_inputs(4, task.train_batch_size))
                pruner = tp.pruner.MetaPruner(
                    model,
                    to_torch(first_rows(example, 1)),
                    importance=importance,
                    pruning_ratio=config.ratio,
                    ignored_layers=ignored,
                    num_heads=heads,
                    prune_num_heads=True,
                    prune_head_dims=False,
                    head_pruning_ratio=config.ratio,
                )
            else:
                pruner = tp.pruner.MetaPruner(
                    model,
                    to_torch(first_rows(example, 1)),
                    importance=tp.importance.MagnitudeImportance(p=1),
                    pruning_ratio=config.ratio,
                    ignored_layers=ignored,
                )
            pruner.step()
            if heads:
                _clear_activation_importance(model)
            task.after_pruning(model)
        except Exception as e:  # torch-pruning raises bare exceptions on untraceable graphs
            raise CompressionError(
                f"Channel pruning at ratio {config.ratio} failed for this model: "
                f"{type(e).__name__}: {e}. Exclude 'channel' from space.pruning.method, or list "
                "layers to keep in the task's prunable_ignored_layers()."
            ) from e
        return []
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
