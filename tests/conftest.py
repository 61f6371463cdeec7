"""Shared fixtures: one Ray instance per test session, and a shared teacher cache."""

from __future__ import annotations

import os
import shutil
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
