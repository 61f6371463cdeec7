"""Pruning knobs on real models: channel importance (L1, L2, activation, Taylor), global versus
uniform ratios, depth pruning of the residual example (cached block importance, blocks really gone
from the exported graph), and 2:4 semi-structured masks (CPU) and kernels (GPU only)."""

from __future__ import annotations

import copy
import importlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from lepton_search.errors import CompressionError, ConfigError
from lepton_search.objectives._compress import compress
from lepton_search.objectives._evaluate import onnx_predictor
from lepton_search.objectives._prune import (
    KEPT_BLOCKS_ATTR,
    apply_semi_structured_mask,
    block_importance,
    blocks_to_drop,
    finalize_pruning,
    is_semi_structured,
    kept_blocks,
    prune,
    semi_structured_mask,
    semi_structured_support,
    skipped,
    to_semi_structured,
)
from lepton_search.spaces import CompressionConfig, PruneConfig, PruningSpace

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RESNET = {"width": 16, "epochs": 3}  # trained in a few seconds; about 97% validation accuracy


def _convs(model: torch.nn.Module) -> list[torch.nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


def _kept_filters(original: torch.nn.Conv2d, pruned: torch.nn.Conv2d) -> set[int]:
    """Which of ``original``'s output filters survive in ``pruned`` (of the first conv: its inputs
    are never pruned, so each kept filter is an exact copy)."""
    w0 = original.weight.detach().flatten(1)
    kept = set()
    for row in pruned.weight.detach().flatten(1):
        (match,) = torch.nonzero((w0 == row).all(dim=1)).flatten().tolist()
        kept.add(match)
    return kept


def _pruned(teacher: Any, config: PruneConfig) -> torch.nn.Module:
    model = copy.deepcopy(teacher.model)
    prune(model, config, teacher.task, teacher.task.example_inputs(2))
    return model


# ------------------------------------------------------------------------------ importance


def test_default_importance_is_l1_magnitude_for_a_cnn(teacher: Any) -> None:
    default = _pruned(teacher, PruneConfig("channel", 0.5))
    explicit = _pruned(teacher, PruneConfig("channel", 0.5, importance="l1"))

    for a, b in zip(default.state_dict().values(), explicit.state_dict().values()):
        assert torch.equal(a, b)


def test_taylor_and_l1_choose_different_channels(teacher: Any) -> None:
    first = _convs(teacher.model)[0]
    kept = {
        importance: _kept_filters(first, _convs(_pruned(teacher, PruneConfig("channel", 0.5, importance)))[0])
        for importance in ("l1", "l2", "taylor")
    }

    assert all(len(k) == first.out_channels // 2 for k in kept.values())
    assert kept["taylor"] != kept["l1"]
    # Taylor's gradients were only used to rank: the model carries none afterwards.
    model = _pruned(teacher, PruneConfig("channel", 0.5, "taylor"))
    assert all(p.grad is None for p in model.parameters())
    assert not teacher.model.training


def test_every_importance_prunes_to_the_asked_widths_and_keeps_predictions(teacher: Any) -> None:
    """Without fine-tuning, at 25% of the channels. Which criterion keeps most depends on the
    trained teacher: on the AVX2 EPYC Taylor kept 0.80 of the teacher's predictions, L1 0.70, L2
    0.54 and activation 0.27; on the Emerald Rapids Xeon Taylor 0.65, L1 0.77 and activation 0.14.
    The weight and gradient criteria keep far more than chance (0.1); activation ranks a CNN's
    channels little better than chance here (batch norm statistics no longer fit any pruned CNN,
    distillation repairs that)."""
    x = torch.from_numpy(teacher.task.example_inputs(300))
    agreement = {}
    for importance in ("l1", "l2", "taylor", "activation"):
        model = _pruned(teacher, PruneConfig("channel", 0.25, importance))
        assert [c.out_channels for c in _convs(model)] == [48, 96, 96]
        with torch.no_grad():
            out = model(x)
            assert torch.isfinite(out).all()
            agreement[importance] = float((out.argmax(1) == teacher.model(x).argmax(1)).float().mean())

    assert min(agreement["taylor"], agreement["l1"], agreement["l2"]) > 0.4, agreement


# ------------------------------------------------------------------------------ scope


def test_global_ratio_gives_non_uniform_widths_with_the_same_total(teacher: Any) -> None:
    full = [c.out_channels for c in _convs(teacher.model)]
    uniform = [c.out_channels for c in _convs(_pruned(teacher, PruneConfig("channel", 0.5, scope="uniform")))]
    global_ = [c.out_channels for c in _convs(_pruned(teacher, PruneConfig("channel", 0.5, scope="global")))]

    assert [w / f for w, f in zip(uniform, full)] == [0.5, 0.5, 0.5]
    assert len({round(w / f, 3) for w, f in zip(global_, full)}) > 1, global_
    assert sum(global_) == pytest.approx(sum(full) / 2, abs=3)
    assert all(w >= 0.1 * f for w, f in zip(global_, full))  # no layer pruned away


# ------------------------------------------------------------------------------ depth


@pytest.fixture
def resnet(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """The example task (imported from examples/ as a user's module) and its teacher."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    module = importlib.import_module("resnet_task")
    task = module.make_task(**RESNET)
    yield module, task, task.teacher(tmp_path / "cache")
    sys.modules.pop("resnet_task", None)


def test_depth_blocks_of_the_example_are_the_shape_preserving_blocks(resnet: Any) -> None:
    _, task, teacher = resnet

    assert [name for name, _ in task.depth_blocks(teacher)] == ["stage1.0", "stage1.1", "stage2.1"]


def test_block_importance_is_cached_atomically_and_read_back(resnet: Any, tmp_path: Path) -> None:
    _, task, teacher = resnet
    cache = tmp_path / "importance"

    scores = block_importance(teacher, task, cache)

    (path,) = (cache / "depth-importance").glob("*.json")
    assert path.name == f"{task.name}-{task.fingerprint()}.json"
    assert not list(path.parent.glob("*.tmp"))
    data = json.loads(path.read_text())
    assert data["blocks"] == scores and data["fingerprint"] == task.fingerprint()
    assert all(s > 0 for s in scores.values())
    # Read back, not re-measured: rewrite the file so another block looks least important.
    least = min(scores, key=scores.get)
    data["blocks"] = {name: (0.0 if name != least else 1e9) for name in scores}
    path.write_text(json.dumps(data))
    assert block_importance(teacher, task, cache)[least] == 1e9
    model = copy.deepcopy(teacher)
    prune(model, PruneConfig("depth", 0.3), task, task.example_inputs(2), cache_dir=cache)
    assert least in kept_blocks(model).values()


def test_block_importance_measures_the_output_change_of_skipping_each_block(resnet: Any) -> None:
    _, task, teacher = resnet
    x = torch.from_numpy(task.example_inputs(8))
    with torch.no_grad():
        full = teacher(x)
        with skipped(teacher, ["stage1.1"]):
            without = teacher(x)
            assert len(teacher.stage1) == 1
        assert torch.equal(teacher(x), full)  # put back
    assert len(teacher.stage1) == 2
    assert not torch.allclose(full, without)


def test_blocks_to_drop_rounds_the_ratio_and_keeps_model_order() -> None:
    scores = {"a": 3.0, "b": 1.0, "c": 0.5, "d": 2.0, "e": 9.0, "f": 0.1}

    assert blocks_to_drop(scores, 0.5) == ["b", "c", "f"]
    assert blocks_to_drop(scores, 0.05) == ["f"]  # at least one
    assert blocks_to_drop(scores, 0.9) == ["a", "b", "c", "d", "f"]


def test_depth_pruning_removes_blocks_from_the_exported_graph(resnet: Any, tmp_path: Path) -> None:
    _, task, teacher = resnet
    full = compress(teacher, CompressionConfig(), task, tmp_path / "full")
    config = CompressionConfig(pruning=PruneConfig("depth", 0.6))  # 2 of the 3 droppable blocks

    pruned = compress(teacher, config, task, tmp_path / "depth", cache_dir=tmp_path / "cache")

    def convs(path: Path) -> int:
        return sum(node.op_type == "Conv" for node in onnx.load(str(path)).graph.node)

    assert convs(full.onnx_path) - convs(pruned.onnx_path) == 4  # two blocks of two convolutions each
    assert pruned.parameters < full.parameters
    assert pruned.size_bytes < full.size_bytes
    accuracy = task.evaluate(onnx_predictor(pruned.onnx_path))
    assert 0.0 <= accuracy <= 1.0 and (tmp_path / "cache" / "depth-importance").is_dir()


def test_depth_pruning_records_which_teacher_blocks_were_kept(resnet: Any) -> None:
    _, task, teacher = resnet
    model = copy.deepcopy(teacher)
    scores = block_importance(teacher, task)

    prune(model, PruneConfig("depth", 0.3), task, task.example_inputs(2))

    (dropped,) = blocks_to_drop(scores, 0.3)
    assert sorted(kept_blocks(model).values()) == sorted(set(scores) - {dropped})
    assert list(kept_blocks(model)) == [name for name, _ in task.depth_blocks(model)]
    assert getattr(teacher, KEPT_BLOCKS_ATTR, None) is None


def test_depth_pruning_a_task_without_blocks_says_how_to_fix_it(teacher: Any) -> None:
    with pytest.raises(CompressionError, match=r"digits-cnn.*names none.*depth_blocks"):
        _pruned(teacher, PruneConfig("depth", 0.5))


# ------------------------------------------------------------------------------ 2:4


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 10)
    )


def test_semi_structured_mask_keeps_the_two_largest_of_every_four() -> None:
    weight = torch.tensor([[0.1, -3.0, 2.0, 0.5, 4.0, 0.0, -0.2, 1.0]])

    mask = semi_structured_mask(weight)

    assert mask.tolist() == [[False, True, True, False, True, False, False, True]]
    big = torch.randn(64, 128)
    assert (semi_structured_mask(big).reshape(64, -1, 4).sum(-1) == 2).all()
    with pytest.raises(CompressionError, match="multiple of 4"):
        semi_structured_mask(torch.randn(4, 6))


def test_two_four_masks_fitting_linear_layers_and_survive_fine_tuning() -> None:
    model = _mlp()
    before = copy.deepcopy(model)

    masked = apply_semi_structured_mask(model, ignored=[model[4]])

    # 128->64 and 64->96 fit the kernels (rows % 32, columns % 64); the 96->10 classifier does not.
    assert [m for m, _ in masked] == [model[0], model[2]]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(16, 128)).pow(2).mean().backward()
        optimizer.step()
    finalize_pruning(masked)
    for layer in (model[0], model[2]):
        assert is_semi_structured(layer.weight)
        assert float((layer.weight == 0).float().mean()) == 0.5
    assert torch.equal(model[4].weight != 0, before[4].weight != 0)  # the classifier only trained
    assert not is_semi_structured(before[0].weight)


def test_two_four_pruning_of_a_model_without_fitting_layers_is_refused(teacher: Any) -> None:
    with pytest.raises(CompressionError, match=r"2:4 sparsity found no Linear layer"):
        _pruned(teacher, PruneConfig("2:4"))


def test_two_four_is_refused_by_config_and_space_outside_torch_cuda() -> None:
    with pytest.raises(ConfigError) as caught:
        PruneConfig("2:4").check_backend("onnxruntime-cpu")
    message = str(caught.value)
    assert "'onnxruntime-cpu'" in message and "['torch-cuda']" in message and "compute capability 8.0" in message
    with pytest.raises(ConfigError, match="torch-cuda"):
        PruningSpace(method=["none", "2:4"]).check_backend("torch-cpu")
    PruneConfig("2:4").check_backend("torch-cuda")
    PruningSpace(method=["none", "2:4"]).check_backend("torch-cuda")
    PruningSpace().check_backend("onnxruntime-cpu")  # no 2:4 listed: any backend
    PruneConfig("channel", 0.5).check_backend("onnxruntime-cpu")


def test_without_a_gpu_conversion_to_semi_structured_tensors_says_why() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    reason = semi_structured_support()
    assert reason is not None and "CUDA" in reason
    with pytest.raises(CompressionError, match="no CUDA device"):
        to_semi_structured(_mlp())


@pytest.mark.gpu
def test_semi_structured_kernels_match_the_dense_masked_model_on_the_gpu() -> None:
    if semi_structured_support() is not None:
        pytest.skip(semi_structured_support())
    model = _mlp()
    finalize_pruning(apply_semi_structured_mask(model, ignored=[model[4]]))
    dense = copy.deepcopy(model).half().cuda().eval()
    sparse = copy.deepcopy(model).half().cuda().eval()

    assert to_semi_structured(sparse) == ["0", "2"]

    x = torch.randn(64, 128, device="cuda", dtype=torch.float16)
    with torch.inference_mode():
        np.testing.assert_allclose(sparse(x).float().cpu(), dense(x).float().cpu(), rtol=2e-2, atol=2e-2)
    assert type(sparse[0].weight).__name__.startswith("SparseSemiStructuredTensor")
