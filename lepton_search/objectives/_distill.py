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
import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lepton_search.errors import CompressionError
from lepton_search.objectives._fake_quant import simulated_dynamic_int8
from lepton_search.objectives._inputs import run_model, to_torch
from lepton_search.spaces import DistillConfig, QuantizeConfig

if TYPE_CHECKING:
    import torch

    from lepton_search.objectives._targets import TeacherTargets
    from lepton_search.objectives.tasks import Task

# In-batch similarity logits are cosine * SIMILARITY_SCALE / temperature: cosines lie in [-1, 1],
# and a softmax over them at temperature 1 would be nearly uniform. 20 is the scale of
# sentence-transformers' MultipleNegativesRankingLoss, which trained all-MiniLM-L6-v2; it makes the
# space's temperature range [1, 20] span sharp (nearest neighbours only) to flat (the whole
# similarity structure of the batch).
SIMILARITY_SCALE = 20.0


def distill(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    config: DistillConfig,
    task: Task,
    *,
    seed: int,
    targets: TeacherTargets | None = None,
    quantization: QuantizeConfig | None = None,
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
    unpruned MiniLM drifted from 1.0 to 0.81-0.95 mean cosine in one or two epochs. ``targets``
    (embedding tasks) serves the teacher's embeddings of each batch from the task's cache instead
    of a teacher pass, unless hidden-state or relation losses need the teacher's inner layers.

    Budget and optimiser: ``epochs`` passes with Adam at a constant ``learning_rate``, or ``steps``
    optimizer steps with AdamW, linear warm-up over ``warmup`` of them, linear decay to zero and
    gradients clipped to norm 1 (the recipe BERT fine-tuning uses: a pruned encoder at a constant
    2e-4 lost fidelity in its first steps). With a step budget the student's forward and backward
    run in bfloat16 autocast on CPUs with native bf16 (AVX-512 BF16 or AMX), about twice as fast;
    the weights stay fp32. The task's :meth:`~lepton_search.objectives.tasks.Task.frozen_in_distillation`
    modules are not trained.

    With ``config.quantization_aware`` the student's linear layers compute through the rounding of
    dynamic int8 with ``quantization``'s weight granularity (:mod:`~lepton_search.objectives._fake_quant`),
    and an embedding student that equals its teacher is trained too: the int8 rounding is what it
    learns to absorb.
    """
    import torch

    if config.method == "none":
        return False
    embedding = task.output_kind == "embedding"
    aware = bool(config.quantization_aware)
    if embedding and not aware and same_parameters(student, teacher):
        return False
    pairs = hidden_pairs(student, teacher, task) if config.hidden_weight is not None else []
    relations = relation_pairs(student, teacher, task) if config.relation_weight is not None else []
    teacher.eval()
    student.train(not embedding)
    frozen = [p for module in task.frozen_in_distillation(student) for p in module.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    trained = [p for p in student.parameters() if p.requires_grad]
    try:
        if config.steps is None:
            optimizer: Any = torch.optim.Adam(trained, lr=config.learning_rate)
            schedule = None
        else:
            optimizer = torch.optim.AdamW(trained, lr=config.learning_rate, weight_decay=0.0)
            factor = warmup_then_decay(config.steps, config.warmup or 0.0)
            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        watched_s = [s for s, _ in pairs] + [s for s, _ in relations]
        watched_t = [t for _, t in pairs] + [t for _, t in relations]
        simulated = (
            simulated_dynamic_int8(student, quantization or QuantizeConfig("int8", "dynamic"))
            if aware
            else contextlib.nullcontext()
        )
        with simulated, _captured(watched_s) as student_hidden, _captured(watched_t) as teacher_hidden:
            loop = _Loop(student, teacher, config, task, optimizer, schedule, student_hidden, teacher_hidden)
            loop.n_hidden = len(pairs)
            loop.targets = targets if not (pairs or relations) else None
            loop.run(seed)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    student.eval()
    return True


def warmup_then_decay(steps: int, warmup: float) -> Any:
    """The learning-rate multiplier at each step: linear from ~0 to 1 over the first ``warmup``
    fraction of ``steps``, then linear to 0 at the last step."""
    warm = max(1, round(warmup * steps)) if warmup > 0 else 0

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (steps - step) / max(1, steps - warm))

    return factor


def bf16_autocast_supported() -> bool:
    """Whether this CPU runs bfloat16 matrix products natively (AVX-512 BF16 or AMX-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def training_precision(config: DistillConfig) -> str:
    """The precision a distillation with ``config`` runs its student in here: ``bf16`` (autocast,
    for step budgets on CPUs with native bf16) or ``fp32``."""
    return "bf16" if config.steps is not None and bf16_autocast_supported() else "fp32"


class _Loop:
    """One distillation run: batches until the budget (epochs or steps) is spent."""

    def __init__(
        self,
        student: torch.nn.Module,
        teacher: torch.nn.Module,
        config: DistillConfig,
        task: Task,
        optimizer: Any,
        schedule: Any,
        student_hidden: list[Any],
        teacher_hidden: list[Any],
    ) -> None:
        self.student, self.teacher, self.config, self.task = student, teacher, config, task
        self.optimizer, self.schedule = optimizer, schedule
        self.student_hidden, self.teacher_hidden = student_hidden, teacher_hidden
        self.n_hidden = 0
        self.targets: TeacherTargets | None = None
        self.bf16 = training_precision(config) == "bf16"

    def batches(self, seed: int) -> Iterator[tuple[int, Any, np.ndarray]]:
        """``(pass, inputs, labels)`` until the budget is spent: ``epochs`` passes, or passes until
        ``steps`` batches."""
        if self.config.steps is None:
            for epoch in range(self.config.epochs):
                for inputs, labels in self.task.train_batches(self.task.train_batch_size, seed=seed * 1000 + epoch):
                    yield epoch, inputs, labels
            return
        done, epoch = 0, 0
        while done < self.config.steps:
            produced = False
            for inputs, labels in self.task.train_batches(self.task.train_batch_size, seed=seed * 1000 + epoch):
                produced = True
                yield epoch, inputs, labels
                done += 1
                if done >= self.config.steps:
                    return
            if not produced:
                raise CompressionError(f"Task {self.task.name!r} gave no training batches to distill on.")
            epoch += 1

    def run(self, seed: int) -> None:
        import contextlib

        import torch

        embedding = self.task.output_kind == "embedding"
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        trained = [p for p in self.student.parameters() if p.requires_grad]
        for epoch, inputs_np, labels_np in self.batches(seed):
            inputs, labels = to_torch(inputs_np), torch.from_numpy(np.asarray(labels_np))
            if self.targets is not None:
                teacher_out = torch.from_numpy(self.targets(np.asarray(labels_np)))
            else:
                with torch.no_grad():
                    teacher_out = run_model(self.teacher, inputs)
            with autocast:
                student_out = run_model(self.student, inputs)
            loss = self.loss(student_out.float(), teacher_out, labels, inputs_np, embedding)
            if not torch.isfinite(loss):
                raise CompressionError(
                    f"Distillation loss became {loss.item()} in pass {epoch + 1}; lower "
                    "distillation.learning_rate or narrow the temperature range."
                )
            self.optimizer.zero_grad()
            loss.backward()
            if self.schedule is not None:
                torch.nn.utils.clip_grad_norm_(trained, 1.0)
            self.optimizer.step()
            if self.schedule is not None:
                self.schedule.step()

    def loss(self, logits: Any, teacher_logits: Any, labels: Any, inputs: Any, embedding: bool) -> Any:
        from torch.nn import functional as F

        config = self.config
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
        n = self.n_hidden
        if config.hidden_weight is not None:
            loss = loss + config.hidden_weight * hidden_state_loss(self.student_hidden[:n], self.teacher_hidden[:n])
        if config.relation_weight is not None:
            mask = self.task.token_mask(inputs)
            loss = loss + config.relation_weight * relation_loss(self.student_hidden[n:], self.teacher_hidden[n:], mask)
        return loss


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


#: MiniLM v2 splits each relation into at most this many relation heads.
RELATION_HEADS = 12


def relation_pairs(
    student: torch.nn.Module, teacher: torch.nn.Module, task: Task
) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
    """(student, teacher) query, key and value projections whose relations are distilled.

    Raises:
        CompressionError: the task names no relation layers.
    """
    s_layers, t_layers = task.relation_layers(student), task.relation_layers(teacher)
    if not s_layers or not t_layers:
        raise CompressionError(
            f"distillation.relation_weight needs the query, key and value projections of an attention layer, but "
            f"task {task.name!r} names none (Task.relation_layers); remove relation_weight from space.distillation."
        )
    return list(zip(s_layers, t_layers))


def relation_heads(student_width: int, teacher_width: int) -> int:
    """How many relation heads both widths split into evenly: the largest divisor of their greatest
    common divisor that is at most :data:`RELATION_HEADS` (a pruned student has fewer heads than
    its teacher, so its own head count may not divide the teacher's width)."""
    common = math.gcd(student_width, teacher_width)
    return max(d for d in range(1, RELATION_HEADS + 1) if common % d == 0)


def relation_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], mask: np.ndarray | None) -> torch.Tensor:
    """MiniLM v2's self-attention relation distillation (Wang et al. 2021).

    For each of the query, key and value projections' outputs (batch x tokens x width), split into
    :func:`relation_heads` heads, the relation is ``softmax(x x^T / sqrt(width / heads))`` over the
    tokens; the loss is the KL divergence from the teacher's relations to the student's, averaged
    over heads and real (unpadded) query tokens, and over the three projections.
    """
    import torch
    from torch.nn import functional as F

    losses = []
    for s, t in zip(student, teacher):
        if s is None or t is None:
            raise CompressionError("A relation layer named by the task did not run in the forward pass.")
        s, t = s.float(), t.detach().float()
        heads = relation_heads(s.shape[-1], t.shape[-1])
        keep = torch.ones(s.shape[:2], dtype=torch.bool) if mask is None else torch.from_numpy(np.asarray(mask) > 0)
        # A large finite bias rather than -inf: the KL terms of padded keys are then 0 * finite.
        key_bias = torch.zeros(keep.shape, dtype=s.dtype).masked_fill(~keep, -1e4)[:, None, None, :]
        target = F.softmax(_relation_scores(t, heads, key_bias), dim=-1)
        log_student = F.log_softmax(_relation_scores(s, heads, key_bias), dim=-1)
        kl = (target * (torch.log(target.clamp(min=1e-12)) - log_student)).sum(-1)  # batch x heads x tokens
        kl = kl.masked_fill(~keep[:, None, :], 0.0)
        losses.append(kl.sum() / (keep.sum() * heads).clamp(min=1))
    return sum(losses) / len(losses)


def _relation_scores(x: torch.Tensor, heads: int, key_bias: torch.Tensor) -> torch.Tensor:
    batch, tokens, width = x.shape
    x = x.view(batch, tokens, heads, width // heads).transpose(1, 2)
    return x @ x.transpose(-1, -2) / math.sqrt(width // heads) + key_bias
