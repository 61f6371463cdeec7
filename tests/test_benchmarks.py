"""The benchmarks whose figures the README quotes keep their checks: each runs on a small setting,
so that a change in what they count cannot silently break them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def _benchmark(name: str, *args: str, cwd: Path, timeout: int = 900, check: bool = True) -> dict:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *args, "--json"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    failure = f"{name} failed its own check:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0 or not check, failure
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_fault_injection_counts_evaluations_and_loses_nothing(tmp_path: Path) -> None:
    result = _benchmark("fault_injection.py", "--trials", "6", "--kills", "1", "--workdir", str(tmp_path), cwd=tmp_path)
    assert result["final_trials"] == result["budget"] == 6
    assert result["lost_completed"] == 0 and result["unexplained"] == 0


def _postgres_args() -> list[str]:
    """``--postgres-url URL`` when the test server answers, else ``--skip-postgres`` (or a failure
    under ``LEPTON_REQUIRE_POSTGRES=1``)."""
    url = os.environ.get("LEPTON_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    try:
        import psycopg

        psycopg.connect(url, connect_timeout=3).close()
    except Exception as e:
        if os.environ.get("LEPTON_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL at {url} is required (LEPTON_REQUIRE_POSTGRES=1) but unreachable: {e}")
        return ["--skip-postgres"]
    return ["--postgres-url", url]


@pytest.mark.slow
def test_driver_overhead_times_the_driver_and_two_drivers_evaluate_nothing_twice(tmp_path: Path) -> None:
    storage_args = _postgres_args()
    result = _benchmark(
        "driver_overhead.py",
        "--trials",
        "8",
        "--skip-quickstart",
        *storage_args,
        "--workdir",
        str(tmp_path),
        cwd=tmp_path,
        check=False,  # its exit code also carries the quickstart's targets, skipped here
    )
    storages = ["sqlite"] if "--skip-postgres" in storage_args else ["sqlite", "postgresql"]
    assert set(result["driver_ms_per_trial"]) == {"sqlite", "postgresql"}
    assert result["two_drivers_duplicates"] == 0
    assert result["workers_speedup_2v1"] is None and result["workers_bound_2v1"] is None  # skipped
    for storage in storages:
        assert result["driver_ms_per_trial"][storage] > 0
        assert result["driver_ms_per_trial_two_drivers"][storage] > 0
        for drivers in (1, 2):
            run = result["noop"][f"{storage}/{drivers}"]
            assert run["exit_codes"] == [0] * drivers, run["errors"]
            # Exactly the budget: the drivers share it as numbered slots, never a duplicate.
            assert run["budget"] == 8 and run["final_trials"] == 8, run
            assert run["duplicates"] == run["duplicate_trials_in_study"] == 0, run
            assert run["failed"] == 0 and not run["missing_hooks"], run
            assert run["trials_recorded"] >= 8
            assert set(run["categories_ms_per_trial"]) >= {"ask", "tell", "attributes", "cache", "other"}
        assert len(result["noop"][f"{storage}/2"]["trials_per_driver"]) == 2  # both drivers evaluated
    judged = result["targets_judged"]
    assert judged["two_drivers_duplicates"] and judged["noop_drivers_exited_0"] and judged["postgresql_measured"]
    assert result["two_drivers_over_budget"] == 0 and judged["two_drivers_within_budget"]


def test_quickstart_seeds_reads_the_best_speedup_and_the_groups_from_a_frontier() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import quickstart_seeds
    finally:
        sys.path.remove(str(BENCHMARKS))
    data = json.loads((ROOT / "tests" / "search_tests" / "data" / "study-2026-12-02.frontier.json").read_text())
    summary = quickstart_seeds.summarize(data)
    (entry,) = data["trials"]
    latency = entry["latency"]["remeasured"]
    within = entry["values"]["accuracy"] >= data["baseline"]["values"]["accuracy"] - 0.01
    assert summary["best_speedup_within_1pt"] == (round(1 / latency["ratio_to_baseline"], 2) if within else None)
    assert [g["leader"] for g in summary["groups"]] == [entry["number"]]
    assert summary["leaders_simplest"]
