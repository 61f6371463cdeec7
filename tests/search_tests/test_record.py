"""The trial record: one typed shape for a trial's results, and studies of earlier versions read
back unchanged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pytest

from lepton_search.errors import StorageError
from lepton_search.search._frontier import frontier, frontier_records
from lepton_search.search._record import RECORD_SCHEMA_ATTR, LatencyRecord, TrialRecord

DATA = Path(__file__).parent / "data"
# Written by main on 2026-12-02, before the record existed: three trials of the test study, the
# frontier re-measured, and the frontier JSON that version printed.
OLD_STUDY = DATA / "study-2026-12-02.db"


@pytest.fixture
def old_study(tmp_path: Path) -> optuna.Study:
    copy = tmp_path / "study.db"
    shutil.copy(OLD_STUDY, copy)  # opening a study may write to it
    return optuna.load_study(study_name="test-study", storage=f"sqlite:///{copy}")


def test_a_study_of_the_previous_version_gives_the_same_frontier_json(old_study: optuna.Study) -> None:
    expected = json.loads(OLD_STUDY.with_suffix(".frontier.json").read_text())
    assert json.loads(json.dumps(frontier(old_study))) == expected


def test_records_are_the_frontier_and_read_back_from_its_json(old_study: optuna.Study) -> None:
    data = frontier(old_study)
    records = frontier_records(old_study)
    assert [r.number for r in records] == [e["number"] for e in data["trials"]]
    for record, entry in zip(records, data["trials"]):
        assert record.to_json() == entry
        assert TrialRecord.from_json(entry) == record
        assert record.config is not None and record.config.to_dict() == entry["config"]
        assert record.remeasured is not None and record.shown_latency is record.remeasured
        assert record.speedup == pytest.approx(1 / entry["latency"]["remeasured"]["ratio_to_baseline"])
        assert record.feasible


def test_a_trial_recorded_in_a_newer_schema_is_refused_with_both_versions(old_study: optuna.Study) -> None:
    trial = old_study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))[0]
    newer = optuna.trial.create_trial(
        values=trial.values,
        user_attrs={**trial.user_attrs, RECORD_SCHEMA_ATTR: TrialRecord.SCHEMA_VERSION + 1},
    )
    names = ["accuracy", "latency_ms"][: len(trial.values)]
    assert RECORD_SCHEMA_ATTR not in trial.user_attrs  # written before the stamp: read as version 1
    assert TrialRecord.from_trial(trial, names).number == trial.number
    with pytest.raises(StorageError, match=rf"schema {TrialRecord.SCHEMA_VERSION + 1}, .* reads schema 1 and older"):
        TrialRecord.from_trial(newer, names)


def test_the_speedup_interval_is_the_ratio_interval_inverted() -> None:
    latency = LatencyRecord(ratio_to_baseline=0.25, ratio_ci=(0.2, 0.5))
    assert latency.speedup == pytest.approx(4.0)
    assert latency.speedup_ci == pytest.approx((2.0, 5.0))
    assert LatencyRecord().speedup is None and LatencyRecord().speedup_ci is None
