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
import gzip
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lepton_search.objectives._distill import distill
from lepton_search.objectives._export import export_onnx
from lepton_search.objectives._prune import SEMI_STRUCTURED_NOTE, finalize_pruning, prune, sparsity
from lepton_search.objectives._quantize import quantize
from lepton_search.spaces import CompressionConfig

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


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def shrink(
    teacher: torch.nn.Module,
    config: CompressionConfig,
    task: Task,
    *,
    seed: int = 0,
    cache_dir: Path | None = None,
) -> tuple[torch.nn.Module, dict[str, float], list[str]]:
    """The steps every model format shares: prune, then distill, a copy of ``teacher``.

    The torch RNG is seeded with ``seed`` first, so one config, task and seed always give the same
    student. ``cache_dir`` keeps what depth pruning measures once per task (block importance).

    Returns:
        The student, the time each step took, and notes on what was done.
    """
    import torch

    torch.manual_seed(seed)
    timings: dict[str, float] = {}
    notes: list[str] = []
    start = time.perf_counter()
    student = copy.deepcopy(teacher)
    masked = prune(student, config.pruning, task, task.example_inputs(2), cache_dir=cache_dir)
    timings["prune_s"] = time.perf_counter() - start
    if config.pruning.method == "unstructured":
        notes.append(UNSTRUCTURED_NOTE)
    elif config.pruning.method == "2:4":
        notes.append(SEMI_STRUCTURED_NOTE)

    start = time.perf_counter()
    if not distill(student, teacher, config.distillation, task, seed=seed) and config.distillation.method != "none":
        notes.append(DISTILL_SKIPPED_NOTE)
    finalize_pruning(masked)
    timings["distill_s"] = time.perf_counter() - start
    return student, timings, notes


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
    student, timings, notes = shrink(teacher, config, task, seed=seed, cache_dir=cache_dir)

    start = time.perf_counter()
    fp32_path = export_onnx(student, task.example_inputs(2), out_dir / "model-fp32.onnx")
    timings["export_s"] = time.perf_counter() - start

    start = time.perf_counter()
    final = quantize(fp32_path, config.quantization, task, out_dir, teacher=teacher, cache_dir=cache_dir, notes=notes)
    timings["quantize_s"] = time.perf_counter() - start
    return packaged(final, student, timings, notes)
