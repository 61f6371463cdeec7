"""Distillation of the compressed student from the uncompressed teacher.

Embedding models (``task.output_kind == "embedding"``) are distilled with a softmax over in-batch
cosine similarities; see :func:`embedding_distillation_loss`.

Hidden-state distillation (``DistillConfig.hidden_weight``) adds ``hidden_weight`` times
:func:`hidden_state_loss` between the outputs of the layers the task names
(:meth:`~lepton_search.objectives.tasks.Task.hidden_layers`) in the student and in the teacher,
matched by name; a depth-pruned student's kept blocks are matched to the teacher blocks they came
from (:func:`~lepton_search.objectives._prune.kept_blocks`), so a three-layer student learns the
outputs of the teacher layers it kept.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from lepton_search.errors import CompressionError
from lepton_search.objectives._inputs import run_model, to_torch
from lepton_search.spaces import DistillConfig

if TYPE_CHECKING:
    import torch

    from lepton_search.objectives.tasks import Task

# In-batch similarity logits are cosine * SIMILARITY_SCALE / temperature: cosines lie in [-1, 1],
# and a softmax over them at temperature 1 would be nearly uniform. 20 is the scale of
# sentence-transformers' MultipleNegativesRankingLoss, which trained all-MiniLM-L6-v2; it makes the
# space's temperature range [1, 20] span sharp (nearest neighbours only) to flat (the whole
# similarity structure of the batch).
SIMILARITY_SCALE = 20.0


def distill(
    student: torch.nn.Module, teacher: torch.nn.Module, config: DistillConfig, task: Task, *, seed: int
) -> bool:
    """Fine-tunes ``student`` in place from ``teacher`` on the task's training batches.

    Returns:
        Whether the student was trained (not with ``method = "none"``, nor for an embedding
        student that still equals its teacher).

    Classifiers (``task.output_kind == "logits"``):
    ``soft``: ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, labels)``, the
    T^2 factor keeping gradient magnitudes comparable across temperatures (Hinton et al. 2015).
    ``hard``: cross-entropy against the teacher's argmax.

    Embedding models (``"embedding"``): see :func:`embedding_distillation_loss`. Their student is
    trained in eval mode (no dropout; batch norm keeps its running statistics): it is fitted to
    reproduce the teacher's deterministic outputs. A student that still equals its teacher (nothing
    was pruned) is left alone: its loss is zero up to rounding, and Adam, which divides by the
    gradients' own scale, would turn rounding noise into full-size steps. With dropout on, an
    unpruned MiniLM drifted from 1.0 to 0.81-0.95 mean cosine in one or two epochs.
    """
    import torch

    if config.method == "none":
        return False
    embedding = task.output_kind == "embedding"
    if embedding and same_parameters(student, teacher):
        return False
    pairs = hidden_pairs(student, teacher, task) if config.hidden_weight is not None else []
    teacher.eval()
    student.train(not embedding)
    optimizer = torch.optim.Adam(student.parameters(), lr=config.learning_rate)
    with _captured([s for s, _ in pairs]) as student_hidden, _captured([t for _, t in pairs]) as teacher_hidden:
        _train(student, teacher, config, task, seed, optimizer, student_hidden, teacher_hidden)
    student.eval()
    return True


def _train(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    config: DistillConfig,
    task: Task,
    seed: int,
    optimizer: Any,
    student_hidden: list[Any],
    teacher_hidden: list[Any],
) -> None:
    import torch
    from torch.nn import functional as F

    embedding = task.output_kind == "embedding"
    for epoch in range(config.epochs):
        for inputs_np, labels_np in task.train_batches(task.train_batch_size, seed=seed * 1000 + epoch):
            inputs, labels = to_torch(inputs_np), torch.from_numpy(np.asarray(labels_np))
            with torch.no_grad():
                teacher_logits = run_model(teacher, inputs)
            logits = run_model(student, inputs)
            if embedding:
                loss = embedding_distillation_loss(logits, teacher_logits, config)
            elif config.method == "hard":
                loss = F.cross_entropy(logits, teacher_logits.argmax(dim=1))
            else:
                t = float(config.temperature or 1.0)
                alpha = float(config.alpha if config.alpha is not None else 1.0)
                kd = F.kl_div(
                    F.log_softmax(logits / t, dim=1),
                    F.softmax(teacher_logits / t, dim=1),
                    reduction="batchmean",
                ) * (t * t)
                loss = alpha * kd + (1 - alpha) * F.cross_entropy(logits, labels)
            if config.hidden_weight is not None:
                loss = loss + config.hidden_weight * hidden_state_loss(student_hidden, teacher_hidden)
            if not torch.isfinite(loss):
                raise CompressionError(
                    f"Distillation loss became {loss.item()} in epoch {epoch + 1}; lower "
                    "distillation.learning_rate or narrow the temperature range."
                )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def hidden_pairs(
    student: torch.nn.Module, teacher: torch.nn.Module, task: Task
) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
    """(student layer, teacher layer) pairs of :meth:`Task.hidden_layers`, matched by name; a
    depth-pruned student's names are first mapped to the teacher blocks they came from.

    Raises:
        CompressionError: the task names no hidden layers, or none of the student's has a teacher
            counterpart.
    """
    from lepton_search.objectives._prune import kept_blocks

    teacher_layers = dict(task.hidden_layers(teacher))
    student_layers = list(task.hidden_layers(student))
    if teacher_layers and not student_layers:
        raise CompressionError(
            f"Hidden-state distillation found none of task {task.name!r}'s hidden layers in the student (depth "
            "pruning dropped them all); lower the depth pruning ratio, or name layers pruning keeps in the task's "
            "hidden_layers()."
        )
    if not teacher_layers:
        raise CompressionError(
            f"Hidden-state distillation needs the task's intermediate layers, but task {task.name!r} names none "
            "(Task.hidden_layers and Task.depth_blocks return nothing). Remove hidden_weight from "
            "space.distillation, or implement hidden_layers() in the task."
        )
    renamed = kept_blocks(student)
    pairs = []
    for name, module in student_layers:
        source = name
        for new, old in renamed.items():
            if name == new or name.startswith(new + "."):
                source = old + name[len(new) :]
                break
        if source in teacher_layers:
            pairs.append((module, teacher_layers[source]))
    if not pairs:
        raise CompressionError(
            f"None of the student's hidden layers {[n for n, _ in student_layers]} has a teacher counterpart "
            f"among {sorted(teacher_layers)}; Task.hidden_layers must name layers that pruning keeps."
        )
    return pairs


@contextlib.contextmanager
def _captured(modules: list[torch.nn.Module]) -> Iterator[list[Any]]:
    """A list whose item ``i`` is the latest output of ``modules[i]`` (its first tensor), while open."""
    outputs: list[Any] = [None] * len(modules)

    def hook_for(i: int) -> Any:
        def hook(_module: Any, _args: Any, output: Any) -> None:
            outputs[i] = output[0] if isinstance(output, (tuple, list)) else output

        return hook

    handles = [m.register_forward_hook(hook_for(i)) for i, m in enumerate(modules)]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def hidden_state_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """The mean over matched layers of a loss between student and teacher representations.

    Same shape: the squared error relative to the teacher's mean square,
    ``mean((s - t)^2) / mean(t^2)``, so layers of any scale weigh alike. Different shapes (channel
    pruning narrowed the student's layer): similarity-preserving distillation (Tung & Mori 2019),
    the mean squared difference of the in-batch cosine-similarity matrices of the flattened
    representations, which compares what the layer tells apart rather than its channels.
    """
    from torch.nn import functional as F

    losses = []
    for s, t in zip(student, teacher):
        if s is None or t is None:
            raise CompressionError("A hidden layer named by the task did not run in the forward pass.")
        s, t = s.float(), t.detach().float()
        if s.shape == t.shape:
            losses.append(((s - t) ** 2).mean() / (t.pow(2).mean() + 1e-8))
        else:
            gs = F.normalize(s.reshape(len(s), -1), dim=1)
            gt = F.normalize(t.reshape(len(t), -1), dim=1)
            losses.append(((gs @ gs.T - gt @ gt.T) ** 2).mean())
    return sum(losses) / len(losses)


def same_parameters(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Whether ``a`` and ``b`` hold the same parameter names, shapes and values."""
    import torch

    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    return pa.keys() == pb.keys() and all(pa[k].shape == pb[k].shape and torch.equal(pa[k], pb[k]) for k in pa)


def embedding_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, config: DistillConfig) -> torch.Tensor:
    """The distillation loss of a batch of ``student`` embeddings against the ``teacher``'s.

    Logits are in-batch cosine similarities times ``SIMILARITY_SCALE / T``: row ``i`` of the
    student's holds ``cos(s_i, t_j)`` over the batch's teacher embeddings ``t_j``, row ``i`` of the
    teacher's ``cos(t_i, t_j)``.

    ``soft``: ``alpha * T^2 * KL(softmax(teacher row) || softmax(student row))`` (the teacher's
    neighbourhood structure, sharp at low T and broad at high T) ``+ (1 - alpha) * mean(1 - cos(s_i,
    t_i))`` (the embeddings themselves; half the mean squared error of unit vectors).
    ``hard``: cross-entropy of the student's rows with each row's own teacher embedding as the
    class (in-batch contrastive alignment, at T = 1).
    """
    from torch.nn import functional as F

    s = F.normalize(student, dim=-1)
    t = F.normalize(teacher, dim=-1)
    if config.method == "hard":
        import torch

        logits = s @ t.T * SIMILARITY_SCALE
        return F.cross_entropy(logits, torch.arange(len(s), device=s.device))
    temperature = float(config.temperature or 1.0)
    alpha = float(config.alpha if config.alpha is not None else 1.0)
    scale = SIMILARITY_SCALE / temperature
    kd = F.kl_div(
        F.log_softmax(s @ t.T * scale, dim=1),
        F.softmax(t @ t.T * scale, dim=1),
        reduction="batchmean",
    ) * (temperature * temperature)
    cosine = (1.0 - (s * t).sum(dim=-1)).mean()
    return alpha * kd + (1.0 - alpha) * cosine
