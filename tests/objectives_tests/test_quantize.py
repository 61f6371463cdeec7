"""Quantization modes beyond the basics of ``test_compress.py``, on real exported models in ONNX
Runtime: int4 weight-only (MatMulNBits), per-tensor versus per-channel int8, the calibration size,
bf16's refusal on the ONNX path, and per-layer mixed precision with its cached sensitivity.

The digits tests use the session's trained teacher (``conftest.py``). MiniLM tests need the
``minilm`` extra and are slow (they load and quantize a 90 MB encoder).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from torch import nn

from lepton_search.errors import CompressionError
from lepton_search.objectives import compress
from lepton_search.objectives._evaluate import onnx_predictor
from lepton_search.objectives._export import export_onnx
from lepton_search.objectives._quantize import BF16_MESSAGE, prepare, quantize, quantize_prepared
from lepton_search.objectives._sensitivity import (
    cache_path,
    layer_sensitivity,
    quantizable_layers,
    sensitivity_mode,
)
from lepton_search.objectives.tasks.minilm import missing_requirements
from lepton_search.spaces import CompressionConfig, QuantizeConfig

# Bounds on validation accuracy (the digits teacher scores about 0.995 on 359 validation images).
QUANTIZED_MAX_DROP = 0.02
TRAIN_ROWS = 1078  # the digits training split: 60% of 1,797 images

INT4 = QuantizeConfig("int4", int4_block_size=32, int4_symmetric=True)
STATIC = QuantizeConfig("int8", "static", "minmax", 1)


def accuracy(task: Any, path: Path) -> float:
    return task.evaluate(onnx_predictor(path), "validation")


def nodes(path: Path, op_type: str) -> list[onnx.NodeProto]:
    return [n for n in onnx.load(str(path)).graph.node if n.op_type == op_type]


def initializers(path: Path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def attributes(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


# ---------------------------------------------------------------------------------------------
# int4 weight-only


@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_turns_the_linear_layer_into_matmulnbits_and_leaves_convolutions(
    teacher: Any, tmp_path: Path, symmetric: bool
) -> None:
    config = QuantizeConfig("int4", int4_block_size=32, int4_symmetric=symmetric)
    notes: list[str] = []

    path = quantize(teacher.onnx_path, config, teacher.task, tmp_path, notes=notes)

    (node,) = nodes(path, "MatMulNBits")
    attrs = attributes(node)
    assert (attrs["bits"], attrs["block_size"], attrs["K"], attrs["N"]) == (4, 32, 128, 10)
    packed = initializers(path)[node.input[1]]
    assert packed.dtype == np.uint8 and packed.shape == (10, 128 // 32, 32 // 2)  # two 4-bit weights a byte
    # Asymmetric blocks carry zero points (the 4th input); symmetric ones do not.
    assert (len(node.input) > 3 and node.input[3] != "") is not symmetric
    assert not nodes(path, "Gemm")  # the classifier's Gemm was rewritten, then quantized
    assert len(nodes(path, "Conv")) == 3  # int4 is weight-only for linear layers
    assert any("3 convolutions stay fp32" in note for note in notes)
    assert accuracy(teacher.task, path) >= teacher.accuracy - QUANTIZED_MAX_DROP


def test_int4_block_size_sets_the_number_of_scales(teacher: Any, tmp_path: Path) -> None:
    scales = {}
    for block in (16, 64):
        config = QuantizeConfig("int4", int4_block_size=block, int4_symmetric=True)
        path = quantize(teacher.onnx_path, config, teacher.task, tmp_path / str(block))
        (node,) = nodes(path, "MatMulNBits")
        scales[block] = initializers(path)[node.input[2]].size
    assert scales == {16: 10 * 128 // 16, 64: 10 * 128 // 64}


def test_int4_without_linear_layers_is_a_compression_error(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten()).eval()
    path = export_onnx(model, np.zeros((2, 1, 8, 8), dtype=np.float32), tmp_path / "conv.onnx")

    with pytest.raises(CompressionError, match=r"no MatMul or Gemm layer.*use int8"):
        quantize(path, INT4, None, tmp_path)  # type: ignore[arg-type]  # int4 needs no task data


# ---------------------------------------------------------------------------------------------
# per-tensor versus per-channel int8


def _weight_scales(path: Path) -> list[tuple[int, ...]]:
    """Shapes of the scales that dequantize constant int8 weights (static QDQ graphs)."""
    inits = initializers(path)
    return [
        inits[n.input[1]].shape
        for n in nodes(path, "DequantizeLinear")
        if n.input[0] in inits and inits[n.input[0]].dtype == np.int8
    ]


@pytest.mark.parametrize("granularity", ["per_channel", "per_tensor"])
def test_static_int8_granularity_sets_the_weight_scales(teacher: Any, tmp_path: Path, granularity: str) -> None:
    config = QuantizeConfig("int8", "static", "minmax", 1, granularity=granularity)

    path = quantize(teacher.onnx_path, config, teacher.task, tmp_path)

    shapes = _weight_scales(path)
    assert len(shapes) == 4  # three convolutions and the classifier
    if granularity == "per_tensor":
        assert set(shapes) == {()}
    else:
        assert sorted(shapes) == [(10,), (64,), (128,), (128,)]  # one scale per output channel
    assert accuracy(teacher.task, path) >= teacher.accuracy - QUANTIZED_MAX_DROP


def test_per_channel_is_the_default_granularity(teacher: Any, tmp_path: Path) -> None:
    path = quantize(teacher.onnx_path, STATIC, teacher.task, tmp_path)
    assert sorted(_weight_scales(path)) == [(10,), (64,), (128,), (128,)]


@pytest.mark.parametrize("granularity", ["per_channel", "per_tensor"])
def test_dynamic_int8_granularity_sets_the_weight_scales(teacher: Any, tmp_path: Path, granularity: str) -> None:
    config = QuantizeConfig("int8", "dynamic", granularity=granularity)

    path = quantize(teacher.onnx_path, config, teacher.task, tmp_path)

    (matmul,) = nodes(path, "MatMulInteger")
    inits = initializers(path)
    weight = inits[matmul.input[1]]
    assert weight.dtype == np.int8 and weight.shape == (128, 10)
    scales = [v for k, v in inits.items() if k.endswith("_scale") and v.dtype == np.float32]
    assert scales and {s.size for s in scales} == ({1} if granularity == "per_tensor" else {10})
    assert accuracy(teacher.task, path) >= teacher.accuracy - QUANTIZED_MAX_DROP


# ---------------------------------------------------------------------------------------------
# calibration size


def test_calibration_batches_sets_the_number_of_calibration_samples(teacher: Any, tmp_path: Path) -> None:
    prepared = prepare(teacher.onnx_path, STATIC, tmp_path)
    scales: dict[int, dict[str, float]] = {}
    for batches in (1, 16):
        config = QuantizeConfig("int8", "static", "minmax", batches)
        target = tmp_path / f"cal-{batches}.onnx"
        assert quantize_prepared(prepared, config, teacher.task, target) == 64 * batches
        inits = initializers(target)
        scales[batches] = {n.input[0]: float(inits[n.input[1]]) for n in nodes(target, "QuantizeLinear")}
    # Activation ranges: min-max over 16x the images sees every range at least as wide, some wider.
    assert scales[16].keys() == scales[1].keys() and len(scales[1]) >= 4
    assert all(scales[16][name] >= scales[1][name] > 0 for name in scales[1])
    assert any(scales[16][name] > 1.001 * scales[1][name] for name in scales[1])


def test_asking_for_more_calibration_than_the_training_split_holds_is_noted(teacher: Any, tmp_path: Path) -> None:
    notes: list[str] = []
    config = QuantizeConfig("int8", "static", "minmax", 20)

    quantize(teacher.onnx_path, config, teacher.task, tmp_path, notes=notes)

    (note,) = notes
    assert f"calibrated on {TRAIN_ROWS} samples" in note and "asks for 1280" in note


# ---------------------------------------------------------------------------------------------
# bf16


def test_bf16_is_refused_by_the_onnx_path_with_the_way_out(teacher: Any, tmp_path: Path) -> None:
    with pytest.raises(CompressionError) as caught:
        quantize(teacher.onnx_path, QuantizeConfig("bf16"), teacher.task, tmp_path)
    message = str(caught.value)
    assert message == BF16_MESSAGE
    assert "torch-cpu" in message and "torch-cuda" in message and "fp16/int8" in message
    assert not list(tmp_path.iterdir())  # refused before writing anything


# ---------------------------------------------------------------------------------------------
# per-layer mixed precision


def _float_layers(path: Path) -> set[str]:
    """Conv/MatMul/Gemm nodes whose weight is still a float initializer (not dequantized)."""
    inits = initializers(path)
    return {
        n.name
        for n in onnx.load(str(path)).graph.node
        if n.op_type in ("Conv", "MatMul", "Gemm") and n.input[1] in inits and inits[n.input[1]].dtype == np.float32
    }


def test_mixed_precision_keeps_the_most_sensitive_layers_fp32_and_caches_the_ranking(
    teacher: Any, tmp_path: Path
) -> None:
    config = QuantizeConfig("int8", "static", "minmax", 2, fp32_fraction=0.5)
    cache_dir = tmp_path / "cache"
    notes: list[str] = []

    path = quantize(teacher.onnx_path, config, teacher.task, tmp_path / "a", cache_dir=cache_dir, notes=notes)

    cached = cache_path(cache_dir, teacher.task, config)
    data = json.loads(cached.read_text())
    assert (data["task"], data["fingerprint"], data["mode"]) == (
        "digits-cnn",
        teacher.task.fingerprint(),
        "int8-static-per_channel",
    )
    errors = [layer["error"] for layer in data["layers"]]
    assert len(errors) == 4 and errors == sorted(errors, reverse=True) and min(errors) > 0
    most_sensitive = {layer["node"] for layer in data["layers"][:2]}
    assert _float_layers(path) == most_sensitive  # the other two carry int8 weights
    assert len(_float_layers(quantize(teacher.onnx_path, STATIC, teacher.task, tmp_path / "all"))) == 0
    (note,) = [n for n in notes if n.startswith("mixed precision")]
    assert "2 of 4 quantizable layers kept in fp32" in note and cached.name in note
    assert all(node in note for node in most_sensitive)
    assert accuracy(teacher.task, path) >= teacher.accuracy - QUANTIZED_MAX_DROP

    # A rerun reads the cache instead of measuring: invert the cached ranking and it is followed.
    data["layers"].reverse()
    cached.write_text(json.dumps(data))
    again = quantize(teacher.onnx_path, config, teacher.task, tmp_path / "b", cache_dir=cache_dir)
    assert _float_layers(again) == {layer["node"] for layer in data["layers"][:2]}


def test_layers_missing_from_the_ranking_are_quantized_and_noted(teacher: Any, tmp_path: Path) -> None:
    """A student whose graph names a layer differently (as after depth pruning) does not inherit a
    teacher layer's rank by accident."""
    config = QuantizeConfig("int8", "static", "minmax", 1, fp32_fraction=0.5)
    cache_dir = tmp_path / "cache"
    quantize(teacher.onnx_path, config, teacher.task, tmp_path / "teacher", cache_dir=cache_dir)
    ranking = [layer["node"] for layer in json.loads(cache_path(cache_dir, teacher.task, config).read_text())["layers"]]
    model = onnx.load(str(teacher.onnx_path))
    (renamed,) = [n for n in model.graph.node if n.name == ranking[0]]
    renamed.name = "a_layer_the_teacher_never_had"
    student = tmp_path / "student.onnx"
    onnx.save(model, str(student))
    notes: list[str] = []

    path = quantize(student, config, teacher.task, tmp_path / "student", cache_dir=cache_dir, notes=notes)

    assert _float_layers(path) == set(ranking[1:3])  # the next two of the ranking; the renamed one is int8
    expected = "1 of this model's 4 quantizable layers are not in the teacher's sensitivity ranking"
    assert any(expected in note for note in notes)


