"""What ``lepton-search run`` would refuse in its first seconds, checked by ``validate`` without
running anything, creating anything, or importing torch, Ray or ONNX Runtime.

- the sampler can search the space (``bruteforce`` on a continuous parameter);
- the task's module can be found (``package.module:factory``; found, not imported);
- the storage answers (``SELECT 1``; a SQLite file's folder exists and can be written), and the
  studies named in ``[study].warm_start_from`` are in it.

The storage checks need the network for a database server; ``offline`` skips them.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from lepton_search.errors import ConfigError, StorageError
from lepton_search.search._samplers import check_sampler_space
from lepton_search.search._spec import StudySpec
from lepton_search.storage import mask_url, scrub, sqlite_path


def preflight(spec: StudySpec, storage_url: str, *, offline: bool = False) -> list[str]:
    """Runs the checks; returns what was checked, one line each.

    Raises:
        ConfigError: the sampler cannot search the space, the task's module does not exist, or a
            warm-start study is missing.
        StorageError: the storage cannot be reached or written.
    """
    checked = []
    check_sampler_space(spec.sampler.name, spec.space.suggest)
    checked.append(f"sampler {spec.sampler.name!r} can search the space")
    task = spec.study.task
    if ":" in task:
        module = task.partition(":")[0]
        try:
            found = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            found = None
        if found is None:
            raise ConfigError(
                f"[study].task = {task!r}: no module {module!r} can be imported from here. Install the package "
                "that holds it, or run from the folder that holds it (it is imported by `run`)."
            )
        checked.append(f"task module {module!r} found")
    if offline:
        checked.append("storage not checked (--offline)")
        return checked
    studies = _existing_studies(storage_url)
    checked.append(f"storage {mask_url(storage_url)} answers")
    missing = [name for name in spec.study.warm_start_from if name not in studies]
    if missing:
        raise ConfigError(
            f"[study].warm_start_from names {missing}, not in {mask_url(storage_url)}; studies there: "
            f"{sorted(studies - {spec.study.name}) or '(none)'}."
        )
    if spec.study.warm_start_from:
        checked.append(f"warm-start studies {spec.study.warm_start_from} found")
    return checked


def _existing_studies(url: str) -> set[str]:
    """The study names in ``url``'s storage, read without creating or migrating anything."""
    from sqlalchemy import inspect, text

    from lepton_search.storage._migrate import engine_for

    path = sqlite_path(url)
    if path is not None:
        folder = _existing_parent(path)
        if not os.access(folder, os.W_OK):
            raise StorageError(
                f"SQLite database {str(path)!r} cannot be created: its folder {str(folder)!r} is not writable. "
                "Choose a storage path in a writable folder (--storage sqlite:///PATH)."
            )
        if not path.is_file():
            return set()
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            if not inspect(conn).has_table("studies"):
                return set()
            return {row[0] for row in conn.execute(text("SELECT study_name FROM studies"))}
    except Exception as e:  # SQLAlchemy/driver errors have many types; all mean "cannot use this"
        detail = scrub(str(e).splitlines()[0][:300] if str(e) else "", url)
        raise StorageError(
            f"Cannot reach storage {mask_url(url)!r}: {type(e).__name__}: {detail}. Check that the database server "
            "is running and the URL is right, or pass --offline to skip this check."
        ) from None
    finally:
        engine.dispose()


def _existing_parent(path: Path) -> Path:
    folder = path.parent.resolve()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder
