"""The hardware knobs of int8 on real ONNX Runtime quantizations of the digits teacher:
``reduce_range`` (7-bit weights, for x86 CPUs without VNNI) and the int8 format (U8S8 / S8S8)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from lepton_search.objectives._evaluate import onnx_predictor
from lepton_search.objectives._quantize import quantize
from lepton_search.spaces import QuantizeConfig

MAX_DROP = 0.02


def _weights(path: Path) -> list[np.ndarray]:
    """The quantized weight tensors (int8 initializers of rank 2 or more)."""
    tensors = [numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer]
    return [t for t in tensors if t.dtype == np.int8 and t.ndim >= 2]


def _activation_zero_point_types(path: Path) -> set[type]:
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    weights = {i.name for i in model.graph.initializer if numpy_helper.to_array(i).ndim >= 2}
    types = set()
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in weights and len(node.input) > 2:
            types.add(inits[node.input[2]].dtype.type)
    return types


@pytest.mark.parametrize(("mode", "config_args"), [("static", ("minmax", 1)), ("dynamic", ())])
def test_reduce_range_quantizes_weights_to_seven_bits(teacher: Any, tmp_path: Path, mode: str, config_args) -> None:
    full = quantize(teacher.onnx_path, QuantizeConfig("int8", mode, *config_args), teacher.task, tmp_path / "full")
    reduced = quantize(
        teacher.onnx_path,
        QuantizeConfig("int8", mode, *config_args, reduce_range=True),
        teacher.task,
        tmp_path / "reduced",
    )
    full_max = max(int(np.abs(w.astype(np.int32)).max()) for w in _weights(full))
    reduced_max = max(int(np.abs(w.astype(np.int32)).max()) for w in _weights(reduced))
    assert full_max > 64 and reduced_max <= 64  # 8-bit weights reach +-127; 7-bit ones stay in [-64, 63]
    assert teacher.task.evaluate(onnx_predictor(reduced), "validation") >= teacher.accuracy - MAX_DROP


def test_the_int8_format_sets_the_activations_signedness(teacher: Any, tmp_path: Path) -> None:
    u8 = quantize(teacher.onnx_path, QuantizeConfig("int8", "static", "minmax", 1), teacher.task, tmp_path / "u8")
    s8 = quantize(
        teacher.onnx_path,
        QuantizeConfig("int8", "static", "minmax", 1, int8_format="s8s8"),
        teacher.task,
        tmp_path / "s8",
    )
    assert _activation_zero_point_types(u8) == {np.uint8}
    assert _activation_zero_point_types(s8) == {np.int8}
    assert teacher.task.evaluate(onnx_predictor(s8), "validation") >= teacher.accuracy - MAX_DROP
