"""Two `lepton-search run` processes on one study share its budget and evaluate no configuration
twice (real Ray, real SQLite or PostgreSQL, real ONNX Runtime)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from lepton_search.search import Locations, parse_study
from lepton_search.search._study import counts_toward_budget, open_study
from lepton_search.testing import study_dict, write_toml

BUDGET = 4


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.mark.slow
def test_two_drivers_share_the_budget_without_evaluating_a_configuration_twice(
    tmp_path: Path, storage_url: str
) -> None:
    data = study_dict(tmp_path, tmp_path / "artifacts", budget={"n_trials": BUDGET, "workers": 1})
    data["study"]["storage"] = storage_url
    study_file = write_toml(tmp_path / "study.toml", data)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "lepton_search", "run", str(study_file), "--no-progress"]
    # The study exists before both drivers start on it at once (as when a second joins a run).
    spec = parse_study(data)
    open_study(spec, Locations.resolve(spec))
    drivers = [
        subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [driver.communicate(timeout=900)[0] for driver in drivers]
    assert [driver.returncode for driver in drivers] == [0, 0], "\n\n".join(outputs)

    study = optuna.load_study(study_name="test-study", storage=storage_url)
    evaluations = [t for t in study.trials if t.state.is_finished() and counts_toward_budget(t)]
    hashes = [t.user_attrs["config_hash"] for t in evaluations if t.state == TrialState.COMPLETE]
    assert len(evaluations) == BUDGET, [(t.number, t.state, t.user_attrs.get("driver")) for t in study.trials]
    assert len(hashes) == len(set(hashes)), "a configuration was evaluated twice"
    assert not [t.number for t in study.trials if t.user_attrs.get("requeued")], "a live driver's trial was orphaned"
    assert len({t.user_attrs.get("driver") for t in evaluations}) == 2, "both drivers evaluated"
