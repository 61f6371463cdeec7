"""One trial, end to end, without Optuna or Ray: compress, score, measure, price.

A trial is measured at its own deployment: the config's ``deployment`` section (backend, batch size,
threads) overrides the study's ``[measurement]`` settings field by field, and the uncompressed
baseline is measured in the same interleaved window at the same deployment, so the ratio compares
like with like. On an ONNX backend the model is the quantized ONNX file; on a torch backend it is a
``torch.export`` program of the pruned, distilled module cast to the config's precision, and the
baseline is the fp32 teacher's program. Either way accuracy is scored on that same file.

``search`` calls :func:`evaluate` inside a Ray task. The device gate is how the caller keeps
measurement windows exclusive: compute stages hold it shared, the latency measurement holds it
exclusively, so no other trial computes on the device while one is being measured.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from lepton_search.devices._machine import device_kind_of
from lepton_search.errors import TrialFailed
from lepton_search.objectives._compress import CompressedModel, compress
from lepton_search.objectives._cost import CostModel
from lepton_search.objectives._export import export_onnx
from lepton_search.objectives._torch_export import compress_to_program, export_program
from lepton_search.objectives.latency import (
    LatencyBackend,
    MeasurementSettings,
    PairMeasurement,
    calibrated_noise_band,
    get_backend,
    measure_pair,
)
from lepton_search.objectives.tasks import Task, resolve_task
from lepton_search.objectives.tasks._base import contiguous_inputs
from lepton_search.spaces import CompressionConfig, DeploymentConfig
from lepton_search.spaces._config import check_backend_precision

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
    # Where this run keeps its A/A noise calibrations (``settings.calibration_runs`` > 0); one
    # directory per run of a study, so every run calibrates against the machine as it is then.
    calibration_dir: str | None = None


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
    #: The format of the model file in ``onnx_bytes``: "onnx", or "torch-export" (a ``.pt2``
    #: program) for a trial deployed on a torch backend.
    model_format: str = "onnx"
    #: The seed the model was compressed with: with the task and config, it rebuilds the model
    #: (`lepton-search compress`).
    compression_seed: int | None = None
    #: Fused and quantized operators of the ONNX graph ONNX Runtime runs, by type (empty for
    #: torch programs): what ``graph.fusion`` and quantization really produced.
    graph_ops: dict[str, int] = field(default_factory=dict)
    #: How the pruned, distilled student was obtained: ``cache`` ("hit": loaded from the student
    #: cache, "miss": built now, "none": the teacher itself), its ``key``, ``build_s`` (the time
    #: building it took, when it was built), and the ``training_precision``.
    student: dict[str, Any] = field(default_factory=dict)

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


def _cached_baseline(task: Task, cache_dir: Path, suffix: str, export: Callable[[Path], Path]) -> Path:
    """The uncompressed teacher exported by ``export`` once per task recipe and format, cached
    beside the teacher; written to a temporary directory first, so concurrent workers never read
    half a file."""
    path = cache_dir / "baselines" / f"{task.name}-{task.fingerprint()}{suffix}"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = Path(tempfile.mkdtemp(dir=path.parent))
        os.replace(export(tmp_dir / f"model{suffix}"), path)
        tmp_dir.rmdir()
    return path


def baseline_onnx(task: Task, teacher: torch.nn.Module, cache_dir: Path) -> Path:
    """The uncompressed teacher exported to ONNX, cached beside the teacher."""
    return _cached_baseline(task, cache_dir, ".onnx", lambda path: export_onnx(teacher, task.example_inputs(2), path))


def onnx_predictor(model_path: Path, threads: int = 1) -> Any:
    """A numpy-in, numpy-out prediction function backed by an ONNX Runtime session."""
    runner = get_backend("onnxruntime-cpu").open(model_path, threads)
    return runner.run


MODEL_SUFFIX = {"onnx": ".onnx", "torch-export": ".pt2"}


def deployment_settings(settings: MeasurementSettings, deployment: DeploymentConfig) -> MeasurementSettings:
    """``settings`` with the deployment's backend, batch size and threads where it sets them."""
    changes = {
        name: value for name in ("backend", "batch_size", "threads") if (value := getattr(deployment, name)) is not None
    }
    return dataclasses.replace(settings, **changes) if changes else settings


