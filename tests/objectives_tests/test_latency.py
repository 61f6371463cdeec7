"""Latency statistics on synthetic samples with known properties, and the interleaved measurement
protocol on real ONNX Runtime sessions of the digits teacher and its channel-pruned copy."""

from __future__ import annotations

import dataclasses
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from lepton_search.errors import MeasurementError, UnknownNameError
from lepton_search.objectives import (
    LatencyBackend,
    MeasurementSettings,
    get_backend,
    known_backends,
    measure_pair,
    measure_sessions,
    summarize,
    verdict_of,
)
from lepton_search.objectives._latency import Runner, ratio_interval, time_session


def make_sessions(
    rng: np.random.Generator, medians: list[float], n: int = 200, spread: float = 0.02
) -> list[np.ndarray]:
    """One session per entry of ``medians``: ``n`` log-normal samples whose median is that entry."""
    return [m * np.exp(spread * rng.standard_normal(n)) for m in medians]


def pooled_bootstrap_ci(sessions: list[np.ndarray], resamples: int, seed: int) -> tuple[float, float]:
    """The naive interval the module docstring warns about: resample iterations, ignore sessions."""
    pooled = np.concatenate(sessions)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(pooled), size=(resamples, len(pooled)))
    boot = np.median(pooled[idx], axis=1)
    return float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


# ---------------------------------------------------------------------------------------------
# summarize


def test_summarize_reports_median_of_session_medians_and_their_spread() -> None:
    sessions = make_sessions(np.random.default_rng(1), [10.0, 12.0, 14.0])
    stats = summarize(sessions, resamples=500, seed=0)

    assert stats.sessions == 3
    assert stats.iterations == [200, 200, 200]
    assert stats.session_medians_ms == pytest.approx([10.0, 12.0, 14.0], rel=0.01)
    assert stats.median_ms == pytest.approx(12.0, rel=0.01)
    # cv of the session medians: std([10, 12, 14], ddof=1) / 12 = 2 / 12.
    assert stats.cv == pytest.approx(2.0 / 12.0, rel=0.05)
    low, high = stats.ci_ms
    assert low <= stats.median_ms <= high
    assert stats.p50_ms <= stats.p90_ms <= stats.p95_ms <= stats.p99_ms
    d = stats.to_dict()
    assert d["ci_ms"] == [low, high]
    assert d["median_ms"] == stats.median_ms


def test_cv_is_computed_over_session_medians_not_pooled_iterations() -> None:
    # Same median in every session, but a very wide spread within each one.
    agreeing = make_sessions(np.random.default_rng(2), [10.0] * 5, n=2001, spread=0.5)
    stats = summarize(agreeing, resamples=200)
    pooled = np.concatenate(agreeing)
    pooled_cv = pooled.std(ddof=1) / pooled.mean()
    assert pooled_cv > 0.4
    assert stats.cv < 0.05
    medians = np.array([np.median(s) for s in agreeing])
    assert stats.cv == pytest.approx(medians.std(ddof=1) / medians.mean())


def test_single_session_has_zero_cv() -> None:
    stats = summarize(make_sessions(np.random.default_rng(3), [5.0]), resamples=100)
    assert stats.sessions == 1
    assert stats.cv == 0.0
    assert stats.median_ms == pytest.approx(5.0, rel=0.01)


@pytest.mark.parametrize(
    "sessions",
    [[], [np.array([])], [np.array([1.0, 2.0]), np.array([])]],
    ids=["no-sessions", "one-empty-session", "one-of-two-empty"],
)
def test_summarize_rejects_missing_samples(sessions: list[np.ndarray]) -> None:
    with pytest.raises(MeasurementError, match="No latency samples"):
        summarize(sessions)


def test_hierarchical_ci_is_wider_than_pooled_bootstrap_when_sessions_disagree() -> None:
    # Tight sessions whose medians disagree by up to 40%: the uncertainty lives between sessions.
    sessions = make_sessions(np.random.default_rng(4), [10.0, 11.0, 12.0, 13.0, 14.0], n=300, spread=0.01)
    stats = summarize(sessions, resamples=1000, seed=0)
    pooled_low, pooled_high = pooled_bootstrap_ci(sessions, resamples=1000, seed=0)
    low, high = stats.ci_ms

    assert high - low > 5 * (pooled_high - pooled_low)
    # With five sessions the hierarchical interval spans most of the session medians...
    assert low <= 11.0 and high >= 13.0
    # ...while the pooled one is falsely sure of the middle one.
    assert 11.5 < pooled_low < pooled_high < 12.5


