"""The compression pipeline: prune -> distill -> export -> quantize.

Each step lives in its own module (``_prune``, ``_distill``, ``_export``, ``_quantize``) as a small
function of (model, its config section); :func:`compress` runs them in order and records what each
produced. Torch steps run on the CPU with the thread count the caller set.

Models take one array or several named arrays (see ``tasks/_base.py``): a text encoder's
``input_ids`` and ``attention_mask``, say. Such a model is exported with a dynamic batch axis and
every other axis left to ``torch.export`` (so a sequence length stays dynamic).
"""

from __future__ import annotations

import copy
import dataclasses
import gzip
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lepton_search.objectives._distill import distill, training_precision
from lepton_search.objectives._graph import export_graph, fuse, record_level, session_operator_counts
from lepton_search.objectives._prune import SEMI_STRUCTURED_NOTE, finalize_pruning, prune, sparsity
from lepton_search.objectives._quantize import quantize
from lepton_search.objectives._students import StudentCache, StudentInfo, student_key
from lepton_search.objectives._targets import teacher_targets
from lepton_search.spaces import CompressionConfig, DistillConfig

if TYPE_CHECKING:
    import torch

    from lepton_search.objectives.tasks import Task

DISTILL_SKIPPED_NOTE = (
    "distillation skipped: nothing was pruned, so the student still equals the teacher and has "
    "nothing to learn (quantization comes after distillation)"
)

UNSTRUCTURED_NOTE = (
    "unstructured sparsity: dense kernels run zeroed weights at full cost, so this shrinks only "
    "the compressed model size, not latency"
)


@dataclass
class CompressedModel:
    """The result of :func:`compress`: an ONNX file plus what was done to get it."""

    onnx_path: Path
    parameters: int
    sparsity: float
    size_bytes: int
    gzip_size_bytes: int
    timings_s: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: Fused and quantized operators in the graph ONNX Runtime runs (``_graph.FUSED_OPERATORS``).
    graph_ops: dict[str, int] = field(default_factory=dict)
    #: How the student was obtained (:class:`~lepton_search.objectives._students.StudentInfo`).
    student: dict[str, Any] = field(default_factory=dict)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class Student:
    """The result of :func:`shrink`: the pruned and distilled model, and how it was obtained."""

    model: torch.nn.Module
    timings_s: dict[str, float]
    notes: list[str]
    info: StudentInfo


def canonical_config(config: CompressionConfig, task: Task) -> CompressionConfig:
    """The configuration ``config`` is equal to in effect: steps that change nothing are dropped,
    so equal models share one cache entry and one evaluation.

    - An embedding model's distillation when nothing is pruned (it is skipped: the student still
      equals its teacher, see :func:`~lepton_search.objectives._distill.distill`), unless it is
      quantization-aware (then it trains the student for int8 rounding).
    - Mixed precision with ``fp32_fraction = 0`` (every layer is quantized anyway).
    """
    changes: dict[str, Any] = {}
    if (
        task.output_kind == "embedding"
        and config.pruning.method == "none"
        and config.distillation.method != "none"
        and not config.distillation.quantization_aware
    ):
        changes["distillation"] = DistillConfig()
    if config.quantization.fp32_fraction == 0.0:
        changes["quantization"] = dataclasses.replace(config.quantization, fp32_fraction=None)
    return dataclasses.replace(config, **changes) if changes else config


def _share(config: DistillConfig, parts: int) -> DistillConfig:
    """One of ``parts`` equal shares of ``config``'s budget (iterative pruning distils after each step)."""
    if parts == 1 or config.method == "none":
        return config
    if config.steps is not None:
        return dataclasses.replace(config, steps=max(1, math.ceil(config.steps / parts)))
    return dataclasses.replace(config, epochs=max(1, round(config.epochs / parts)))


def _build_student(
    teacher: torch.nn.Module, config: CompressionConfig, task: Task, seed: int, cache_dir: Path | None
) -> tuple[torch.nn.Module, dict[str, float], list[str]]:
    import torch

    torch.manual_seed(seed)
    timings = {"prune_s": 0.0, "distill_s": 0.0}
    notes: list[str] = []
    student = copy.deepcopy(teacher)
    targets = teacher_targets(task, teacher, cache_dir)
    steps = config.pruning.iterations or 1
    masked: list[Any] = []
    for step in range(1, steps + 1):
        start = time.perf_counter()
        masked = prune(
            student, config.pruning, task, task.example_inputs(2), cache_dir=cache_dir, fraction=step / steps
        )
        timings["prune_s"] += time.perf_counter() - start
        start = time.perf_counter()
        share = _share(config.distillation, steps)
        step_seed = seed if steps == 1 else seed * 100 + step
        trained = distill(
            student, teacher, share, task, seed=step_seed, targets=targets, quantization=config.quantization
        )
        if not trained and config.distillation.method != "none" and DISTILL_SKIPPED_NOTE not in notes:
            notes.append(DISTILL_SKIPPED_NOTE)
        timings["distill_s"] += time.perf_counter() - start
    finalize_pruning(masked)
    if config.pruning.method == "unstructured":
        notes.append(UNSTRUCTURED_NOTE)
    elif config.pruning.method == "2:4":
        notes.append(SEMI_STRUCTURED_NOTE)
    if steps > 1:
        share = _share(config.distillation, steps)
        budget = f"{share.steps} steps" if share.steps is not None else f"{share.epochs} epochs"
        notes.append(f"iterative pruning: {steps} prune-then-distill steps, each distilling for {budget}")
    if config.distillation.quantization_aware:
        q = config.quantization
        notes.append(
            "quantization-aware distillation: the student was trained through dynamic int8's rounding "
            f"(weights {'per channel' if q.per_channel else 'per tensor'}, inputs per tensor)"
        )
    if targets is not None and targets.computed_rows:
        notes.append(f"computed and cached the teacher's embeddings of {targets.computed_rows} training passages")
    return student, timings, notes


