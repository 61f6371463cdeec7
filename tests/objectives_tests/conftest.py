"""Fixtures of the objectives tests: one trained digits teacher (and its 50%-channel-pruned copy)
per test session, fast measurement settings, and importable helper modules."""

from __future__ import annotations

import shutil
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from lepton_search.objectives import CompressedModel, MeasurementSettings, compress
from lepton_search.objectives._evaluate import onnx_predictor
from lepton_search.objectives._export import export_onnx
from lepton_search.objectives.tasks.digits import DigitsCNNTask
from lepton_search.spaces import CompressionConfig, PruneConfig

if TYPE_CHECKING:
    import torch

# The built-in architecture at full width (64/128 channels, so latency differences are measurable),
# trained for half the default epochs: about 6 s here, and still about 99.5% validation accuracy.
TEACHER_OPTIONS = {"width": 64, "epochs": 6}


@dataclass(frozen=True)
class Teacher:
    """The session's trained digits teacher and what was derived from it once."""

    task: DigitsCNNTask
    model: torch.nn.Module
    cache_dir: Path
    onnx_path: Path
    accuracy: float  # of the ONNX export, on the validation split
    options: dict[str, int]  # task options of the digits-cnn task that finds it in the cache


@pytest.fixture(scope="session")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Teacher:
    """The digits teacher, trained once per test session, and its fp32 ONNX export."""
    root = tmp_path_factory.mktemp("digits-teacher")
    task = DigitsCNNTask(**TEACHER_OPTIONS)
    model = task.teacher(root / "cache")
    onnx_path = export_onnx(model, task.example_inputs(2), root / "teacher.onnx")
    accuracy = task.evaluate(onnx_predictor(onnx_path), "validation")
    assert accuracy > 0.95, f"the session teacher trained badly ({accuracy:.3f}); every test below would mislead"
    return Teacher(
        task=task,
        model=model,
        cache_dir=root / "cache",
        onnx_path=onnx_path,
        accuracy=accuracy,
        options=dict(TEACHER_OPTIONS),
    )


@pytest.fixture(scope="session")
def pruned_half(teacher: Teacher, tmp_path_factory: pytest.TempPathFactory) -> CompressedModel:
    """The teacher with 50% of its channels removed, not fine-tuned, exported to ONNX."""
    config = CompressionConfig(pruning=PruneConfig(method="channel", ratio=0.5))
    return compress(teacher.model, config, teacher.task, tmp_path_factory.mktemp("pruned-half"))


@pytest.fixture
def teacher_cache(teacher: Teacher, tmp_path: Path) -> Path:
    """A private copy of the cache holding the trained teacher (tests may write baselines into it)."""
    target = tmp_path / "cache"
    shutil.copytree(teacher.cache_dir, target)
    return target


@pytest.fixture
def fast_settings() -> MeasurementSettings:
    """Short measurements: enough to compare a 4x MAC difference, not to resolve a few percent."""
    return MeasurementSettings(
        sessions=2,
        warmup_runs=3,
        warmup_s=0.05,
        min_iterations=10,
        min_session_s=0.05,
        bootstrap_resamples=200,
    )


@pytest.fixture
def helper_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], str]]:
    """Writes Python source as a uniquely named module in ``tmp_path``, puts ``tmp_path`` on
    ``sys.path`` for this test, and returns the module's name (for ``module:factory`` references)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def write(source: str) -> str:
        name = f"lepton_test_helper_{uuid.uuid4().hex[:12]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


@pytest.fixture(autouse=True)
def _skip_gpu_tests_without_cuda(request: pytest.FixtureRequest) -> None:
    """Tests marked ``gpu`` skip, with the reason, where torch sees no CUDA device."""
    if request.node.get_closest_marker("gpu") is None:
        return
    import torch

    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        pytest.skip(f"needs an NVIDIA GPU: torch {torch.__version__} ({build}) sees none")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT (4 heads of 8, 64 feed-forward neurons) with random weights, and a WordPiece
    vocabulary of the passages' 400 most common words, saved as a model directory."""
    from lepton_search.testing.tiny_bert import save_tiny_bert

    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))
