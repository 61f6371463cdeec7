"""Latency measurement: backends, the interleaved session protocol, and its statistics.

Protocol (see ``shared/notes/latency.md``). A *session* is a fresh inference session that warms up
for at least ``warmup_runs`` runs and ``warmup_s`` seconds, then times at least ``min_iterations``
runs and ``min_session_s`` seconds. A candidate is measured against a baseline in ``sessions``
*rounds*; each round opens a fresh session of both (the opening order alternates A/B, B/A, ...)
and, with ``block_s > 0`` (the default), alternates their timed runs in blocks of about
``block_s`` seconds until each has its share. On a shared 2-core machine the load of other
processes comes and goes within seconds; alternating in 50 ms blocks makes it hit both models
alike, where whole sessions run one after the other caught it in one model only (an A/A session
ratio of 0.72 was seen here). Blocks rather than single runs keep each model's caches warm as it
runs. ``block_s = 0`` runs the two sessions one after the other instead, holding one model in
memory at a time (for models too large to open twice).

Statistics are computed over sessions, because that is where the variance lives:

* The objective is the median of the session medians; ``cv`` is the spread of the session medians;
  each model's own interval (``ci_ms``) comes from a hierarchical bootstrap (resample sessions, then
  runs). It is the *within-run* interval: where this run's median would fall if its sessions were
  drawn again in the same process and minute. It does not cover a re-run: on the shared 2-core
  machines here five fresh processes of one model spread 13-21% while ``ci_ms`` was about +-2%.
* ``rerun_ci_ms`` is the interval in which a re-run's median falls (95%): a prediction interval
  from a :class:`RerunCalibration`, the medians of several separate measurements of a reference
  model on the same device and settings (the baseline's A/A calibration runs, or repeated runs of
  a model measured alone). With ``n`` reference medians of log-spread ``s`` (geometric mean ``G``)
  and the model's ratio ``r`` to the reference in this window (log standard error ``v`` from the
  ratio interval), the interval is ``r * G * exp(+-t(n-1) * sqrt(s^2 (1 + 1/n) + v^2))``: the
  reference's level and spread across measurements, carried over by the ratio, which interleaving
  keeps stable (0.466-0.476 over five processes where the medians spread 17.7%). Without a
  calibration it is None.
* The ratio candidate/baseline is the ratio of the two medians of session medians. Its 95%
  interval is the union of two intervals over the paired rounds, each of which fails in a known
  way: a paired hierarchical bootstrap (no distributional assumption, but with three rounds it is
  little more than [smallest, largest] round ratio and covers far less than 95%) and a Student-t
  interval on the rounds' log ratios (right for few rounds, but assumes normal round-to-round
  noise). The union is conservative on purpose: an interval that is too narrow turns noise into a
  "faster" verdict, one that is too wide only costs a tie.

Noise band and verdict. ``verdict_of`` calls the candidate faster only if the whole ratio interval
lies below ``1 - δ``, slower only if it lies above ``1 + δ``, and otherwise a tie. δ is the
device's noise band: what an A/A measurement (a model against itself, same protocol) shows as a
difference. :func:`calibrate_noise_band` measures it: it runs ``runs`` A/A measurements and takes
δ = max(floor, q-quantile of |ratio - 1|), with q = 1 (the largest deviation) by default and a
floor of 0.02. With q = 1 none of the calibration runs would itself have been called a difference
under δ. The static default (``MeasurementSettings.noise_band = 0.05``) has margin over what A/A
runs at one thread on the 2-core machines here showed: 20 A/A runs of the digits CNN deviated by
at most 2.6% with block interleaving (10% with whole sessions one after the other). With several
threads or on a busier machine, calibrate (``lepton-search bench --noise-band auto``): the notes
measured 15-20% for all threads of a shared 2-core machine.

Peak memory. Every session records its peak inference memory: on the CPU the rise of the process's
resident memory from just before the session opens to its high-water mark (VmHWM, reset before
opening) after the runs; on CUDA ``torch.cuda.max_memory_allocated`` after a reset, minus what was
allocated before. A model's ``peak_memory_mb`` is the largest over its sessions.

A busy machine. Interleaving protects ratios from other processes, not absolute latencies: on a
2-core machine shared with other work a 1-thread model's median moved from 10 to 14.5 ms between
processes. With one thread on a CPU backend the model runs on the measuring thread, so its CPU
time per run is recorded too: ``cpu_share`` (CPU time over wall time) says how much of the time the
thread actually had a core, and ``cpu_median_ms`` is a latency figure that waiting for a core does
not inflate.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import math
import os
import platform
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np

from lepton_search.devices._backends import BackendTraits, DeviceKind, ModelFormat, register_backend_traits
from lepton_search.devices._machine import (
    device_class_of,
    device_manifest,
    high_water_mb,
    release_freed_memory,
    reset_high_water,
    resident_mb,
)
from lepton_search.errors import MeasurementError, UnknownNameError

Verdict = Literal["faster", "slower", "tie"]

#: The verdict's noise band when it is not calibrated (see the module docstring).
DEFAULT_NOISE_BAND = 0.05

#: One model input (single-input models, the historical form) or inputs by name.
Inputs: TypeAlias = "np.ndarray | Mapping[str, np.ndarray]"


@dataclass(frozen=True)
class MeasurementSettings:
    """How one latency measurement is taken. Defaults suit a quiet 2-core CPU."""

    backend: str = "onnxruntime-cpu"
    threads: int = 1
    batch_size: int = 64
    sessions: int = 3
    warmup_runs: int = 20
    warmup_s: float = 0.2
    min_iterations: int = 30
    min_session_s: float = 0.3
    max_session_s: float = 10.0
    bootstrap_resamples: int = 1000
    noise_band: float = DEFAULT_NOISE_BAND
    #: A/A runs that calibrate the noise band on the measuring device before its first verdict
    #: (see :func:`calibrated_noise_band`); 0 keeps the fixed ``noise_band``.
    calibration_runs: int = 0
    seed: int = 0
    #: Candidate and baseline runs alternate in blocks of about this many seconds; 0 runs whole
    #: sessions one after the other.
    block_s: float = 0.05


# ---------------------------------------------------------------------------------------------
# Runners, memory probes and backends


class Runner(abc.ABC):
    """One open inference session of one model."""

    @abc.abstractmethod
    def run(self, inputs: Inputs) -> np.ndarray:
        """Runs the model once on ``inputs`` and returns the first output.

        ``inputs`` is one array (fed to the model's first input) or a mapping from input names to
        arrays.
        """

    def timed_run(self, inputs: Inputs) -> float:
        """Runs the model once and returns how long that took, in milliseconds.

        Wall-clock time around :meth:`run`; runners on asynchronous devices override this to time
        the device's work (CUDA events) instead of the launch.
        """
        start = time.perf_counter_ns()
        self.run(inputs)
        return (time.perf_counter_ns() - start) / 1e6

    def close(self) -> None:  # noqa: B027 (most sessions are released by garbage collection)
        """Releases the session's memory now rather than when garbage collection gets to it."""


class MemoryProbe(abc.ABC):
    """Measures the peak memory one session adds, from just before it opens."""

    @abc.abstractmethod
    def start(self) -> None:
        """Called just before the session opens."""

    @abc.abstractmethod
    def peak_mb(self) -> float | None:
        """The peak increase since :meth:`start` in MiB, or None where it cannot be read."""


class ResidentMemoryProbe(MemoryProbe):
    """The rise of the process's resident memory (VmRSS up to VmHWM, from ``/proc/self/status``).

    The high-water mark is reset before the session opens. Where the kernel refuses the reset the
    old mark may predate the session (training, an earlier model), so the current resident memory
    is used instead: a lower bound, since the peak may have passed.
    """

    def __init__(self) -> None:
        self._before: float | None = None
        self._reset = False

    def start(self) -> None:
        release_freed_memory()
        self._reset = reset_high_water()
        self._before = resident_mb()

    def peak_mb(self) -> float | None:
        peak = high_water_mb() if self._reset else resident_mb()
        if self._before is None or peak is None:
            return None
        return max(0.0, peak - self._before)


@dataclass(frozen=True)
class Availability:
    """Whether a backend can measure on this machine, and if not, why and how to change that."""

    usable: bool
    reason: str = ""
    hint: str = ""


class LatencyBackend(abc.ABC):
    """Opens fresh inference sessions of a model file on one device."""

    name: str = "backend"
    #: The kind of model file the backend opens.
    model_format: ModelFormat = "onnx"
    #: "cpu" or "gpu": the kind of device the backend measures on (its class is in the manifest).
    device_kind: DeviceKind = "cpu"

    @classmethod
    def availability(cls) -> Availability:
        """Whether this machine can run the backend (its library, provider and device)."""
        return Availability(True)

    @abc.abstractmethod
    def open(self, model_path: Path, threads: int) -> Runner:
        """A new session of ``model_path`` using ``threads`` intra-op threads."""

    @abc.abstractmethod
    def manifest(self, threads: int) -> dict[str, Any]:
        """What a measurement ran on: backend, provider, versions, device, threads."""

    def memory_probe(self) -> MemoryProbe:
        """How this backend's peak inference memory is read (resident memory by default)."""
        return ResidentMemoryProbe()


SLOWDOWN_ENV = "LEPTON_TEST_SLOWDOWN_MS"


class _OrtRunner(Runner):
    def __init__(self, session: Any) -> None:
        self._session = session
        # Test hook (documented in the README): adds this many milliseconds to every run, so that
        # tests can check that nightly drift detection rings. Never set it in production.
        self._slowdown_s = float(os.environ.get(SLOWDOWN_ENV, "0") or 0) / 1000.0
        self._inputs = [i.name for i in session.get_inputs()]
        self._outputs = [o.name for o in session.get_outputs()]

    def _feed(self, inputs: Inputs) -> dict[str, np.ndarray]:
        if isinstance(inputs, np.ndarray):
            return {self._inputs[0]: inputs}
        return dict(inputs)

    def run(self, inputs: Inputs) -> np.ndarray:
        if self._slowdown_s:
            time.sleep(self._slowdown_s)
        return self._session.run(None, self._feed(inputs))[0]

    def close(self) -> None:
        self._session = None


class _OrtDeviceRunner(_OrtRunner):
    """A session on a GPU execution provider, fed through I/O binding.

    Inputs are copied to the device once per inputs object and outputs stay there, so a timed run
    is the model's work rather than host-device copies. ONNX Runtime runs on its own CUDA stream,
    which torch's events cannot see; the run is timed by the wall clock around the run and a
    synchronisation of its outputs.
    """

    def __init__(self, session: Any, device_id: int) -> None:
        super().__init__(session)
        self._device_id = device_id
        self._bound: tuple[Any, Any, list[Any]] | None = None

    def _binding(self, inputs: Inputs) -> Any:
        import onnxruntime as ort

        if self._bound is not None and self._bound[0] is inputs:
            return self._bound[1]
        binding = self._session.io_binding()
        values = []
        for name, array in self._feed(inputs).items():
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), "cuda", self._device_id)
            binding.bind_ortvalue_input(name, value)
            values.append(value)  # the binding does not keep the device buffers alive
        for name in self._outputs:
            binding.bind_output(name, "cuda", self._device_id)
        self._bound = (inputs, binding, values)
        return binding

    def run(self, inputs: Inputs) -> np.ndarray:
        binding = self._binding(inputs)
        self._session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def timed_run(self, inputs: Inputs) -> float:
        binding = self._binding(inputs)
        start = time.perf_counter_ns()
        self._session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return (time.perf_counter_ns() - start) / 1e6

    def close(self) -> None:
        self._bound = None
        super().close()


