"""Measure every configuration of a discrete grid over the digits task's space, with the real pipeline.

    python benchmarks/measure_grid.py [--out benchmarks/data/digits_grid.json] [--cache DIR] [--limit N]

Each configuration goes through `lepton_search.objectives.evaluate` in this process, one after
another (`NoGate`: nothing else of ours computes meanwhile): prune, distill, export, quantize, score,
then latency measured interleaved with the uncompressed baseline (A/B, B/A, ... in fresh ONNX Runtime
sessions). Task `digits-cnn` with its default options, batch 64, 1 thread, 3 sessions per model.

The grid is a categorical/discrete version of the search space (120 configurations):

    precision    fp32 | int8 static QDQ, calibration minmax or percentile (8 batches)
  x pruning      none | unstructured 50% | channel 10%, 20%, ..., 80%
  x distillation none | hard (2 epochs) | soft T=2 or T=8, alpha 0.5 (2 epochs)

The trial parameters of each configuration (`GRID_PARAMS`, the names `SearchSpace.suggest` uses)
are stored with it, so `search_efficiency.py` can replay samplers on the table. The run is resumable:
configurations already in the output file are skipped (failed ones are tried again), and the file is
rewritten after every configuration. Configurations run in a fixed shuffled order, so slow drift of
the machine's load does not line up with one corner of the grid.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported anywhere

import argparse
import dataclasses
import datetime as dt
import itertools
import json
import platform
import random
import shlex
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from lepton_search.devices._machine import cpu_model
from lepton_search.spaces import CompressionConfig, DistillConfig, PruneConfig, QuantizeConfig

TASK = "digits-cnn"
FORMAT_VERSION = 1
CALIBRATION_BATCHES = 8
DISTILL_EPOCHS = 2
SOFT_ALPHA = 0.5
CHANNEL_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
UNSTRUCTURED_RATIO = 0.5
TEMPERATURES = (2.0, 8.0)
SHUFFLE_SEED = 0

# The replay space: names and distributions a replayed Optuna study suggests. Conditional, like
# ``SearchSpace.suggest``: calibration only for int8, a ratio only for channel pruning (unstructured
# pruning has one ratio in this grid), a temperature only for soft distillation.
GRID_SPACE_DOC = {
    "precision": "categorical ['fp32', 'int8']",
    "calibration_method": "categorical ['minmax', 'percentile'], only when precision = 'int8'",
    "prune_method": "categorical ['none', 'unstructured', 'channel']",
    "prune_ratio": "float 0.1..0.8 step 0.1, only when prune_method = 'channel' (unstructured is fixed at 0.5)",
    "distill_method": "categorical ['none', 'hard', 'soft']",
    "distill_temperature": "categorical [2.0, 8.0], only when distill_method = 'soft'",
}


def suggest_grid(trial: Any) -> dict[str, Any]:
    """Suggests one grid configuration on an Optuna trial; returns its parameters (canonical form)."""
    params: dict[str, Any] = {}
    params["precision"] = trial.suggest_categorical("precision", ["fp32", "int8"])
    if params["precision"] == "int8":
        params["calibration_method"] = trial.suggest_categorical("calibration_method", ["minmax", "percentile"])
    params["prune_method"] = trial.suggest_categorical("prune_method", ["none", "unstructured", "channel"])
    if params["prune_method"] == "channel":
        params["prune_ratio"] = round(trial.suggest_float("prune_ratio", 0.1, 0.8, step=0.1), 6)
    params["distill_method"] = trial.suggest_categorical("distill_method", ["none", "hard", "soft"])
    if params["distill_method"] == "soft":
        params["distill_temperature"] = float(trial.suggest_categorical("distill_temperature", list(TEMPERATURES)))
    return params


def grid_params() -> list[dict[str, Any]]:
    """Every configuration of the grid as trial parameters, in grid order."""
    precisions: list[dict[str, Any]] = [
        {"precision": "fp32"},
        {"precision": "int8", "calibration_method": "minmax"},
        {"precision": "int8", "calibration_method": "percentile"},
    ]
    prunings: list[dict[str, Any]] = [{"prune_method": "none"}, {"prune_method": "unstructured"}]
    prunings += [{"prune_method": "channel", "prune_ratio": r} for r in CHANNEL_RATIOS]
    distills: list[dict[str, Any]] = [{"distill_method": "none"}, {"distill_method": "hard"}]
    distills += [{"distill_method": "soft", "distill_temperature": t} for t in TEMPERATURES]
    return [{**q, **p, **d} for q, p, d in itertools.product(precisions, prunings, distills)]


def params_key(params: dict[str, Any]) -> str:
    """The canonical key of a parameter dict (sorted JSON); what the replay looks configurations up by."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


