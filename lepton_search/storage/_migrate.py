"""Brings the project's own tables to the newest schema with alembic."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from lepton_search.errors import StorageError
from lepton_search.storage._rdb import mask_url, normalize_url, postgres_connect_args, scrub, sqlite_path
from lepton_search.storage._tables import VERSION_TABLE

MIGRATIONS = Path(__file__).parent / "migrations"
#: The PostgreSQL advisory lock that serializes migrations (an arbitrary constant of this project).
_MIGRATION_LOCK_KEY = 0x6C657074


def engine_for(url: str) -> Engine:
    """A SQLAlchemy engine for ``url`` with the same settings as the Optuna storage."""
    url = normalize_url(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if sqlite_path(url) is not None:
        kwargs = {"connect_args": {"timeout": 60}}
    elif url.startswith("postgresql"):
        kwargs["connect_args"] = postgres_connect_args(url)
    return create_engine(url, **kwargs)


def _config(connection: Any) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine) -> None:
    """Applies every migration not yet applied to ``engine``'s database. Safe to call from several
    processes at once: on PostgreSQL they take turns under an advisory lock; SQLite runs DDL
    outside transactions, so a process that lost the race to create a table tries again and finds
    the schema at head."""
    from alembic import command

    attempts = 5
    for attempt in range(attempts):
        try:
            with engine.begin() as connection:
                if connection.dialect.name == "postgresql":
                    # The lock makes later drivers wait, then find the schema at head; it ends with
                    # the transaction.
                    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
                command.upgrade(_config(connection), "head")
            return
        except SQLAlchemyError as e:
            if attempt + 1 < attempts:
                time.sleep(0.2 * (attempt + 1))
                continue
            url = engine.url.render_as_string(hide_password=False)
            raise StorageError(
                f"Cannot migrate lepton-search's tables in {mask_url(url)!r}: {scrub(str(e), url)}"
            ) from None


def current_revision(engine: Engine) -> str | None:
    """The applied revision, or None for a database that has never been migrated."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        if not inspect(connection).has_table(VERSION_TABLE):
            return None
        return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()