_BACKENDS: dict[str, type[LatencyBackend]] = {}


def register_backend(cls: type[LatencyBackend]) -> type[LatencyBackend]:
    """Class decorator: makes ``cls`` available to :func:`get_backend` under ``cls.name``, and its
    traits to configurations (``devices._backends``)."""
    register_backend_traits(cls.name, BackendTraits(cls.model_format, cls.device_kind))
    _BACKENDS[cls.name] = cls
    return cls


_GPU_ORT_HINT = (
    "Install the GPU build of ONNX Runtime in place of the CPU one (`pip uninstall onnxruntime && "
    "pip install onnxruntime-gpu`) on a machine with an NVIDIA GPU, CUDA 12 and cuDNN 9"
)


@register_backend
class OnnxRuntimeCPUBackend(LatencyBackend):
    """ONNX Runtime's CPU execution provider, sequential execution, full graph optimisation."""

    name = "onnxruntime-cpu"
    provider = "CPUExecutionProvider"

    def _session_options(self, threads: int) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        return options

    def _providers(self) -> list[Any]:
        return [self.provider]

    def _session(self, model_path: Path, threads: int) -> Any:
        import onnxruntime as ort

        from lepton_search.objectives._graph import model_session_level

        options = self._session_options(threads)
        # A model tuned for another session optimisation level (graph.optimization_level) records it.
        options.graph_optimization_level = model_session_level(model_path)
        try:
            session = ort.InferenceSession(str(model_path), options, providers=self._providers())
        except Exception as e:
            raise MeasurementError(f"ONNX Runtime could not open {model_path.name} on {self.provider}: {e}") from e
        if self.provider not in session.get_providers():
            # ONNX Runtime falls back to the CPU silently when a GPU provider cannot start.
            raise MeasurementError(
                f"ONNX Runtime opened {model_path.name} on {session.get_providers()}, not {self.provider}: the "
                f"provider is installed but could not start (no GPU visible, or a CUDA/cuDNN/TensorRT library "
                f"missing). Check `nvidia-smi` and ONNX Runtime's GPU requirements, or measure with onnxruntime-cpu."
            )
        return session

    def open(self, model_path: Path, threads: int) -> Runner:
        return _OrtRunner(self._session(model_path, threads))

    def manifest(self, threads: int) -> dict[str, Any]:
        import onnxruntime as ort

        return {
            "backend": self.name,
            "execution_provider": self.provider,
            "onnxruntime": ort.__version__,
            "threads": threads,
            **device_manifest("cpu"),
        }


