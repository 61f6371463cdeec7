"""Can the latency measurement be trusted? Checks on the digits CNN, at one thread.

(a) A/A: the baseline ONNX model benchmarked against itself ``--runs`` times. Every verdict
    should be a tie and every ratio interval should contain 1.0 (targets: >= 19/20 ties, 20/20
    intervals containing 1.0). The noise band these runs support is printed too.
(b) A known difference: the teacher with 50% of its channels removed (about a quarter of the
    multiply-accumulates) against the teacher, ``--runs`` times (target: every verdict "faster").
(c) Re-runs of one model: ``--processes`` fresh ``lepton-search bench BASELINE --json`` processes
    (bench's defaults: 5 sessions, 5 calibration runs). The share of the later runs whose median
    lies inside the first run's re-run interval (``rerun_ci_ms``; target >= 90%), and inside its
    within-run interval (``ci_ms``, for comparison: it does not claim to cover re-runs); each
    re-run interval's half-width relative to its median (target <= 25%); the spread of the
    medians (max/min - 1).
(d) Re-runs of one A/B pair: ``--processes`` fresh ``bench PRUNED --baseline BASELINE --json``
    processes (bench's defaults: 5 sessions, 5 A/A calibration runs of the baseline). The share of
    later ratios inside the first run's re-run ratio interval (``ratio_rerun_ci``; target >= 95%),
    and inside its within-run ``ratio_ci`` (for comparison), the re-run intervals' half-widths
    (target <= 25%), and the spread of the ratios over the first five processes (max/min - 1,
    target <= 5%).

Every process must report one device class (latency is compared only within one); the report
names it, with the CPU's ISA.

Usage::

    flock /work/cpu.lock python benchmarks/latency_repeatability.py [--json] [--runs 20] [--processes 20]

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
        result = bench(baseline, baseline, settings=dataclasses.replace(settings, seed=r), aa_runs=0)
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
        d = bench(pruned, baseline, settings=dataclasses.replace(settings, seed=r), aa_runs=0).to_dict()
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


def _bench_process(args: list[str]) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "lepton_search",
        "bench",
        *args,
        "--threads",
        str(THREADS),
        "--batch-size",
        str(BATCH_SIZE),
        "--json",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"lepton-search bench failed ({done.returncode}): {done.stderr.strip()}")
    return json.loads(done.stdout)


def _one_device_class(results: list[dict[str, Any]]) -> str:
    classes = {r["device"]["device_class"] for r in results}
    if len(classes) != 1:
        raise SystemExit(f"The bench processes ran on different device classes {sorted(classes)}; compare within one.")
    return classes.pop()


def _inside(value: float, interval: list[float] | None) -> bool:
    return interval is not None and interval[0] <= value <= interval[1]


def _half_width(interval: list[float] | None, value: float) -> float | None:
    return None if interval is None else (interval[1] - interval[0]) / 2.0 / value


def rerun_check(model: Path, processes: int, sessions: int, aa_runs: int) -> dict[str, Any]:
    results = []
    for r in range(processes):
        d = _bench_process([str(model), "--sessions", str(sessions), "--aa-runs", str(aa_runs)])
        results.append(d)
        c = d["candidate"]
        rerun = c["rerun_ci_ms"]
        log(
            f"  process {r + 1}/{processes}: median {c['median_ms']:.3f} ms, "
            f"ci {c['ci_ms'][0]:.3f}-{c['ci_ms'][1]:.3f}, "
            f"re-run {rerun[0]:.3f}-{rerun[1]:.3f} (core {c['cpu_share']:.0%} of time)"
        )
    device_class = _one_device_class(results)
    medians = [d["candidate"]["median_ms"] for d in results]
    first = results[0]["candidate"]
    later = medians[1:]
    half_widths = [_half_width(d["candidate"]["rerun_ci_ms"], d["candidate"]["median_ms"]) for d in results]
    # Every run's interval against every other run's median: the same question asked of all 20.
    pairs = [
        _inside(medians[j], results[i]["candidate"]["rerun_ci_ms"])
        for i in range(processes)
        for j in range(processes)
        if i != j
    ]
    return {
        "processes": processes,
        "device_class": device_class,
        "medians_ms": medians,
        "first_rerun_ci_ms": first["rerun_ci_ms"],
        "first_ci_ms": first["ci_ms"],
        "covered_by_first_rerun_ci": sum(_inside(m, first["rerun_ci_ms"]) for m in later) / len(later),
        "covered_by_first_ci": sum(_inside(m, first["ci_ms"]) for m in later) / len(later),
        "covered_all_pairs": sum(pairs) / len(pairs),
        "rerun_half_widths": half_widths,
        "max_rerun_half_width": max(h for h in half_widths if h is not None),
        "ci_half_widths": [_half_width(d["candidate"]["ci_ms"], d["candidate"]["median_ms"]) for d in results],
        "spread": max(medians) / min(medians) - 1.0,
        "spread_first_five": max(medians[:5]) / min(medians[:5]) - 1.0,
        # Diagnostics: how much of the time the measuring thread had a core.
        "cpu_shares": [d["candidate"]["cpu_share"] for d in results],
        "cpu_medians_ms": [d["candidate"]["cpu_median_ms"] for d in results],
    }


def ratio_check(candidate: Path, baseline: Path, processes: int, sessions: int, aa_runs: int) -> dict[str, Any]:
    results = []
    for r in range(processes):
        d = _bench_process(
            [str(candidate), "--baseline", str(baseline), "--sessions", str(sessions), "--aa-runs", str(aa_runs)]
        )
        results.append(d)
        log(
            f"  A/B process {r + 1}/{processes}: ratio {d['ratio']:.4f} "
            f"[{d['ratio_ci'][0]:.4f}, {d['ratio_ci'][1]:.4f}], re-run interval {d['ratio_rerun_ci']}"
        )
    device_class = _one_device_class(results)
    ratios = [d["ratio"] for d in results]
    first = results[0]
    half_widths = [_half_width(d["ratio_rerun_ci"], d["ratio"]) for d in results]
    if any(h is None for h in half_widths):
        raise SystemExit("An A/B process gave no ratio_rerun_ci: (d) needs --ab-aa-runs of at least 3.")
    pairs = [
        _inside(ratios[j], results[i]["ratio_rerun_ci"]) for i in range(processes) for j in range(processes) if i != j
    ]
    return {
        "processes": processes,
        "device_class": device_class,
        "ratios": ratios,
        "first_ratio_ci": first["ratio_ci"],
        "first_ratio_rerun_ci": first["ratio_rerun_ci"],
        "covered_by_first_ratio_rerun_ci": sum(_inside(x, first["ratio_rerun_ci"]) for x in ratios[1:])
        / (processes - 1),
        "covered_by_first_ratio_ci": sum(_inside(x, first["ratio_ci"]) for x in ratios[1:]) / (processes - 1),
        "ratio_ci_half_widths": [_half_width(d["ratio_ci"], d["ratio"]) for d in results],
        "covered_all_pairs": sum(pairs) / len(pairs),
        "ratio_half_widths": half_widths,
        "max_ratio_half_width": max(half_widths),
        "spread_first_five": max(ratios[:5]) / min(ratios[:5]) - 1.0,
        "spread": max(ratios) / min(ratios) - 1.0,
        "candidate_medians_ms": [d["candidate"]["median_ms"] for d in results],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--runs", type=int, default=20, help="A/A and known-difference runs (default 20)")
    parser.add_argument("--processes", type=int, default=20, help="fresh bench processes for (c) and (d) (default 20)")
    parser.add_argument("--sessions", type=int, default=5, help="sessions per model per run (bench's default 5)")
    parser.add_argument(
        "--aa-runs",
        type=int,
        default=5,
        help="calibration runs per single-model bench process in (c) (bench's default 5)",
    )
    parser.add_argument(
        "--ab-aa-runs",
        type=int,
        default=5,
        help="A/A calibration runs per A/B process in (d) (bench's default 5; they give ratio_rerun_ci)",
    )
    parser.add_argument("--cache-dir", type=Path, default=Path("lepton-artifacts/cache"), help="teacher cache")
    args = parser.parse_args(argv)
    if args.processes < 5:
        parser.error("--processes must be at least 5 (the ratio spread is over five processes)")

    from lepton_search.objectives import get_backend

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lepton-repeatability-") as tmp:
        baseline, pruned = prepare_models(args.cache_dir, Path(tmp))
        log(f"(a) A/A, {args.runs} runs")
        aa = aa_check(baseline, args.runs, args.sessions)
        log(f"(b) 50% channel-pruned vs unpruned, {args.runs} runs")
        diff = difference_check(pruned, baseline, args.runs, args.sessions)
        log(f"(c) {args.processes} fresh bench processes of the baseline")
        rerun = rerun_check(baseline, args.processes, args.sessions, args.aa_runs)
        log(f"(d) {args.processes} fresh A/B bench processes (pruned vs unpruned)")
        ratio = ratio_check(pruned, baseline, args.processes, args.sessions, args.ab_aa_runs)
    manifest = get_backend("onnxruntime-cpu").manifest(THREADS)
    if len({manifest["device_class"], rerun["device_class"], ratio["device_class"]}) != 1:
        raise SystemExit("The checks ran on different device classes; rerun on one machine.")
    targets = {
        "aa_ties": aa["ties"] >= args.runs - args.runs // 20,
        "aa_cis_containing_one": aa["cis_containing_one"] == args.runs,
        "pruned_faster": diff["faster"] == args.runs,
        "median_rerun_coverage": rerun["covered_by_first_rerun_ci"] >= 0.90,
        "median_rerun_half_width": rerun["max_rerun_half_width"] <= 0.25,
        "ratio_coverage": ratio["covered_by_first_ratio_rerun_ci"] >= 0.95,
        "ratio_half_width": ratio["max_ratio_half_width"] <= 0.25,
        "ratio_spread_five_processes": ratio["spread_first_five"] <= 0.05,
    }
    device = {
        k: manifest[k]
        for k in ("backend", "onnxruntime", "threads", "device", "device_class", "device_class_name", "cpu_count")
    }
    device["isa"] = manifest["cpu"]["isa_names"]
    report = {
        "device": device,
        "protocol": {
            "batch_size": BATCH_SIZE,
            "threads": THREADS,
            "sessions": args.sessions,
            "aa_runs": args.aa_runs,
            "ab_aa_runs": args.ab_aa_runs,
        },
        "aa": aa,
        "known_difference": diff,
        "reruns": rerun,
        "ratios": ratio,
        "targets_met": targets,
        "load_average": list(os.getloadavg()),
        "elapsed_s": time.perf_counter() - started,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0

    def mark(ok: bool) -> str:
        return "met" if ok else "NOT MET"

    n, p = args.runs, args.processes
    print(f"Latency repeatability: digits CNN, batch {BATCH_SIZE}, {THREADS} thread, {args.sessions} sessions/model")
    print(
        f"  on {manifest['device_class_name']} ({manifest['device_class']}; {manifest['device']}, "
        f"{manifest['cpu_count']} cores), onnxruntime {manifest['onnxruntime']}"
    )
    print(f"  ISA: {', '.join(device['isa'])}")
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
    lo, hi = rerun["first_rerun_ci_ms"]
    print(f"(c) {p} fresh `lepton-search bench` processes of the baseline ({args.aa_runs} calibration runs each):")
    print(f"    medians (ms)            {', '.join(f'{m:.3f}' for m in rerun['medians_ms'])}")
    print(
        f"    in the first run's rerun_ci_ms [{lo:.3f}, {hi:.3f}]: {rerun['covered_by_first_rerun_ci']:.0%} of the "
        f"{p - 1} later runs   target >= 90%: {mark(targets['median_rerun_coverage'])}"
    )
    print(
        f"    rerun_ci_ms half-widths {min(h for h in rerun['rerun_half_widths'] if h is not None):.1%}-"
        f"{rerun['max_rerun_half_width']:.1%} of the median   target <= 25%: "
        f"{mark(targets['median_rerun_half_width'])}"
    )
    print(
        f"    for comparison: in the first run's ci_ms {rerun['covered_by_first_ci']:.0%}; every run's rerun_ci_ms "
        f"against every other run's median {rerun['covered_all_pairs']:.0%}; spread of the medians "
        f"{rerun['spread']:.1%} ({rerun['spread_first_five']:.1%} over the first five)"
    )
    print(
        f"    diagnostics: the measuring thread had a core "
        f"{min(rerun['cpu_shares']):.0%}-{max(rerun['cpu_shares']):.0%} of the time"
    )
    rlo, rhi = ratio["first_ratio_rerun_ci"]
    wlo, whi = ratio["first_ratio_ci"]
    print(f"(d) {p} fresh A/B `lepton-search bench` processes, pruned vs unpruned:")
    print(f"    ratios                  {', '.join(f'{x:.3f}' for x in ratio['ratios'])}")
    print(
        f"    in the first run's ratio_rerun_ci [{rlo:.3f}, {rhi:.3f}]: "
        f"{ratio['covered_by_first_ratio_rerun_ci']:.0%} of the {p - 1} later runs   target >= 95%: "
        f"{mark(targets['ratio_coverage'])}"
    )
    print(
        f"    ratio_rerun_ci half-widths {min(ratio['ratio_half_widths']):.1%}-"
        f"{ratio['max_ratio_half_width']:.1%} of the ratio   target <= 25%: {mark(targets['ratio_half_width'])}"
    )
    print(
        f"    for comparison: in the first run's within-run ratio_ci [{wlo:.3f}, {whi:.3f}] "
        f"{ratio['covered_by_first_ratio_ci']:.0%}; its half-widths "
        f"{min(ratio['ratio_ci_half_widths']):.1%}-{max(ratio['ratio_ci_half_widths']):.1%}"
    )
    print(
        f"    spread over five processes {ratio['spread_first_five']:.1%}   target <= 5%: "
        f"{mark(targets['ratio_spread_five_processes'])} ({ratio['spread']:.1%} over all {p}; every run's "
        f"ratio_rerun_ci against every other run's ratio {ratio['covered_all_pairs']:.0%})"
    )
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {manifest['cpu_count']} cores")
    print(f"elapsed {report['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
