"""The measurement protocol: fresh sessions, warm-up, and candidate and baseline interleaved.

A *session* is a fresh inference session that warms up for at least ``warmup_runs`` runs and
``warmup_s`` seconds, then times at least ``min_iterations`` runs and ``min_session_s`` seconds. A
candidate is measured against a baseline in ``sessions`` *rounds*; each round opens a fresh session
of both (the opening order alternates A/B, B/A, ...) and, with ``block_s > 0`` (the default),
alternates their timed runs in blocks of about ``block_s`` seconds until each has its share. On a
shared 2-core machine the load of other processes comes and goes within seconds; alternating in 50
ms blocks makes it hit both models alike, where whole sessions run one after the other caught it in
one model only (an A/A session ratio of 0.72 was seen here). Blocks rather than single runs keep
each model's caches warm as it runs. ``block_s = 0`` runs the two sessions one after the other
instead, holding one model in memory at a time (for models too large to open twice).

A busy machine. Interleaving protects ratios from other processes, not absolute latencies: on a
2-core machine shared with other work a 1-thread model's median moved from 10 to 14.5 ms between
processes. With one thread on a CPU backend the model runs on the measuring thread, so its CPU
time per run is recorded too: ``cpu_share`` (CPU time over wall time) says how much of the time the
thread actually had a core, and ``cpu_median_ms`` is a latency figure that waiting for a core does
not inflate.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lepton_search.devices._machine import (
    device_class_of,
    release_freed_memory,
)
from lepton_search.objectives.latency._backends import (
    LatencyBackend,
    MemoryProbe,
    Runner,
    get_backend,
)
from lepton_search.objectives.latency._settings import Inputs, MeasurementSettings
from lepton_search.objectives.latency._statistics import (
    LatencyStats,
    PairMeasurement,
    RerunCalibration,
    ratio_interval,
    summarize,
    verdict_of,
    with_rerun_interval,
)


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
        ratio_rerun_ci=None if rerun is None else rerun.ratio_interval(ratio, ci),
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