def _ort_provider_availability(provider: str) -> Availability:
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - onnxruntime is a dependency
        return Availability(False, f"onnxruntime cannot be imported ({e})", _GPU_ORT_HINT)
    offered = ort.get_available_providers()
    if provider in offered:
        return Availability(True)
    return Availability(
        False,
        f"ONNX Runtime {ort.__version__} offers {', '.join(offered)}, not {provider}",
        _GPU_ORT_HINT + ("; TensorRT also needs the TensorRT 10 libraries" if "Tensorrt" in provider else ""),
    )


@register_backend
class OnnxRuntimeCUDABackend(OnnxRuntimeCPUBackend):
    """ONNX Runtime's CUDA execution provider on GPU ``device_id``, inputs and outputs on the GPU."""

    name = "onnxruntime-cuda"
    provider = "CUDAExecutionProvider"
    device_kind = "gpu"

    def __init__(self, device_id: int = 0) -> None:
        self.device_id = device_id

    @classmethod
    def availability(cls) -> Availability:
        return _ort_provider_availability(cls.provider)

    def _providers(self) -> list[Any]:
        return [(self.provider, {"device_id": self.device_id}), "CPUExecutionProvider"]

    def open(self, model_path: Path, threads: int) -> Runner:
        return _OrtDeviceRunner(self._session(model_path, threads), self.device_id)

    def manifest(self, threads: int) -> dict[str, Any]:
        import onnxruntime as ort

        return {
            "backend": self.name,
            "execution_provider": self.provider,
            "onnxruntime": ort.__version__,
            "threads": threads,
            **device_manifest("gpu", self.device_id),
        }

    def memory_probe(self) -> MemoryProbe:
        from lepton_search.objectives._torch_backends import DeviceMemoryProbe

        return DeviceMemoryProbe(self.device_id, device_used=True)


def _tensorrt_cache_dir() -> Path:
    root = os.environ.get("LEPTON_TENSORRT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lepton-search", "tensorrt"
    )
    return Path(root)


@register_backend
class OnnxRuntimeTensorRTBackend(OnnxRuntimeCUDABackend):
    """ONNX Runtime's TensorRT execution provider (CUDA for what TensorRT does not take).

    Engines and timing caches are kept in ``$LEPTON_TENSORRT_CACHE`` (default
    ``~/.cache/lepton-search/tensorrt``): an engine build can take minutes, and it happens while
    the session opens, so it is never part of a timed run (the session's ``open_ms`` shows it).
    """

    name = "onnxruntime-tensorrt"
    provider = "TensorrtExecutionProvider"

    def _providers(self) -> list[Any]:
        cache = _tensorrt_cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        options = {
            "device_id": self.device_id,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache),
        }
        return [(self.provider, options), ("CUDAExecutionProvider", {"device_id": self.device_id})]


def _registry() -> dict[str, type[LatencyBackend]]:
    # The torch backends register themselves on import; importing the module does not import torch.
    from lepton_search.objectives import _torch_backends  # noqa: F401

    return _BACKENDS


def get_backend(name: str, *, require_usable: bool = True) -> LatencyBackend:
    """The backend registered under ``name``.

    Args:
        name: A registered backend name (see :func:`known_backends`).
        require_usable: Refuse a backend this machine cannot run. Pass False to describe a backend
            that will run elsewhere (a GPU worker of a CPU-only driver).

    Raises:
        UnknownNameError: ``name`` is not registered.
        MeasurementError: the backend is registered but this machine cannot run it.
    """
    registry = _registry()
    if name not in registry:
        raise UnknownNameError("latency backend", name, registry)
    cls = registry[name]
    if require_usable:
        status = cls.availability()
        if not status.usable:
            usable = [n for n, a in available_backends().items() if a.usable]
            raise MeasurementError(
                f"Latency backend {name!r} is not usable on this machine: {status.reason}. "
                f"Usable here: {', '.join(usable) or '(none)'}. {status.hint}."
            )
    return cls()


def known_backends() -> list[str]:
    """Every registered backend name, usable on this machine or not."""
    return sorted(_registry())


def available_backends() -> dict[str, Availability]:
    """Each registered backend's :class:`Availability` on this machine, by name."""
    return {name: cls.availability() for name, cls in sorted(_registry().items())}


# ---------------------------------------------------------------------------------------------
# Statistics


