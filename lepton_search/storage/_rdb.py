"""Storage URLs -> Optuna RDB storage. The only module that opens the study database."""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lepton_search.errors import StorageError, StudyNotFoundError

if TYPE_CHECKING:
    import optuna

DEFAULT_STORAGE_URL = "sqlite:///lepton-search.db"
_SUPPORTED = ("sqlite", "postgresql", "mysql")


_USERINFO_PASSWORD = re.compile(r"(://[^/?#@:]*):[^/?#@]*@")
_QUERY_PASSWORD = re.compile(r"([?&](?:password|passwd|sslpassword)=)[^&#]*", re.IGNORECASE)
MASK = "***"


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for anything printed, logged or stored.

    ``postgresql://user:secret@host/db`` becomes ``postgresql://user:***@host/db``; a password in
    the query string (``?password=...``) is masked too. Strings that are not URLs come back with
    the same masking applied as text, so this never raises.
    """
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        masked = parsed.render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy parses: mask by pattern
        masked = url
    masked = _USERINFO_PASSWORD.sub(rf"\1:{MASK}@", masked)
    return _QUERY_PASSWORD.sub(rf"\1{MASK}", masked)


def url_secrets(url: str) -> list[str]:
    """The secrets in ``url`` (its password, in decoded and raw form), to scrub from other text."""
    found: set[str] = set()
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        if parsed.password:
            found.add(str(parsed.password))
        for key in ("password", "passwd", "sslpassword"):
            value = parsed.query.get(key)
            if value:
                found.update([value] if isinstance(value, str) else value)
    except Exception:
        pass
    match = re.search(r"://[^/?#@:]*:([^/?#@]*)@", url)
    if match and match.group(1):
        found.add(match.group(1))
    found.update(m.group(1) for m in re.finditer(r"[?&](?:password|passwd|sslpassword)=([^&#]+)", url, re.IGNORECASE))
    return sorted((s for s in found if s and s != MASK), key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """``text`` (say, a driver's error message) with every secret of ``url`` replaced by ``***``."""
    for secret in url_secrets(url):
        text = text.replace(secret, MASK)
    return text


def normalize_url(url: str) -> str:
    """Checks the scheme, and routes plain ``postgresql://`` URLs to the psycopg 3 driver."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    base = scheme.split("+", 1)[0]
    if base not in _SUPPORTED:
        raise StorageError(
            f"Storage URL {mask_url(url)!r} has scheme {scheme or '(none)'!r}; use one of "
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
    except OSError as e:
        raise StorageError(
            f"Cannot create the folder {str(path.parent)!r} for SQLite database {str(path)!r}: {e.strerror or e}. "
            "Choose a storage path in a writable folder (--storage sqlite:///PATH)."
        ) from e
    try:
        with sqlite3.connect(path, timeout=60) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error as e:
        raise StorageError(
            f"Cannot open SQLite database {str(path)!r}: {e}. Check the path and its permissions."
        ) from e


#: Seconds to wait for a PostgreSQL server to accept and answer a connection, and for one statement.
PG_CONNECT_TIMEOUT_S = 10
PG_STATEMENT_TIMEOUT_S = 300
_PG_CONNECT_ENV = "LEPTON_PG_CONNECT_TIMEOUT_S"
_PG_STATEMENT_ENV = "LEPTON_PG_STATEMENT_TIMEOUT_S"


def _seconds_from_env(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise StorageError(
            f"${name} = {text!r} is not a whole number of seconds >= 0 (0 waits for ever); fix or unset it."
        )
    return value


def postgres_connect_args(url: str) -> dict[str, object]:
    """libpq settings that keep a silent or vanished PostgreSQL server from hanging a command.

    A server that accepts the connection and never answers fails after ``connect_timeout``
    (default :data:`PG_CONNECT_TIMEOUT_S`, ``$LEPTON_PG_CONNECT_TIMEOUT_S``); a statement that
    runs longer than ``statement_timeout`` (default :data:`PG_STATEMENT_TIMEOUT_S`,
    ``$LEPTON_PG_STATEMENT_TIMEOUT_S``; 0 turns either off) is cancelled by the server; TCP
    keepalives notice a server that vanished mid-statement. The URL's own query parameters
    (``?connect_timeout=5``, ``?options=-c%20statement_timeout%3D0``) take precedence.
    """
    from sqlalchemy.engine import make_url

    query = make_url(url).query
    args: dict[str, object] = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
    args = {k: v for k, v in args.items() if k not in query}
    if "connect_timeout" not in query:
        args["connect_timeout"] = _seconds_from_env(_PG_CONNECT_ENV, PG_CONNECT_TIMEOUT_S)
    if "options" not in query:
        args["options"] = f"-c statement_timeout={_seconds_from_env(_PG_STATEMENT_ENV, PG_STATEMENT_TIMEOUT_S) * 1000}"
    return args


def traceback_text(e: BaseException) -> list[str]:
    """The text of ``e`` and of the exceptions chained to it."""
    texts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = e
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts.append(str(current))
        current = current.__cause__ or current.__context__
    return texts


def get_storage(url: str, *, create: bool = True) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage for ``url``; SQLite files are created in WAL mode.

    Args:
        url: The storage URL.
        create: Create a missing SQLite file (and its folders). Read-only commands pass False, so
            that a mistyped path is an error instead of a new, empty database.

    Raises:
        StorageError: the URL is malformed, or the database cannot be reached or upgraded.
        StudyNotFoundError: ``create`` is False and the SQLite file does not exist.
    """
    import optuna

    url = normalize_url(url)
    engine_kwargs: dict[str, object] = {"pool_pre_ping": True}
    path = sqlite_path(url)
    if path is not None and not create and not path.is_file():
        raise StudyNotFoundError(
            f"There is no SQLite database at {str(path)!r} (from {mask_url(url)!r}), so no study to read; nothing "
            "was created. Check --storage or [study].storage, or run `lepton-search run` first."
        )
    if path is not None:
        _enable_wal(path)
        engine_kwargs = {"connect_args": {"timeout": 60}}
    elif url.startswith("postgresql"):
        engine_kwargs["connect_args"] = postgres_connect_args(url)
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except Exception as e:  # SQLAlchemy/driver errors have many types; all mean "cannot use this"
        detail = scrub(str(e).splitlines()[0][:300] if str(e) else "", url)
        error = StorageError(
            f"Cannot open storage {mask_url(url)!r}: {type(e).__name__}: {detail}. "
            "Check that the database server is running and the URL is right."
        )
        # The driver's own exception may quote the URL; keep it out of the chain when it holds a secret.
        if any(secret in "".join(traceback_text(e)) for secret in url_secrets(url)):
            raise error from None
        raise error from e


def set_trial_user_attrs(trial: optuna.Trial, attrs: Mapping[str, Any]) -> None:
    """Writes the user attributes ``attrs`` on the running ``trial`` in one statement.

    Optuna's public ``Trial.set_user_attr`` commits one transaction per attribute, with a look-up
    of the trial in each, and a trial's record has about thirty: most of the driver's own time per
    trial went there (``benchmarks/driver_overhead.py``). This checks once that the trial can be
    updated, as Optuna does, then upserts every attribute in one statement into Optuna's own
    attribute table (the same rows ``set_user_attr`` writes). A storage that is not Optuna's RDB
    storage on SQLite or PostgreSQL gets the public calls, one by one.
    """
    import json

    backend = getattr(trial.storage, "_backend", trial.storage)
    dialect = getattr(getattr(backend, "engine", None), "name", None)
    if dialect not in ("sqlite", "postgresql") or not hasattr(backend, "scoped_session"):
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return
    if not attrs:
        return
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert
    table = models.TrialUserAttributeModel
    rows = [{"trial_id": trial._trial_id, "key": key, "value_json": json.dumps(value)} for key, value in attrs.items()]
    statement = insert(table).values(rows)
    statement = statement.on_conflict_do_update(
        index_elements=[table.trial_id, table.key], set_={"value_json": statement.excluded.value_json}
    )
    with _create_scoped_session(backend.scoped_session) as session:
        stored = models.TrialModel.find_or_raise_by_id(trial._trial_id, session)
        backend.check_trial_is_updatable(trial._trial_id, stored.state)
        session.execute(statement)
    trial._cached_frozen_trial.user_attrs.update(attrs)
