"""Quantization of an exported fp32 ONNX model with ONNX Runtime's tools.

Dynamic int8 quantizes each MatMul weight per output channel: per-tensor scales cost a MiniLM
encoder about 4% cosine fidelity (``shared/notes/latency.md``, section 5).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lepton_search.errors import CompressionError
from lepton_search.spaces import QuantizeConfig

if TYPE_CHECKING:
    from lepton_search.objectives.tasks import Task
    from lepton_search.objectives.tasks._base import Inputs


class _CalibrationReader:
    """Feeds calibration batches to ONNX Runtime's static quantizer."""

    def __init__(self, batches: list[Inputs], input_name: str) -> None:
        self._batches: Iterator[Inputs] = iter(batches)
        self._input_name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        if batch is None:
            return None
        return dict(batch) if isinstance(batch, Mapping) else {self._input_name: batch}

    def rewind(self) -> None:  # part of ORT's reader interface; we never re-read
        pass


def _pre_process(source: Path, target: Path, out_dir: Path) -> None:
    """ONNX Runtime's quantization pre-processing (shape inference, graph optimisation).

    Its symbolic shape inference gives up on dynamo exports of transformers ("Incomplete symbolic
    shape inference", at the position-embedding slice) and then dumps its partial model into the
    working directory. Models with several inputs skip it; the rest of the pre-processing does not
    need it, and dynamic int8 needs no shapes. A single-input model that fails it is retried without
    it, and its dump goes to ``out_dir``.
    """
    import contextlib

    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(onnx.load(str(source), load_external_data=False).graph.input) > 1:
        quant_pre_process(str(source), str(target), skip_symbolic_shape=True)
        return
    # Failures are handled below; the per-node warnings of a failing run would only flood the log.
    logging.getLogger("onnxruntime.tools.symbolic_shape_infer").setLevel(logging.ERROR)
    source_path, target_path = str(source.resolve()), str(target.resolve())
    try:
        with contextlib.chdir(out_dir):
            quant_pre_process(source_path, target_path)
    except Exception:
        quant_pre_process(str(source), str(target), skip_symbolic_shape=True)


def quantize(source: Path, config: QuantizeConfig, task: Task, out_dir: Path) -> Path:
    """Applies the precision of ``config`` to the exported fp32 model at ``source``."""
    if config.precision == "fp32":
        return source
    target = out_dir / f"model-{config.precision}.onnx"
    # ONNX Runtime's quantization tools write temporary files (sym_shape_infer_temp.onnx, external
    # weight files) into the working directory; keep them inside the trial's own directory.
    # Each Ray worker process runs one trial at a time, so changing its directory is safe.
    source, out_dir, target = source.resolve(), out_dir.resolve(), target.resolve()
    try:
        with contextlib.chdir(out_dir):
            return _quantize_here(source, config, task, out_dir, target)
    except CompressionError:
        raise
    except Exception as e:
        raise CompressionError(
            f"{config.precision} quantization ({config.int8_mode or 'conversion'}) failed: "
            f"{type(e).__name__}: {str(e)[:400]}"
        ) from e


def _quantize_here(source: Path, config: QuantizeConfig, task: Task, out_dir: Path, target: Path) -> Path:
    import onnx

    if config.precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
        onnx.save(model, str(target))
        return target
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    prepared = out_dir / "model-preprocessed.onnx"
    _pre_process(source, prepared, out_dir)
    if config.int8_mode == "dynamic":
        quantize_dynamic(
            str(prepared),
            str(target),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
            per_channel=True,
        )
        return target
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    input_name = onnx.load(str(prepared), load_external_data=False).graph.input[0].name
    reader = _CalibrationReader(task.calibration_inputs(int(config.calibration_batches or 1), 64), input_name)
    quantize_static(
        str(prepared),
        str(target),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=methods[str(config.calibration_method)],
    )
    return target
