"""Artifact store and safe names."""

from __future__ import annotations

from pathlib import Path

import pytest

from lepton_search.errors import StorageError
from lepton_search.storage import get_artifact_store, safe_join, safe_name


@pytest.mark.parametrize("name", ["../../etc/passwd", "/abs/path", "..", "a/../../b", "", "ok name!"])
def test_names_cannot_escape_their_directory(tmp_path: Path, name: str) -> None:
    target = safe_join(tmp_path, name)
    assert tmp_path.resolve() in target.parents
    assert "/" not in safe_name(name) and safe_name(name) not in ("", ".", "..")


def test_artifact_store_writes_under_its_directory(tmp_path: Path) -> None:
    import io

    store = get_artifact_store(tmp_path / "artifacts")
    store.write("abc", io.BytesIO(b"model bytes"))
    with store.open_reader("abc") as reader:
        assert reader.read() == b"model bytes"
    assert (tmp_path / "artifacts" / "optuna" / "abc").exists()


def test_unwritable_artifact_directory_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError, match="Cannot create artifact directory"):
        get_artifact_store(blocker / "sub")
