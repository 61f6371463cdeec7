"""`validate` refuses what `run` would refuse in its first seconds, creates nothing, and
`--offline` skips the storage."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from lepton_search.cli import EXIT_ERROR, main
from lepton_search.testing import study_dict
from lepton_search.testing.studies import write_toml


def _validate(capsys: pytest.CaptureFixture[str], study: Path, *flags: str) -> tuple[int, str]:
    code = main(["validate", str(study), *flags])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out + err


def _study(tmp_path: Path, **sections: object) -> Path:
    return write_toml(tmp_path / "study.toml", study_dict(tmp_path, tmp_path / "artifacts", **sections))


def test_a_valid_study_passes_and_nothing_is_created(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, text = _validate(capsys, _study(tmp_path))
    assert code == 0, text
    assert not (tmp_path / "study.db").exists() and not (tmp_path / "artifacts").exists()


def test_a_task_module_that_does_not_exist_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = _study(tmp_path, study={"task": "no_such_package.tasks:make"})
    code, text = _validate(capsys, study)
    assert code == EXIT_ERROR and "no module 'no_such_package.tasks' can be imported" in text


def test_bruteforce_on_a_continuous_space_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    space = {
        "quantization": {"precision": ["fp32"]},
        "pruning": {"method": ["channel"], "ratio": [0.1, 0.5]},
        "distillation": {"method": ["soft"], "temperature": [1.0, 8.0], "alpha": [0.5, 0.5], "epochs": [1, 1]},
    }
    code, text = _validate(capsys, _study(tmp_path, sampler={"name": "bruteforce"}, space=space))
    assert code == EXIT_ERROR and "bruteforce" in text and "temperature" in text, text


def test_a_warm_start_from_a_missing_study_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = _study(tmp_path, study={"warm_start_from": ["older-study"]})
    code, text = _validate(capsys, study)
    assert code == EXIT_ERROR and "'older-study'" in text and "warm_start_from" in text


def test_an_unreachable_storage_is_refused_and_offline_skips_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = socket.socket()  # accepts and never answers
    server.bind(("127.0.0.1", 0))
    server.listen()
    threading.Thread(target=lambda: server.accept(), daemon=True).start()
    monkeypatch.setenv("LEPTON_PG_CONNECT_TIMEOUT_S", "2")
    storage = f"postgresql://user:hunter2@127.0.0.1:{server.getsockname()[1]}/db"
    try:
        study = _study(tmp_path)
        code, text = _validate(capsys, study, "--storage", storage)
        assert code == EXIT_ERROR and "Cannot reach storage" in text and "--offline" in text
        assert "hunter2" not in text
        code, text = _validate(capsys, study, "--storage", storage, "--offline")
        assert code == 0, text
    finally:
        server.close()
