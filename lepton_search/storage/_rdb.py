"""Storage URLs -> Optuna RDB storage. The only module that opens the study database."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from lepton_search.errors import StorageError

if TYPE_CHECKING:
    import optuna

DEFAULT_STORAGE_URL = "sqlite:///lepton-search.db"
_SUPPORTED = ("sqlite", "postgresql", "mysql")


def normalize_url(url: str) -> str:
    """Checks the scheme, and routes plain ``postgresql://`` URLs to the psycopg 3 driver."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    base = scheme.split("+", 1)[0]
    if base not in _SUPPORTED:
        raise StorageError(
            f"Storage URL {url!r} has scheme {scheme or '(none)'!r}; use one of "
            "sqlite:///PATH, postgresql://USER@HOST:PORT/DB or mysql+pymysql://... ."
        )
    if scheme == "postgresql":
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def sqlite_path(url: str) -> Path | None:
    """The file behind a ``sqlite:///`` URL, or None for other schemes and in-memory SQLite."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///") :]
    return None if path in ("", ":memory:") else Path(path)


def _enable_wal(path: Path) -> None:
    # WAL persists in the file; it lets optuna-dashboard read while the driver writes.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(path, timeout=60) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error as e:
        raise StorageError(
            f"Cannot open SQLite database {str(path)!r}: {e}. Check the path and its permissions."
        ) from e


def get_storage(url: str) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage for ``url``; SQLite files are created in WAL mode.

    Raises:
        StorageError: the URL is malformed, or the database cannot be reached or upgraded.
    """
    import optuna

    url = normalize_url(url)
    engine_kwargs: dict[str, object] = {"pool_pre_ping": True}
    path = sqlite_path(url)
    if path is not None:
        _enable_wal(path)
        engine_kwargs = {"connect_args": {"timeout": 60}}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except Exception as e:  # SQLAlchemy/driver errors have many types; all mean "cannot use this"
        raise StorageError(
            f"Cannot open storage {url!r}: {type(e).__name__}: {str(e).splitlines()[0][:300]}. "
            "Check that the database server is running and the URL is right."
        ) from e
