"""`lepton-search nightly` as cron would run it: real processes, real Ray, real storage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from lepton_search.errors import ConfigError
from lepton_search.search._nightly import compare, last_snapshot_on, not_compared, study_files
from lepton_search.testing import study_dict, write_toml


def _nightly(study_file: Path, cwd: Path, date: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lepton_search", "nightly", str(study_file), "--date", date, "-o", str(cwd / "reports")],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
    )


@pytest.mark.slow
def test_nightly_is_idempotent_and_reports_a_slowed_backend(tmp_path: Path, artifacts: Path) -> None:
    data = study_dict(tmp_path, artifacts, budget={"n_trials": 2}, nightly={"trials": 2, "regression_tolerance": 0.5})
    study_file = write_toml(tmp_path / "study.toml", data)
    storage = f"sqlite:///{tmp_path / 'study.db'}"

    first = _nightly(study_file, tmp_path, "2026-11-01")
    assert first.returncode == 0, first.stdout + first.stderr
    assert len(optuna.load_study(study_name="test-study", storage=storage).trials) == 2

    again = _nightly(study_file, tmp_path, "2026-11-01")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already ran tonight" in again.stderr
    assert len(optuna.load_study(study_name="test-study", storage=storage).trials) == 2, "no double count"

    second = _nightly(study_file, tmp_path, "2026-11-02")
    assert second.returncode == 0, second.stdout + second.stderr
    report = json.loads((tmp_path / "reports" / "test-study" / "2026-11-02.json").read_text())
    assert report["status"] == "ok" and report["previous_snapshot"] == "2026-11-01"
    assert report["added_trials"] == 2
    assert report["manifest"]["versions"]["onnxruntime"]
    assert (tmp_path / "reports" / "test-study" / "2026-11-02.html").exists()

    slowed = _nightly(study_file, tmp_path, "2026-11-03", LEPTON_TEST_SLOWDOWN_MS="20")
    assert slowed.returncode == 3, slowed.stdout + slowed.stderr
    assert "REGRESSION" in slowed.stderr
    report = json.loads((tmp_path / "reports" / "test-study" / "2026-11-03.json").read_text())
    assert report["status"] == "regressed" and report["regressions"]


def _snapshot(median: float, ci: tuple[float, float], device_class: str | None = "cpu-aaaaaaaaaaaa") -> dict:
    again = {"median_ms": median, "ci_ms": list(ci), "device_class": device_class, "device_class_name": device_class}
    return {"trials": [{"number": 1, "label": "x", "latency": {"remeasured": again}}]}


def test_compare_flags_only_slowdowns_beyond_the_tolerance() -> None:
    before = _snapshot(1.0, (0.95, 1.05))
    assert compare(None, before, 0.25) == []
    assert compare(before, _snapshot(1.2, (1.1, 1.3)), 0.25) == []  # within tolerance
    assert compare(before, _snapshot(0.5, (0.45, 0.55)), 0.25) == []  # faster is not a regression
    [regression] = compare(before, _snapshot(1.6, (1.5, 1.7)), 0.25)
    assert regression["number"] == 1 and regression["slowdown"] == pytest.approx(1.6)
    assert not_compared(before, _snapshot(1.6, (1.5, 1.7))) == []


def test_compare_only_within_one_device_class() -> None:
    # The job moved to a CPU twice as fast under the same model name: a 1.6x regression there reads
    # as 0.8x of the old CPU's latency. Across classes nothing is compared, and the report says why.
    before = _snapshot(1.0, (0.95, 1.05), "cpu-avx2avx2avx2")
    moved = _snapshot(0.8, (0.75, 0.85), "cpu-zen5zen5zen5")
    assert compare(before, moved, 0.25) == []
    [skipped] = not_compared(before, moved)
    assert skipped["number"] == 1 and "another device class" in skipped["reason"]
    assert "cpu-avx2avx2avx2" in skipped["reason"] and "cpu-zen5zen5zen5" in skipped["reason"]
    # Nor against a snapshot of an older version, which did not record its class.
    assert compare(_snapshot(1.0, (0.95, 1.05), None), _snapshot(1.6, (1.5, 1.7)), 0.25) == []
    [old] = not_compared(_snapshot(1.0, (0.95, 1.05), None), _snapshot(1.6, (1.5, 1.7)))
    assert "did not record its device class" in old["reason"]


def test_the_previous_snapshot_is_the_last_one_on_this_device_class(tmp_path: Path) -> None:
    from lepton_search.storage import RunLedger

    ledger = RunLedger(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        for date, klass in (("2026-11-01", "cpu-a"), ("2026-11-02", "cpu-b"), ("2026-11-03", "cpu-b")):
            ledger.save_snapshot("s", date, {"trials": [], "date": date}, {"device_class": klass})
        assert last_snapshot_on(ledger, "s", "2026-11-04", "cpu-a")["run_date"] == "2026-11-01"
        assert last_snapshot_on(ledger, "s", "2026-11-04", "cpu-b")["run_date"] == "2026-11-03"
        # No snapshot on this class: the newest one, whose points are then not compared.
        assert last_snapshot_on(ledger, "s", "2026-11-04", "cpu-c")["run_date"] == "2026-11-03"
        assert last_snapshot_on(ledger, "s", "2026-11-01", "cpu-a") is None
    finally:
        ledger.dispose()


def test_nightly_paths(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="holds no"):
        study_files(tmp_path)
    (tmp_path / "b.toml").write_text("")
    (tmp_path / "a.toml").write_text("")
    assert [p.name for p in study_files(tmp_path)] == ["a.toml", "b.toml"]
    with pytest.raises(ConfigError, match="neither a study file nor a folder"):
        study_files(tmp_path / "missing")
