"""The artifact store for exported models, and safe file names inside output directories."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from lepton_search.errors import StorageError

if TYPE_CHECKING:
    from optuna.artifacts import FileSystemArtifactStore

DEFAULT_ARTIFACT_DIR = "lepton-artifacts"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def get_artifact_store(directory: str | Path, *, create: bool = True) -> FileSystemArtifactStore:
    """An Optuna file-system artifact store rooted at ``directory`` (created if missing, unless
    ``create`` is False: read-only commands must not create it).

    Raises:
        StorageError: the directory cannot be created, or is missing and ``create`` is False.
    """
    from optuna.artifacts import FileSystemArtifactStore

    path = Path(directory)
    if not create:
        if not (path / "optuna").is_dir():
            raise StorageError(
                f"There is no artifact store at {str(path)!r} (no {str(path / 'optuna')!r} folder); nothing was "
                "created. Pass the study's --artifacts directory."
            )
        return FileSystemArtifactStore(str(path / "optuna"))
    try:
        (path / "optuna").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"Cannot create artifact directory {str(path)!r}: {e}.") from e
    _probe_writable(path / "optuna")
    return FileSystemArtifactStore(str(path / "optuna"))


def _probe_writable(directory: Path) -> None:
    # Every trial uploads its model here; finding out at the first upload would fail that trial
    # and leave the driver to stop mid-run. A byte written and removed finds out before any trial.
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-probe-") as probe:
            probe.write(b"\0")
            probe.flush()
    except OSError as e:
        raise StorageError(
            f"Cannot write to the artifact directory {str(directory.parent)!r}: {e.strerror or e}. Every trial uploads "
            "its model there: make it writable (or free space on its disk), or pass another --artifacts directory."
        ) from e


def safe_name(name: str) -> str:
    """``name`` reduced to letters, digits, '.', '_' and '-', never empty and never '..'."""
    cleaned = _UNSAFE.sub("_", name).strip("._") or "unnamed"
    return cleaned


def safe_join(directory: Path, name: str) -> Path:
    """``directory / safe_name(name)``, guaranteed to stay inside ``directory``."""
    target = (directory / safe_name(name)).resolve()
    if directory.resolve() not in target.parents:
        raise StorageError(f"Refusing to write {name!r} outside {str(directory)!r}.")
    return target