def test_sensitivity_is_measured_once_by_concurrent_workers(teacher: Any, tmp_path: Path) -> None:
    config = QuantizeConfig("int8", "dynamic", granularity="per_tensor", fp32_fraction=0.5)
    prepared = prepare(teacher.onnx_path, config, tmp_path)
    measured: list[str] = []
    results: list[Any] = []

    def quantize_layer(model: Path, layer_nodes: list[str], target: Path) -> None:
        measured.extend(layer_nodes)
        quantize_prepared(model, config, teacher.task, target, include=layer_nodes)

    def worker(i: int) -> None:
        results.append(
            layer_sensitivity(
                teacher.task, config, lambda: prepared, tmp_path / f"w{i}", quantize_layer, tmp_path / "cache"
            )
        )

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert measured == ["node_linear"]  # dynamic int8: the classifier is its only layer, measured once
    assert len(results) == 3 and len({r.layers for r in results}) == 1
    assert results[0].mode == sensitivity_mode(config) == "int8-dynamic-per_tensor"
    assert quantizable_layers(prepared, config) == [("node_linear", "Gemm", "12")]


def test_compress_passes_the_cache_and_records_the_fp32_layers(teacher: Any, tmp_path: Path) -> None:
    config = CompressionConfig(quantization=QuantizeConfig("int8", "static", "minmax", 1, fp32_fraction=0.25))

    result = compress(teacher.model, config, teacher.task, tmp_path / "out", cache_dir=tmp_path / "cache")

    assert len(list((tmp_path / "cache" / "sensitivity").glob("*.json"))) == 1
    assert any(n.startswith("mixed precision: 1 of 4 quantizable layers kept in fp32") for n in result.notes)
    assert len(_float_layers(result.onnx_path)) == 1


