"""``examples/resnet_task.py``, a bring-your-own task: a residual network on the digits, run end to
end through channel pruning (torch-pruning must keep the residual adds consistent) and distillation,
with :func:`lepton_search.objectives.evaluate` in-process."""

from __future__ import annotations

import copy
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lepton_search.errors import ConfigError
from lepton_search.objectives import MeasurementSettings, NoGate, TrialRequest, evaluate
from lepton_search.objectives._prune import prune
from lepton_search.objectives.tasks import resolve_task
from lepton_search.spaces import CompressionConfig, DistillConfig, PruneConfig

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
OPTIONS = {"width": 32, "epochs": 6}  # about 99% validation accuracy, trained in 10-20 s here
PRUNE_RATIO = 0.5  # half of every prunable layer's channels: about 4x fewer parameters
# 50% channel pruning alone breaks the network (its batch-norm statistics no longer fit: about
# chance accuracy here); a few epochs of soft distillation bring it back to within this of the
# teacher (0.986 against 0.992 here).
DISTILLED_MAX_DROP = 0.03
PRUNED_MIN_DROP = 0.2


@pytest.fixture
def resnet_task(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The example module, imported from examples/ as a user's own module would be."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    module = importlib.import_module("resnet_task")
    yield module
    sys.modules.pop("resnet_task", None)


def test_make_task_builds_through_the_task_registry(resnet_task: Any) -> None:
    task = resolve_task("resnet_task:make_task", {"width": 8, "epochs": 1})

    assert isinstance(task, resnet_task.ResNetDigitsTask)
    assert task.example_inputs(5).shape == (5, 1, 8, 8)
    with pytest.raises(ConfigError, match="width"):
        resolve_task("resnet_task:make_task", {"width": 2})


def test_blocks_add_their_shortcut(resnet_task: Any) -> None:
    torch.manual_seed(0)
    block = resnet_task.BasicBlock(8, 16, stride=2).eval()
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        block.conv2.weight.zero_()
        block.bn2.bias.zero_()  # the residual branch now outputs zeros

        assert torch.allclose(block(x), torch.relu(block.shortcut(x)))
    assert isinstance(resnet_task.BasicBlock(8, 8).shortcut, torch.nn.Identity)


def test_channel_pruning_keeps_residual_adds_consistent(resnet_task: Any) -> None:
    torch.manual_seed(0)
    task = resnet_task.make_task(width=16, epochs=1)
    model = resnet_task.ResNetDigits(16).eval()

    prune(model, PruneConfig(method="channel", ratio=PRUNE_RATIO), task, task.example_inputs(2))

    # Each block's output and its shortcut lost the same channels, and the next layers read that many.
    for stage in (model.stage1, model.stage2):
        for block in stage:
            assert block.conv2.out_channels == block.bn2.num_features
            if isinstance(block.shortcut, torch.nn.Identity):
                assert block.conv2.out_channels == block.conv1.in_channels
            else:
                assert block.conv2.out_channels == block.shortcut[0].out_channels
                assert block.shortcut[0].in_channels == block.conv1.in_channels
    assert model.stem[0].out_channels == 8 and model.stage2[1].conv2.out_channels == 16
    assert model.fc.in_features == 16 and model.fc.out_features == 10  # the classes are kept
    with torch.no_grad():
        assert model(torch.from_numpy(task.example_inputs(3))).shape == (3, 10)


def _trained(resnet_task: Any, tmp_path: Path) -> tuple[Any, Any, float, Callable[[CompressionConfig], Any]]:
    """The example task, its trained teacher and accuracy, and a function evaluating a config on it
    the way a study's worker does (fast measurement settings)."""
    task = resnet_task.make_task(**OPTIONS)
    cache = tmp_path / "cache"
    teacher = task.teacher(cache)
    with torch.no_grad():
        teacher_accuracy = task.evaluate(lambda x: teacher(torch.from_numpy(x)).numpy())
    settings = MeasurementSettings(
        sessions=2, warmup_runs=3, warmup_s=0.02, min_iterations=10, min_session_s=0.05, bootstrap_resamples=200
    )

    def run(config: CompressionConfig) -> Any:
        request = TrialRequest(
            task="resnet_task:make_task",
            task_options=dict(OPTIONS),
            config_json=config.to_json(),
            cache_dir=str(cache),
            settings=settings,
        )
        return evaluate(request, NoGate())

    return task, teacher, teacher_accuracy, run


@pytest.mark.slow
def test_pruned_resnet_runs_end_to_end_and_distillation_recovers_accuracy(resnet_task: Any, tmp_path: Path) -> None:
    _, teacher, teacher_accuracy, run = _trained(resnet_task, tmp_path)
    assert teacher_accuracy > 0.97
    pruned = run(CompressionConfig(pruning=PruneConfig(method="channel", ratio=PRUNE_RATIO)))
    distilled = run(
        CompressionConfig(
            pruning=PruneConfig(method="channel", ratio=PRUNE_RATIO),
            distillation=DistillConfig(method="soft", temperature=4.0, alpha=0.7, epochs=4, learning_rate=1e-3),
        )
    )

    full = sum(p.numel() for p in teacher.parameters())
    for result in (pruned, distilled):
        assert result.parameters < 0.35 * full  # channels were really removed, around every residual add
        assert result.latency["candidate"]["median_ms"] > 0 and np.isfinite(result.latency["ratio"])
        assert result.onnx_bytes
    assert pruned.accuracy < teacher_accuracy - PRUNED_MIN_DROP
    assert distilled.accuracy >= teacher_accuracy - DISTILLED_MAX_DROP, (teacher_accuracy, distilled.accuracy)
    assert distilled.test_accuracy >= teacher_accuracy - 2 * DISTILLED_MAX_DROP


def test_teacher_is_cached_and_reloaded_with_weights_only(resnet_task: Any, tmp_path: Path) -> None:
    task = resnet_task.make_task(width=8, epochs=1)
    first = task.teacher(tmp_path)
    (saved,) = (tmp_path / "teachers").glob("resnet-digits-*.pt")

    again = resnet_task.make_task(width=8, epochs=1).teacher(tmp_path)

    assert again is not first
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    assert not again.training
    assert torch.load(saved, weights_only=True).keys() == first.state_dict().keys()
    assert copy.deepcopy(again)(torch.from_numpy(task.example_inputs(2))).shape == (2, 10)


@pytest.mark.slow
def test_depth_pruned_resnet_loses_accuracy_and_distillation_recovers_it(resnet_task: Any, tmp_path: Path) -> None:
    """Two of the three identity-shortcut blocks dropped (measured: 0.67 validation accuracy against
    the teacher's 0.99), then three epochs of soft distillation with the hidden-state loss (0.98)."""
    task, teacher, teacher_accuracy, run = _trained(resnet_task, tmp_path)
    depth = PruneConfig(method="depth", ratio=0.6)
    pruned = run(CompressionConfig(pruning=depth))
    distilled = run(
        CompressionConfig(
            pruning=depth,
            distillation=DistillConfig(method="soft", temperature=4.0, alpha=0.7, epochs=3, hidden_weight=0.5),
        )
    )

    full = sum(p.numel() for p in teacher.parameters())
    sizes = {name: sum(p.numel() for p in m.parameters()) for name, m in task.depth_blocks(teacher)}
    two_blocks = {full - sizes[a] - sizes[b] for a in sizes for b in sizes if a < b}
    for result in (pruned, distilled):
        assert result.parameters in two_blocks  # exactly two whole blocks are gone
    assert pruned.accuracy < teacher_accuracy - PRUNED_MIN_DROP
    assert distilled.accuracy >= teacher_accuracy - DISTILLED_MAX_DROP, (teacher_accuracy, distilled.accuracy)
