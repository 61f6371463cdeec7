"""Latency measurement: backends, the interleaved session protocol, and its statistics.

Protocol (see ``shared/notes/latency.md``): each *session* is a fresh inference session that warms
up for at least ``warmup_runs`` runs and ``warmup_s`` seconds, then times at least
``min_iterations`` runs and ``min_session_s`` seconds. Candidate and baseline sessions alternate
(A/B, B/A, ...), so slow drift of the machine hits both. Statistics are computed over sessions,
because that is where the variance lives: the objective is the median of the session medians, its
confidence interval comes from a hierarchical bootstrap (resample sessions, then iterations), and
the ratio's interval resamples the paired sessions jointly.
"""

from __future__ import annotations

import abc
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lepton_search.errors import MeasurementError

Verdict = Literal["faster", "slower", "tie"]


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
    noise_band: float = 0.05
    seed: int = 0


class Runner(abc.ABC):
    """One open inference session of one model."""

    @abc.abstractmethod
    def run(self, inputs: np.ndarray) -> np.ndarray:
        """Runs the model once on ``inputs`` and returns the first output."""


class LatencyBackend(abc.ABC):
    """Opens fresh inference sessions of a model file on one device."""

    name: str = "backend"

    @abc.abstractmethod
    def open(self, model_path: Path, threads: int) -> Runner:
        """A new session of ``model_path`` using ``threads`` intra-op threads."""

    @abc.abstractmethod
    def manifest(self, threads: int) -> dict[str, Any]:
        """What a measurement ran on: backend, provider, versions, device, threads."""


class _OrtRunner(Runner):
    def __init__(self, session: Any) -> None:
        self._session = session
        self._input = session.get_inputs()[0].name

    def run(self, inputs: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: inputs})[0]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class OnnxRuntimeCPUBackend(LatencyBackend):
    """ONNX Runtime's CPU execution provider, sequential execution, full graph optimisation."""

    name = "onnxruntime-cpu"
    provider = "CPUExecutionProvider"

    def open(self, model_path: Path, threads: int) -> Runner:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(model_path), options, providers=[self.provider])
        except Exception as e:
            raise MeasurementError(f"ONNX Runtime could not open {model_path.name} on {self.provider}: {e}") from e
        return _OrtRunner(session)

    def manifest(self, threads: int) -> dict[str, Any]:
        import onnxruntime as ort

        return {
            "backend": self.name,
            "execution_provider": self.provider,
            "onnxruntime": ort.__version__,
            "threads": threads,
            "device_class": "cpu",
            "device": _cpu_model(),
            "cpu_count": os.cpu_count(),
            "host": platform.node(),
        }


_BACKENDS: dict[str, type[LatencyBackend]] = {"onnxruntime-cpu": OnnxRuntimeCPUBackend}


def get_backend(name: str) -> LatencyBackend:
    """The backend registered under ``name``."""
    from lepton_search.errors import UnknownNameError

    if name not in _BACKENDS:
        raise UnknownNameError("latency backend", name, _BACKENDS)
    return _BACKENDS[name]()


def known_backends() -> list[str]:
    return sorted(_BACKENDS)


@dataclass
class LatencyStats:
    """Statistics of one model's sessions; all times in milliseconds per batch."""

    median_ms: float
    ci_ms: tuple[float, float]
    session_medians_ms: list[float]
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    cv: float
    sessions: int
    iterations: list[int]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci_ms"] = list(self.ci_ms)
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


def time_session(runner: Runner, inputs: np.ndarray, settings: MeasurementSettings) -> np.ndarray:
    """Warms ``runner`` up, then returns per-run latencies in milliseconds."""
    start = time.perf_counter()
    runs = 0
    while runs < settings.warmup_runs or time.perf_counter() - start < settings.warmup_s:
        runner.run(inputs)
        runs += 1
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < settings.min_iterations or time.perf_counter() - start < settings.min_session_s:
        t0 = time.perf_counter_ns()
        runner.run(inputs)
        samples.append((time.perf_counter_ns() - t0) / 1e6)
        if time.perf_counter() - start > settings.max_session_s and len(samples) >= 3:
            break
    return np.asarray(samples)


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


def summarize(sessions: list[np.ndarray], resamples: int = 1000, seed: int = 0) -> LatencyStats:
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
    )


def ratio_interval(
    candidate: list[np.ndarray], baseline: list[np.ndarray], resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95% interval of median-of-medians(candidate) / median-of-medians(baseline).

    Sessions are paired (they ran back to back), so one draw of session indices serves both.
    """
    if not candidate or len(candidate) != len(baseline) or any(len(s) == 0 for s in [*candidate, *baseline]):
        raise MeasurementError(
            f"A latency ratio needs the same number of non-empty paired sessions for candidate and baseline; "
            f"got {[len(s) for s in candidate]} and {[len(s) for s in baseline]} samples per session."
        )
    rng = np.random.default_rng(seed + 1)
    cand, picks = _hierarchical(candidate, resamples, rng)
    base = np.stack([_bootstrap_medians(s, resamples, rng) for s in baseline])
    ratios = _draw(cand, picks, rng) / _draw(base, picks, rng)
    return float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))


def verdict_of(ratio_ci: tuple[float, float], noise_band: float) -> Verdict:
    """``faster`` only if the whole ratio interval lies below ``1 - noise_band``; ``slower`` only
    if it lies above ``1 + noise_band``; otherwise the two are tied within the noise."""
    low, high = ratio_ci
    if high < 1.0 - noise_band:
        return "faster"
    if low > 1.0 + noise_band:
        return "slower"
    return "tie"


def measure_sessions(
    model: Path, inputs: np.ndarray, settings: MeasurementSettings, backend: LatencyBackend | None = None
) -> list[np.ndarray]:
    """``settings.sessions`` fresh sessions of one model, timed."""
    backend = backend or get_backend(settings.backend)
    return [time_session(backend.open(model, settings.threads), inputs, settings) for _ in range(settings.sessions)]


def measure_pair(
    candidate: Path,
    baseline: Path,
    inputs: np.ndarray,
    settings: MeasurementSettings,
    backend: LatencyBackend | None = None,
) -> PairMeasurement:
    """Measures ``candidate`` against ``baseline`` in interleaved fresh sessions (A/B, B/A, ...)."""
    backend = backend or get_backend(settings.backend)
    cand: list[np.ndarray] = []
    base: list[np.ndarray] = []
    for k in range(settings.sessions):
        order = [(candidate, cand), (baseline, base)]
        if k % 2:
            order.reverse()
        for path, sink in order:
            sink.append(time_session(backend.open(path, settings.threads), inputs, settings))
    cand_stats = summarize(cand, settings.bootstrap_resamples, settings.seed)
    base_stats = summarize(base, settings.bootstrap_resamples, settings.seed + 7)
    ci = ratio_interval(cand, base, settings.bootstrap_resamples, settings.seed)
    return PairMeasurement(
        candidate=cand_stats,
        baseline=base_stats,
        ratio=cand_stats.median_ms / base_stats.median_ms,
        ratio_ci=ci,
        verdict=verdict_of(ci, settings.noise_band),
        noise_band=settings.noise_band,
        device=backend.manifest(settings.threads),
    )
