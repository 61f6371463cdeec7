"""Storage passwords never appear unmasked: not in error messages, CLI output, logs, or the study
and trial attributes that the (unauthenticated) dashboard serves."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import optuna
import pytest

from lepton_search.cli import EXIT_ERROR, main
from lepton_search.errors import StorageError
from lepton_search.search import Locations, parse_study
from lepton_search.search._study import open_study
from lepton_search.storage import get_storage, mask_url, scrub
from lepton_search.storage._rdb import traceback_text
from lepton_search.testing import study_dict
from lepton_search.testing.studies import write_toml

SECRET = "hunter2-Secret"
# Nothing listens on port 1, so connecting fails at once.
UNREACHABLE = f"postgresql://lepton:{SECRET}@127.0.0.1:1/db"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://user:pw@host/db", "postgresql://user:***@host/db"),
        ("postgresql+psycopg://user:p%40ss@host:5432/db", "postgresql+psycopg://user:***@host:5432/db"),
        (
            "postgresql://user@host/db?password=pw&sslmode=require",
            "postgresql://user@host/db?password=***&sslmode=require",
        ),
        ("postgresql://user@host/db", "postgresql://user@host/db"),
        ("sqlite:///relative/study.db", "sqlite:///relative/study.db"),
        ("mysql+pymysql://u:a:b@h/db", "mysql+pymysql://u:***@h/db"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_scrub_replaces_decoded_and_encoded_passwords() -> None:
    url = "postgresql://user:p%40ss@host/db"
    assert scrub("failed for p@ss and p%40ss", url) == "failed for *** and ***"


def test_an_unreachable_storage_error_holds_no_password() -> None:
    with pytest.raises(StorageError) as info:
        get_storage(UNREACHABLE)
    assert "postgresql+psycopg://lepton:***@127.0.0.1:1/db" in str(info.value)
    assert all(SECRET not in text for text in traceback_text(info.value))


def test_a_malformed_url_with_a_password_is_masked() -> None:
    with pytest.raises(StorageError) as info:
        get_storage(f"postgres://lepton:{SECRET}@host/db")  # wrong scheme
    assert SECRET not in str(info.value) and "lepton:***@host" in str(info.value)


def test_cli_output_and_logs_hold_no_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    study = write_toml(tmp_path / "study.toml", study_dict(tmp_path, tmp_path / "artifacts"))
    caplog.set_level(logging.DEBUG)
    for command in (["frontier", str(study)], ["report", str(study)], ["dashboard"]):
        code = main([*command, "--storage", UNREACHABLE])
        out, err = capsys.readouterr()
        assert code == EXIT_ERROR, (command, out, err)
        assert "lepton:***@127.0.0.1:1" in err
        assert SECRET not in out + err
    assert SECRET not in caplog.text


def _assert_no_secret(study: optuna.Study) -> None:
    stored = json.dumps(
        [
            study.user_attrs,
            study._storage.get_study_system_attrs(study._study_id),
            [(t.user_attrs, getattr(t, "system_attrs", {})) for t in study.get_trials()],
        ],
        default=str,
    )
    assert SECRET not in stored


def test_the_stored_spec_masks_the_storage_password(tmp_path: Path) -> None:
    # [study].storage holds a password; the run itself goes to SQLite through --storage.
    spec = parse_study(study_dict(tmp_path, tmp_path / "artifacts", study={"storage": UNREACHABLE}))
    locations = Locations.resolve(spec, storage=f"sqlite:///{tmp_path / 'study.db'}")
    study = open_study(spec, locations)
    assert study.user_attrs["lepton:spec"]["study"]["storage"] == "postgresql://lepton:***@127.0.0.1:1/db"
    _assert_no_secret(study)
    assert SECRET not in repr(Locations.resolve(spec))


def test_a_postgres_study_with_a_password_stores_none(tmp_path: Path, postgres_url: str) -> None:
    # The local server trusts 127.0.0.1, so it ignores the password; the URL still carries it.
    url = postgres_url.replace("://postgres@", f"://postgres:{SECRET}@", 1)
    assert SECRET in url
    spec = parse_study(study_dict(tmp_path, tmp_path / "artifacts", study={"storage": url}))
    study = open_study(spec, Locations.resolve(spec))
    study.enqueue_trial({})
    _assert_no_secret(optuna.load_study(study_name=spec.study.name, storage=get_storage(url)))
