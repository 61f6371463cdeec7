"""The benchmarks whose figures the README quotes keep their checks: each runs on a small setting,
so that a change in what they count cannot silently break them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def _benchmark(name: str, *args: str, cwd: Path, timeout: int = 900) -> dict:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *args, "--json"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{name} failed its own check:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_fault_injection_counts_evaluations_and_loses_nothing(tmp_path: Path) -> None:
    result = _benchmark("fault_injection.py", "--trials", "6", "--kills", "1", "--workdir", str(tmp_path), cwd=tmp_path)
    assert result["final_trials"] == result["budget"] == 6
    assert result["lost_completed"] == 0 and result["unexplained"] == 0


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
