"""Writing a file so that no reader ever sees half of it.

Ray workers of one study share caches (teachers, students, teacher targets, calibrations,
sensitivities) and may write the same file at once; a reader, or a driver killed mid-write, must
find either the old file or the whole new one. Every such write goes through :func:`atomic_path`:
the content is written to a new file beside the target (created exclusively, so a link planted
there is never followed) and renamed onto it, which replaces the name itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A new, empty temporary file beside ``path`` to write to; when the block ends without an
    error it is renamed onto ``path``, otherwise removed. Creates ``path``'s folder if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o644)  # mkstemp's 0600 would make shared caches and exports unreadable to others
    os.close(fd)
    staged = Path(name)
    try:
        yield staged
        os.replace(staged, path)
    except BaseException:
        with contextlib.suppress(OSError):
            staged.unlink()
        raise


def write_text_atomically(path: Path, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as staged:
        staged.write_text(text, encoding="utf-8")


def write_json_atomically(path: Path, payload: Any, **dump_options: Any) -> None:
    """Writes ``payload`` as JSON to ``path`` through :func:`atomic_path`; ``dump_options`` go to
    :func:`json.dumps` (``indent``, ``sort_keys``)."""
    write_text_atomically(path, json.dumps(payload, **dump_options))


def save_array_atomically(path: Path, array: np.ndarray) -> None:
    """Writes ``array`` to ``path`` as ``.npy`` (no pickles) through :func:`atomic_path`."""
    import numpy as np

    with atomic_path(path) as staged, staged.open("wb") as f:
        np.save(f, array, allow_pickle=False)
