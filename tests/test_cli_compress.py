"""`lepton-search compress`: the same config, task and seed rebuild the same model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from lepton_search.objectives._rebuild import RebuildRecipe, rebuild
from lepton_search.objectives.tasks import resolve_task
from lepton_search.spaces import CompressionConfig, DeploymentConfig, DistillConfig, PruneConfig, QuantizeConfig

TASK = "lepton_search.testing.tasks:small_digits_task"

# Every step that could differ between two runs: channel pruning, distillation (seeded batch order
# and RNG) and static int8 calibration.
CONFIG = CompressionConfig(
    quantization=QuantizeConfig("int8", "static", "minmax", 2),
    pruning=PruneConfig("channel", 0.25),
    distillation=DistillConfig("soft", temperature=4.0, alpha=0.5, epochs=1),
)


def _outputs(model: Path, inputs: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: inputs})[0]


def _write_export_dir(directory: Path, seed: int) -> Path:
    """A directory shaped like `lepton-search export`'s: config.json and trial.json."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(CONFIG.to_json())
    (directory / "trial.json").write_text(json.dumps({"task": TASK, "task_options": {}, "seed": seed}))
    return directory / "config.json"


def _compress(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lepton_search", "compress", *args], capture_output=True, text=True, timeout=600
    )


def test_compress_rebuilds_the_same_model_from_an_export_directory(tmp_path: Path) -> None:
    config_path = _write_export_dir(tmp_path / "best", seed=3)
    cache = tmp_path / "cache"
    first = _compress("--config", str(config_path), "--task", TASK, "-o", str(tmp_path / "a"), "--cache", str(cache))
    assert first.returncode == 0, first.stderr
    assert "Wrote" in first.stdout and "int8-static(minmax) + channel 25%" in first.stdout
    second = _compress("--config", str(config_path), "--task", TASK, "-o", str(tmp_path / "b"), "--cache", str(cache))
    assert second.returncode == 0, second.stderr

    a = json.loads((tmp_path / "a" / "compress.json").read_text())
    b = json.loads((tmp_path / "b" / "compress.json").read_text())
    assert a["task"] == TASK and a["seed"] == 3
    assert a["config_hash"] == CONFIG.config_hash
    assert CompressionConfig.from_json((tmp_path / "a" / "config.json").read_text()) == CONFIG
    assert a["metric"] == b["metric"]
    inputs = resolve_task(TASK).example_inputs(32)
    np.testing.assert_array_equal(
        _outputs(tmp_path / "a" / "model.onnx", inputs), _outputs(tmp_path / "b" / "model.onnx", inputs)
    )


def test_rebuild_depends_on_the_seed(tmp_path: Path) -> None:
    config_path = _write_export_dir(tmp_path / "best", seed=0)
    cache = tmp_path / "cache"
    same = rebuild(RebuildRecipe.from_files(config_path, task=TASK), tmp_path / "s0", cache)
    other = rebuild(RebuildRecipe.from_files(config_path, task=TASK, seed=1), tmp_path / "s1", cache)
    assert same.summary["seed"] == 0 and other.summary["seed"] == 1
    inputs = resolve_task(TASK).example_inputs(32)
    # Distillation shuffles its batches by seed, so another seed fine-tunes differently.
    assert not np.array_equal(_outputs(same.model_path, inputs), _outputs(other.model_path, inputs))


def test_a_config_deployed_on_torch_rebuilds_as_a_torch_export_program(tmp_path: Path) -> None:
    config = CompressionConfig(
        quantization=QuantizeConfig("bf16"),
        distillation=DistillConfig("hard", epochs=1),
        deployment=DeploymentConfig(backend="torch-cpu"),
    )
    config_path = tmp_path / "config.json"
    config_path.write_text(config.to_json())
    built = rebuild(RebuildRecipe.from_files(config_path, task=TASK), tmp_path / "out", tmp_path / "cache")
    assert built.model_path.name == "model.pt2"
    assert built.summary["label"].startswith("bf16")
    assert built.summary["metric"]["validation"] > 0.8  # bf16 keeps the small teacher's predictions
    program = torch.export.load(str(built.model_path))
    outputs = program.module()(torch.from_numpy(resolve_task(TASK).example_inputs(4)))
    assert outputs.dtype == torch.float32 and outputs.shape[0] == 4


@pytest.mark.parametrize(
    ("setup", "args", "expected"),
    [
        ("config-only", [], "No task for"),
        ("binary-config", ["--task", TASK], "is not text"),
        ("config-only", ["--task", TASK, "--task-options", "[1]"], "--task-options must be a JSON object"),
        ("bad-config", ["--task", TASK], "Unknown config sections"),
        ("missing", ["--task", TASK], "Cannot read the config"),
    ],
)
def test_compress_errors_name_the_problem(tmp_path: Path, setup: str, args: list[str], expected: str) -> None:
    config_path = tmp_path / "config.json"
    if setup == "config-only":
        config_path.write_text(CONFIG.to_json())
    elif setup == "binary-config":
        config_path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    elif setup == "bad-config":
        config_path.write_text(json.dumps({"quantisation": {}}))
    result = _compress("--config", str(config_path), "-o", str(tmp_path / "out"), *args)
    assert result.returncode == 1
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_a_task_named_only_in_trial_json_is_shown_never_imported(tmp_path: Path) -> None:
    # A shared export bundle is data: its trial.json must not make compress import code.
    marker = tmp_path / "imported"
    (tmp_path / "bundle_task.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef factory():\n    pass\n")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(CONFIG.to_json())
    (bundle / "trial.json").write_text(json.dumps({"task": "bundle_task:factory", "seed": 3}))
    result = subprocess.run(
        [sys.executable, "-m", "lepton_search", "compress", "--config", str(bundle / "config.json"), "-o", "out"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert result.returncode == 1
    assert "trial.json beside it names the task 'bundle_task:factory'" in result.stderr
    assert "pass --task bundle_task:factory" in result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_trial_json_options_and_seed_apply_only_to_the_task_it_names(tmp_path: Path) -> None:
    config_path = _write_export_dir(tmp_path / "best", seed=3)
    assert RebuildRecipe.from_files(config_path, task=TASK).seed == 3
    other = RebuildRecipe.from_files(config_path, task="digits-cnn")
    assert other.seed == 0 and other.task_options == {}