def config_of(params: dict[str, Any]) -> CompressionConfig:
    """The CompressionConfig that grid parameters stand for."""
    if params["precision"] == "int8":
        quantize = QuantizeConfig(
            precision="int8",
            int8_mode="static",
            calibration_method=params["calibration_method"],
            calibration_batches=CALIBRATION_BATCHES,
        )
    else:
        quantize = QuantizeConfig(precision=params["precision"])
    method = params["prune_method"]
    if method == "channel":
        prune = PruneConfig(method="channel", ratio=params["prune_ratio"])
    elif method == "unstructured":
        prune = PruneConfig(method="unstructured", ratio=UNSTRUCTURED_RATIO)
    else:
        prune = PruneConfig()
    kd = params["distill_method"]
    if kd == "soft":
        distill = DistillConfig(
            method="soft", temperature=params["distill_temperature"], alpha=SOFT_ALPHA, epochs=DISTILL_EPOCHS
        )
    elif kd == "hard":
        distill = DistillConfig(method="hard", epochs=DISTILL_EPOCHS)
    else:
        distill = DistillConfig()
    return CompressionConfig(quantization=quantize, pruning=prune, distillation=distill)


def _loadavg() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _versions() -> dict[str, str]:
    import numpy
    import onnxruntime
    import optuna
    import torch

    import lepton_search

    return {
        "python": platform.python_version(),
        "lepton_search": lepton_search.__version__,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "optuna": optuna.__version__,
        "numpy": numpy.__version__,
    }


