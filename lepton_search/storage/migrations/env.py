"""Alembic environment for lepton-search's own tables; run through ``storage.migrate``."""

from alembic import context

from lepton_search.storage._tables import VERSION_TABLE, metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
