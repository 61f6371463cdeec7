"""The compression steps on the real digits teacher: channel and unstructured pruning, soft and hard
distillation, ONNX export, and fp16 / dynamic int8 / static int8 quantization in ONNX Runtime."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from lepton_search.errors import CompressionError
from lepton_search.objectives import compress
from lepton_search.objectives._compress import UNSTRUCTURED_NOTE, count_parameters
from lepton_search.objectives._distill import distill
from lepton_search.objectives._evaluate import onnx_predictor
from lepton_search.objectives._export import export_onnx
from lepton_search.objectives._prune import finalize_pruning, prune, sparsity
from lepton_search.objectives._quantize import quantize
from lepton_search.objectives.tasks.digits import build_digits_cnn
from lepton_search.spaces import CompressionConfig, DistillConfig, PruneConfig, QuantizeConfig
from lepton_search.testing.tasks import untraceable

# Bounds on validation accuracy (the teacher scores about 0.995 on its 359 validation images).
QUANTIZED_MAX_DROP = 0.02  # int8 and fp16 keep the teacher's predictions almost exactly
DISTILLED_MAX_DROP = 0.04  # a half-width student after two epochs of distillation
DISTILLATION_MIN_GAIN = 0.5  # over the same student without fine-tuning (about 0.10, chance level)


def onnx_accuracy(task: Any, path: Path, split: str = "validation") -> float:
    return task.evaluate(onnx_predictor(path), split)


def conv_weight_shapes(path: Path) -> list[tuple[int, ...]]:
    """Shapes of the weight initializers of the Conv nodes of an ONNX model, in graph order."""
    model = onnx.load(str(path))
    initializers = {i.name: tuple(i.dims) for i in model.graph.initializer}
    return [initializers[node.input[1]] for node in model.graph.node if node.op_type == "Conv"]


def op_types(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def build_small_student() -> nn.Module:
    """A freshly initialised width-4 digits CNN (not trained)."""
    torch.manual_seed(0)
    return build_digits_cnn(4).eval()


def state_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# Channel pruning


def test_channel_pruning_physically_removes_channels(teacher: Any, pruned_half: Any) -> None:
    teacher_params = count_parameters(teacher.model)
    # Each conv loses half its outputs and (but the first) half its inputs: about a quarter remains.
    assert 0.2 < pruned_half.parameters / teacher_params < 0.3
    assert pruned_half.sparsity == 0.0
    assert pruned_half.notes == []

    before = conv_weight_shapes(teacher.onnx_path)
    after = conv_weight_shapes(pruned_half.onnx_path)
    assert before == [(64, 1, 3, 3), (128, 64, 3, 3), (128, 128, 3, 3)]
    assert after == [(32, 1, 3, 3), (64, 32, 3, 3), (64, 64, 3, 3)]
    conv_fraction = sum(np.prod(s) for s in after) / sum(np.prod(s) for s in before)
    assert conv_fraction == pytest.approx(0.25, abs=0.01)

    # The classifier keeps its 10 outputs (it is in prunable_ignored_layers) and still runs.
    head = onnx.load(str(pruned_half.onnx_path))
    assert head.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 10
    assert pruned_half.size_bytes < 0.35 * teacher.onnx_path.stat().st_size
    assert pruned_half.size_bytes == pruned_half.onnx_path.stat().st_size
    assert set(pruned_half.timings_s) == {"prune_s", "distill_s", "export_s", "quantize_s"}


def test_channel_pruning_without_fine_tuning_loses_accuracy(teacher: Any, pruned_half: Any) -> None:
    # The baseline the distillation test improves on: half the channels, no fine-tuning.
    assert onnx_accuracy(teacher.task, pruned_half.onnx_path) < teacher.accuracy - 0.3


# ---------------------------------------------------------------------------------------------
# Distillation


@pytest.mark.slow
@pytest.mark.parametrize(
    "distillation",
    [
        DistillConfig(method="hard", epochs=2),
        DistillConfig(method="soft", temperature=4.0, alpha=0.7, epochs=2),
    ],
    ids=["hard", "soft"],
)
def test_distillation_recovers_a_half_width_student(
    teacher: Any, pruned_half: Any, distillation: DistillConfig, tmp_path: Path
) -> None:
    before = state_snapshot(teacher.model)
    config = CompressionConfig(pruning=PruneConfig(method="channel", ratio=0.5), distillation=distillation)

    result = compress(teacher.model, config, teacher.task, tmp_path, seed=0)

    undistilled = onnx_accuracy(teacher.task, pruned_half.onnx_path)
    distilled = onnx_accuracy(teacher.task, result.onnx_path)
    assert distilled > undistilled + DISTILLATION_MIN_GAIN
    assert distilled >= teacher.accuracy - DISTILLED_MAX_DROP
    assert result.parameters == pruned_half.parameters
    assert result.timings_s["distill_s"] > 0
    # The teacher is only read: its weights and batch-norm statistics are untouched, and it is
    # left in eval mode.
    after = teacher.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not teacher.model.training


def test_distillation_that_diverges_raises_compression_error(teacher: Any) -> None:
    student = build_small_student()
    config = DistillConfig(method="hard", epochs=1, learning_rate=1e30)

    with pytest.raises(CompressionError, match="learning_rate"):
        distill(student, teacher.model, config, teacher.task, seed=0)


# ---------------------------------------------------------------------------------------------
# Unstructured pruning


@pytest.mark.slow
def test_unstructured_pruning_zeroes_weights_but_keeps_shapes(teacher: Any, tmp_path: Path) -> None:
    # Hard distillation on top: the pruned weights must stay zero while the rest is fine-tuned.
    config = CompressionConfig(
        pruning=PruneConfig(method="unstructured", ratio=0.5),
        distillation=DistillConfig(method="hard", epochs=1),
    )
    result = compress(teacher.model, config, teacher.task, tmp_path)

    assert result.parameters == count_parameters(teacher.model)
    assert 0.5 <= result.sparsity < 0.52
    assert UNSTRUCTURED_NOTE in result.notes
    assert conv_weight_shapes(result.onnx_path) == conv_weight_shapes(teacher.onnx_path)

    # The zeros are in the exported file: about half of all conv and linear weights.
    model = onnx.load(str(result.onnx_path))
    matrices = [numpy_helper.to_array(i) for i in model.graph.initializer if len(i.dims) >= 2]
    zeros = sum(int((m == 0).sum()) for m in matrices) / sum(m.size for m in matrices)
    assert zeros == pytest.approx(result.sparsity, abs=0.01)

    # Zeros compress; they do not make the dense file smaller.
    teacher_bytes = teacher.onnx_path.read_bytes()
    teacher_gzip = len(gzip.compress(teacher_bytes, compresslevel=6))
    assert result.size_bytes == pytest.approx(len(teacher_bytes), rel=0.02)
    assert result.gzip_size_bytes < 0.75 * teacher_gzip
    assert onnx_accuracy(teacher.task, result.onnx_path) >= teacher.accuracy - DISTILLED_MAX_DROP


def test_prune_keeps_masks_until_finalized(teacher: Any) -> None:
    student = build_small_student()
    masked = prune(student, PruneConfig(method="unstructured", ratio=0.3), teacher.task, teacher.task.example_inputs(2))

    assert masked and all(hasattr(module, "weight_orig") for module, _ in masked)
    finalize_pruning(masked)
    assert not any(hasattr(module, "weight_orig") for module, _ in masked)
    assert sparsity(student) == pytest.approx(0.3, abs=0.01)


def test_prune_none_is_a_no_op(teacher: Any) -> None:
    student = build_small_student()
    before = state_snapshot(student)
    assert prune(student, PruneConfig(), teacher.task, teacher.task.example_inputs(2)) == []
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_sparsity_counts_only_weight_matrices() -> None:
    model = nn.Sequential(nn.Linear(10, 10), nn.BatchNorm1d(10), nn.Linear(10, 2))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
        model[0].weight[:3] = 0.0  # 30 of the 120 matrix weights
        model[0].bias.zero_()  # biases and batch-norm parameters do not count
        model[1].weight.zero_()
    assert sparsity(model) == pytest.approx(30 / 120)
    assert count_parameters(model) == 110 + 20 + 22


# ---------------------------------------------------------------------------------------------
# Quantization


def test_static_int8_inserts_qdq_pairs_and_keeps_accuracy(teacher: Any, tmp_path: Path) -> None:
    config = CompressionConfig(
        quantization=QuantizeConfig(
            precision="int8", int8_mode="static", calibration_method="minmax", calibration_batches=2
        )
    )
    result = compress(teacher.model, config, teacher.task, tmp_path)

    assert result.onnx_path.name == "model-int8.onnx"
    ops = op_types(result.onnx_path)
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert result.size_bytes < 0.4 * teacher.onnx_path.stat().st_size  # int8 weights
    assert onnx_accuracy(teacher.task, result.onnx_path) >= teacher.accuracy - QUANTIZED_MAX_DROP
    assert onnx_accuracy(teacher.task, result.onnx_path, "test") >= 0.95
    assert result.timings_s["quantize_s"] > 0


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_static_int8_other_calibration_methods(teacher: Any, method: str, tmp_path: Path) -> None:
    config = QuantizeConfig(precision="int8", int8_mode="static", calibration_method=method, calibration_batches=1)
    path = quantize(teacher.onnx_path, config, teacher.task, tmp_path)
    assert {"QuantizeLinear", "DequantizeLinear"} <= op_types(path)
    assert onnx_accuracy(teacher.task, path) >= teacher.accuracy - QUANTIZED_MAX_DROP


def test_dynamic_int8_quantizes_only_the_linear_layer(teacher: Any, tmp_path: Path) -> None:
    config = QuantizeConfig(precision="int8", int8_mode="dynamic")
    path = quantize(teacher.onnx_path, config, teacher.task, tmp_path)

    ops = op_types(path)
    # Dynamic int8 convolutions run several times slower on CPUs: none may be quantized.
    assert "ConvInteger" not in ops
    assert "Conv" in ops
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops
    assert onnx_accuracy(teacher.task, path) >= teacher.accuracy - QUANTIZED_MAX_DROP


def test_fp16_halves_the_weights_and_keeps_float32_io(teacher: Any, tmp_path: Path) -> None:
    path = quantize(teacher.onnx_path, QuantizeConfig(precision="fp16"), teacher.task, tmp_path)

    model = onnx.load(str(path))
    conv_weights = {node.input[1] for node in model.graph.node if node.op_type == "Conv"}
    dtypes = {i.data_type for i in model.graph.initializer if i.name in conv_weights}
    assert dtypes == {onnx.TensorProto.FLOAT16}
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert path.stat().st_size < 0.6 * teacher.onnx_path.stat().st_size
    assert onnx_accuracy(teacher.task, path) >= teacher.accuracy - QUANTIZED_MAX_DROP


def test_fp32_quantization_returns_the_exported_file(teacher: Any, tmp_path: Path) -> None:
    assert quantize(teacher.onnx_path, QuantizeConfig(), teacher.task, tmp_path) == teacher.onnx_path


def test_quantizing_a_broken_file_is_a_compression_error(teacher: Any, tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    config = QuantizeConfig(precision="int8", int8_mode="dynamic")
    with pytest.raises(CompressionError, match=r"int8 quantization \(dynamic\) failed"):
        quantize(broken, config, teacher.task, tmp_path)


# ---------------------------------------------------------------------------------------------
# Export


def test_export_has_a_dynamic_batch_dimension(teacher: Any) -> None:
    model = onnx.load(str(teacher.onnx_path))
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value
    run = onnx_predictor(teacher.onnx_path)
    for n in (1, 3, 100):
        assert run(teacher.task.example_inputs(n)).shape == (n, 10)


def test_untraceable_model_raises_a_helpful_compression_error(teacher: Any, tmp_path: Path) -> None:
    model = untraceable(teacher.model)

    with pytest.raises(CompressionError) as caught:
        compress(model, CompressionConfig(), teacher.task, tmp_path)

    message = str(caught.value)
    assert message.startswith("ONNX export failed: ")
    # What went wrong, where in the model's code, and what the fix is; no terminal colour codes.
    assert "data-dependent" in message
    assert "tasks.py" in message and "in forward" in message and "out.sum() > 0" in message
    assert "traceable by torch.export" in message
    assert "\x1b[" not in message
    assert not (tmp_path / "model-fp32.onnx").exists()


def test_export_error_of_a_plain_failure_names_the_exception(tmp_path: Path) -> None:
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise ValueError("this model cannot run at all")

    with pytest.raises(CompressionError, match="this model cannot run at all"):
        export_onnx(Broken(), np.zeros((2, 1, 8, 8), dtype=np.float32), tmp_path / "m.onnx")
