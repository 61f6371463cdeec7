"""Backend traits as data below both rooms, and the import contracts that keep them there."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lepton_search.devices._backends import BackendTraits, backend_names, backend_traits, register_backend_traits
from lepton_search.errors import ConfigError
from lepton_search.spaces import DeploymentConfig

ROOT = Path(__file__).resolve().parents[2]


def test_every_measuring_backend_has_the_traits_configurations_read() -> None:
    from lepton_search.objectives.latency._backends import _registry

    for name, cls in _registry().items():
        assert backend_traits(name) == BackendTraits(cls.model_format, cls.device_kind), name
    assert set(_registry()) == set(backend_names())


def test_a_backend_class_that_contradicts_the_table_is_refused() -> None:
    with pytest.raises(ValueError, match="torch-cpu"):
        register_backend_traits("torch-cpu", BackendTraits("onnx", "cpu"))
    register_backend_traits("torch-cpu", BackendTraits("torch-export", "cpu"))  # the same again: fine


def test_an_unknown_backend_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"'onnxruntime-gpu' is not a registered latency backend.*onnxruntime-cuda"):
        DeploymentConfig(backend="onnxruntime-gpu")


def test_configurations_load_no_latency_backend() -> None:
    code = "import sys\nfrom lepton_search.spaces import DeploymentConfig\nDeploymentConfig(backend='torch-cpu')\n"
    code += "print(sorted(m for m in sys.modules if m.startswith('lepton_search.objectives')))\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint is None:
        pytest.fail("lint-imports is not installed: pip install -e '.[test]' installs import-linter")
    return subprocess.run([lint], cwd=root, capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(root)})


def test_a_forbidden_import_breaks_the_layering_contract(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "lepton_search", tmp_path / "lepton_search", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    assert _lint_imports(tmp_path).returncode == 0
    config = tmp_path / "lepton_search" / "spaces" / "_config.py"
    config.write_text(config.read_text() + "\nfrom lepton_search.search import _driver  # noqa\n")
    proc = _lint_imports(tmp_path)
    assert proc.returncode != 0
    assert "lepton_search.spaces._config -> lepton_search.search" in proc.stdout
