"""Storage URLs against real SQLite files and the real PostgreSQL server."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import optuna
import pytest

from lepton_search.errors import StorageError
from lepton_search.storage import get_storage, normalize_url, set_trial_user_attrs, sqlite_path


def test_sqlite_storage_is_created_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "study.db"
    get_storage(f"sqlite:///{path}")
    assert path.exists()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_unknown_scheme_names_the_allowed_ones() -> None:
    with pytest.raises(StorageError, match=r"scheme 'redis'.*sqlite:///PATH.*postgresql://"):
        get_storage("redis://localhost/0")


def test_plain_postgresql_urls_use_psycopg3() -> None:
    assert normalize_url("postgresql://u@h:5432/db") == "postgresql+psycopg://u@h:5432/db"
    assert normalize_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert sqlite_path("sqlite:///:memory:") is None
    assert sqlite_path("sqlite:///a/b.db") == Path("a/b.db")


def test_unreachable_server_is_a_clear_error_not_a_hang() -> None:
    start = time.monotonic()
    with pytest.raises(StorageError, match="Check that the database server is running"):
        get_storage("postgresql://postgres@127.0.0.1:1/test?connect_timeout=2")
    assert time.monotonic() - start < 15


@pytest.mark.postgres
def test_postgres_storage_round_trips_a_multi_objective_study(postgres_url: str) -> None:
    storage = get_storage(postgres_url)
    study = optuna.create_study(study_name="pg", storage=storage, directions=["maximize", "minimize"])
    trial = study.ask()
    trial.set_user_attr("latency", {"median_ms": 1.5, "ci_ms": [1.4, 1.6]})
    trial.set_constraint("accuracy_drop", -0.01)
    study.tell(trial, [0.9, 1.5])

    reread = optuna.load_study(study_name="pg", storage=get_storage(postgres_url))
    [frozen] = reread.trials
    assert frozen.values == [0.9, 1.5]
    assert frozen.user_attrs["latency"]["ci_ms"] == [1.4, 1.6]
    assert frozen.constraints == {"accuracy_drop": -0.01}


def test_a_silent_postgres_server_ends_in_a_clear_error_within_the_connect_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import socket
    import threading
    import time

    # Accepts connections and never answers: libpq waits for the server's first message.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(server.accept()[0]), daemon=True).start()
    monkeypatch.setenv("LEPTON_PG_CONNECT_TIMEOUT_S", "2")
    started = time.monotonic()
    try:
        with pytest.raises(StorageError, match=r"Cannot open storage 'postgresql\+psycopg://u:\*\*\*@127\.0\.0\.1"):
            get_storage(f"postgresql://u:secret@127.0.0.1:{server.getsockname()[1]}/db")
    finally:
        server.close()
        for connection in accepted:
            connection.close()
    assert time.monotonic() - started < 20
    assert accepted, "the driver connected to the silent server"


def test_postgres_timeouts_have_defaults_the_url_and_environment_override(monkeypatch: pytest.MonkeyPatch) -> None:
    from lepton_search.storage._rdb import postgres_connect_args

    args = postgres_connect_args("postgresql+psycopg://u@h/db")
    assert args["connect_timeout"] == 10 and args["options"] == "-c statement_timeout=300000"
    assert "connect_timeout" not in postgres_connect_args("postgresql+psycopg://u@h/db?connect_timeout=3")
    monkeypatch.setenv("LEPTON_PG_STATEMENT_TIMEOUT_S", "0")
    assert postgres_connect_args("postgresql+psycopg://u@h/db")["options"] == "-c statement_timeout=0"
    monkeypatch.setenv("LEPTON_PG_CONNECT_TIMEOUT_S", "soon")
    with pytest.raises(StorageError, match=r"LEPTON_PG_CONNECT_TIMEOUT_S = 'soon' is not a whole number"):
        postgres_connect_args("postgresql+psycopg://u@h/db")


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_user_attributes_written_at_once_read_back_like_optunas_own(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    study = optuna.create_study(storage=get_storage(url), study_name=f"attrs-{time.time_ns()}")
    trial = study.ask()
    trial.set_user_attr("label", "old")
    attrs = {"label": "int8", "ratio_ci": [0.3, 0.4], "device": {"cpu": "EPYC", "isa": ["avx2"]}, "n": None}
    set_trial_user_attrs(trial, attrs)
    assert trial.user_attrs == attrs  # the trial object sees them too
    study.tell(trial, 1.0)
    fresh = optuna.load_study(study_name=study.study_name, storage=get_storage(url))
    assert fresh.trials[0].user_attrs == attrs  # the upsert replaced "label"
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        set_trial_user_attrs(trial, {"late": 1})
    assert "late" not in optuna.load_study(study_name=study.study_name, storage=get_storage(url)).trials[0].user_attrs
