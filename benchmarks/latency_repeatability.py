"""Can the latency measurement be trusted? Three checks on the digits CNN, at one thread.

(a) A/A: the baseline ONNX model benchmarked against itself ``--runs`` times. Every verdict
    should be a tie and every ratio interval should contain 1.0 (targets: >= 19/20 ties, 20/20
    intervals containing 1.0). The noise band these runs support is printed too.
(b) A known difference: the teacher with 50% of its channels removed (about a quarter of the
    multiply-accumulates) against the teacher, ``--runs`` times (target: every verdict "faster").
(c) Repeatability across processes: ``--repeats`` separate ``lepton-search bench`` runs of the
    baseline; the spread of their medians, max/min - 1 (target: <= 10%).

Usage::

    python benchmarks/latency_repeatability.py [--json] [--runs 20] [--cache-dir ./lepton-artifacts/cache]

The teacher is trained on first use (about a minute here) and cached in ``--cache-dir``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BATCH_SIZE = 64  # the digits task's measurement batch: at batch 1 session overhead dominates
THREADS = 1


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def prepare_models(cache_dir: Path, work: Path) -> tuple[Path, Path]:
    """The teacher's ONNX export and its 50%-channel-pruned copy (no fine-tuning)."""
    from lepton_search.objectives import compress
    from lepton_search.objectives._evaluate import baseline_onnx
    from lepton_search.objectives.tasks.digits import DigitsCNNTask
    from lepton_search.spaces import CompressionConfig, PruneConfig

    task = DigitsCNNTask()
    start = time.perf_counter()
    teacher = task.teacher(cache_dir)
    log(f"teacher ready in {time.perf_counter() - start:.1f} s ({cache_dir})")
    baseline = baseline_onnx(task, teacher, cache_dir)
    pruned = compress(teacher, CompressionConfig(pruning=PruneConfig("channel", 0.5)), task, work).onnx_path
    return baseline, pruned


def bench_settings(sessions: int) -> Any:
    from lepton_search.objectives import MeasurementSettings

    return MeasurementSettings(threads=THREADS, sessions=sessions, batch_size=BATCH_SIZE)


def aa_check(baseline: Path, runs: int, sessions: int) -> dict[str, Any]:
    from lepton_search.objectives import bench, noise_band_from_ratios

    settings = bench_settings(sessions)
    rows = []
    for r in range(runs):
        result = bench(baseline, baseline, settings=dataclasses.replace(settings, seed=r))
        d = result.to_dict()
        rows.append({"verdict": d["verdict"], "ratio": d["ratio"], "ratio_ci": d["ratio_ci"]})
        log(f"  A/A {r + 1}/{runs}: {d['ratio']:.3f} [{d['ratio_ci'][0]:.3f}, {d['ratio_ci'][1]:.3f}] {d['verdict']}")
    ratios = [row["ratio"] for row in rows]
    return {
        "runs": runs,
        "noise_band": settings.noise_band,
        "ties": sum(row["verdict"] == "tie" for row in rows),
        "cis_containing_one": sum(row["ratio_ci"][0] <= 1.0 <= row["ratio_ci"][1] for row in rows),
        "largest_deviation": max(abs(x - 1.0) for x in ratios),
        "noise_band_from_these_runs": {
            "max": noise_band_from_ratios(ratios),
            "q95": noise_band_from_ratios(ratios, quantile=0.95),
        },
        "median_ci_width": statistics.median(row["ratio_ci"][1] - row["ratio_ci"][0] for row in rows),
        "runs_detail": rows,
    }


def difference_check(pruned: Path, baseline: Path, runs: int, sessions: int) -> dict[str, Any]:
    from lepton_search.objectives import bench

    settings = bench_settings(sessions)
    rows = []
    for r in range(runs):
        d = bench(pruned, baseline, settings=dataclasses.replace(settings, seed=r)).to_dict()
        rows.append({"verdict": d["verdict"], "ratio": d["ratio"], "ratio_ci": d["ratio_ci"]})
        low, high = d["ratio_ci"]
        log(f"  pruned/full {r + 1}/{runs}: {d['ratio']:.3f} [{low:.3f}, {high:.3f}] {d['verdict']}")
    ratios = [row["ratio"] for row in rows]
    return {
        "runs": runs,
        "faster": sum(row["verdict"] == "faster" for row in rows),
        "ratio_median": statistics.median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
        "speedup_median": 1.0 / statistics.median(ratios),
        "runs_detail": rows,
    }


