"""Latency statistics on synthetic samples with known properties, the noise band from A/A runs,
backends and their availability, and the interleaved measurement protocol on real ONNX Runtime
sessions of the digits teacher and its channel-pruned copy."""

from __future__ import annotations

import dataclasses
import json
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from lepton_search.devices._machine import cpu_identity, gpu_manifest, nvidia_smi, parse_nvidia_smi_csv
from lepton_search.errors import MeasurementError, UnknownNameError
from lepton_search.objectives import (
    LatencyBackend,
    MeasurementSettings,
    NoiseBand,
    available_backends,
    calibrate_noise_band,
    get_backend,
    known_backends,
    measure_model,
    measure_pair,
    measure_sessions,
    noise_band_from_ratios,
    summarize,
    verdict_of,
)
from lepton_search.objectives.latency import (
    ResidentMemoryProbe,
    Runner,
    bootstrap_ratio_interval,
    calibrated_noise_band,
    noise_band_file,
    paired_t_ratio_interval,
    ratio_interval,
    time_interleaved,
    time_session,
)


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

    # With two threads the measuring thread's CPU time is not the model's: none is recorded.
    assert pair.candidate.cpu_share is None and pair.candidate.cpu_median_ms is None
    device = pair.device
    assert device["backend"] == "onnxruntime-cpu"
    assert device["execution_provider"] == "CPUExecutionProvider"
    assert device["threads"] == 2
    assert device["onnxruntime"] == ort.__version__
    assert device["device_kind"] == "cpu"
    assert device["device_class"].startswith("cpu-") and device["device_class_name"]
    assert device["cpu"]["isa"] and device["device"]
    d = pair.to_dict()
    assert set(d) == {"candidate", "baseline", "ratio", "ratio_ci", "ratio_rerun_ci", "verdict", "noise_band", "device"}
    assert d["ratio_rerun_ci"] is None  # no A/A calibration runs: no re-run interval for the ratio
    assert d["verdict"] in ("faster", "slower", "tie")
    assert len(d["ratio_ci"]) == 2 and d["ratio_ci"][0] <= d["ratio_ci"][1]


# ---------------------------------------------------------------------------------------------
# The ratio interval: why it is the union of a bootstrap and a t interval