def deployment_of(settings: MeasurementSettings) -> dict[str, Any]:
    """The resolved deployment a measurement ran at."""
    return {"backend": settings.backend, "batch_size": settings.batch_size, "threads": settings.threads}


def trial_backend(config: CompressionConfig, settings: MeasurementSettings) -> LatencyBackend:
    """The backend ``config`` is measured on, checked to run its precision and usable here.

    Raises:
        ConfigError: the backend cannot run the config's precision (e.g. int8 on torch-cpu).
        MeasurementError: the backend is not usable on this machine (no GPU, library missing).
    """
    check_backend_precision(settings.backend, config.quantization)
    return get_backend(settings.backend)


def model_predictor(model_path: Path, backend: LatencyBackend, threads: int) -> Any:
    """A prediction function over the model file that ``backend`` measures.

    ONNX files are scored in ONNX Runtime on the CPU; ``torch.export`` programs with torch in eager
    mode on the backend's device (CUDA graphs and ``torch.compile`` need fixed shapes, and a metric
    sees a short last batch), so the program measured is the program scored.
    """
    if backend.model_format == "onnx":
        return onnx_predictor(model_path, threads)
    scorer = "torch-cuda" if backend.device_kind == "gpu" else "torch-cpu"
    return get_backend(scorer).open(model_path, threads).run


def baseline_model(backend: LatencyBackend, task: Task, teacher: torch.nn.Module, cache_dir: Path) -> Path:
    """The uncompressed baseline in the file format ``backend`` opens."""
    if backend.model_format == "torch-export":
        # The export casts the module it is given in place; the teacher stays as it is.
        return _cached_baseline(
            task, cache_dir, ".pt2", lambda path: export_program(copy.deepcopy(teacher), task.example_inputs(2), path)
        )
    return baseline_onnx(task, teacher, cache_dir)


def price_measurement(
    cost: CostModel, pair: PairMeasurement, settings: MeasurementSettings, latency: dict[str, Any]
) -> float:
    """Adds ``cost_usd_per_million`` to the candidate's and the baseline's statistics in ``latency``
    (the ``pair.to_dict()`` of a measurement at ``settings``) and returns the candidate's."""
    device = pair.device
    price = cost.price_per_hour(device_kind_of(device), settings.threads, device.get("device") or "")
    candidate = cost.usd_per_million(pair.candidate.median_ms, settings.batch_size, price)
    latency["candidate"]["cost_usd_per_million"] = candidate
    latency["baseline"]["cost_usd_per_million"] = cost.usd_per_million(
        pair.baseline.median_ms, settings.batch_size, price
    )
    latency["price_usd_per_hour"] = price
    latency["deployment"] = deployment_of(settings)
    return candidate


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


def measure_against_baseline(
    request: TrialRequest,
    candidate: Path,
    baseline: Path,
    inputs: Any,
    settings: MeasurementSettings,
    backend: LatencyBackend,
) -> tuple[PairMeasurement, dict[str, Any]]:
    """Measures ``candidate`` against ``baseline``; the caller holds the device's measurement window.

    With ``settings.calibration_runs`` and a ``request.calibration_dir``, the verdict's noise band
    comes from this device's A/A calibration (made now if this is the first measurement of the run
    on this host, device class and setup) and is recorded under ``noise_calibration``; its runs'
    medians give both models their re-run interval (``rerun_ci_ms``, None without a calibration).

    Returns:
        The measurement and its :meth:`PairMeasurement.to_dict`.
    """
    noise = None
    if settings.calibration_runs and request.calibration_dir:
        noise = calibrated_noise_band(baseline, inputs, settings, Path(request.calibration_dir), backend)
    pair = measure_pair(
        candidate,
        baseline,
        inputs,
        settings,
        backend,
        noise_band=noise.delta if noise else None,
        rerun=noise.rerun_calibration() if noise else None,
    )
    latency = pair.to_dict()
    if noise is not None:
        latency["noise_calibration"] = noise.to_dict()
    return pair, latency


