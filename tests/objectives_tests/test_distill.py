"""Hidden-state distillation on real models: the loss, the matching of a depth-pruned student's
layers to the teacher's, and its effect on the residual example and the digits CNN."""

from __future__ import annotations

import copy
import importlib
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from lepton_search.errors import CompressionError
from lepton_search.objectives._distill import _captured, distill, hidden_pairs, hidden_state_loss
from lepton_search.objectives._prune import kept_blocks, prune
from lepton_search.objectives.tasks.digits import DigitsCNNTask
from lepton_search.spaces import DistillConfig, PruneConfig

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RESNET = {"width": 16, "epochs": 3}


@pytest.fixture
def resnet(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    module = importlib.import_module("resnet_task")
    task = module.make_task(**RESNET)
    yield task, task.teacher(tmp_path / "cache")
    sys.modules.pop("resnet_task", None)


def _hidden_mismatch(student: torch.nn.Module, teacher: torch.nn.Module, task: Any) -> float:
    pairs = hidden_pairs(student, teacher, task)
    x = torch.from_numpy(task.example_inputs(256))
    with torch.no_grad(), _captured([s for s, _ in pairs]) as s_out, _captured([t for _, t in pairs]) as t_out:
        student(x)
        teacher(x)
        return float(hidden_state_loss(s_out, t_out))


def test_hidden_state_loss_is_relative_mse_for_equal_shapes_and_similarity_for_others() -> None:
    torch.manual_seed(0)
    t = torch.randn(8, 16, 4, 4)

    assert float(hidden_state_loss([t.clone()], [t])) == 0.0
    assert float(hidden_state_loss([2 * t], [t])) == pytest.approx(1.0, rel=1e-5)  # (2t - t)^2 / t^2
    noisy = t + torch.randn_like(t)
    assert float(hidden_state_loss([100 * t], [100 * noisy])) == pytest.approx(float(hidden_state_loss([t], [noisy])))
    # Narrower student: compares the in-batch similarity structure, so a channel subset of the
    # teacher's map scores better than an unrelated map of that width.
    subset = t[:, :8]
    unrelated = torch.randn(8, 8, 4, 4)
    assert float(hidden_state_loss([subset], [t])) < float(hidden_state_loss([unrelated], [t]))
    assert float(hidden_state_loss([t[:, :8] * 3.0], [t])) == pytest.approx(float(hidden_state_loss([subset], [t])))


def test_depth_pruned_student_layers_are_matched_to_the_teacher_blocks_they_came_from(resnet: Any) -> None:
    task, teacher = resnet
    student = copy.deepcopy(teacher)
    prune(student, PruneConfig("depth", 0.6), task, task.example_inputs(2))

    pairs = hidden_pairs(student, teacher, task)

    teacher_names = {id(m): n for n, m in teacher.named_modules()}
    student_names = {id(m): n for n, m in student.named_modules()}
    matched = {student_names[id(s)]: teacher_names[id(t)] for s, t in pairs}
    renamed = kept_blocks(student)
    assert len(renamed) == 1 and len(matched) == 2  # one kept depth block, plus stage2.0 (never dropped)
    assert matched == {**renamed, "stage2.0": "stage2.0"}
    assert all(type(s) is type(t) for s, t in pairs)


def test_hidden_distillation_matches_the_teachers_hidden_states(resnet: Any) -> None:
    task, teacher = resnet
    pruned = copy.deepcopy(teacher)
    prune(pruned, PruneConfig("depth", 0.6), task, task.example_inputs(2))
    plain, hidden = copy.deepcopy(pruned), copy.deepcopy(pruned)

    distill(plain, teacher, DistillConfig("soft", temperature=4.0, alpha=0.7, epochs=2), task, seed=0)
    distill(
        hidden, teacher, DistillConfig("soft", temperature=4.0, alpha=0.7, epochs=2, hidden_weight=1.0), task, seed=0
    )

    # Measured with width 32: 0.26 without the hidden loss, 0.08 with it.
    assert _hidden_mismatch(hidden, teacher, task) < 0.6 * _hidden_mismatch(plain, teacher, task)


def test_hidden_distillation_of_a_channel_pruned_cnn_uses_the_similarity_loss(teacher: Any) -> None:
    task = teacher.task
    student = copy.deepcopy(teacher.model)
    prune(student, PruneConfig("channel", 0.5), task, task.example_inputs(2))
    before = _hidden_mismatch(student, teacher.model, task)

    assert distill(student, teacher.model, DistillConfig("hard", epochs=1, hidden_weight=0.5), task, seed=0)

    assert [n for n, _ in task.hidden_layers(student)] == ["2", "5", "9"]
    assert _hidden_mismatch(student, teacher.model, task) < before


class _NoHiddenDigits(DigitsCNNTask):
    """The digits task with the hidden-layer hook left at a default that names nothing."""

    def hidden_layers(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        return []


def test_hidden_distillation_without_hidden_layers_says_how_to_fix_it(teacher: Any) -> None:
    task = _NoHiddenDigits(**teacher.options)
    student = copy.deepcopy(teacher.model)

    with pytest.raises(CompressionError, match=r"names none.*Remove hidden_weight.*hidden_layers"):
        distill(student, teacher.model, DistillConfig("hard", epochs=1, hidden_weight=0.5), task, seed=0)


def test_hidden_distillation_after_every_hidden_layer_was_dropped_says_so(resnet: Any) -> None:
    task, teacher = resnet
    student = copy.deepcopy(teacher)
    prune(student, PruneConfig("depth", 0.9), task, task.example_inputs(2))

    class OnlyDroppableHidden(type(task)):  # type: ignore[misc]
        def hidden_layers(self, model: torch.nn.Module) -> Any:
            return self.depth_blocks(model)

    with pytest.raises(CompressionError, match="dropped them all"):
        hidden_pairs(student, teacher, OnlyDroppableHidden(**RESNET))