def test_summarize_is_reproducible_for_a_seed() -> None:
    sessions = make_sessions(np.random.default_rng(5), [3.0, 3.3, 2.9])
    assert summarize(sessions, 300, seed=7).ci_ms == summarize(sessions, 300, seed=7).ci_ms


def test_bootstrap_memory_stays_bounded_for_long_sessions() -> None:
    # 10^5 samples (a 2 s session of a 20 us model) x 200 resamples: indexing every resample at
    # once would allocate over 300 MiB; chunking keeps it near 100 MiB.
    sessions = [np.random.default_rng(6).lognormal(0.0, 0.1, 100_000)]
    tracemalloc.start()
    try:
        stats = summarize(sessions, resamples=200, seed=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    assert stats.ci_ms[0] <= stats.median_ms <= stats.ci_ms[1]


# ---------------------------------------------------------------------------------------------
# ratio_interval and verdict_of


def drifting_pair(
    rng: np.random.Generator, factors: list[float], ratio: float, base_ms: float = 10.0
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Paired sessions: session k of both models runs ``factors[k]`` times slower (machine drift),
    and the candidate is ``ratio`` times the baseline on top of that."""
    baseline = make_sessions(rng, [base_ms * f for f in factors])
    candidate = make_sessions(rng, [base_ms * f * ratio for f in factors])
    return candidate, baseline


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_identical_distributions_give_a_ratio_ci_containing_one_and_a_tie(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    # Session-level scatter (3%) on top of within-session noise, the same for both models.
    medians = list(10.0 * np.exp(0.03 * rng.standard_normal(5)))
    candidate = make_sessions(rng, medians)
    baseline = make_sessions(rng, medians)

    low, high = ratio_interval(candidate, baseline, resamples=1000, seed=seed)

    assert low <= 1.0 <= high
    assert verdict_of((low, high), noise_band=0.05) == "tie"


@pytest.mark.parametrize(("ratio", "verdict"), [(2.0, "slower"), (0.5, "faster")])
def test_a_clearly_different_candidate_gets_a_verdict(ratio: float, verdict: str) -> None:
    candidate, baseline = drifting_pair(np.random.default_rng(7), [1.0, 1.02, 0.98, 1.01], ratio)
    low, high = ratio_interval(candidate, baseline, resamples=1000)
    assert low <= ratio <= high
    assert ratio * 0.9 < low and high < ratio * 1.1
    assert verdict_of((low, high), noise_band=0.05) == verdict


def test_pairing_cancels_drift_common_to_both_models() -> None:
    # The machine's speed swings by +-50% between sessions; the candidate is a steady 10% faster.
    candidate, baseline = drifting_pair(np.random.default_rng(8), [1.0, 1.5, 0.7, 1.2, 0.9], 0.9)
    low, high = ratio_interval(candidate, baseline, resamples=1000)
    assert 0.85 < low <= 0.9 <= high < 0.95
    assert verdict_of((low, high), noise_band=0.05) == "faster"
    # Each model's own interval is wide and the two overlap: only the paired ratio can tell.
    cand_ci, base_ci = summarize(candidate).ci_ms, summarize(baseline).ci_ms
    assert cand_ci[1] > base_ci[0]


@pytest.mark.parametrize(
    ("candidate", "baseline"),
    [([], []), ([np.ones(5)], []), ([np.ones(5)], [np.ones(5), np.ones(5)]), ([np.ones(5)], [np.array([])])],
    ids=["none", "no-baseline", "unpaired", "empty-baseline-session"],
)
def test_ratio_interval_needs_paired_non_empty_sessions(
    candidate: list[np.ndarray], baseline: list[np.ndarray]
) -> None:
    with pytest.raises(MeasurementError, match="paired sessions"):
        ratio_interval(candidate, baseline)


@pytest.mark.parametrize(
    ("ci", "band", "verdict"),
    [
        ((0.80, 0.94), 0.05, "faster"),
        ((0.80, 0.96), 0.05, "tie"),
        ((1.06, 1.20), 0.05, "slower"),
        ((1.04, 1.20), 0.05, "tie"),
        ((0.90, 1.10), 0.05, "tie"),
        ((0.90, 0.99), 0.0, "faster"),
        ((1.01, 1.10), 0.0, "slower"),
        ((0.50, 0.70), 0.40, "tie"),
    ],
)
def test_verdict_of_requires_the_whole_interval_outside_the_noise_band(
    ci: tuple[float, float], band: float, verdict: str
) -> None:
    assert verdict_of(ci, band) == verdict


# ---------------------------------------------------------------------------------------------
# Real sessions


class RecordingBackend(LatencyBackend):
    """The real ONNX Runtime CPU backend, remembering which model each new session opened."""

    name = "recording"

    def __init__(self) -> None:
        self.inner = get_backend("onnxruntime-cpu")
        self.opened: list[Path] = []

    def open(self, model_path: Path, threads: int) -> Runner:
        self.opened.append(model_path)
        return self.inner.open(model_path, threads)

    def manifest(self, threads: int) -> dict[str, Any]:
        return {**self.inner.manifest(threads), "recorded_sessions": len(self.opened)}


def test_backend_registry() -> None:
    assert "onnxruntime-cpu" in known_backends()
    assert get_backend("onnxruntime-cpu").name == "onnxruntime-cpu"
    with pytest.raises(UnknownNameError, match="onnxruntime-cpu"):
        get_backend("tensorrt-on-a-toaster")


def test_opening_a_broken_model_is_a_measurement_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not a protobuf")
    with pytest.raises(MeasurementError, match=r"could not open broken\.onnx"):
        get_backend("onnxruntime-cpu").open(broken, threads=1)


def test_time_session_honours_iteration_and_duration_minimums(teacher: Any) -> None:
    runner = get_backend("onnxruntime-cpu").open(teacher.onnx_path, threads=1)
    inputs = teacher.task.example_inputs(64)
    settings = MeasurementSettings(warmup_runs=2, warmup_s=0.0, min_iterations=7, min_session_s=0.1)
    start = time.perf_counter()
    samples = time_session(runner, inputs, settings)
    elapsed = time.perf_counter() - start
    assert len(samples) >= 7
    assert elapsed >= 0.1
    assert np.all(samples > 0)
    # Samples are per-run milliseconds: together they fit inside the session's wall time.
    assert samples.sum() / 1000.0 <= elapsed


def test_measure_sessions_opens_fresh_sessions(teacher: Any, fast_settings: MeasurementSettings) -> None:
    backend = RecordingBackend()
    sessions = measure_sessions(teacher.onnx_path, teacher.task.example_inputs(64), fast_settings, backend)
    assert len(sessions) == fast_settings.sessions == len(backend.opened)
    assert all(len(s) >= fast_settings.min_iterations and np.all(s > 0) for s in sessions)


def test_channel_pruned_model_is_measured_faster_in_interleaved_sessions(
    teacher: Any, pruned_half: Any, fast_settings: MeasurementSettings
) -> None:
    settings = dataclasses.replace(fast_settings, sessions=3)
    backend = RecordingBackend()
    candidate, baseline = pruned_half.onnx_path, teacher.onnx_path

    pair = measure_pair(candidate, baseline, teacher.task.example_inputs(settings.batch_size), settings, backend)

    # A/B, B/A, A/B: each model opens a fresh session per round, the order alternating.
    assert backend.opened == [candidate, baseline, baseline, candidate, candidate, baseline]
    # About a quarter of the MACs: even on a busy 2-core machine the ratio stays far below 1.
    assert pair.verdict == "faster"
    assert pair.ratio < 0.6
    assert pair.ratio_ci[1] < 0.8
    assert pair.ratio == pytest.approx(pair.candidate.median_ms / pair.baseline.median_ms)
    assert pair.candidate.sessions == pair.baseline.sessions == 3
    assert min(pair.candidate.iterations + pair.baseline.iterations) >= settings.min_iterations
    assert pair.noise_band == settings.noise_band
    assert pair.device["recorded_sessions"] == 6


def test_measure_pair_records_the_device_manifest(teacher: Any, fast_settings: MeasurementSettings) -> None:
    settings = dataclasses.replace(fast_settings, threads=2)
    inputs = teacher.task.example_inputs(settings.batch_size)

    pair = measure_pair(teacher.onnx_path, teacher.onnx_path, inputs, settings)

    device = pair.device
    assert device["backend"] == "onnxruntime-cpu"
    assert device["execution_provider"] == "CPUExecutionProvider"
    assert device["threads"] == 2
    assert device["onnxruntime"] == ort.__version__
    assert device["device_class"] == "cpu"
    assert device["device"]
    d = pair.to_dict()
    assert set(d) == {"candidate", "baseline", "ratio", "ratio_ci", "verdict", "noise_band", "device"}
    assert d["verdict"] in ("faster", "slower", "tie")
    assert len(d["ratio_ci"]) == 2 and d["ratio_ci"][0] <= d["ratio_ci"][1]
