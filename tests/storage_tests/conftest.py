"""PostgreSQL fixtures: a fresh schema per test on the machine's server, or a clear skip."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

POSTGRES_URL = os.environ.get("LEPTON_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _connect(url: str):
    import psycopg

    return psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), connect_timeout=3, autocommit=True)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A storage URL whose search_path is a new, empty schema, dropped afterwards."""
    try:
        conn = _connect(POSTGRES_URL)
    except Exception as e:
        if os.environ.get("LEPTON_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL at {POSTGRES_URL} is required (LEPTON_REQUIRE_POSTGRES=1) but unreachable: {e}")
        pytest.skip(f"PostgreSQL at {POSTGRES_URL} is unreachable: {e}")
    schema = f"lepton_test_{uuid.uuid4().hex[:12]}"
    with conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    with _connect(POSTGRES_URL) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