def aa_pairs(
    seed: int, pairs: int, rounds: int, session_noise: float
) -> list[tuple[list[np.ndarray], list[np.ndarray]]]:
    """A/A measurements: each session's median scatters independently by ``session_noise``."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(pairs):
        candidate = make_sessions(rng, list(10.0 * np.exp(session_noise * rng.standard_normal(rounds))), n=40)
        baseline = make_sessions(rng, list(10.0 * np.exp(session_noise * rng.standard_normal(rounds))), n=40)
        out.append((candidate, baseline))
    return out


def test_ratio_interval_covers_one_in_aa_pairs_where_the_bootstrap_alone_does_not() -> None:
    # Three rounds, 5% session-to-session noise: the bootstrap interval is about [smallest,
    # largest] round ratio and misses 1.0 whenever all three rounds land on one side.
    pairs = aa_pairs(seed=11, pairs=150, rounds=3, session_noise=0.05)
    boot = [bootstrap_ratio_interval(c, b, resamples=200, seed=i) for i, (c, b) in enumerate(pairs)]
    union = [ratio_interval(c, b, resamples=200, seed=i) for i, (c, b) in enumerate(pairs)]

    def coverage(intervals: list[tuple[float, float]]) -> float:
        return float(np.mean([low <= 1.0 <= high for low, high in intervals]))

    assert coverage(boot) < 0.85
    assert coverage(union) >= 0.93
    for (b_low, b_high), (u_low, u_high) in zip(boot, union):
        assert u_low <= b_low and b_high <= u_high


def test_paired_t_interval_matches_the_textbook_formula() -> None:
    ratios = [0.50, 0.52, 0.49, 0.51]
    baseline = [np.full(9, 10.0) for _ in ratios]
    candidate = [np.full(9, 10.0 * r) for r in ratios]
    d = np.log(ratios)
    half = 3.182446305284263 * d.std(ddof=1) / 2.0  # t(0.975, 3 degrees of freedom)
    low, high = paired_t_ratio_interval(candidate, baseline)
    assert low == pytest.approx(np.exp(d.mean() - half))
    assert high == pytest.approx(np.exp(d.mean() + half))


def test_one_round_has_no_t_interval_and_falls_back_to_the_bootstrap() -> None:
    candidate, baseline = drifting_pair(np.random.default_rng(12), [1.0], 0.8)
    assert paired_t_ratio_interval(candidate, baseline) is None
    assert ratio_interval(candidate, baseline, resamples=300, seed=3) == bootstrap_ratio_interval(
        candidate, baseline, resamples=300, seed=3
    )


# ---------------------------------------------------------------------------------------------
# Noise band from A/A


def test_noise_band_is_the_largest_aa_deviation_by_default() -> None:
    assert noise_band_from_ratios([0.97, 1.01, 1.04, 0.99]) == pytest.approx(0.04)
    assert noise_band_from_ratios([0.93, 1.01]) == pytest.approx(0.07)


def test_noise_band_is_floored() -> None:
    assert noise_band_from_ratios([1.001, 0.999]) == 0.02
    assert noise_band_from_ratios([1.001, 0.999], floor=0.0) == pytest.approx(0.001)
    assert noise_band_from_ratios([1.001], floor=0.1) == 0.1


def test_noise_band_quantile_ignores_a_rare_outlier() -> None:
    ratios = [1.0 + 0.01 * (i % 5 - 2) for i in range(99)] + [1.5]
    assert noise_band_from_ratios(ratios) == pytest.approx(0.5)
    assert noise_band_from_ratios(ratios, quantile=0.95) == pytest.approx(0.02)


@pytest.mark.parametrize(
    ("ratios", "message"),
    [([], "at least one A/A ratio"), ([1.0, float("nan")], "positive finite"), ([0.0, 1.0], "positive finite")],
    ids=["empty", "nan", "zero"],
)
def test_noise_band_rejects_unusable_ratios(ratios: list[float], message: str) -> None:
    with pytest.raises(MeasurementError, match=message):
        noise_band_from_ratios(ratios)


@pytest.mark.parametrize(("kwargs", "message"), [({"quantile": 0.0}, "quantile"), ({"floor": 1.0}, "floor")])
def test_noise_band_rejects_bad_policy_arguments(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        noise_band_from_ratios([1.0], **kwargs)


def test_with_the_calibrated_band_no_calibration_run_is_a_difference() -> None:
    # The policy's promise for quantile 1: under δ = max |ratio - 1| every A/A run whose interval
    # holds its own ratio is a tie.
    rng = np.random.default_rng(13)
    intervals = []
    ratios = []
    for candidate, baseline in aa_pairs(seed=14, pairs=20, rounds=3, session_noise=0.04):
        ci = ratio_interval(candidate, baseline, resamples=200, seed=int(rng.integers(1000)))
        ratios.append(float(np.median([np.median(s) for s in candidate]) / np.median([np.median(s) for s in baseline])))
        intervals.append(ci)
    band = NoiseBand(delta=noise_band_from_ratios(ratios), ratios=ratios, ratio_cis=intervals, quantile=1.0, floor=0.02)
    assert band.runs == 20
    assert band.ties == 20
    assert band.cis_containing_one >= 19
    d = band.to_dict()
    assert d["delta"] == band.delta and d["ties"] == 20 and len(d["ratio_cis"]) == 20


class SyntheticRunner(Runner):
    """A session whose runs take no time but report latencies drawn around ``median_ms``."""

    def __init__(self, median_ms: float, rng: np.random.Generator, log: list[str], label: str) -> None:
        self.median_ms, self.rng, self.log, self.label = median_ms, rng, log, label

    def run(self, inputs: Any) -> np.ndarray:
        return np.zeros(1)

    def timed_run(self, inputs: Any) -> float:
        self.log.append(self.label)
        return float(self.median_ms * np.exp(0.02 * self.rng.standard_normal()))


class SyntheticBackend(LatencyBackend):
    """Opens :class:`SyntheticRunner` sessions; a session's speed drifts by a few percent."""

    name = "synthetic"

    def __init__(self, medians: dict[str, float], seed: int = 0) -> None:
        self.medians = medians
        self.rng = np.random.default_rng(seed)
        self.log: list[str] = []
        self.opened: list[str] = []

    def open(self, model_path: Path, threads: int) -> Runner:
        self.opened.append(model_path.name)
        drift = float(np.exp(0.03 * self.rng.standard_normal()))
        return SyntheticRunner(self.medians[model_path.name] * drift, self.rng, self.log, model_path.name)

    def manifest(self, threads: int) -> dict[str, Any]:
        return {
            "backend": self.name,
            "threads": threads,
            "device_kind": "cpu",
            "device_class": "cpu-synthetic",
            "device": "synthetic",
        }


