"""One trial, end to end, without Optuna or Ray: compress, score, measure, price.

``search`` calls :func:`evaluate` inside a Ray task. The device gate is how the caller keeps
measurement windows exclusive: compute stages hold it shared, the latency measurement holds it
exclusively, so no other trial computes on the device while one is being measured.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from lepton_search.errors import TrialFailed
from lepton_search.objectives._compress import compress
from lepton_search.objectives._cost import CostModel
from lepton_search.objectives._export import export_onnx
from lepton_search.objectives._latency import MeasurementSettings, get_backend, measure_pair
from lepton_search.objectives.tasks import Task, resolve_task
from lepton_search.objectives.tasks._base import contiguous_inputs
from lepton_search.spaces import CompressionConfig

if TYPE_CHECKING:
    import torch


class DeviceGate(Protocol):
    """Serialises measurement against compute on one device."""

    def compute(self) -> contextlib.AbstractContextManager[None]:
        """Held (shared with other computing trials) while a trial compresses or scores."""

    def measure(self) -> contextlib.AbstractContextManager[None]:
        """Held exclusively while a trial's latency is measured."""


class NoGate:
    """A gate for a process that is alone on its device (``lepton-search bench``, tests)."""

    @contextlib.contextmanager
    def compute(self) -> Iterator[None]:
        yield

    @contextlib.contextmanager
    def measure(self) -> Iterator[None]:
        yield


@dataclass(frozen=True)
class TrialRequest:
    """Everything a worker needs to evaluate one configuration; small and picklable."""

    task: str
    config_json: str
    cache_dir: str
    settings: MeasurementSettings = field(default_factory=MeasurementSettings)
    cost: CostModel = field(default_factory=CostModel)
    task_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    compute_threads: int = 1
    # Multi-fidelity screening: distill for at most this many epochs (None: as configured).
    max_distill_epochs: int | None = None


@dataclass
class TrialResult:
    """What a worker sends back: values, statistics and the exported model's bytes."""

    accuracy: float
    test_accuracy: float
    latency: dict[str, Any]
    cost_usd_per_million: float
    size_bytes: int
    gzip_size_bytes: int
    parameters: int
    sparsity: float
    timings_s: dict[str, float]
    notes: list[str]
    onnx_bytes: bytes
    peak_rss_mb: float

    @property
    def latency_ms(self) -> float:
        return float(self.latency["candidate"]["median_ms"])


_TASKS: dict[tuple[str, str], Task] = {}
_TEACHERS: dict[tuple[str, str, str], Any] = {}


def load_task(request: TrialRequest) -> Task:
    """The request's task, built once per process."""
    key = (request.task, repr(sorted(request.task_options.items())))
    if key not in _TASKS:
        _TASKS[key] = resolve_task(request.task, request.task_options)
    return _TASKS[key]


def load_teacher(task: Task, cache_dir: Path) -> torch.nn.Module:
    """The task's teacher, loaded once per process (trained on first use)."""
    key = (task.name, task.fingerprint(), str(cache_dir))
    if key not in _TEACHERS:
        _TEACHERS[key] = task.teacher(cache_dir)
    return _TEACHERS[key]


def baseline_onnx(task: Task, teacher: torch.nn.Module, cache_dir: Path) -> Path:
    """The uncompressed teacher exported to ONNX, cached beside the teacher."""
    path = cache_dir / "baselines" / f"{task.name}-{task.fingerprint()}.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = Path(tempfile.mkdtemp(dir=path.parent))
        export_onnx(teacher, task.example_inputs(2), tmp_dir / "model.onnx")
        os.replace(tmp_dir / "model.onnx", path)
        tmp_dir.rmdir()
    return path


def onnx_predictor(model_path: Path, threads: int = 1) -> Any:
    """A numpy-in, numpy-out prediction function backed by an ONNX Runtime session."""
    runner = get_backend("onnxruntime-cpu").open(model_path, threads)
    return runner.run


