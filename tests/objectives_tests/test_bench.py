"""``bench``'s model reading and input synthesis on hand-built ONNX graphs, and the whole bench on
the digits teacher and its channel-pruned copy."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from lepton_search.errors import MeasurementError, UnknownNameError
from lepton_search.objectives import MeasurementSettings, bench, read_input_specs, synthesize_inputs
from lepton_search.objectives._bench import InputSpec, _busy_notes, model_format, parse_dims, resolve_shapes
from lepton_search.objectives.latency import summarize

Dim = int | str | None


def identity_model(path: Path, inputs: list[tuple[str, int, list[Dim]]]) -> Path:
    """An ONNX model that returns each of ``inputs`` (name, element type, shape) unchanged."""
    values = [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs]
    outputs = [helper.make_tensor_value_info(f"{n}_out", t, s) for n, t, s in inputs]
    nodes = [helper.make_node("Identity", [n], [f"{n}_out"]) for n, _, _ in inputs]
    model = helper.make_model(
        helper.make_graph(nodes, "identity", values, outputs), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def test_specs_read_dtypes_static_named_and_unnamed_dimensions(tmp_path: Path) -> None:
    path = identity_model(
        tmp_path / "m.onnx",
        [
            ("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            ("mask", TensorProto.BOOL, ["batch", "sequence"]),
            ("pixels", TensorProto.FLOAT16, [None, 3, 8, 8]),
        ],
    )
    specs = read_input_specs(path)
    assert specs == [
        InputSpec("input_ids", np.dtype(np.int64), ("batch", "sequence")),
        InputSpec("mask", np.dtype(np.bool_), ("batch", "sequence")),
        InputSpec("pixels", np.dtype(np.float16), (None, 3, 8, 8)),
    ]


def test_initializers_listed_as_inputs_are_not_fed(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    w = helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 2], np.ones(8, dtype=np.float32))
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x, w], [y], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "w.onnx"))
    assert [s.name for s in read_input_specs(tmp_path / "w.onnx")] == ["x"]


def test_first_dynamic_dimension_is_the_batch_and_shared_names_get_one_size() -> None:
    specs = [
        InputSpec("input_ids", np.dtype(np.int64), ("batch", "sequence")),
        InputSpec("mask", np.dtype(np.bool_), ("batch", "sequence")),
        InputSpec("pixels", np.dtype(np.float32), (None, 3, 8, 8)),
    ]
    shapes = resolve_shapes(specs, batch_size=4, dims={"sequence": 16})
    assert shapes == {"input_ids": (4, 16), "mask": (4, 16), "pixels": (4, 3, 8, 8)}
    # INPUT:AXIS names a dimension too; the other input sharing its name follows it.
    assert resolve_shapes(specs, batch_size=2, dims={"input_ids:1": 7})["mask"] == (2, 7)
    # --dim may override the batch of one named dimension.
    assert resolve_shapes(specs, batch_size=2, dims={"batch": 3, "sequence": 5})["input_ids"] == (3, 5)


def test_an_unsized_dynamic_dimension_is_named_in_the_error() -> None:
    specs = [InputSpec("input_ids", np.dtype(np.int64), ("batch", "sequence"))]
    with pytest.raises(MeasurementError) as e:
        resolve_shapes(specs, batch_size=1, model="bert.onnx")
    message = str(e.value)
    assert "bert.onnx: input 'input_ids' has a dynamic dimension 'input_ids:1' (named 'sequence') at axis 1" in message
    assert "--dim input_ids:1=SIZE" in message
    assert "dynamic dimensions of this model: batch, input_ids:0, sequence, input_ids:1" in message


def test_synthesized_inputs_have_the_declared_dtypes_and_shapes() -> None:
    specs = [
        InputSpec("ids", np.dtype(np.int64), ("batch", 6)),
        InputSpec("mask", np.dtype(np.bool_), ("batch", 6)),
        InputSpec("x", np.dtype(np.float16), (None, 3)),
    ]
    a = synthesize_inputs(specs, batch_size=5, seed=1)
    assert {k: (v.dtype, v.shape) for k, v in a.items()} == {
        "ids": (np.dtype(np.int64), (5, 6)),
        "mask": (np.dtype(np.bool_), (5, 6)),
        "x": (np.dtype(np.float16), (5, 3)),
    }
    assert np.all(a["ids"] == 1) and np.all(a["mask"])
    assert np.all(np.isfinite(a["x"])) and a["x"].std() > 0.1
    np.testing.assert_array_equal(a["x"], synthesize_inputs(specs, batch_size=5, seed=1)["x"])


@pytest.mark.parametrize(
    ("values", "expected"),
    [([], {}), (["sequence=128"], {"sequence": 128}), (["input_ids:1=7", "b=2"], {"input_ids:1": 7, "b": 2})],
)
def test_parse_dims(values: list[str], expected: dict[str, int]) -> None:
    assert parse_dims(values) == expected


@pytest.mark.parametrize(
    ("values", "message"),
    [(["sequence"], "NAME=SIZE"), (["s=0"], "positive"), (["s=x"], "NAME=SIZE"), (["s=1", "s=2"], "twice")],
)
def test_parse_dims_rejects_bad_entries(values: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_dims(values)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is not a protobuf", "is not an ONNX model"),
        (b"", "is not an ONNX model"),
    ],
    ids=["garbage", "empty"],
)
def test_a_file_that_is_no_model_is_refused(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(MeasurementError, match=message):
        read_input_specs(path)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MeasurementError, match=r"does not exist.*\.onnx.*\.pt2"):
        model_format(tmp_path / "nope.onnx")


FAST = MeasurementSettings(
    sessions=2, warmup_runs=3, warmup_s=0.02, min_iterations=10, min_session_s=0.05, bootstrap_resamples=200
)


def test_bench_runs_a_model_with_synthesized_named_inputs(tmp_path: Path) -> None:
    path = identity_model(tmp_path / "m.onnx", [("ids", TensorProto.INT64, ["batch", "seq"])])
    result = bench(path, settings=FAST, dims={"seq": 9})
    assert result.pair is None
    assert set(result.to_dict()) == {"candidate", "device"}
    assert result.device["protocol"]["inputs"] == {"ids": {"shape": [FAST.batch_size, 9], "dtype": "int64"}}
    assert result.candidate.sessions == 2


def test_bench_refuses_unknown_dims_and_mismatched_models(tmp_path: Path) -> None:
    a = identity_model(tmp_path / "a.onnx", [("x", TensorProto.FLOAT, ["batch", 4])])
    b = identity_model(tmp_path / "b.onnx", [("x", TensorProto.FLOAT, ["batch", 5])])
    with pytest.raises(MeasurementError, match=r"--dim seq names no dynamic dimension.*batch, x:0"):
        bench(a, settings=FAST, dims={"seq": 3})
    with pytest.raises(MeasurementError, match="take different inputs"):
        bench(a, b, settings=FAST)


def test_bench_refuses_a_backend_of_the_other_format(tmp_path: Path) -> None:
    a = identity_model(tmp_path / "a.onnx", [("x", TensorProto.FLOAT, ["batch", 4])])
    with pytest.raises(MeasurementError, match=r"'torch-cpu' opens torch-export models.*onnxruntime-cpu"):
        bench(a, settings=FAST, backend="torch-cpu")
    with pytest.raises(UnknownNameError, match="Unknown latency backend 'tvm'"):
        bench(a, settings=FAST, backend="tvm")


def test_bench_names_the_model_that_fails_on_its_inputs(tmp_path: Path) -> None:
    # Declares a static 4 but reshapes to 5 elements: it cannot run on what it declares.
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    shape = helper.make_tensor("shape", TensorProto.INT64, [1], [5])
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"])], "g", [x], [y], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "bad.onnx"))
    with pytest.raises(MeasurementError, match=r"bad\.onnx failed on the synthesized inputs \{'x': \[1, 4\]\}"):
        bench(tmp_path / "bad.onnx", settings=FAST)


def test_bench_of_a_pruned_model_against_its_teacher(teacher: Any, pruned_half: Any) -> None:
    settings = dataclasses.replace(FAST, sessions=3, batch_size=64)
    result = bench(pruned_half.onnx_path, teacher.onnx_path, settings=settings)
    d = result.to_dict()
    # The shape bench has always printed, and beside ratio_ci the re-run interval that contains it.
    assert set(d) == {"verdict", "ratio", "ratio_ci", "ratio_rerun_ci", "candidate", "baseline", "device"}
    assert d["ratio_rerun_ci"][0] <= d["ratio_ci"][0] <= d["ratio_ci"][1] <= d["ratio_rerun_ci"][1]
    assert d["verdict"] == "faster"
    assert d["ratio"] < 0.6
    assert d["device"]["protocol"]["noise_band"] == settings.noise_band
    assert d["device"]["protocol"]["inputs"] == {"input": {"shape": [64, 1, 8, 8], "dtype": "float32"}}


def test_bench_calibrates_the_noise_band_with_aa_runs_of_the_baseline(teacher: Any) -> None:
    result = bench(teacher.onnx_path, teacher.onnx_path, settings=FAST, noise_band="auto", aa_runs=2)
    assert result.noise is not None and result.noise.runs == 2
    assert result.pair is not None and result.pair.noise_band == result.noise.delta >= 0.02
    protocol = result.device["protocol"]
    assert protocol["noise_band_source"] == "auto (A/A calibration)"
    assert protocol["aa_calibration"]["runs"] == 2


def test_bench_says_when_the_machine_was_busy() -> None:
    stats = summarize([np.full(5, 10.0), np.full(5, 11.0)], resamples=50)
    assert _busy_notes([stats]) == []  # nothing known: no note
    stats.cpu_share, stats.cpu_median_ms = 0.95, 9.8
    assert _busy_notes([stats]) == []
    stats.cpu_share = 0.6
    (note,) = _busy_notes([stats])
    assert "busy" in note and "60%" in note and "9.8 ms" in note