def compress_and_score(
    task: Task,
    teacher: torch.nn.Module,
    config: CompressionConfig,
    backend: LatencyBackend,
    out_dir: Path,
    *,
    seed: int,
    cache_dir: Path,
    threads: int,
) -> tuple[CompressedModel, float, float]:
    """Compresses ``config`` into the file format ``backend`` runs, and scores that file on the
    validation and test splits.

    Raises:
        TrialFailed: the compressed model outputs NaN, or the metric is not finite.
        CompressionError: a compression step failed.
    """
    if backend.model_format == "torch-export":
        compressed = compress_to_program(teacher, config, task, out_dir, seed=seed, cache_dir=cache_dir)
    else:
        compressed = compress(teacher, config, task, out_dir, seed=seed, cache_dir=cache_dir)
    start = time.perf_counter()
    predict = _NaNCounter(model_predictor(compressed.onnx_path, backend, threads))
    accuracy = task.evaluate(predict, "validation")
    test_accuracy = task.evaluate(predict, "test")
    compressed.timings_s["score_s"] = time.perf_counter() - start
    if predict.nan_values:
        raise TrialFailed(
            f"The compressed model produced {predict.nan_values} NaN output values while being scored "
            f"(the task metric read {accuracy}); its outputs are not usable."
        )
    if not (math.isfinite(accuracy) and math.isfinite(test_accuracy)):
        raise TrialFailed(f"The task metric is {accuracy} (validation) and {test_accuracy} (test); it must be finite.")
    return compressed, float(accuracy), float(test_accuracy)


def evaluate(request: TrialRequest, gate: DeviceGate | None = None) -> TrialResult:
    """Compresses, scores, measures and prices one configuration at its deployment.

    Raises:
        ConfigError: the deployment's backend cannot run the config's precision.
        TrialFailed: the compressed model outputs NaN, or the metric is not finite.
        CompressionError: a compression step failed.
        MeasurementError: the model could not be measured (or the backend is not usable here).
    """
    import torch

    gate = gate or NoGate()
    torch.set_num_threads(request.compute_threads)
    config = at_fidelity(CompressionConfig.from_json(request.config_json), request.max_distill_epochs)
    settings = deployment_settings(request.settings, config.deployment)
    backend = trial_backend(config, settings)
    cache_dir = Path(request.cache_dir)
    with gate.compute():
        task = load_task(request)
        teacher = load_teacher(task, cache_dir)
        baseline = baseline_model(backend, task, teacher, cache_dir)
        task.before_trial(config)
    with tempfile.TemporaryDirectory(prefix="lepton-trial-") as tmp:
        with gate.compute():
            compressed, accuracy, test_accuracy = compress_and_score(
                task,
                teacher,
                config,
                backend,
                Path(tmp),
                seed=request.seed,
                cache_dir=cache_dir,
                threads=request.compute_threads,
            )
        inputs = contiguous_inputs(task.example_inputs(settings.batch_size))
        with gate.measure():
            start = time.perf_counter()
            pair, latency = measure_against_baseline(request, compressed.onnx_path, baseline, inputs, settings, backend)
            compressed.timings_s["measure_s"] = time.perf_counter() - start
        onnx_bytes = compressed.onnx_path.read_bytes()
    cost = price_measurement(request.cost, pair, settings, latency)
    return TrialResult(
        accuracy=float(accuracy),
        test_accuracy=float(test_accuracy),
        latency=latency,
        cost_usd_per_million=cost,
        size_bytes=compressed.size_bytes,
        gzip_size_bytes=compressed.gzip_size_bytes,
        parameters=compressed.parameters,
        sparsity=compressed.sparsity,
        timings_s=compressed.timings_s,
        notes=compressed.notes,
        onnx_bytes=onnx_bytes,
        peak_rss_mb=_rss_mb(),
        model_format=backend.model_format,
        compression_seed=request.seed,
        graph_ops=dict(compressed.graph_ops),
        student=dict(compressed.student),
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