# ---------------------------------------------------------------------------------------------
# MiniLM (slow)


needs_minilm = pytest.mark.skipif(missing_requirements() is not None, reason=missing_requirements() or "")
# Mean cosine to the fp32 encoder on 64 validation passages: int4 block 32 measured 0.965 (symmetric)
# and 0.972 (asymmetric) here; per-channel dynamic int8 0.992.
INT4_MIN_FIDELITY = 0.95


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path]:
    if missing_requirements():
        pytest.skip(missing_requirements() or "")
    from lepton_search.objectives.tasks.minilm import MiniLMTask

    task = MiniLMTask(train_passages=64, eval_passages=64)
    root = tmp_path_factory.mktemp("minilm-quantize")
    encoder = task.teacher(root / "cache")
    return task, encoder, export_onnx(encoder, task.example_inputs(2), root / "fp32.onnx")


@needs_minilm
@pytest.mark.slow
def test_minilm_int4_quantizes_every_linear_layer_and_keeps_fidelity(minilm: Any, tmp_path: Path) -> None:
    task, _, fp32 = minilm

    path = quantize(fp32, INT4, task, tmp_path)

    matmuls = nodes(path, "MatMulNBits")
    assert len(matmuls) == 36  # 6 layers x (query, key, value, attention output, 2 feed-forward)
    assert {attributes(n)["accuracy_level"] for n in matmuls} == {4}
    assert len(nodes(path, "MatMul")) == 12  # the attention products of activations stay float
    # The encoder's 42 MB of linear weights shrink about 6x; the 47 MB word embeddings stay fp32.
    assert path.stat().st_size < 0.62 * fp32.stat().st_size
    assert task.evaluate(onnx_predictor(path)) >= INT4_MIN_FIDELITY


@needs_minilm
@pytest.mark.slow
def test_minilm_mixed_int8_keeping_the_sensitive_quarter_fp32_is_more_faithful(minilm: Any, tmp_path: Path) -> None:
    """Measured here: dynamic int8 0.992 mean cosine; with the 9 most sensitive of its 36 layers in fp32,
    0.998 (the feed-forward output projections rank first). The sensitivity pass takes minutes."""
    task, encoder, fp32 = minilm
    plain_config = QuantizeConfig("int8", "dynamic")
    mixed = QuantizeConfig("int8", "dynamic", fp32_fraction=0.25)
    notes: list[str] = []

    plain = task.evaluate(onnx_predictor(quantize(fp32, plain_config, task, tmp_path / "plain")))
    path = quantize(fp32, mixed, task, tmp_path / "mixed", teacher=encoder, cache_dir=tmp_path / "cache", notes=notes)

    assert len(nodes(path, "MatMulInteger")) == 36 - 9
    (note,) = [n for n in notes if n.startswith("mixed precision")]
    assert "9 of 36 quantizable layers kept in fp32" in note and "output.dense" in note
    assert task.evaluate(onnx_predictor(path)) > plain + 0.003
