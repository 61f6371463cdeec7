"""The transformer pruner (heads and feed-forward neurons) and what distillation trains them back
with: nearest rounding and global allocation, least-squares reconstruction, iterative steps, MiniLM
v2 attention relations, teacher targets cached by row, and step-budget training."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lepton_search.errors import CompressionError
from lepton_search.objectives._distill import distill, relation_heads, relation_loss
from lepton_search.objectives._prune import prune
from lepton_search.objectives._targets import TeacherTargets, teacher_targets
from lepton_search.objectives._units import ORIGINAL_GROUPS_ATTR, removal_counts
from lepton_search.objectives.tasks import PruningUnit, resolve_task
from lepton_search.spaces import DistillConfig, PruneConfig
from lepton_search.testing.tiny_bert import TINY_OPTIONS

needs_transformers = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None,
    reason='transformers is not installed; install the minilm extra: pip install -e ".[minilm]"',
)


def _unit(name: str, kind: str = "neuron") -> PruningUnit:
    return PruningUnit(name=name, kind=kind, producers=(), consumer=None)


# ------------------------------------------------------------------ how many groups each unit loses


def test_per_layer_counts_round_to_the_nearest_not_up() -> None:
    units = [_unit("a", "head"), _unit("b", "head")]
    scores = {"a": [1.0] * 12, "b": [1.0] * 12}

    # 5% of 12 heads is 0.6 head: one head goes; 3% (0.36) leaves every head in place.
    assert removal_counts(units, scores, {"head": 0.05}, None) == {"a": 1, "b": 1}
    assert removal_counts(units, scores, {"head": 0.03}, None) == {"a": 0, "b": 0}


def test_global_scope_removes_the_least_important_groups_across_layers() -> None:
    units = [_unit("sensitive"), _unit("robust")]
    scores = {"sensitive": [5.0, 6.0, 7.0, 8.0], "robust": [0.1, 0.2, 0.3, 9.0]}

    counts = removal_counts(units, scores, {"neuron": 0.375}, "global")

    assert counts == {"sensitive": 0, "robust": 3}  # 3 of 8 in all, every one from the robust layer


def test_global_scope_never_takes_a_whole_layer() -> None:
    units = [_unit("a"), _unit("b")]
    scores = {"a": [0.0] * 10, "b": [1.0] * 10}

    counts = removal_counts(units, scores, {"neuron": 0.5}, "global")

    assert counts == {"a": 9, "b": 1}  # at most 90% of a unit; the rest of the budget moves on


def test_kinds_keep_their_own_ratios() -> None:
    units = [_unit("heads", "head"), _unit("ffn", "neuron")]
    scores = {"heads": [1.0] * 4, "ffn": [1.0] * 10}

    assert removal_counts(units, scores, {"head": 0.0, "neuron": 0.5}, "global") == {"heads": 0, "ffn": 5}


# ------------------------------------------------------------------ the pruner on a real (tiny) encoder


@pytest.fixture(scope="module")
def tiny(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    task = resolve_task("minilm", {**TINY_OPTIONS, "model_dir": str(tiny_bert_dir)})
    return task, task.teacher(tmp_path_factory.mktemp("tiny-cache"))


def _fidelity(model: Any, task: Any) -> float:
    import torch

    def predict(batch: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return model(**{k: torch.from_numpy(v) for k, v in batch.items()}).numpy()

    return task.evaluate(predict, "validation")


@needs_transformers
def test_least_squares_reconstruction_keeps_more_of_the_function(tiny: tuple[Any, Any]) -> None:
    task, teacher = tiny
    plain, refitted = copy.deepcopy(teacher), copy.deepcopy(teacher)

    prune(plain, PruneConfig("channel", 0.25, scope="global"), task, task.example_inputs(2))
    refit = PruneConfig("channel", 0.25, scope="global", reconstruction="least_squares")
    prune(refitted, refit, task, task.example_inputs(2))

    width = [layer.intermediate.dense.out_features for layer in refitted.bert.encoder.layer]
    assert width == [layer.intermediate.dense.out_features for layer in plain.bert.encoder.layer]
    assert sum(width) == 96  # 25% of 2 x 64 neurons
    assert _fidelity(refitted, task) > _fidelity(plain, task)


@needs_transformers
def test_iterative_steps_end_at_the_configured_ratios(tiny: tuple[Any, Any]) -> None:
    from lepton_search.objectives._units import prune_units

    task, teacher = tiny
    student = copy.deepcopy(teacher)
    config = PruneConfig("channel", 0.5, head_ratio=0.5)

    first = prune_units(student, config, task, fraction=0.5)
    second = prune_units(student, config, task, fraction=1.0)

    assert sum(first.values()) == sum(second.values()) > 0  # half of the removal in each step
    assert getattr(student, ORIGINAL_GROUPS_ATTR)["bert.encoder.layer.0.feed_forward"] == 64
    for layer in student.bert.encoder.layer:
        assert layer.intermediate.dense.out_features == 32 and layer.attention.self.num_attention_heads == 2
    assert prune_units(student, config, task, fraction=1.0) == {}  # already there: nothing more goes


@needs_transformers
def test_a_ratio_that_would_empty_a_layer_is_refused(tiny: tuple[Any, Any]) -> None:
    """90% of 4 heads rounds to all 4."""
    task, teacher = tiny
    with pytest.raises(CompressionError, match="lower the ratio"):
        prune(copy.deepcopy(teacher), PruneConfig("channel", 0.1, head_ratio=0.9), task, task.example_inputs(2))


# ------------------------------------------------------------------ attention relations (MiniLM v2)


def test_relations_of_identical_projections_cost_nothing_and_of_different_ones_something() -> None:
    import torch

    torch.manual_seed(0)
    teacher = [torch.randn(2, 6, 8) for _ in range(3)]
    mask = np.ones((2, 6), dtype=np.int64)

    assert float(relation_loss(teacher, teacher, mask)) == pytest.approx(0.0, abs=1e-6)
    assert float(relation_loss([torch.randn(2, 6, 8) for _ in range(3)], teacher, mask)) > 0.01


def test_relations_ignore_padded_tokens_and_compare_different_widths() -> None:
    import torch

    torch.manual_seed(0)
    teacher = [torch.randn(1, 6, 8) for _ in range(3)]
    student = [t[..., :4].clone() * 2 for t in teacher]  # a pruned student: half the width
    mask = np.array([[1, 1, 1, 1, 0, 0]])
    noisy = [s.clone() for s in student]
    for s in noisy:
        s[:, 4:] = torch.randn(1, 2, 4) * 100  # padding may hold anything

    assert relation_heads(4, 8) == 4
    assert float(relation_loss(noisy, teacher, mask)) == pytest.approx(float(relation_loss(student, teacher, mask)))


# ------------------------------------------------------------------ teacher targets and step training


@needs_transformers
def test_teacher_targets_are_computed_once_per_task_and_match_the_teacher(
    tiny: tuple[Any, Any], tmp_path: Path
) -> None:
    import torch

    task, teacher = tiny
    rows = np.array([5, 0, 3])
    first = TeacherTargets(task, teacher, tmp_path)
    values = first(rows)
    again = teacher_targets(task, teacher, tmp_path)
    assert again is not None

    assert first.computed_rows == task.training_rows() and np.array_equal(again(rows), values)
    assert again.computed_rows == 0  # a second trial (or worker) reads them
    batch = task.training_inputs(rows)
    with torch.no_grad():
        direct = teacher(**{k: torch.from_numpy(v) for k, v in batch.items()}).numpy()
    assert np.allclose(values, direct, atol=1e-5)
    assert list((tmp_path / "targets").rglob("*.npy"))


@needs_transformers
def test_step_budget_distillation_with_relations_recovers_a_pruned_student(
    tiny: tuple[Any, Any], tmp_path: Path
) -> None:
    task, teacher = tiny
    student = copy.deepcopy(teacher)
    prune(student, PruneConfig("channel", 0.25, head_ratio=0.25), task, task.example_inputs(2))
    before = _fidelity(student, task)

    config = DistillConfig(
        method="soft", temperature=1.0, alpha=0.0, steps=60, warmup=0.1, learning_rate=1e-3, relation_weight=0.5
    )
    targets = teacher_targets(task, teacher, tmp_path)
    assert distill(student, teacher, config, task, seed=0, targets=targets) is True

    after = _fidelity(student, task)
    assert after > before + 0.02, (before, after)
