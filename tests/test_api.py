"""The Python API: the README's example runs as written, and the CLI uses only public names."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import lepton_search
from lepton_search.errors import ConfigError, LeptonSearchError

ROOT = Path(__file__).resolve().parents[1]


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- python-api-example:[^>]*-->\n```python\n(.*?)```", text, re.DOTALL)
    assert match, "README.md lost its Python API example (marked python-api-example)"
    return match.group(1)


@pytest.mark.slow
def test_the_readme_example_runs_the_quickstart_and_reads_trial_records(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "studies", tmp_path / "studies")
    code = _readme_example() + (
        "\nrecords = study.frontier()\n"
        "assert records and all(isinstance(r, lepton_search.TrialRecord) for r in records)\n"
        "assert all(r.config is not None and r.speedup for r in records)\n"
        "print('records', len(records))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert re.search(r"^4 completed, 0 failed$", proc.stdout, re.MULTILINE), proc.stdout
    assert re.search(r"^#\d+ .+: accuracy \d\.\d{4}, \d+\.\d\dx faster", proc.stdout, re.MULTILINE), proc.stdout
    assert (tmp_path / "api-example-report.html").stat().st_size > 10_000


def test_load_validates_the_study_file_and_names_it(tmp_path: Path) -> None:
    study = lepton_search.load(ROOT / "studies" / "quickstart.toml", storage=f"sqlite:///{tmp_path}/s.db")
    assert study.name == "digits-quickstart"
    assert "sqlite" not in repr(study)  # a storage URL may hold a password
    bad = tmp_path / "bad.toml"
    bad.write_text((ROOT / "studies" / "quickstart.toml").read_text().replace("n_trials = 20", "n_trials = -1"))
    with pytest.raises(ConfigError, match="n_trials"):
        lepton_search.load(bad)


def test_reading_a_study_that_never_ran_says_so(tmp_path: Path) -> None:
    study = lepton_search.load(
        ROOT / "studies" / "quickstart.toml", storage=f"sqlite:///{tmp_path}/s.db", artifacts=tmp_path / "a"
    )
    with pytest.raises(LeptonSearchError):
        study.frontier()


def test_the_cli_imports_only_public_names() -> None:
    tree = ast.parse((ROOT / "lepton_search" / "cli.py").read_text())
    private = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module != "__future__":
            if any(part.startswith("_") for part in node.module.split(".")):
                private.append(node.module)
            private += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Import):
            private += [a.name for a in node.names if any(p.startswith("_") for p in a.name.split("."))]
    assert private == []
