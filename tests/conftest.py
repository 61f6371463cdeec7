"""Shared fixtures: one Ray instance per test session, and a shared teacher cache."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# Set before torch or Ray are imported anywhere: tests share 2 cores with Ray's workers.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray instance for the whole session (startup takes about 8 s here)."""
    import ray

    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=0,
        include_dashboard=False,
        object_store_memory=256 * 1024 * 1024,
        log_to_driver=False,
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def shared_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An artifact directory whose cache holds the small digits teacher, trained once."""
    from lepton_search.testing import small_digits_task

    root = tmp_path_factory.mktemp("shared-artifacts")
    small_digits_task().teacher(root / "cache")
    return root


@pytest.fixture
def artifacts(tmp_path: Path, shared_artifacts: Path) -> Path:
    """A fresh artifact directory for one test, pre-seeded with the trained teacher cache."""
    target = tmp_path / "artifacts"
    shutil.copytree(shared_artifacts, target)
    return target


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