@dataclass
class LatencyStats:
    """Statistics of one model's sessions; all times in milliseconds per batch."""

    median_ms: float
    #: 95% within-run interval of ``median_ms`` (hierarchical bootstrap over this run's sessions and
    #: runs). It does not cover a re-run in a fresh process; :attr:`rerun_ci_ms` does.
    ci_ms: tuple[float, float]
    session_medians_ms: list[float]
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    cv: float
    sessions: int
    iterations: list[int]
    #: Largest peak inference memory over the sessions, MiB (see the module docstring).
    peak_memory_mb: float | None = None
    #: Median time to open a session (graph optimisation, engine build), milliseconds.
    open_ms: float | None = None
    #: Median of the session medians of each run's CPU time on the measuring thread (one-thread CPU
    #: backends only). Unlike wall time it leaves out time spent waiting for a core, so it stays
    #: put when other processes load the machine; it is a diagnostic, not the objective.
    cpu_median_ms: float | None = None
    #: Share of the timed runs' wall time the measuring thread was on a core (one-thread CPU
    #: backends only). Well below 1 means the machine was busy and wall-clock latencies are inflated;
    #: interleaved ratios are not, since both models waited alike.
    cpu_share: float | None = None
    #: The interval (95%) in which a re-run's median falls, from a :class:`RerunCalibration` of this
    #: device and settings; None without one. ``ci_ms`` is only the within-run interval.
    rerun_ci_ms: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci_ms"] = list(self.ci_ms)
        d["rerun_ci_ms"] = None if self.rerun_ci_ms is None else list(self.rerun_ci_ms)
        return d


@dataclass
class PairMeasurement:
    """A candidate measured interleaved with the baseline in one measurement window."""

    candidate: LatencyStats
    baseline: LatencyStats
    ratio: float
    ratio_ci: tuple[float, float]
    verdict: Verdict
    noise_band: float
    device: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate.to_dict(),
            "baseline": self.baseline.to_dict(),
            "ratio": self.ratio,
            "ratio_ci": list(self.ratio_ci),
            "verdict": self.verdict,
            "noise_band": self.noise_band,
            "device": self.device,
        }


# Elements one bootstrap chunk may index at once (32 MiB of indices plus as much of samples). A
# long session of a fast model holds 10^5 samples; 1000 resamples of it at once would need GiBs.
_BOOTSTRAP_CHUNK_ELEMENTS = 1 << 22