def shrink(
    teacher: torch.nn.Module,
    config: CompressionConfig,
    task: Task,
    *,
    seed: int = 0,
    cache_dir: Path | None = None,
) -> Student:
    """The steps every model format shares: prune, then distill, a copy of ``teacher``.

    The torch RNG is seeded with ``seed`` first, so one config, task and seed always give the same
    student. With ``cache_dir`` the student is shared through the student cache
    (``_students.py``): built once per task, pruning and distillation config, seed and training
    precision, then loaded by every trial that needs it; ``cache_dir`` also keeps what depth
    pruning measures once per task (block importance) and the teacher's cached embeddings.
    """
    unchanged = config.distillation.method == "none" or (
        task.output_kind == "embedding" and not config.distillation.quantization_aware
    )
    if config.pruning.method == "none" and unchanged:
        notes = [DISTILL_SKIPPED_NOTE] if config.distillation.method != "none" else []
        return Student(copy.deepcopy(teacher), {"prune_s": 0.0, "distill_s": 0.0}, notes, StudentInfo("none"))
    precision = training_precision(config.distillation)
    if cache_dir is None:
        start = time.perf_counter()
        model, timings, notes = _build_student(teacher, config, task, seed, None)
        info = StudentInfo("miss", None, time.perf_counter() - start, precision, timings)
        return Student(model, timings, notes, info)
    key = student_key(task, config, seed)
    cache = StudentCache(cache_dir)
    with cache.lock(key):
        loaded = cache.load(key, teacher, task)
        if loaded is not None:
            model, description = loaded
            info = StudentInfo(
                "hit", key, float(description.get("build_s", 0.0)), precision, dict(description.get("timings_s", {}))
            )
            notes = [*description.get("notes", []), f"student loaded from the cache ({key})"]
            return Student(model, {"prune_s": 0.0, "distill_s": 0.0}, notes, info)
        start = time.perf_counter()
        model, timings, notes = _build_student(teacher, config, task, seed, cache_dir)
        build_s = time.perf_counter() - start
        description = {"notes": notes, "timings_s": timings, "build_s": build_s, "training_precision": precision}
        cache.save(key, model, description)
    return Student(model, timings, notes, StudentInfo("miss", key, build_s, precision, timings))


def packaged(path: Path, student: torch.nn.Module, timings: dict[str, float], notes: list[str]) -> CompressedModel:
    """The :class:`CompressedModel` record of the model file at ``path``, exported from ``student``."""
    data = path.read_bytes()
    return CompressedModel(
        onnx_path=path,
        parameters=count_parameters(student),
        sparsity=sparsity(student),
        size_bytes=len(data),
        gzip_size_bytes=len(gzip.compress(data, compresslevel=6)),
        timings_s=timings,
        notes=notes,
    )


def compress(
    teacher: torch.nn.Module,
    config: CompressionConfig,
    task: Task,
    out_dir: Path,
    *,
    seed: int = 0,
    cache_dir: Path | None = None,
) -> CompressedModel:
    """Runs prune -> distill -> export -> quantize for ``config`` and returns the ONNX result.

    The teacher is not modified. Raises :class:`CompressionError` when a step fails. The same
    config, task and seed always give the same model (see :func:`shrink`).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    shrunk = shrink(teacher, config, task, seed=seed, cache_dir=cache_dir)
    student, timings, notes = shrunk.model, dict(shrunk.timings_s), list(shrunk.notes)

    start = time.perf_counter()
    fp32_path = export_graph(student, task, task.example_inputs(2), out_dir / "model-fp32.onnx", config.graph)
    fuse(fp32_path, config.graph, task, student, notes)
    timings["export_s"] = time.perf_counter() - start

    start = time.perf_counter()
    final = quantize(fp32_path, config.quantization, task, out_dir, teacher=teacher, cache_dir=cache_dir, notes=notes)
    record_level(final, config.graph)
    timings["quantize_s"] = time.perf_counter() - start
    compressed = packaged(final, student, timings, notes)
    compressed.graph_ops = session_operator_counts(final)
    compressed.student = shrunk.info.to_dict()
    return compressed