SYNTHETIC = MeasurementSettings(
    sessions=4, warmup_runs=2, warmup_s=0.0, min_iterations=20, min_session_s=0.0, bootstrap_resamples=200, block_s=0.0
)


def test_calibrate_noise_band_measures_the_model_against_itself(tmp_path: Path) -> None:
    backend = SyntheticBackend({"a.onnx": 5.0}, seed=1)
    band = calibrate_noise_band(tmp_path / "a.onnx", np.zeros(1), SYNTHETIC, runs=6, backend=backend)

    assert band.runs == 6 and len(band.ratio_cis) == 6
    assert backend.opened == ["a.onnx"] * (6 * 2 * SYNTHETIC.sessions)
    assert band.delta == pytest.approx(max(0.02, max(abs(r - 1.0) for r in band.ratios)))
    # Session drift of 3% gives A/A ratios within a few percent, and every run is a tie.
    assert band.delta < 0.1
    assert band.ties == 6


def test_calibrate_noise_band_needs_a_run(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1 run"):
        calibrate_noise_band(tmp_path / "a.onnx", np.zeros(1), SYNTHETIC, runs=0, backend=SyntheticBackend({}))


def test_calibrated_noise_band_runs_once_per_directory_and_setup(tmp_path: Path) -> None:
    backend = SyntheticBackend({"a.onnx": 5.0}, seed=3)
    settings = dataclasses.replace(SYNTHETIC, calibration_runs=3)
    first = calibrated_noise_band(tmp_path / "a.onnx", np.zeros(1), settings, tmp_path / "run-1", backend)
    opened = len(backend.opened)
    assert opened == 3 * 2 * settings.sessions and first.runs == 3

    again = calibrated_noise_band(tmp_path / "a.onnx", np.zeros(1), settings, tmp_path / "run-1", backend)
    assert len(backend.opened) == opened  # read back, not measured again
    assert again == first

    # Another thread count, or another run of the study, calibrates afresh.
    two_threads = dataclasses.replace(settings, threads=2)
    calibrated_noise_band(tmp_path / "a.onnx", np.zeros(1), two_threads, tmp_path / "run-1", backend)
    calibrated_noise_band(tmp_path / "a.onnx", np.zeros(1), settings, tmp_path / "run-2", backend)
    assert len(backend.opened) == 3 * opened
    assert len(list((tmp_path / "run-1").glob("*.json"))) == 2


def test_a_damaged_calibration_file_is_measured_again(tmp_path: Path) -> None:
    backend = SyntheticBackend({"a.onnx": 5.0}, seed=4)
    settings = dataclasses.replace(SYNTHETIC, calibration_runs=2)
    path = noise_band_file(tmp_path, tmp_path / "a.onnx", settings, "cpu-synthetic")
    path.write_text('{"delta": ')
    band = calibrated_noise_band(tmp_path / "a.onnx", np.zeros(1), settings, tmp_path, backend)
    assert band.runs == 2 and backend.opened
    assert json.loads(path.read_text())["delta"] == band.delta


def test_a_calibration_is_kept_per_device_class(tmp_path: Path) -> None:
    backend = SyntheticBackend({"a.onnx": 5.0}, seed=4)
    settings = dataclasses.replace(SYNTHETIC, calibration_runs=2)
    band = calibrated_noise_band(tmp_path / "a.onnx", np.zeros(1), settings, tmp_path, backend)
    assert band.device_class == "cpu-synthetic" and len(band.medians_ms) == 2
    # The file is named by the class, and a band from another class is never read for this one:
    # a host name can move to another CPU.
    path = noise_band_file(tmp_path, tmp_path / "a.onnx", settings, "cpu-synthetic")
    assert path.exists() and "cpu-synthetic" in path.name
    stored = json.loads(path.read_text())
    path.write_text(json.dumps({**stored, "delta": 0.4, "device_class": "cpu-another"}))
    backend.opened.clear()
    again = calibrated_noise_band(tmp_path / "a.onnx", np.zeros(1), settings, tmp_path, backend)
    assert backend.opened, "a band of another device class was reused"
    assert again.device_class == "cpu-synthetic" and again.delta != 0.4
    # A band stored before medians and classes were recorded still reads (without a re-run interval).
    old = NoiseBand.from_dict({k: v for k, v in stored.items() if k not in ("medians_ms", "device_class")})
    assert old.rerun_calibration() is None and old.delta == stored["delta"]


def test_calibrated_noise_band_on_a_real_model(
    teacher: Any, fast_settings: MeasurementSettings, tmp_path: Path
) -> None:
    settings = dataclasses.replace(fast_settings, calibration_runs=3)
    inputs = teacher.task.example_inputs(settings.batch_size)
    band = calibrated_noise_band(teacher.onnx_path, inputs, settings, tmp_path)
    # A model against itself: every A/A interval is a tie under the band it sets.
    assert band.runs == 3 and band.ties == 3
    assert 0.02 <= band.delta < 0.5


def test_measure_pair_uses_an_explicit_noise_band(tmp_path: Path) -> None:
    backend = SyntheticBackend({"a.onnx": 5.0, "b.onnx": 5.5}, seed=2)
    pair = measure_pair(tmp_path / "a.onnx", tmp_path / "b.onnx", np.zeros(1), SYNTHETIC, backend, noise_band=0.3)
    assert pair.noise_band == 0.3
    assert pair.verdict == "tie"


# ---------------------------------------------------------------------------------------------
# Interleaving in blocks


def test_blocks_of_zero_seconds_alternate_every_run(tmp_path: Path) -> None:
    backend = SyntheticBackend({"a.onnx": 1.0, "b.onnx": 1.0})
    settings = dataclasses.replace(SYNTHETIC, sessions=1, min_iterations=5, block_s=1e-9)
    runners = [backend.open(tmp_path / "a.onnx", 1), backend.open(tmp_path / "b.onnx", 1)]
    samples = time_interleaved(runners, np.zeros(1), settings)
    assert [len(s) for s in samples] == [5, 5]
    assert backend.log == ["a.onnx", "b.onnx"] * 5


class FakeClock:
    """Stands in for the ``time`` module of ``latency._protocol``: time moves only when a run takes it."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def perf_counter_ns(self) -> int:
        return int(self.now * 1e9)


def test_blocks_hold_several_runs_of_one_model(monkeypatch: pytest.MonkeyPatch) -> None:
    import lepton_search.objectives.latency._protocol as latency

    clock = FakeClock()
    monkeypatch.setattr(latency, "time", clock)

    class TwoMillisecondRunner(SyntheticRunner):
        def timed_run(self, inputs: Any) -> float:
            clock.now += 0.002
            return super().timed_run(inputs)

    log: list[str] = []
    rng = np.random.default_rng(0)
    runners: list[Runner] = [TwoMillisecondRunner(1.0, rng, log, "a"), TwoMillisecondRunner(1.0, rng, log, "b")]
    settings = dataclasses.replace(SYNTHETIC, min_iterations=3, min_session_s=0.05, block_s=0.0199)
    samples = time_interleaved(runners, np.zeros(1), settings)

    # Blocks of 10 runs (20 ms), alternating, until each model ran its 50 ms.
    assert log == (["a"] * 10 + ["b"] * 10) * 2 + ["a"] * 10
    assert [len(s) for s in samples] == [30, 20]


def test_interleaved_rounds_open_both_models_in_alternating_order(tmp_path: Path) -> None:
    backend = SyntheticBackend({"a.onnx": 2.0, "b.onnx": 8.0})
    settings = dataclasses.replace(SYNTHETIC, sessions=3, block_s=1e-9)
    pair = measure_pair(tmp_path / "a.onnx", tmp_path / "b.onnx", np.zeros(1), settings, backend)
    assert backend.opened == ["a.onnx", "b.onnx", "b.onnx", "a.onnx", "a.onnx", "b.onnx"]
    assert pair.verdict == "faster"
    assert pair.ratio == pytest.approx(0.25, rel=0.1)
    assert pair.ratio_ci[0] <= pair.ratio <= pair.ratio_ci[1]


# ---------------------------------------------------------------------------------------------
# Peak memory


def test_resident_memory_probe_sees_an_allocation() -> None:
    probe = ResidentMemoryProbe()
    probe.start()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, every page touched
    peak = probe.peak_mb()
    del block
    assert peak is not None
    assert peak >= 48


def test_peak_memory_flows_into_the_statistics(teacher: Any, fast_settings: MeasurementSettings) -> None:
    inputs = teacher.task.example_inputs(fast_settings.batch_size)
    pair = measure_pair(teacher.onnx_path, teacher.onnx_path, inputs, fast_settings)
    for stats in (pair.candidate, pair.baseline):
        assert stats.peak_memory_mb is not None and stats.peak_memory_mb >= 0
        assert stats.open_ms is not None and stats.open_ms > 0
    d = pair.to_dict()["candidate"]
    assert d["peak_memory_mb"] == pair.candidate.peak_memory_mb
    # One thread on the CPU: the model ran on the measuring thread, whose CPU time is recorded.
    for stats in (pair.candidate, pair.baseline):
        assert stats.cpu_share is not None and 0 < stats.cpu_share <= 1
        assert stats.cpu_median_ms is not None and 0 < stats.cpu_median_ms <= max(stats.session_medians_ms) * 1.05
    alone = measure_model(teacher.onnx_path, inputs, fast_settings)
    assert alone.sessions == fast_settings.sessions and alone.peak_memory_mb is not None


def test_sequential_sessions_are_still_available(teacher: Any, fast_settings: MeasurementSettings) -> None:
    settings = dataclasses.replace(fast_settings, block_s=0.0)
    backend = RecordingBackend()
    pair = measure_pair(teacher.onnx_path, teacher.onnx_path, teacher.task.example_inputs(64), settings, backend)
    assert len(backend.opened) == 2 * settings.sessions
    assert pair.verdict in ("faster", "slower", "tie")
    assert pair.candidate.peak_memory_mb is not None


# ---------------------------------------------------------------------------------------------
# Inputs by name, backends and their availability


def test_onnx_runner_takes_one_array_or_inputs_by_name(teacher: Any) -> None:
    runner = get_backend("onnxruntime-cpu").open(teacher.onnx_path, threads=1)
    x = teacher.task.example_inputs(4)
    np.testing.assert_array_equal(runner.run(x), runner.run({"input": x}))
    assert runner.timed_run({"input": x}) > 0
    runner.close()


def test_every_known_backend_reports_its_availability() -> None:
    status = available_backends()
    assert list(status) == known_backends()
    assert {
        "onnxruntime-cpu",
        "onnxruntime-cuda",
        "onnxruntime-tensorrt",
        "torch-cpu",
        "torch-cuda",
        "torch-cuda-compile",
        "torch-cuda-graphs",
    } <= set(status)
    assert status["onnxruntime-cpu"].usable and status["torch-cpu"].usable
    for name, s in status.items():
        assert s.usable or (s.reason and s.hint), name


@pytest.mark.parametrize(("backend", "provider"), [("onnxruntime-cuda", "CUDA"), ("onnxruntime-tensorrt", "Tensorrt")])
def test_ort_gpu_backends_follow_the_providers_onnxruntime_offers(
    monkeypatch: pytest.MonkeyPatch, backend: str, provider: str
) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert not available_backends()[backend].usable
    with pytest.raises(
        MeasurementError, match=r"not usable on this machine.*Usable here: onnxruntime-cpu.*onnxruntime-gpu"
    ):
        get_backend(backend)
    assert get_backend(backend, require_usable=False).name == backend

    monkeypatch.setattr(
        ort, "get_available_providers", lambda: [f"{provider}ExecutionProvider", "CPUExecutionProvider"]
    )
    assert available_backends()[backend].usable
    assert get_backend(backend).device_kind == "gpu"


@pytest.mark.filterwarnings("ignore:Specified provider:UserWarning")
def test_an_ort_gpu_session_that_falls_back_to_the_cpu_is_refused(
    monkeypatch: pytest.MonkeyPatch, teacher: Any
) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has the CUDA provider: the fallback cannot be provoked")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(MeasurementError, match="not CUDAExecutionProvider"):
        get_backend("onnxruntime-cuda").open(teacher.onnx_path, threads=1)


def test_torch_cuda_backends_follow_torch_cuda_availability(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    status = available_backends()
    for name in ("torch-cuda", "torch-cuda-compile", "torch-cuda-graphs"):
        assert not status[name].usable
        assert "torch" in status[name].reason and "CUDA build of torch" in status[name].hint
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert available_backends()["torch-cuda"].usable
    assert available_backends()["torch-cuda-graphs"].usable


def test_cpu_manifest_records_library_threads_and_device() -> None:
    import torch

    ort_manifest = get_backend("onnxruntime-cpu").manifest(3)
    torch_manifest = get_backend("torch-cpu").manifest(2)
    assert ort_manifest["onnxruntime"] == ort.__version__ and ort_manifest["threads"] == 3
    assert torch_manifest["torch"] == torch.__version__ and torch_manifest["threads"] == 2
    for manifest in (ort_manifest, torch_manifest):
        assert manifest["device_kind"] == "cpu" and manifest["device"] and manifest["execution_provider"]
        assert manifest["device_class"] == cpu_identity().device_class
    # What the libraries chose, where they say it: torch's ATen kernel set on torch backends,
    # ONNX Runtime's CPU device on ONNX Runtime backends.
    assert torch_manifest["libraries"]["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert ort_manifest["libraries"]["onnxruntime_cpu_device"]["vendor"]


NVIDIA_SMI_CSV = "NVIDIA H100 80GB HBM3, 550.54.15, 1980, 2619, 1980, 2619, 34, 71.52, P0, 81559\n"


def test_nvidia_smi_output_is_parsed_into_clocks() -> None:
    (row,) = parse_nvidia_smi_csv(NVIDIA_SMI_CSV)
    assert row["name"] == "NVIDIA H100 80GB HBM3"
    assert row["driver_version"] == "550.54.15"
    assert row["clocks.sm"] == 1980.0 and row["clocks.mem"] == 2619.0
    assert row["pstate"] == "P0"
    (row,) = parse_nvidia_smi_csv("Tesla T4, 535.1, [N/A], [N/A], 1590, 5001, 40, [N/A], P8, 15360\n")
    assert row["clocks.sm"] is None and row["power.draw"] is None and row["clocks.max.sm"] == 1590.0


def test_gpu_manifest_tolerates_a_machine_without_nvidia_smi(monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import torch

    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert nvidia_smi() == {}
    manifest = gpu_manifest()
    assert manifest["device_kind"] == "gpu" and manifest["device_class"].startswith("gpu-")
    assert manifest["clocks_mhz"] is None
    assert manifest["device"] == "unknown GPU"


def test_gpu_manifest_reads_clocks_from_nvidia_smi(monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil
    import subprocess

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(
        subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout=NVIDIA_SMI_CSV, stderr="")
    )
    manifest = gpu_manifest()
    assert manifest["device"] == "NVIDIA H100 80GB HBM3"
    assert manifest["clocks_mhz"] == {"sm": 1980.0, "mem": 2619.0, "max_sm": 1980.0, "max_mem": 2619.0}
    assert manifest["driver"] == "550.54.15"


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["onnxruntime-cuda", "onnxruntime-tensorrt"])
def test_ort_gpu_backend_measures_on_the_gpu(teacher: Any, fast_settings: MeasurementSettings, backend: str) -> None:
    if not available_backends()[backend].usable:
        pytest.skip(available_backends()[backend].reason)
    settings = dataclasses.replace(fast_settings, backend=backend)
    inputs = teacher.task.example_inputs(64)
    runner = get_backend(backend).open(teacher.onnx_path, threads=1)
    reference = get_backend("onnxruntime-cpu").open(teacher.onnx_path, threads=1).run(inputs)
    np.testing.assert_allclose(runner.run(inputs), reference, rtol=1e-2, atol=1e-2)
    pair = measure_pair(teacher.onnx_path, teacher.onnx_path, inputs, settings)
    assert pair.device["device_kind"] == "gpu" and pair.device["execution_provider"] == get_backend(backend).provider
    assert "clocks_mhz" in pair.device
    assert pair.candidate.peak_memory_mb is not None
