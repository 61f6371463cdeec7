"""Interrupting `lepton-search run` (Ctrl-C, SIGKILL) and running it again, as a user would."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from lepton_search.testing import study_dict, write_toml

pytestmark = pytest.mark.slow


def _interruptible() -> None:
    # As in a terminal: a shell that starts its jobs in the background (nohup, `&`) hands them
    # SIGINT ignored, and the run would then finish as if no Ctrl-C had come.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(study_file: Path, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "lepton_search", "run", str(study_file), "--no-progress"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_interruptible,
    )


def _complete(storage: str) -> dict[int, list[float]]:
    try:
        study = optuna.load_study(study_name="test-study", storage=storage)
    except KeyError:
        return {}
    return {t.number: t.values for t in study.get_trials(states=(TrialState.COMPLETE,))}


def _completed_count(database: Path) -> int:
    """COMPLETE trials in the SQLite file, read-only and cheap (no Optuna storage per poll)."""
    if not database.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1)) as db:
            return db.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.OperationalError:  # no tables yet, or locked for a moment
        return 0


def _wait_for_completed(database: Path, count: int, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"run exited early with {process.returncode}: {process.stdout.read()}")
        if _completed_count(database) >= count:
            return
        time.sleep(0.1)
    pytest.fail(f"fewer than {count} trials completed within {timeout} s")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_interrupted_run_continues_where_it_stopped(tmp_path: Path, artifacts: Path, sig: signal.Signals) -> None:
    study_file = write_toml(tmp_path / "study.toml", study_dict(tmp_path, artifacts, budget={"n_trials": 6}))
    storage = f"sqlite:///{tmp_path / 'study.db'}"

    first = _start(study_file, tmp_path)
    _wait_for_completed(tmp_path / "study.db", 2, first)
    assert first.poll() is None, "the run ended before it could be interrupted"
    first.send_signal(sig)
    output, _ = first.communicate(timeout=120)
    before = _complete(storage)
    assert len(before) >= 2
    if sig == signal.SIGINT:
        assert first.returncode == 130, output
        assert "run the same command again to continue" in output
        assert "Traceback" not in output
    else:
        assert first.returncode == -signal.SIGKILL

    second = subprocess.run(
        [sys.executable, "-m", "lepton_search", "run", str(study_file), "--no-progress"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert second.returncode == 0, second.stdout + second.stderr

    study = optuna.load_study(study_name="test-study", storage=storage)
    after = {t.number: t.values for t in study.get_trials(states=(TrialState.COMPLETE,))}
    for number, values in before.items():
        assert after[number] == values, "a trial completed before the interrupt changed or vanished"
    # The budget counts evaluations: neither re-queued trials nor repeated proposals served from the cache.
    counted = [t for t in study.trials if not t.user_attrs.get("requeued") and "duplicate_of" not in t.user_attrs]
    assert len(counted) == 6
    evaluated = [t.user_attrs["config_hash"] for t in counted if t.state == TrialState.COMPLETE]
    assert len(evaluated) == len(set(evaluated)), "a configuration was evaluated twice across the resume"
    assert all(t.state.is_finished() for t in study.trials)
    for trial in study.trials:
        if trial.user_attrs.get("requeued"):
            assert trial.state == TrialState.FAIL
            assert trial.user_attrs["fail_reason"].startswith(("interrupted", "orphaned"))
            # A trial killed after it was asked for but before its parameters were chosen ran nothing:
            # there is nothing to retry (requeue_orphans queues parameters, not empty trials).
            if trial.params:
                assert any(t.user_attrs.get("retry_of") == trial.number for t in study.trials)
