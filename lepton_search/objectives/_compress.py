"""The compression pipeline: prune -> distill -> export -> quantize.

Each step is a small function of (model, its config section); :func:`compress` runs them in order
and records what each produced. Torch steps run on the CPU with the thread count the caller set.
"""

from __future__ import annotations

import copy
import gzip
import re
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lepton_search.errors import CompressionError
from lepton_search.spaces import CompressionConfig, DistillConfig, PruneConfig, QuantizeConfig

if TYPE_CHECKING:
    import torch

    from lepton_search.objectives.tasks import Task

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


def prune(model: torch.nn.Module, config: PruneConfig, task: Task, example: np.ndarray) -> list[Any]:
    """Prunes ``model`` in place.

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
        try:
            pruner = tp.pruner.MetaPruner(
                model,
                torch.from_numpy(example[:1]),
                importance=tp.importance.MagnitudeImportance(p=1),
                pruning_ratio=config.ratio,
                ignored_layers=ignored,
            )
            pruner.step()
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


def distill(
    student: torch.nn.Module, teacher: torch.nn.Module, config: DistillConfig, task: Task, *, seed: int
) -> None:
    """Fine-tunes ``student`` in place from ``teacher`` on the task's training batches.

    ``soft``: ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, labels)``, the
    T^2 factor keeping gradient magnitudes comparable across temperatures (Hinton et al. 2015).
    ``hard``: cross-entropy against the teacher's argmax.
    """
    import torch
    from torch.nn import functional as F

    if config.method == "none":
        return
    teacher.eval()
    student.train()
    optimizer = torch.optim.Adam(student.parameters(), lr=config.learning_rate)
    for epoch in range(config.epochs):
        for inputs_np, labels_np in task.train_batches(64, seed=seed * 1000 + epoch):
            inputs, labels = torch.from_numpy(inputs_np), torch.from_numpy(labels_np)
            with torch.no_grad():
                teacher_logits = teacher(inputs)
            logits = student(inputs)
            if config.method == "hard":
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
            if not torch.isfinite(loss):
                raise CompressionError(
                    f"Distillation loss became {loss.item()} in epoch {epoch + 1}; lower "
                    "distillation.learning_rate or narrow the temperature range."
                )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    student.eval()


def export_onnx(model: torch.nn.Module, example: np.ndarray, path: Path) -> Path:
    """Exports ``model`` to one self-contained ONNX file with a dynamic batch dimension."""
    import logging

    import torch

    # The exporter warns once per export that torchvision's ops are not registered; they are not
    # used by the models we export, and the warning would flood every worker's log.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    model.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (torch.from_numpy(example),),
                str(path),
                dynamo=True,
                external_data=False,
                input_names=["input"],
                output_names=["output"],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
                verbose=False,
            )
    except Exception as e:
        raise CompressionError(
            f"ONNX export failed: {_export_failure(e)}. The model must be traceable by torch.export "
            "(no data-dependent Python control flow)."
        ) from e
    return path


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
_FAILING_CALL = re.compile(r'File "([^"]+)", line (\d+), in (\S+)\s*\n\s*(\S[^\n]*)')


def _export_failure(error: BaseException) -> str:
    """The root cause of an export failure and, when torch names it, the line of model code.

    torch's exporter wraps the cause in several paragraphs of generic advice (with terminal colour
    codes); the first few hundred characters of it never say what went wrong.
    """
    root = error
    for _ in range(32):  # bounded: a cause chain can, in principle, loop
        if root.__cause__ is None:
            break
        root = root.__cause__
    text = _ANSI_ESCAPE.sub("", str(root)).strip()
    summary = text.splitlines()[0].strip()[:300] if text else "(no message)"
    where = ""
    call = _FAILING_CALL.search(_ANSI_ESCAPE.sub("", str(error)))
    if call:
        file, line, function, code = call.groups()
        where = f" (at {Path(file).name}:{line} in {function}: `{code.strip()[:120]}`)"
    return f"{type(root).__name__}: {summary}{where}"


class _CalibrationReader:
    """Feeds calibration batches to ONNX Runtime's static quantizer."""

    def __init__(self, batches: list[np.ndarray], input_name: str) -> None:
        self._batches: Iterator[np.ndarray] = iter(batches)
        self._input_name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._input_name: batch}

    def rewind(self) -> None:  # part of ORT's reader interface; we never re-read
        pass


def quantize(source: Path, config: QuantizeConfig, task: Task, out_dir: Path) -> Path:
    """Applies the precision of ``config`` to the exported fp32 model at ``source``."""
    if config.precision == "fp32":
        return source
    import onnx

    target = out_dir / f"model-{config.precision}.onnx"
    try:
        if config.precision == "fp16":
            from onnxruntime.transformers.float16 import convert_float_to_float16

            model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
            onnx.save(model, str(target))
            return target
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_dynamic,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process

        prepared = out_dir / "model-preprocessed.onnx"
        quant_pre_process(str(source), str(prepared))
        if config.int8_mode == "dynamic":
            quantize_dynamic(
                str(prepared),
                str(target),
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul", "Gemm"],
            )
            return target
        methods = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }
        input_name = onnx.load(str(prepared), load_external_data=False).graph.input[0].name
        reader = _CalibrationReader(task.calibration_inputs(int(config.calibration_batches or 1), 64), input_name)
        quantize_static(
            str(prepared),
            str(target),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[str(config.calibration_method)],
        )
        return target
    except CompressionError:
        raise
    except Exception as e:
        raise CompressionError(
            f"{config.precision} quantization ({config.int8_mode or 'conversion'}) failed: "
            f"{type(e).__name__}: {str(e)[:400]}"
        ) from e


def compress(
    teacher: torch.nn.Module, config: CompressionConfig, task: Task, out_dir: Path, *, seed: int = 0
) -> CompressedModel:
    """Runs prune -> distill -> export -> quantize for ``config`` and returns the ONNX result.

    The teacher is not modified. Raises :class:`CompressionError` when a step fails.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    notes: list[str] = []
    example = task.example_inputs(2)

    start = time.perf_counter()
    student = copy.deepcopy(teacher)
    masked = prune(student, config.pruning, task, example)
    timings["prune_s"] = time.perf_counter() - start
    if config.pruning.method == "unstructured":
        notes.append(UNSTRUCTURED_NOTE)

    start = time.perf_counter()
    distill(student, teacher, config.distillation, task, seed=seed)
    finalize_pruning(masked)
    timings["distill_s"] = time.perf_counter() - start

    start = time.perf_counter()
    fp32_path = export_onnx(student, example, out_dir / "model-fp32.onnx")
    timings["export_s"] = time.perf_counter() - start

    start = time.perf_counter()
    final = quantize(fp32_path, config.quantization, task, out_dir)
    timings["quantize_s"] = time.perf_counter() - start

    data = final.read_bytes()
    return CompressedModel(
        onnx_path=final,
        parameters=count_parameters(student),
        sparsity=sparsity(student),
        size_bytes=len(data),
        gzip_size_bytes=len(gzip.compress(data, compresslevel=6)),
        timings_s=timings,
        notes=notes,
    )