def _bootstrap_medians(samples: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    n = len(samples)
    rows = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // n)
    out = np.empty(resamples)
    for start in range(0, resamples, rows):
        stop = min(start + rows, resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = np.median(samples[idx], axis=1)
    return out


def _hierarchical(
    sessions: list[np.ndarray], resamples: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Per-session bootstrap medians, and which session each resample slot draws."""
    per_session = np.stack([_bootstrap_medians(s, resamples, rng) for s in sessions])
    picks = rng.integers(0, len(sessions), size=(resamples, len(sessions)))
    return per_session, picks


def _draw(per_session: np.ndarray, picks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    cols = rng.integers(0, per_session.shape[1], size=picks.shape)
    return np.median(per_session[picks, cols], axis=1)


def summarize(
    sessions: list[np.ndarray],
    resamples: int = 1000,
    seed: int = 0,
    *,
    peak_memory_mb: float | None = None,
    open_ms: float | None = None,
) -> LatencyStats:
    """Statistics of one model's sessions (see the module docstring)."""
    if not sessions or any(len(s) == 0 for s in sessions):
        raise MeasurementError("No latency samples were taken; check the measurement settings.")
    rng = np.random.default_rng(seed)
    medians = np.array([np.median(s) for s in sessions])
    per_session, picks = _hierarchical(sessions, resamples, rng)
    boot = _draw(per_session, picks, rng)
    pooled = np.concatenate(sessions)
    mean = float(medians.mean())
    return LatencyStats(
        median_ms=float(np.median(medians)),
        ci_ms=(float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))),
        session_medians_ms=[float(m) for m in medians],
        p50_ms=float(np.percentile(pooled, 50)),
        p90_ms=float(np.percentile(pooled, 90)),
        p95_ms=float(np.percentile(pooled, 95)),
        p99_ms=float(np.percentile(pooled, 99)),
        cv=float(medians.std(ddof=1) / mean) if len(medians) > 1 and mean > 0 else 0.0,
        sessions=len(sessions),
        iterations=[len(s) for s in sessions],
        peak_memory_mb=peak_memory_mb,
        open_ms=open_ms,
    )


def bootstrap_ratio_interval(
    candidate: list[np.ndarray], baseline: list[np.ndarray], resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95% paired hierarchical-bootstrap interval of the ratio of medians of session medians.

    Sessions are paired (they ran in the same round), so one draw of session indices serves both.
    """
    _check_paired(candidate, baseline)
    rng = np.random.default_rng(seed + 1)
    cand, picks = _hierarchical(candidate, resamples, rng)
    base = np.stack([_bootstrap_medians(s, resamples, rng) for s in baseline])
    ratios = _draw(cand, picks, rng) / _draw(base, picks, rng)
    return float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))


def paired_t_ratio_interval(
    candidate: list[np.ndarray], baseline: list[np.ndarray], confidence: float = 0.95
) -> tuple[float, float] | None:
    """Student-t interval of the mean log ratio of paired session medians, back-transformed.

    None with fewer than two rounds (no round-to-round spread to scale by).
    """
    _check_paired(candidate, baseline)
    k = len(candidate)
    if k < 2:
        return None
    c = np.array([np.median(s) for s in candidate])
    b = np.array([np.median(s) for s in baseline])
    if np.any(c <= 0) or np.any(b <= 0):
        return None
    from scipy.special import stdtrit  # the t quantile; scipy.stats takes seconds to import

    d = np.log(c / b)
    half = float(stdtrit(k - 1, 0.5 + confidence / 2.0)) * float(d.std(ddof=1)) / math.sqrt(k)
    return math.exp(float(d.mean()) - half), math.exp(float(d.mean()) + half)


def _check_paired(candidate: list[np.ndarray], baseline: list[np.ndarray]) -> None:
    if not candidate or len(candidate) != len(baseline) or any(len(s) == 0 for s in [*candidate, *baseline]):
        raise MeasurementError(
            f"A latency ratio needs the same number of non-empty paired sessions for candidate and baseline; "
            f"got {[len(s) for s in candidate]} and {[len(s) for s in baseline]} samples per session."
        )


def ratio_interval(
    candidate: list[np.ndarray], baseline: list[np.ndarray], resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95% interval of median-of-medians(candidate) / median-of-medians(baseline).

    The union of :func:`bootstrap_ratio_interval` and :func:`paired_t_ratio_interval` (see the
    module docstring for why both).
    """
    low, high = bootstrap_ratio_interval(candidate, baseline, resamples, seed)
    t_interval = paired_t_ratio_interval(candidate, baseline)
    if t_interval is not None:
        low, high = min(low, t_interval[0]), max(high, t_interval[1])
    return low, high


#: The fewest reference medians a re-run interval is computed from: with two, Student's t for one
#: degree of freedom (12.7) makes the interval uselessly wide.
MIN_RERUN_REFERENCES = 3
RERUN_CONFIDENCE = 0.95


@dataclass(frozen=True)
class RerunCalibration:
    """How a run's median moves between separate measurements on one device and setup.

    ``medians_ms`` are the medians of separate measurements of one reference model (each a full
    measurement with its own fresh sessions, taken one after another): the A/A calibration runs of
    a baseline, or repeated runs of a model measured alone. ``device_class`` is the device they were
    taken on; an interval is only carried to measurements on that class.
    """

    medians_ms: tuple[float, ...]
    device_class: str | None = None

    def samples(self, reference_now_ms: float | None = None) -> np.ndarray:
        """The reference medians, with this window's reference median when given."""
        values = [*self.medians_ms, *([] if reference_now_ms is None else [reference_now_ms])]
        return np.asarray([v for v in values if v > 0 and math.isfinite(v)], dtype=float)

    def spread(self, reference_now_ms: float | None = None) -> float | None:
        """Standard deviation of the log reference medians (about the relative spread)."""
        logs = np.log(self.samples(reference_now_ms))
        return float(logs.std(ddof=1)) if len(logs) >= 2 else None

    def interval(
        self,
        reference_now_ms: float | None,
        ratio: float = 1.0,
        ratio_ci: tuple[float, float] | None = None,
        confidence: float = RERUN_CONFIDENCE,
    ) -> tuple[float, float] | None:
        """Where a re-run's median of a model falls (see the module docstring for the formula).

        Args:
            reference_now_ms: The reference model's median in this measurement (None: not measured
                now, e.g. a model measured alone whose calibration runs are of itself).
            ratio: The model's median over the reference's in this window (1: the reference).
            ratio_ci: The ratio's interval; its width adds the ratio's own uncertainty.

        Returns:
            ``(low, high)`` in milliseconds, or None with fewer than :data:`MIN_RERUN_REFERENCES`
            reference medians.
        """
        logs = np.log(self.samples(reference_now_ms))
        n = len(logs)
        if n < MIN_RERUN_REFERENCES or ratio <= 0 or not math.isfinite(ratio):
            return None
        from scipy.special import stdtrit  # the t quantile; scipy.stats takes seconds to import

        level = float(logs.mean()) + math.log(ratio)
        variance = float(logs.var(ddof=1)) * (1.0 + 1.0 / n)
        if ratio_ci is not None and ratio_ci[0] > 0:
            z = 1.959963984540054
            variance += (max(math.log(ratio_ci[1] / ratio), math.log(ratio / ratio_ci[0])) / z) ** 2
        half = float(stdtrit(n - 1, 0.5 + confidence / 2.0)) * math.sqrt(variance)
        return math.exp(level - half), math.exp(level + half)

    def to_dict(self) -> dict[str, Any]:
        return {
            "medians_ms": list(self.medians_ms),
            "spread": self.spread(),
            "device_class": self.device_class,
        }


def with_rerun_interval(
    stats: LatencyStats,
    calibration: RerunCalibration | None,
    reference_now_ms: float | None,
    ratio: float = 1.0,
    ratio_ci: tuple[float, float] | None = None,
) -> LatencyStats:
    """``stats`` with :attr:`LatencyStats.rerun_ci_ms` from ``calibration`` (None without one)."""
    if calibration is not None:
        stats.rerun_ci_ms = calibration.interval(reference_now_ms, ratio, ratio_ci)
    return stats


def verdict_of(ratio_ci: tuple[float, float], noise_band: float) -> Verdict:
    """``faster`` only if the whole ratio interval lies below ``1 - noise_band``; ``slower`` only
    if it lies above ``1 + noise_band``; otherwise the two are tied within the noise."""
    low, high = ratio_ci
    if high < 1.0 - noise_band:
        return "faster"
    if low > 1.0 + noise_band:
        return "slower"
    return "tie"


# ---------------------------------------------------------------------------------------------
# Measurement


def _warm_up(runner: Runner, inputs: Inputs, settings: MeasurementSettings) -> None:
    start = time.perf_counter()
    runs = 0
    while runs < settings.warmup_runs or time.perf_counter() - start < settings.warmup_s:
        runner.run(inputs)
        runs += 1


def _timed_run(runner: Runner, inputs: Inputs, cpu_ms: list[float] | None) -> float:
    if cpu_ms is None:
        return runner.timed_run(inputs)
    start = time.thread_time_ns()
    wall = runner.timed_run(inputs)
    cpu_ms.append((time.thread_time_ns() - start) / 1e6)
    return wall


def time_session(
    runner: Runner, inputs: Inputs, settings: MeasurementSettings, *, cpu_ms: list[float] | None = None
) -> np.ndarray:
    """Warms ``runner`` up, then returns per-run latencies in milliseconds.

    With ``cpu_ms``, each timed run's CPU time of the calling thread is appended to it.
    """
    _warm_up(runner, inputs, settings)
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < settings.min_iterations or time.perf_counter() - start < settings.min_session_s:
        samples.append(_timed_run(runner, inputs, cpu_ms))
        if time.perf_counter() - start > settings.max_session_s and len(samples) >= 3:
            break
    return np.asarray(samples)


def time_interleaved(
    runners: list[Runner],
    inputs: Inputs,
    settings: MeasurementSettings,
    *,
    cpu_ms: list[list[float]] | None = None,
) -> list[np.ndarray]:
    """Times warmed-up ``runners`` in alternating blocks of about ``settings.block_s`` seconds.

    Stops when each has at least ``min_iterations`` runs and together they ran for
    ``min_session_s`` per runner (or ``max_session_s`` per runner, with at least 3 runs each).
    With ``cpu_ms`` (one list per runner), each timed run's CPU time of the calling thread is
    appended to its runner's list.
    """
    samples: list[list[float]] = [[] for _ in runners]
    n = len(runners)
    start = time.perf_counter()
    turn = 0
    while True:
        elapsed = time.perf_counter() - start
        fewest = min(len(s) for s in samples)
        if fewest >= settings.min_iterations and elapsed >= settings.min_session_s * n:
            break
        if fewest >= 3 and elapsed > settings.max_session_s * n:
            break
        runner, sink = runners[turn], samples[turn]
        cpu = None if cpu_ms is None else cpu_ms[turn]
        block_start = time.perf_counter()
        sink.append(_timed_run(runner, inputs, cpu))
        while time.perf_counter() - block_start < settings.block_s:
            sink.append(_timed_run(runner, inputs, cpu))
        turn = (turn + 1) % n
    return [np.asarray(s) for s in samples]


@dataclass
class _Collected:
    """One model's sessions as they are measured."""

    samples: list[np.ndarray] = field(default_factory=list)
    cpu_ms: list[np.ndarray] = field(default_factory=list)
    peaks_mb: list[float] = field(default_factory=list)
    open_ms: list[float] = field(default_factory=list)

    def add(self, samples: np.ndarray, peak_mb: float | None, open_ms: float, cpu_ms: list[float] | None) -> None:
        self.samples.append(samples)
        self.open_ms.append(open_ms)
        if peak_mb is not None:
            self.peaks_mb.append(peak_mb)
        if cpu_ms:
            self.cpu_ms.append(np.asarray(cpu_ms))

    def stats(self, settings: MeasurementSettings, seed: int) -> LatencyStats:
        stats = summarize(
            self.samples,
            settings.bootstrap_resamples,
            seed,
            peak_memory_mb=max(self.peaks_mb) if self.peaks_mb else None,
            open_ms=float(np.median(self.open_ms)) if self.open_ms else None,
        )
        if len(self.cpu_ms) == len(self.samples):
            wall = float(sum(s.sum() for s in self.samples))
            cpu = float(sum(c.sum() for c in self.cpu_ms))
            stats.cpu_median_ms = float(np.median([np.median(c) for c in self.cpu_ms]))
            stats.cpu_share = min(1.0, cpu / wall) if wall > 0 else None
        return stats


def _tracks_cpu(backend: LatencyBackend, settings: MeasurementSettings) -> bool:
    """Whether the calling thread's CPU time is the model's: one intra-op thread on a CPU backend
    runs the model on the calling thread (more threads, or a GPU, work elsewhere)."""
    return backend.device_kind == "cpu" and settings.threads == 1


def _open(backend: LatencyBackend, model: Path, threads: int) -> tuple[Runner, MemoryProbe, float]:
    probe = backend.memory_probe()
    probe.start()
    start = time.perf_counter()
    runner = backend.open(model, threads)
    return runner, probe, (time.perf_counter() - start) * 1e3


def _one_session(
    backend: LatencyBackend, model: Path, inputs: Inputs, settings: MeasurementSettings, sink: _Collected
) -> None:
    runner, probe, open_ms = _open(backend, model, settings.threads)
    cpu: list[float] | None = [] if _tracks_cpu(backend, settings) else None
    try:
        samples = time_session(runner, inputs, settings, cpu_ms=cpu)
        peak = probe.peak_mb()
    finally:
        runner.close()
    sink.add(samples, peak, open_ms, cpu)


def _interleaved_round(
    backend: LatencyBackend,
    order: list[tuple[Path, _Collected]],
    inputs: Inputs,
    settings: MeasurementSettings,
) -> None:
    """Opens a fresh session of each model in ``order`` and times them in alternating blocks.

    Each model's peak memory is read after its own opening and warm-up, before the next opens.
    """
    runners: list[Runner] = []
    opened: list[tuple[float | None, float]] = []
    try:
        for path, _ in order:
            runner, probe, open_ms = _open(backend, path, settings.threads)
            runners.append(runner)
            _warm_up(runner, inputs, settings)
            opened.append((probe.peak_mb(), open_ms))
        cpu: list[list[float]] | None = [[] for _ in order] if _tracks_cpu(backend, settings) else None
        samples = time_interleaved(runners, inputs, settings, cpu_ms=cpu)
    finally:
        for runner in runners:
            runner.close()
    for i, ((_, sink), s, (peak, open_ms)) in enumerate(zip(order, samples, opened)):
        sink.add(s, peak, open_ms, None if cpu is None else cpu[i])


def _round(
    backend: LatencyBackend, order: list[tuple[Path, _Collected]], inputs: Inputs, settings: MeasurementSettings
) -> None:
    """One measurement round of the models in ``order``: interleaved in blocks (``block_s > 0``),
    or one fresh session after another."""
    if settings.block_s > 0:
        _interleaved_round(backend, order, inputs, settings)
    else:
        for path, sink in order:
            _one_session(backend, path, inputs, settings, sink)


def measure_sessions(
    model: Path, inputs: Inputs, settings: MeasurementSettings, backend: LatencyBackend | None = None
) -> list[np.ndarray]:
    """``settings.sessions`` fresh sessions of one model, timed."""
    return _measure_alone(model, inputs, settings, backend).samples


def _measure_alone(
    model: Path, inputs: Inputs, settings: MeasurementSettings, backend: LatencyBackend | None
) -> _Collected:
    backend = backend or get_backend(settings.backend)
    collected = _Collected()
    for _ in range(settings.sessions):
        _one_session(backend, model, inputs, settings, collected)
    release_freed_memory()
    return collected


def measure_model(
    model: Path,
    inputs: Inputs,
    settings: MeasurementSettings,
    backend: LatencyBackend | None = None,
    *,
    rerun: RerunCalibration | None = None,
) -> LatencyStats:
    """One model alone, in ``settings.sessions`` fresh sessions: its statistics and peak memory.

    With ``rerun`` (separate earlier measurements of this same model, :func:`calibrate_reruns`), the
    statistics carry a re-run interval; this measurement's median joins the calibration's.
    """
    stats = _measure_alone(model, inputs, settings, backend).stats(settings, settings.seed)
    return with_rerun_interval(stats, rerun, stats.median_ms)


def calibrate_reruns(
    model: Path,
    inputs: Inputs,
    settings: MeasurementSettings,
    *,
    runs: int = 5,
    backend: LatencyBackend | None = None,
) -> RerunCalibration:
    """Measures ``model`` alone ``runs`` separate times (fresh sessions each) for a re-run interval.

    Raises:
        ValueError: ``runs`` < 1.
    """
    if runs < 1:
        raise ValueError(f"runs = {runs!r}; a re-run calibration needs at least 1 run (5 or more is useful).")
    backend = backend or get_backend(settings.backend)
    medians = [
        measure_model(model, inputs, dataclasses.replace(settings, seed=settings.seed + 100 + r), backend).median_ms
        for r in range(runs)
    ]
    return RerunCalibration(tuple(medians), device_class_of(backend.manifest(settings.threads)))


def measure_pair(
    candidate: Path,
    baseline: Path,
    inputs: Inputs,
    settings: MeasurementSettings,
    backend: LatencyBackend | None = None,
    *,
    noise_band: float | None = None,
    rerun: RerunCalibration | None = None,
) -> PairMeasurement:
    """Measures ``candidate`` against ``baseline`` in interleaved fresh sessions (A/B, B/A, ...).

    ``noise_band`` overrides ``settings.noise_band`` (e.g. with a calibrated one). With ``rerun``
    (separate measurements of the baseline, e.g. :meth:`NoiseBand.rerun_calibration`), both models'
    statistics carry a re-run interval.
    """
    backend = backend or get_backend(settings.backend)
    band = settings.noise_band if noise_band is None else noise_band
    cand, base = _Collected(), _Collected()
    for k in range(settings.sessions):
        order = [(candidate, cand), (baseline, base)]
        if k % 2:
            order.reverse()
        _round(backend, order, inputs, settings)
    release_freed_memory()
    cand_stats = cand.stats(settings, settings.seed)
    base_stats = base.stats(settings, settings.seed + 7)
    ci = ratio_interval(cand.samples, base.samples, settings.bootstrap_resamples, settings.seed)
    ratio = cand_stats.median_ms / base_stats.median_ms
    with_rerun_interval(cand_stats, rerun, base_stats.median_ms, ratio, ci)
    with_rerun_interval(base_stats, rerun, base_stats.median_ms)
    return PairMeasurement(
        candidate=cand_stats,
        baseline=base_stats,
        ratio=ratio,
        ratio_ci=ci,
        verdict=verdict_of(ci, band),
        noise_band=band,
        device=backend.manifest(settings.threads),
    )


def measure_against(
    candidates: Mapping[str, Path],
    baseline: Path,
    inputs: Inputs,
    settings: MeasurementSettings,
    backend: LatencyBackend | None = None,
    *,
    noise_band: float | None = None,
) -> dict[str, PairMeasurement]:
    """Measures several ``candidates`` against one ``baseline`` in the same rounds: each of
    ``settings.sessions`` rounds opens a fresh session of every model and times them in alternating
    blocks, the order rotated from round to round, so every ratio comes from the same windows as
    every other and is comparable with it.

    Returns:
        ``{name: PairMeasurement}`` of each candidate against the baseline.
    """
    backend = backend or get_backend(settings.backend)
    band = settings.noise_band if noise_band is None else noise_band
    names = list(candidates)
    collected = {name: _Collected() for name in names}
    base = _Collected()
    models: list[tuple[Path, _Collected]] = [(baseline, base), *((candidates[n], collected[n]) for n in names)]
    for k in range(settings.sessions):
        shift = k % len(models)
        order = models[shift:] + models[:shift]
        _round(backend, order, inputs, settings)
    release_freed_memory()
    base_stats = base.stats(settings, settings.seed + 7)
    device = backend.manifest(settings.threads)
    out: dict[str, PairMeasurement] = {}
    for i, name in enumerate(names):
        stats = collected[name].stats(settings, settings.seed + i)
        ci = ratio_interval(collected[name].samples, base.samples, settings.bootstrap_resamples, settings.seed + i)
        ratio = stats.median_ms / base_stats.median_ms
        out[name] = PairMeasurement(
            candidate=stats,
            baseline=base_stats,
            ratio=ratio,
            ratio_ci=ci,
            verdict=verdict_of(ci, band),
            noise_band=band,
            device=device,
        )
    return out


# ---------------------------------------------------------------------------------------------
# Noise band from A/A measurements

#: The smallest noise band a calibration returns: below 2% the verdict would hang on timer and
#: frequency effects that a handful of A/A runs cannot show.
DEFAULT_NOISE_FLOOR = 0.02


@dataclass(frozen=True)
class NoiseBand:
    """A noise band derived from A/A measurements (see the module docstring for the policy).

    ``medians_ms`` holds each A/A run's median of the model (the geometric mean of its two sides):
    separate measurements one after another, from which :meth:`rerun_calibration` gives re-run
    intervals. ``device_class`` is the device the band was calibrated on; it judges measurements on
    that class only. Both are empty in bands stored before they were recorded.
    """

    delta: float
    ratios: list[float]
    ratio_cis: list[tuple[float, float]]
    quantile: float
    floor: float
    medians_ms: list[float] = field(default_factory=list)
    device_class: str | None = None

    @property
    def runs(self) -> int:
        return len(self.ratios)

    @property
    def ties(self) -> int:
        """A/A runs whose verdict under ``delta`` is a tie, as it should be for a model and itself."""
        return sum(verdict_of(ci, self.delta) == "tie" for ci in self.ratio_cis)

    @property
    def cis_containing_one(self) -> int:
        """A/A runs whose ratio interval contains 1.0, as a correct interval's should."""
        return sum(low <= 1.0 <= high for low, high in self.ratio_cis)

    def rerun_calibration(self) -> RerunCalibration | None:
        """The A/A runs' medians as a :class:`RerunCalibration` (None for a band without them)."""
        if not self.medians_ms:
            return None
        return RerunCalibration(tuple(self.medians_ms), self.device_class)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NoiseBand:
        """The inverse of :meth:`to_dict` (also of bands stored before medians were recorded)."""
        return cls(
            delta=float(data["delta"]),
            ratios=[float(r) for r in data["ratios"]],
            ratio_cis=[(float(lo), float(hi)) for lo, hi in data["ratio_cis"]],
            quantile=float(data["quantile"]),
            floor=float(data["floor"]),
            medians_ms=[float(m) for m in data.get("medians_ms") or []],
            device_class=data.get("device_class"),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; :meth:`from_dict` reads it back."""
        rerun = self.rerun_calibration()
        return {
            "delta": self.delta,
            "runs": self.runs,
            "quantile": self.quantile,
            "floor": self.floor,
            "ratios": list(self.ratios),
            "ratio_cis": [list(ci) for ci in self.ratio_cis],
            "ties": self.ties,
            "cis_containing_one": self.cis_containing_one,
            "medians_ms": list(self.medians_ms),
            "rerun_spread": None if rerun is None else rerun.spread(),
            "device_class": self.device_class,
        }


def noise_band_from_ratios(
    ratios: list[float] | np.ndarray, *, quantile: float = 1.0, floor: float = DEFAULT_NOISE_FLOOR
) -> float:
    """δ = max(``floor``, the ``quantile`` of |ratio - 1| over A/A ``ratios``).

    ``quantile = 1`` takes the largest deviation (the conservative default for a handful of runs);
    a high quantile such as 0.95 suits many runs, where one outlier should not set the band.

    Raises:
        MeasurementError: no ratios, or one that is not a positive finite number.
        ValueError: ``quantile`` outside (0, 1] or ``floor`` outside [0, 1).
    """
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile = {quantile!r} must be in (0, 1]; use 1 for the largest A/A deviation.")
    if not 0.0 <= floor < 1.0:
        raise ValueError(f"floor = {floor!r} must be in [0, 1); 0.02 is the default.")
    values = np.asarray(ratios, dtype=float)
    if values.size == 0:
        raise MeasurementError("A noise band needs at least one A/A ratio; got none. Run at least one A/A measurement.")
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise MeasurementError(
            f"A/A ratios must be positive finite numbers; got {values.tolist()}. A model timed at 0 ms or "
            f"a failed session gives such a ratio: check the measurement settings."
        )
    deviation = float(np.quantile(np.abs(values - 1.0), quantile, method="higher"))
    return max(floor, deviation)


def calibrate_noise_band(
    model: Path,
    inputs: Inputs,
    settings: MeasurementSettings,
    *,
    runs: int = 5,
    quantile: float = 1.0,
    floor: float = DEFAULT_NOISE_FLOOR,
    backend: LatencyBackend | None = None,
) -> NoiseBand:
    """Measures ``model`` against itself ``runs`` times with ``settings`` and derives δ from the
    spread of the A/A ratios (:func:`noise_band_from_ratios`).

    Calibrate with the settings (backend, threads, sessions, batch size) of the measurements the
    band will judge: the noise of one thread says nothing about the noise of two.
    """
    if runs < 1:
        raise ValueError(f"runs = {runs!r}; an A/A calibration needs at least 1 run (5 or more is useful).")
    backend = backend or get_backend(settings.backend)
    ratios: list[float] = []
    cis: list[tuple[float, float]] = []
    medians: list[float] = []
    for r in range(runs):
        pair = measure_pair(model, model, inputs, dataclasses.replace(settings, seed=settings.seed + r), backend)
        ratios.append(pair.ratio)
        cis.append(pair.ratio_ci)
        medians.append(math.sqrt(pair.candidate.median_ms * pair.baseline.median_ms))
    delta = noise_band_from_ratios(ratios, quantile=quantile, floor=floor)
    return NoiseBand(
        delta=delta,
        ratios=ratios,
        ratio_cis=cis,
        quantile=quantile,
        floor=floor,
        medians_ms=medians,
        device_class=device_class_of(backend.manifest(settings.threads)),
    )


def noise_band_file(
    directory: Path, baseline: Path, settings: MeasurementSettings, device_class: str | None = None
) -> Path:
    """Where the calibration of ``baseline`` under ``settings`` on this host is kept in ``directory``.

    One file per host, device class, backend, thread count, batch size and baseline model: the
    noise of one thread says nothing about the noise of two, nor one CPU's about another's (a host
    name can move to another CPU).
    """
    host = "".join(c if c.isalnum() or c in "-_." else "_" for c in platform.node() or "host")
    klass = f"{device_class}-" if device_class else ""
    name = f"{host}-{klass}{settings.backend}-t{settings.threads}-b{settings.batch_size}-{baseline.stem}.json"
    return directory / name


def calibrated_noise_band(
    baseline: Path,
    inputs: Inputs,
    settings: MeasurementSettings,
    directory: Path,
    backend: LatencyBackend | None = None,
) -> NoiseBand:
    """The A/A noise band of this device for ``settings``, calibrated once per ``directory``.

    Studies call this inside a trial's exclusive measurement window, before the trial's own
    measurement: the first trial measured on a host and device class (per backend, threads and
    batch size) runs
    ``settings.calibration_runs`` A/A measurements of the baseline and stores the band in
    ``directory``; later trials read it. A run of a study uses a directory of its own, so each run
    calibrates against the machine as it is that day. The file is written atomically, so a reader
    never sees half of it.
    """
    backend = backend or get_backend(settings.backend)
    device_class = device_class_of(backend.manifest(settings.threads))
    path = noise_band_file(directory, baseline, settings, device_class)
    if path.exists():
        try:
            band = NoiseBand.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            band = None  # unreadable (a foreign or damaged file): calibrate again and replace it
        if band is not None and band.device_class == device_class:
            return band
    band = calibrate_noise_band(baseline, inputs, settings, runs=max(1, settings.calibration_runs), backend=backend)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(band.to_dict()))
    os.replace(tmp, path)
    return band
