"""Faults outside lepton-search's control are one-line errors, read-only commands create nothing,
and `export` never writes through a planted link. Studies here are built through Optuna directly
(one COMPLETE trial with an uploaded model), so no Ray is needed."""

from __future__ import annotations

import errno
import json
import socket
from pathlib import Path

import optuna
import pytest
from optuna.artifacts import upload_artifact

from lepton_search.cli import EXIT_ERROR, main
from lepton_search.errors import StorageError
from lepton_search.search import Locations, parse_study
from lepton_search.search._study import open_study
from lepton_search.spaces import CompressionConfig
from lepton_search.storage import get_artifact_store, get_storage
from lepton_search.testing import study_dict
from lepton_search.testing.studies import write_toml

MODEL_BYTES = b"not really onnx, only bytes to copy"


@pytest.fixture
def study_file(tmp_path: Path) -> Path:
    """A study file whose SQLite study holds trial 0, COMPLETE, with a model artifact."""
    data = study_dict(tmp_path, tmp_path / "artifacts")
    spec = parse_study(data)
    locations = Locations.resolve(spec)
    study = open_study(spec, locations)
    trial = study.ask()
    model = tmp_path / "model.onnx"
    model.write_bytes(MODEL_BYTES)
    artifact_id = upload_artifact(
        artifact_store=get_artifact_store(locations.artifact_dir), file_path=str(model), study_or_trial=trial
    )
    trial.set_user_attr("artifact_id", artifact_id)
    trial.set_user_attr("config", CompressionConfig().to_dict())
    study.tell(trial, [0.9, 1.0, 2.0])
    return write_toml(tmp_path / "study.toml", data)


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, err


def test_export_writes_the_model_and_config(
    study_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _run(capsys, "export", str(study_file), "--trial", "0", "-o", str(tmp_path / "out"))
    assert code == 0, err
    assert (tmp_path / "out" / "model.onnx").read_bytes() == MODEL_BYTES
    assert json.loads((tmp_path / "out" / "trial.json").read_text())["number"] == 0
    assert not list((tmp_path / "out").glob(".*.tmp"))


@pytest.mark.parametrize("name", ["model.onnx", "config.json", "trial.json"])
def test_export_refuses_to_write_through_a_planted_link(
    study_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / name).symlink_to(victim)
    code, err = _run(capsys, "export", str(study_file), "--trial", "0", "-o", str(out))
    assert code == EXIT_ERROR
    assert f"{str(out / name)!r} is a symbolic link" in err
    assert victim.read_text() == "precious"


def test_export_of_a_missing_blob_is_one_line(
    study_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for blob in (tmp_path / "artifacts" / "optuna").rglob("*"):
        if blob.is_file():
            blob.unlink()
    code, err = _run(capsys, "export", str(study_file), "--trial", "0", "-o", str(tmp_path / "out"))
    assert code == EXIT_ERROR
    assert "is missing from the artifact store" in err
    assert not list((tmp_path / "out").glob("*"))  # nothing half-written


def test_export_to_an_unwritable_place_is_one_line(
    study_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    # Tests run as root here, so "unwritable" is a folder that cannot exist: one below a file.
    code, err = _run(capsys, "export", str(study_file), "--trial", "0", "-o", str(blocker / "out"))
    assert code == EXIT_ERROR
    assert "Cannot create the export directory" in err


def test_report_to_a_full_disk_is_one_line(
    study_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import lepton_search.search as search

    def full(study: object, path: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(search, "write_report", full)
    code, err = _run(capsys, "report", str(study_file), "-o", str(tmp_path / "r.html"))
    assert code == EXIT_ERROR
    assert err.startswith("Error: No space left on device:") and len(err.strip().splitlines()) == 1


def test_frontier_on_a_missing_sqlite_path_creates_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = write_toml(tmp_path / "study.toml", study_dict(tmp_path, tmp_path / "artifacts"))
    missing = tmp_path / "no" / "such" / "folder" / "study.db"
    for command in ("frontier", "report", "export"):
        extra = ["--trial", "0", "-o", str(tmp_path / "out")] if command == "export" else []
        code, err = _run(capsys, command, str(study), "--storage", f"sqlite:///{missing}", *extra)
        assert code == EXIT_ERROR
        assert "There is no SQLite database" in err and "nothing was created" in err
    assert not (tmp_path / "no").exists()
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "artifacts").exists()


def test_a_sqlite_folder_that_cannot_be_created_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(StorageError, match="Cannot create the folder"):
        get_storage(f"sqlite:///{blocker / 'sub' / 'study.db'}")


def test_dashboard_on_a_taken_port_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    get_storage(url)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = _run(capsys, "dashboard", "--storage", url, "--port", str(port))
    assert code == EXIT_ERROR
    assert "Error: Address already in use: the port is taken" in err


def test_optuna_loads_the_fabricated_study(study_file: Path, tmp_path: Path) -> None:
    # Guards the fixture: the trial the tests above export is really there.
    study = optuna.load_study(study_name="test-study", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"]


def test_a_read_only_artifact_store_is_refused_before_anything_is_created(tmp_path: Path) -> None:
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    # Root writes through permission bits, so as root the run drops to nobody (setpriv), for whom
    # the directory really is read-only; any other user meets the bits as they are.
    workdir = Path(tempfile.mkdtemp(prefix="lepton-readonly-"))
    try:
        workdir.chmod(0o777)
        (workdir / "artifacts" / "optuna").mkdir(parents=True)
        (workdir / "artifacts").chmod(0o555)
        (workdir / "artifacts" / "optuna").chmod(0o555)
        study = write_toml(workdir / "study.toml", study_dict(workdir, workdir / "artifacts"))
        command = [sys.executable, "-m", "lepton_search", "run", str(study), "--no-progress"]
        if os.geteuid() == 0:
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                pytest.fail("running as root, this test needs setpriv (util-linux) to act as an unprivileged user")
            command = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *command]
        env = {**os.environ, "HOME": str(workdir)}
        proc = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == EXIT_ERROR, proc.stderr
        assert "Cannot write to the artifact directory" in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert not (workdir / "study.db").exists()  # refused before the study was created
    finally:
        (workdir / "artifacts").chmod(0o755)
        (workdir / "artifacts" / "optuna").chmod(0o755)
        shutil.rmtree(workdir, ignore_errors=True)