def repeatability_check(model: Path, repeats: int, sessions: int) -> dict[str, Any]:
    medians: list[float] = []
    cpu_medians: list[float] = []
    shares: list[float] = []
    for r in range(repeats):
        command = [
            sys.executable,
            "-m",
            "lepton_search",
            "bench",
            str(model),
            "--threads",
            str(THREADS),
            "--batch-size",
            str(BATCH_SIZE),
            "--sessions",
            str(sessions),
            "--json",
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"lepton-search bench failed ({done.returncode}): {done.stderr.strip()}")
        stats = json.loads(done.stdout)["candidate"]
        medians.append(stats["median_ms"])
        cpu_medians.append(stats["cpu_median_ms"])
        shares.append(stats["cpu_share"])
        log(f"  process {r + 1}/{repeats}: median {stats['median_ms']:.3f} ms (core {stats['cpu_share']:.0%} of time)")
    return {
        "processes": repeats,
        "medians_ms": medians,
        "spread": max(medians) / min(medians) - 1.0,
        # Diagnostics (not the target): how much of the time the measuring thread had a core, and
        # the CPU time per run, which waiting for a core does not inflate.
        "cpu_shares": shares,
        "cpu_medians_ms": cpu_medians,
        "cpu_spread": max(cpu_medians) / min(cpu_medians) - 1.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--runs", type=int, default=20, help="A/A and known-difference runs (default 20)")
    parser.add_argument("--repeats", type=int, default=5, help="bench processes for repeatability (default 5)")
    parser.add_argument("--sessions", type=int, default=5, help="sessions per model per run (bench's default 5)")
    parser.add_argument("--cache-dir", type=Path, default=Path("lepton-artifacts/cache"), help="teacher cache")
    args = parser.parse_args(argv)

    from lepton_search.objectives import get_backend

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lepton-repeatability-") as tmp:
        baseline, pruned = prepare_models(args.cache_dir, Path(tmp))
        log(f"(a) A/A, {args.runs} runs")
        aa = aa_check(baseline, args.runs, args.sessions)
        log(f"(b) 50% channel-pruned vs unpruned, {args.runs} runs")
        diff = difference_check(pruned, baseline, args.runs, args.sessions)
        log(f"(c) {args.repeats} separate bench processes")
        repeat = repeatability_check(baseline, args.repeats, args.sessions)
    manifest = get_backend("onnxruntime-cpu").manifest(THREADS)
    targets = {
        "aa_ties": aa["ties"] >= args.runs - args.runs // 20,
        "aa_cis_containing_one": aa["cis_containing_one"] == args.runs,
        "pruned_faster": diff["faster"] == args.runs,
        "repeatability": repeat["spread"] <= 0.10,
    }
    report = {
        "device": {k: manifest[k] for k in ("backend", "onnxruntime", "threads", "device", "cpu_count")},
        "protocol": {"batch_size": BATCH_SIZE, "threads": THREADS, "sessions": args.sessions},
        "aa": aa,
        "known_difference": diff,
        "repeatability": repeat,
        "targets_met": targets,
        "load_average": list(os.getloadavg()),
        "elapsed_s": time.perf_counter() - started,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0

    def mark(ok: bool) -> str:
        return "met" if ok else "NOT MET"

    n = args.runs
    print(f"Latency repeatability: digits CNN, batch {BATCH_SIZE}, {THREADS} thread, {args.sessions} sessions/model")
    print(f"  on {manifest['device']} ({manifest['cpu_count']} cores), onnxruntime {manifest['onnxruntime']}")
    print()
    print(f"(a) A/A, baseline against itself, {n} runs (noise band {aa['noise_band']:.0%}):")
    print(f"    tie verdicts            {aa['ties']}/{n}   target >= {n - n // 20}/{n}: {mark(targets['aa_ties'])}")
    print(
        f"    CIs containing 1.0      {aa['cis_containing_one']}/{n}   target {n}/{n}: "
        f"{mark(targets['aa_cis_containing_one'])}"
    )
    print(
        f"    largest |ratio - 1|     {aa['largest_deviation']:.3f}; median CI width {aa['median_ci_width']:.3f}; "
        f"noise band these runs support: {aa['noise_band_from_these_runs']['max']:.3f} (max), "
        f"{aa['noise_band_from_these_runs']['q95']:.3f} (95th percentile)"
    )
    print(f"(b) 50% channel-pruned vs unpruned, {n} runs:")
    print(f"    judged faster           {diff['faster']}/{n}   target {n}/{n}: {mark(targets['pruned_faster'])}")
    print(
        f"    ratio median            {diff['ratio_median']:.3f} (speedup {diff['speedup_median']:.2f}x), "
        f"range {diff['ratio_range'][0]:.3f}-{diff['ratio_range'][1]:.3f}"
    )
    print(f"(c) {repeat['processes']} separate `lepton-search bench` processes of the baseline:")
    print(f"    medians (ms)            {', '.join(f'{m:.3f}' for m in repeat['medians_ms'])}")
    print(f"    spread (max/min - 1)    {repeat['spread']:.1%}   target <= 10%: {mark(targets['repeatability'])}")
    print(
        f"    diagnostics: the measuring thread had a core {', '.join(f'{x:.0%}' for x in repeat['cpu_shares'])} "
        f"of the time; CPU time per run {', '.join(f'{m:.3f}' for m in repeat['cpu_medians_ms'])} ms "
        f"(spread {repeat['cpu_spread']:.1%})"
    )
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {manifest['cpu_count']} cores")
    print(f"elapsed {report['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