class _NaNCounter:
    """Wraps a prediction function and counts the NaN values among its outputs.

    A task's metric need not notice NaN outputs (``argmax`` of an all-NaN row is simply 0), so the
    outputs themselves are checked.
    """

    def __init__(self, predict: Any) -> None:
        self._predict = predict
        self.nan_values = 0

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        outputs = self._predict(inputs)
        array = np.asarray(outputs)
        if np.issubdtype(array.dtype, np.inexact):
            self.nan_values += int(np.isnan(array).sum())
        return outputs


def _rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def at_fidelity(config: CompressionConfig, max_distill_epochs: int | None) -> CompressionConfig:
    """``config`` with distillation capped at ``max_distill_epochs`` (a cheap screening rung)."""
    d = config.distillation
    if max_distill_epochs is None or d.method == "none" or d.epochs <= max_distill_epochs:
        return config
    return dataclasses.replace(config, distillation=dataclasses.replace(d, epochs=max_distill_epochs))


def evaluate(request: TrialRequest, gate: DeviceGate | None = None) -> TrialResult:
    """Compresses, scores, measures and prices one configuration.

    Raises:
        TrialFailed: the compressed model outputs NaN, or the metric is not finite.
        CompressionError: a compression step failed.
        MeasurementError: the model could not be measured.
    """
    import torch

    gate = gate or NoGate()
    torch.set_num_threads(request.compute_threads)
    config = at_fidelity(CompressionConfig.from_json(request.config_json), request.max_distill_epochs)
    cache_dir = Path(request.cache_dir)
    with gate.compute():
        task = load_task(request)
        teacher = load_teacher(task, cache_dir)
        baseline = baseline_onnx(task, teacher, cache_dir)
        task.before_trial(config)
    with tempfile.TemporaryDirectory(prefix="lepton-trial-") as tmp:
        with gate.compute():
            compressed = compress(teacher, config, task, Path(tmp), seed=request.seed)
            start = time.perf_counter()
            predict = _NaNCounter(onnx_predictor(compressed.onnx_path))
            accuracy = task.evaluate(predict, "validation")
            test_accuracy = task.evaluate(predict, "test")
            compressed.timings_s["score_s"] = time.perf_counter() - start
        if predict.nan_values:
            raise TrialFailed(
                f"The compressed model produced {predict.nan_values} NaN output values while being scored "
                f"(the task metric read {accuracy}); its outputs are not usable."
            )
        if not (math.isfinite(accuracy) and math.isfinite(test_accuracy)):
            raise TrialFailed(
                f"The task metric is {accuracy} (validation) and {test_accuracy} (test); it must be finite."
            )
        inputs = contiguous_inputs(task.example_inputs(request.settings.batch_size))
        with gate.measure():
            start = time.perf_counter()
            pair = measure_pair(compressed.onnx_path, baseline, inputs, request.settings)
            compressed.timings_s["measure_s"] = time.perf_counter() - start
        onnx_bytes = compressed.onnx_path.read_bytes()
    device = pair.device
    price = request.cost.price_per_hour(device["device_class"], request.settings.threads, device.get("device", ""))
    latency = pair.to_dict()
    return TrialResult(
        accuracy=float(accuracy),
        test_accuracy=float(test_accuracy),
        latency=latency,
        cost_usd_per_million=request.cost.usd_per_million(pair.candidate.median_ms, request.settings.batch_size, price),
        size_bytes=compressed.size_bytes,
        gzip_size_bytes=compressed.gzip_size_bytes,
        parameters=compressed.parameters,
        sparsity=compressed.sparsity,
        timings_s=compressed.timings_s,
        notes=compressed.notes,
        onnx_bytes=onnx_bytes,
        peak_rss_mb=_rss_mb(),
    )


def prepare(request: TrialRequest) -> dict[str, float]:
    """Trains (or loads) the teacher and exports the baseline before any worker starts.

    Returns the baseline's metric on the validation and test splits.
    """
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    task = load_task(request)
    cache_dir = Path(request.cache_dir)
    teacher = load_teacher(task, cache_dir)
    predict = onnx_predictor(baseline_onnx(task, teacher, cache_dir))
    return {"accuracy": task.evaluate(predict, "validation"), "test_accuracy": task.evaluate(predict, "test")}
