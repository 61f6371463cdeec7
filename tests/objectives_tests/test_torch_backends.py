"""The PyTorch backends on real ``torch.export`` programs: torch-cpu everywhere, the CUDA ones
(eager, torch.compile, CUDA graphs) where a GPU is present."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lepton_search.errors import MeasurementError
from lepton_search.objectives import MeasurementSettings, get_backend, measure_model, measure_pair
from lepton_search.objectives._bench import read_input_specs, synthesize_inputs

CUDA_BACKENDS = ["torch-cuda", "torch-cuda-compile", "torch-cuda-graphs"]


class TwoInputs(nn.Module):
    """A small model with two named inputs, the second an integer index."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(16, 32)
        self.mlp = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))

    def forward(self, features: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        return self.mlp(features + self.embed(token))


def export(model: nn.Module, args: tuple[torch.Tensor, ...], path: Path, dynamic_batch: bool = True) -> Path:
    batch = torch.export.Dim("batch", min=1, max=1024)
    shapes = tuple({0: batch} for _ in args) if dynamic_batch else None
    torch.export.save(torch.export.export(model.eval(), args, dynamic_shapes=shapes), str(path))
    return path


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A wide and a narrow MLP, and the two-input model, exported with a dynamic batch."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("programs")
    x = torch.randn(4, 256)
    wide = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))
    narrow = nn.Sequential(nn.Linear(256, 32), nn.ReLU(), nn.Linear(32, 10))
    two = TwoInputs()
    return {
        "wide": export(wide, (x,), root / "wide.pt2"),
        "narrow": export(narrow, (x,), root / "narrow.pt2"),
        "two": export(two, (torch.randn(4, 32), torch.ones(4, dtype=torch.int64)), root / "two.pt2"),
    }


FAST = MeasurementSettings(
    backend="torch-cpu",
    batch_size=64,
    sessions=2,
    warmup_runs=3,
    warmup_s=0.02,
    min_iterations=10,
    min_session_s=0.05,
    bootstrap_resamples=200,
)


def test_torch_cpu_runs_the_exported_program_like_the_module(programs: dict[str, Path]) -> None:
    program = torch.export.load(str(programs["wide"]))
    x = np.random.default_rng(0).standard_normal((8, 256)).astype(np.float32)
    runner = get_backend("torch-cpu").open(programs["wide"], threads=1)
    expected = program.module()(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(runner.run(x), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(runner.run({"input": x}), expected, rtol=1e-5, atol=1e-5)
    assert runner.timed_run(x) > 0
    runner.close()


def test_torch_cpu_feeds_inputs_by_name(programs: dict[str, Path]) -> None:
    specs = read_input_specs(programs["two"])
    assert [(s.name, str(s.dtype), s.shape[1:]) for s in specs] == [
        ("features", "float32", (32,)),
        ("token", "int64", ()),
    ]
    assert isinstance(specs[0].shape[0], str)  # the batch symbol
    inputs = synthesize_inputs(specs, batch_size=5)
    runner = get_backend("torch-cpu").open(programs["two"], threads=1)
    # Given in the other order: the runner orders them by the program's signature.
    out = runner.run({"token": inputs["token"], "features": inputs["features"]})
    assert out.shape == (5, 4)
    with pytest.raises(MeasurementError, match=r"no array was given for \['token'\]"):
        runner.run({"features": inputs["features"]})


def test_torch_cpu_measures_a_real_difference(programs: dict[str, Path]) -> None:
    inputs = {"input": np.random.default_rng(1).standard_normal((64, 256)).astype(np.float32)}
    # Four rounds: with two, the t interval on the round ratios is too wide to call anything.
    pair = measure_pair(programs["narrow"], programs["wide"], inputs, dataclasses.replace(FAST, sessions=4))
    # About 1.3M against 21k multiply-accumulates per row: far apart even on a busy machine.
    assert pair.verdict == "faster"
    assert pair.ratio < 0.5
    assert pair.device["backend"] == "torch-cpu"
    assert pair.device["torch"] == torch.__version__
    assert pair.device["threads"] == FAST.threads
    assert pair.candidate.peak_memory_mb is not None


def test_torch_cpu_sets_the_thread_count(programs: dict[str, Path]) -> None:
    before = torch.get_num_threads()
    try:
        get_backend("torch-cpu").open(programs["narrow"], threads=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_pickled_module_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pickled.pt2"
    torch.save(nn.Linear(2, 2), path)
    with pytest.raises(MeasurementError, match=r"pickled\.pt2 is not a torch\.export program.*torch\.export\.save"):
        get_backend("torch-cpu").open(path, threads=1)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_cuda_backend_agrees_with_the_cpu(programs: dict[str, Path], backend: str) -> None:
    x = np.random.default_rng(2).standard_normal((64, 256)).astype(np.float32)
    expected = get_backend("torch-cpu").open(programs["wide"], threads=1).run(x)
    runner = get_backend(backend).open(programs["wide"], threads=1)
    for _ in range(3):  # compile and capture happen on the first runs
        out = runner.run(x)
    np.testing.assert_allclose(out, expected, rtol=1e-2, atol=1e-2)
    assert runner.timed_run(x) > 0
    runner.close()


@pytest.mark.gpu
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_cuda_backend_measures_with_manifest_and_memory(programs: dict[str, Path], backend: str) -> None:
    settings = dataclasses.replace(FAST, backend=backend)
    inputs = {"input": np.random.default_rng(3).standard_normal((64, 256)).astype(np.float32)}
    stats = measure_model(programs["wide"], inputs, settings)
    assert stats.median_ms > 0
    assert stats.peak_memory_mb is not None and stats.peak_memory_mb > 0
    manifest = get_backend(backend).manifest(1)
    assert manifest["device_kind"] == "gpu" and manifest["device_class"].startswith("gpu-")
    assert manifest["torch"] == torch.__version__
    assert manifest["device"] == torch.cuda.get_device_name(0)
    assert "clocks_mhz" in manifest


@pytest.mark.gpu
def test_cuda_graphs_replay_new_inputs_into_the_captured_buffers(programs: dict[str, Path]) -> None:
    runner = get_backend("torch-cuda-graphs").open(programs["narrow"], threads=1)
    cpu = get_backend("torch-cpu").open(programs["narrow"], threads=1)
    rng = np.random.default_rng(4)
    for _ in range(2):
        x = rng.standard_normal((16, 256)).astype(np.float32)
        np.testing.assert_allclose(runner.run(x), cpu.run(x), rtol=1e-3, atol=1e-3)
