"""Re-run intervals (``rerun_ci_ms``, ``ratio_rerun_ci``): where the median, or the ratio, of a
re-run in a fresh process falls.

The statistics are checked on simulated run medians with a known between-run spread; ``bench`` is
run for real (as a subprocess, on a simulated CPU too), since its JSON is what users read.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lepton_search.cli import EXIT_ERROR, main
from lepton_search.devices._machine import cpu_identity
from lepton_search.objectives.latency import MIN_RERUN_REFERENCES, RerunCalibration
from lepton_search.testing import SIMULATED_CPUS, simulated_cpu

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_cli_bench import mlp


@pytest.mark.parametrize("spread", [0.02, 0.08, 0.2])
def test_the_interval_covers_a_rerun_about_as_often_as_it_says(spread: float) -> None:
    # Each "run" has a median off the true level by a log-normal between-run effect, as fresh
    # processes on a shared machine are. A 95% prediction interval from 5 calibration runs plus this
    # run's own must hold the next run's median about 95% of the time, whatever the spread.
    rng = np.random.default_rng(7)
    covered, trials = 0, 4000
    for _ in range(trials):
        medians = 10.0 * np.exp(spread * rng.standard_normal(7))
        calibration = RerunCalibration(tuple(medians[:5]))
        low, high = calibration.interval(medians[5])
        covered += low <= medians[6] <= high
    assert 0.93 <= covered / trials <= 0.97


def test_a_candidate_interval_carries_the_reference_spread_over_by_the_ratio() -> None:
    calibration = RerunCalibration((10.0, 11.0, 9.5, 10.5))
    base = calibration.interval(10.2)
    cand = calibration.interval(10.2, ratio=0.5, ratio_ci=(0.49, 0.51))
    assert base is not None and cand is not None
    centre = lambda i: math.sqrt(i[0] * i[1])  # noqa: E731
    assert centre(cand) == pytest.approx(0.5 * centre(base))
    # The ratio's own uncertainty widens the candidate's interval, relative to its centre.
    assert cand[1] / cand[0] > base[1] / base[0]
    # Too few reference medians: no interval rather than a meaningless one.
    assert RerunCalibration((10.0,)).interval(10.0) is None
    assert MIN_RERUN_REFERENCES == 3


@pytest.mark.parametrize("spread", [0.005, 0.02, 0.06])
def test_the_ratio_interval_covers_a_rerun_about_as_often_as_it_says(spread: float) -> None:
    # Every measurement's log ratio strays from the truth by the same noise; A/A runs show that
    # noise around a true ratio of 1. The within-run ratio_ci is simulated as far too narrow (as
    # measured: 63% coverage), so the coverage must come from the A/A component.
    rng = np.random.default_rng(11)
    covered, trials, true_ratio = 0, 4000, 0.47
    for _ in range(trials):
        aa = np.exp(spread * rng.standard_normal(5))
        first, rerun = true_ratio * np.exp(spread * rng.standard_normal(2))
        narrow = (first * (1 - spread / 4), first * (1 + spread / 4))
        low, high = RerunCalibration((10.0,) * 5, aa_ratios=tuple(aa)).ratio_interval(first, narrow)
        assert low <= narrow[0] and narrow[1] <= high
        covered += low <= rerun <= high
    assert 0.93 <= covered / trials <= 0.975


def test_the_ratio_interval_never_drops_the_within_run_interval_and_needs_aa_ratios() -> None:
    calibration = RerunCalibration((10.0, 10.0, 10.0), aa_ratios=(1.0, 1.0, 1.0))
    # A/A runs that agreed exactly add nothing: the interval is the run's own.
    assert calibration.ratio_interval(0.5, (0.45, 0.56)) == (0.45, 0.56)
    # A model measured alone has no A/A ratios: no ratio re-run interval rather than a made-up one.
    assert RerunCalibration((10.0, 11.0, 9.5)).ratio_interval(0.5, (0.49, 0.51)) is None
    assert RerunCalibration((10.0,) * 3, aa_ratios=(1.01, 0.99)).ratio_interval(0.5, (0.49, 0.51)) is None


def _bench_json(*args: str, env: dict[str, str] | None = None) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "lepton_search", "bench", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rerun-models")
    return {"wide": mlp(root / "wide.onnx", 512, depth=2), "narrow": mlp(root / "narrow.onnx", 16)}


def test_bench_json_names_the_isa_the_class_and_a_rerun_interval(models: dict[str, Path]) -> None:
    d = _bench_json(str(models["wide"]), "--sessions", "2", "--batch-size", "8", "--aa-runs", "3")
    device = d["device"]
    assert device["device_class"].startswith("cpu-") and device["device_class_name"]
    assert (device["cpu"]["isa"] and device["cpu"]["microarchitecture"] is not None) or device["cpu"]["family"]
    candidate = d["candidate"]
    low, high = candidate["rerun_ci_ms"]  # the new key, beside the within-run ci_ms
    assert low < candidate["median_ms"] < high or low < high
    assert len(candidate["ci_ms"]) == 2
    assert device["protocol"]["rerun_calibration"]["runs"] == 3
    assert len(device["protocol"]["rerun_calibration"]["medians_ms"]) == 3
    # The same command on a simulated CPU (same name as another EPYC) reports that CPU and its class.
    zen5 = _bench_json(
        str(models["narrow"]),
        "--sessions",
        "2",
        "--aa-runs",
        "0",
        env={"LEPTON_CPUINFO": str(SIMULATED_CPUS["epyc-zen5"])},
    )
    assert zen5["device"]["device_class_name"] == "Zen 5, AVX-512 VNNI/BF16"
    assert {"avx512_vnni", "avx512_bf16"} <= set(zen5["device"]["cpu"]["isa"])
    with simulated_cpu("epyc-zen5"):
        assert zen5["device"]["device_class"] == cpu_identity().device_class
    assert zen5["candidate"]["rerun_ci_ms"] is None
    assert any("no re-run interval" in note for note in zen5["device"]["protocol"]["notes"])


def test_bench_against_a_baseline_gives_both_rerun_intervals(
    capsys: pytest.CaptureFixture[str], models: dict[str, Path]
) -> None:
    code = main(
        [
            "bench",
            str(models["narrow"]),
            "--baseline",
            str(models["wide"]),
            "--sessions",
            "2",
            "--batch-size",
            "8",
            "--aa-runs",
            "3",
            "--noise-band",
            "auto",
            "--json",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    d = json.loads(out)
    for side in ("candidate", "baseline"):
        low, high = d[side]["rerun_ci_ms"]
        assert 0 < low < high
    # The candidate's interval is the baseline's carried over by the (interleaved) ratio.
    centre = lambda i: math.sqrt(i[0] * i[1])  # noqa: E731
    assert centre(d["candidate"]["rerun_ci_ms"]) / centre(d["baseline"]["rerun_ci_ms"]) == pytest.approx(d["ratio"])
    calibration = d["device"]["protocol"]["aa_calibration"]
    assert len(calibration["medians_ms"]) == 3 and calibration["device_class"] == d["device"]["device_class"]
    # The ratio's re-run interval, beside the within-run ratio_ci it contains, from the A/A ratios.
    low, high = d["ratio_rerun_ci"]
    assert low <= d["ratio_ci"][0] <= d["ratio"] <= d["ratio_ci"][1] <= high
    assert d["device"]["protocol"]["rerun_calibration"]["aa_ratios"] == calibration["ratios"]


def test_auto_noise_band_without_calibration_runs_is_an_error(
    capsys: pytest.CaptureFixture[str], models: dict[str, Path]
) -> None:
    code = main(
        ["bench", str(models["narrow"]), "--baseline", str(models["wide"]), "--noise-band", "auto", "--aa-runs", "0"]
    )
    _, err = capsys.readouterr()
    assert code == EXIT_ERROR and "aa_runs = 0" in err and "at least 2" in err
