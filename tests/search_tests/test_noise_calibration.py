"""``[measurement] noise_band = "auto"``: each run calibrates the band per host by A/A runs."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from lepton_search.search import Locations, parse_study, run_study
from lepton_search.testing import study_dict

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.mark.slow  # about 20 s: run in CI's slow pass, keeping the default suite under 10 minutes
def test_trials_are_judged_with_the_band_calibrated_on_their_host(tmp_path: Path, artifacts: Path) -> None:
    spec = parse_study(study_dict(tmp_path, artifacts, budget={"n_trials": 3}))
    assert spec.measurement.noise_band == "auto"
    locations = Locations.resolve(spec)
    run_study(spec, locations=locations)

    study = optuna.load_study(study_name="test-study", storage=locations.storage_url)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 3
    calibrations = [t.user_attrs["noise_calibration"] for t in trials]
    # One host and one setup: the first measured trial calibrated, the others reused its band.
    assert all(c == calibrations[0] for c in calibrations)
    calibration = calibrations[0]
    assert calibration["runs"] == spec.measurement.calibration_runs == 3
    assert calibration["ties"] == 3  # the baseline against itself is never called different
    assert calibration["delta"] == max(0.02, max(abs(r - 1.0) for r in calibration["ratios"]))
    assert all(t.user_attrs["noise_band"] == calibration["delta"] for t in trials)

    # A rerun calibrates again, against the machine as it is then.
    run_study(spec, locations=locations, n_trials=4)
    runs = sorted(p for p in (locations.cache_dir / "noise-bands").iterdir() if p.is_dir())
    assert len(runs) == 2
    assert all(len(list(run.glob("*.json"))) == 1 for run in runs)


def test_a_fixed_band_skips_the_calibration(tmp_path: Path, artifacts: Path) -> None:
    spec = parse_study(study_dict(tmp_path, artifacts, budget={"n_trials": 2}, measurement={"noise_band": 0.07}))
    locations = Locations.resolve(spec)
    run_study(spec, locations=locations)
    study = optuna.load_study(study_name="test-study", storage=locations.storage_url)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert trials and all(t.user_attrs["noise_band"] == 0.07 for t in trials)
    assert all("noise_calibration" not in t.user_attrs for t in trials)
    assert not (locations.cache_dir / "noise-bands").exists()
