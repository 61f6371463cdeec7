"""Brings the project's own tables to the newest schema with alembic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from lepton_search.errors import StorageError
from lepton_search.storage._rdb import mask_url, normalize_url, scrub, sqlite_path
from lepton_search.storage._tables import VERSION_TABLE

MIGRATIONS = Path(__file__).parent / "migrations"


def engine_for(url: str) -> Engine:
    """A SQLAlchemy engine for ``url`` with the same settings as the Optuna storage."""
    url = normalize_url(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if sqlite_path(url) is not None:
        kwargs = {"connect_args": {"timeout": 60}}
    return create_engine(url, **kwargs)


def _config(connection: Any) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine) -> None:
    """Applies every migration not yet applied to ``engine``'s database."""
    from alembic import command

    try:
        with engine.begin() as connection:
            command.upgrade(_config(connection), "head")
    except SQLAlchemyError as e:
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
