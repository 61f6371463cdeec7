"""The figures behind the search space's hardware decisions, measured on this CPU.

Each variant of the digits CNN (batch 64, 1 thread) is measured interleaved with its fp32
baseline in one ``bench`` window (``--sessions`` sessions each), so every figure is a ratio from one
run on one CPU (ratio < 1: faster than fp32):

- static QDQ int8 as U8S8, as S8S8, and as U8S8 with ``reduce_range`` (7-bit weights);
- dynamic int8 of the linear layers only (what lepton-search does), and of the convolutions too
  (what it refuses: ONNX Runtime's ``ConvInteger``), quantized with ONNX Runtime directly;
- fp16 through ONNX Runtime's fp16 conversion;
- the module as ``torch.export`` programs in bf16 and fp16 on torch-cpu, against fp32 there.

Usage::

    flock /work/cpu.lock python benchmarks/hardware_exclusions.py [--json] [--sessions 5]

The report names the CPU's device class and ISA (``spaces/_hardware.py`` quotes these figures).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BATCH_SIZE = 64
THREADS = 1


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_variants(cache_dir: Path, work: Path) -> tuple[Any, list[tuple[str, str, Path, Path]]]:
    """(label, backend, candidate, baseline) for every variant, and the task."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from lepton_search.objectives._evaluate import baseline_model, baseline_onnx
    from lepton_search.objectives._quantize import prepare, quantize
    from lepton_search.objectives._torch_export import export_program
    from lepton_search.objectives.latency import get_backend
    from lepton_search.objectives.tasks.digits import DigitsCNNTask
    from lepton_search.spaces import QuantizeConfig

    task = DigitsCNNTask()
    start = time.perf_counter()
    teacher = task.teacher(cache_dir)
    log(f"teacher ready in {time.perf_counter() - start:.1f} s ({cache_dir})")
    fp32 = baseline_onnx(task, teacher, cache_dir)
    program = baseline_model(get_backend("torch-cpu", require_usable=False), task, teacher, cache_dir)
    static = QuantizeConfig("int8", "static", "minmax", 8)
    variants = [
        ("static int8 U8S8", QuantizeConfig("int8", "static", "minmax", 8)),
        ("static int8 S8S8", QuantizeConfig("int8", "static", "minmax", 8, int8_format="s8s8")),
        ("static int8 U8S8 reduce_range", QuantizeConfig("int8", "static", "minmax", 8, reduce_range=True)),
        ("dynamic int8, linear layers only", QuantizeConfig("int8", "dynamic")),
        ("fp16 (ONNX Runtime)", QuantizeConfig("fp16")),
    ]
    out: list[tuple[str, str, Path, Path]] = []
    for i, (label, config) in enumerate(variants):
        out.append((label, "onnxruntime-cpu", quantize(fp32, config, task, work / f"v{i}"), fp32))
    # Dynamic int8 convolutions: lepton-search never produces them, so ONNX Runtime is called directly.
    (work / "conv").mkdir(parents=True)
    prepared = prepare(fp32, static, work / "conv")
    dynamic_conv = work / "conv" / "dynamic-conv.onnx"
    quantize_dynamic(
        str(prepared),
        str(dynamic_conv),
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["Conv", "MatMul", "Gemm"],
        per_channel=True,
    )
    out.append(("dynamic int8 incl. convolutions (ConvInteger)", "onnxruntime-cpu", dynamic_conv, fp32))
    for precision in ("bf16", "fp16"):
        path = export_program(copy.deepcopy(teacher), task.example_inputs(2), work / f"{precision}.pt2", precision)
        out.append((f"{precision} (torch-cpu)", "torch-cpu", path, program))
    return task, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--sessions", type=int, default=5, help="interleaved sessions per model (default 5)")
    parser.add_argument("--cache-dir", type=Path, default=Path("lepton-artifacts/cache"), help="teacher cache")
    args = parser.parse_args(argv)

    from lepton_search.objectives import MeasurementSettings, bench, get_backend
    from lepton_search.objectives._evaluate import model_predictor

    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="lepton-hardware-") as tmp:
        task, variants = build_variants(args.cache_dir, Path(tmp))
        settings = MeasurementSettings(threads=THREADS, sessions=args.sessions, batch_size=BATCH_SIZE)
        for label, backend, candidate, baseline in variants:
            result = bench(candidate, baseline, settings=settings, backend=backend, aa_runs=0).to_dict()
            accuracy = task.evaluate(model_predictor(candidate, get_backend(backend), THREADS), "validation")
            rows.append(
                {
                    "variant": label,
                    "backend": backend,
                    "ratio": result["ratio"],
                    "ratio_ci": result["ratio_ci"],
                    "verdict": result["verdict"],
                    "candidate_ms": result["candidate"]["median_ms"],
                    "baseline_ms": result["baseline"]["median_ms"],
                    "validation_accuracy": accuracy,
                    "size_bytes": candidate.stat().st_size,
                }
            )
            low, high = result["ratio_ci"]
            log(f"  {label}: {result['ratio']:.3f} [{low:.3f}, {high:.3f}] {result['verdict']}")
    manifest = get_backend("onnxruntime-cpu").manifest(THREADS)
    report = {
        "device": {
            "device_class": manifest["device_class"],
            "device_class_name": manifest["device_class_name"],
            "isa": manifest["cpu"]["isa_names"],
            "device": manifest["device"],
            "onnxruntime": manifest["onnxruntime"],
        },
        "protocol": {"batch_size": BATCH_SIZE, "threads": THREADS, "sessions": args.sessions},
        "variants": rows,
        "elapsed_s": time.perf_counter() - started,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"Hardware exclusions: digits CNN, batch {BATCH_SIZE}, {THREADS} thread, {args.sessions} sessions/model")
    print(f"  on {manifest['device_class_name']} ({manifest['device_class']}), onnxruntime {manifest['onnxruntime']}")
    print(f"  ISA: {', '.join(report['device']['isa'])}")
    print(f"  {'variant':48s} {'x fp32 [95% CI]':24s} verdict  accuracy  size")
    for r in rows:
        ci = f"{r['ratio']:.3f} [{r['ratio_ci'][0]:.3f}, {r['ratio_ci'][1]:.3f}]"
        print(
            f"  {r['variant']:48s} {ci:24s} {r['verdict']:7s}  {r['validation_accuracy']:.4f}    "
            f"{r['size_bytes'] / 1e6:.2f} MB"
        )
    print(f"elapsed {report['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