def _write(path: Path, data: dict[str, Any]) -> None:
    """Atomic rewrite: a kill mid-write leaves the previous complete file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.chmod(tmp, 0o644)  # mkstemp makes it private; this is a data file to share
    os.replace(tmp, path)


def _row(params: dict[str, Any], config: CompressionConfig, result: Any, seconds: float, load: float | None) -> dict:
    latency = result.latency
    return {
        "key": params_key(params),
        "params": params,
        "config": config.to_dict(),
        "config_hash": config.config_hash,
        "label": config.describe(),
        "accuracy": result.accuracy,
        "test_accuracy": result.test_accuracy,
        "latency_ms": result.latency_ms,
        "latency_ci_ms": latency["candidate"]["ci_ms"],
        "latency_cv": latency["candidate"]["cv"],
        "session_medians_ms": latency["candidate"]["session_medians_ms"],
        "baseline_latency_ms": latency["baseline"]["median_ms"],
        "ratio_to_baseline": latency["ratio"],
        "ratio_ci": latency["ratio_ci"],
        "verdict": latency["verdict"],
        "cost_usd_per_million": result.cost_usd_per_million,
        "size_bytes": result.size_bytes,
        "gzip_size_bytes": result.gzip_size_bytes,
        "parameters": result.parameters,
        "sparsity": result.sparsity,
        "timings_s": {k: round(v, 3) for k, v in result.timings_s.items()},
        "evaluate_s": round(seconds, 2),
        "loadavg_1m_before": load,
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rows if "error" not in r]
    if not ok:
        return {"measured": 0}
    return {
        "measured": len(ok),
        "failed": len(rows) - len(ok),
        "baseline_latency_ms_median": statistics.median(r["baseline_latency_ms"] for r in ok),
        "baseline_latency_ms_range": [
            min(r["baseline_latency_ms"] for r in ok),
            max(r["baseline_latency_ms"] for r in ok),
        ],
        "evaluate_s_total": round(sum(r["evaluate_s"] for r in ok), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/data/digits_grid.json"))
    parser.add_argument(
        "--cache", type=Path, default=Path("lepton-artifacts/cache"), help="teacher cache (shared with the quickstart)"
    )
    parser.add_argument("--limit", type=int, default=None, help="measure at most this many new configurations")
    args = parser.parse_args(argv)

    from lepton_search.objectives import CostModel, MeasurementSettings, NoGate, TrialRequest, evaluate, prepare
    from lepton_search.objectives.latency import get_backend

    settings = MeasurementSettings(threads=1, batch_size=64, sessions=3)
    cost = CostModel()
    cache = args.cache.resolve()
    base = TrialRequest(
        task=TASK, config_json=CompressionConfig().to_json(), cache_dir=str(cache), settings=settings, cost=cost
    )
    manifest = get_backend(settings.backend).manifest(settings.threads)
    setup = {
        "task": TASK,
        "task_options": {},
        "settings": dataclasses.asdict(settings),
        "cost": dataclasses.asdict(cost),
        "seed": base.seed,
        "compute_threads": base.compute_threads,
        "grid": {
            "space": GRID_SPACE_DOC,
            "calibration_batches": CALIBRATION_BATCHES,
            "unstructured_ratio": UNSTRUCTURED_RATIO,
            "distill_epochs": DISTILL_EPOCHS,
            "soft_alpha": SOFT_ALPHA,
            "learning_rate": DistillConfig().learning_rate,
        },
    }
    machine = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "execution_provider": manifest["execution_provider"],
        # The grid's latencies and ratios are comparable only on this device class.
        "device_class": manifest["device_class"],
        "device_class_name": manifest["device_class_name"],
        "isa": manifest["cpu"]["isa"],
    }

    data: dict[str, Any]
    if args.out.exists():
        data = json.loads(args.out.read_text())
        old = data.get("meta", {})
        for name, now in (("setup", setup), ("machine", machine)):
            if old.get(name) != now:
                print(
                    f"{args.out} was measured with a different {name}:\n  file: {json.dumps(old.get(name))}\n"
                    f"  now:  {json.dumps(now)}\nRe-measuring into it would mix the two; use another --out.",
                    file=sys.stderr,
                )
                return 2
    else:
        data = {"format": FORMAT_VERSION, "meta": {"setup": setup, "machine": machine, "runs": []}, "configs": []}

    meta = data["meta"]
    rows: list[dict[str, Any]] = data["configs"]
    done = {r["key"] for r in rows if "error" not in r}
    rows[:] = [r for r in rows if "error" not in r]  # failed ones are tried again
    todo = [p for p in grid_params() if params_key(p) not in done]
    random.Random(SHUFFLE_SEED).shuffle(todo)
    if args.limit is not None:
        todo = todo[: args.limit]

    run = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "versions": _versions(),
        "platform": platform.platform(),
        "loadavg_1m_at_start": _loadavg(),
        "already_measured": len(done),
        "to_measure": len(todo),
    }
    meta["runs"].append(run)
    print(f"{len(done)} of {len(grid_params())} configurations already measured; measuring {len(todo)}", flush=True)

    start = time.perf_counter()
    baseline = prepare(base)
    meta["baseline"] = {**baseline, "prepare_s": round(time.perf_counter() - start, 2)}
    print(f"baseline accuracy {baseline['accuracy']:.4f} (teacher ready in {time.perf_counter() - start:.1f} s)")
    _write(args.out, data)

    gate = NoGate()
    for i, params in enumerate(todo, 1):
        config = config_of(params)
        request = dataclasses.replace(base, config_json=config.to_json())
        load = _loadavg()
        t0 = time.perf_counter()
        try:
            result = evaluate(request, gate)
        except Exception as e:
            row = {
                "key": params_key(params),
                "params": params,
                "config": config.to_dict(),
                "config_hash": config.config_hash,
                "label": config.describe(),
                "error": f"{type(e).__name__}: {e}"[:1000],
                "traceback": traceback.format_exc()[-2000:],
            }
            print(f"[{i}/{len(todo)}] {config.describe()}: FAILED {row['error']}", flush=True)
        else:
            row = _row(params, config, result, time.perf_counter() - t0, load)
            print(
                f"[{i}/{len(todo)}] {row['label']:<48} acc {row['accuracy']:.4f}  {row['latency_ms']:7.3f} ms"
                f"  x{row['ratio_to_baseline']:.3f} ({row['verdict']})  {row['evaluate_s']:.1f} s  load {load}",
                flush=True,
            )
        rows.append(row)
        run["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        run["measured"] = i
        meta["summary"] = _summary(rows)
        _write(args.out, data)

    rows.sort(key=lambda r: r["key"])
    meta["summary"] = _summary(rows)
    run["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    run["elapsed_s"] = round(time.perf_counter() - start, 1)
    _write(args.out, data)
    failed = [r for r in rows if "error" in r]
    print(f"{len(rows) - len(failed)} measured, {len(failed)} failed; wrote {args.out} in {run['elapsed_s']} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
