"""The teacher's outputs on training rows, computed once per task and cached on disk.

Distilling an embedding model compares the student's embeddings of a batch with the teacher's.
The teacher is fixed, so its embeddings of a training passage are the same in every trial: they
are computed once per task fingerprint, in chunks of :data:`CHUNK_ROWS` consecutive rows, and kept
as ``.npy`` files under ``<cache_dir>/targets/<task>-<fingerprint>/``. A distillation step then
costs one student pass instead of a teacher pass and a student pass.

It needs a task whose :meth:`~lepton_search.objectives.tasks.Task.train_batches` labels are stable
row numbers and that can rebuild the inputs of given rows
(:meth:`~lepton_search.objectives.tasks.Task.training_inputs`); for others
:func:`teacher_targets` returns None and distillation runs the teacher itself.

Chunks are written atomically (a temporary file, then a rename) and computed under a file lock,
so two workers that need the same chunk compute it once, and a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lepton_search._atomic import save_array_atomically
from lepton_search.objectives._inputs import run_model, to_torch

if TYPE_CHECKING:
    import torch

    from lepton_search.objectives.tasks import Task

CHUNK_ROWS = 512
#: Rows per teacher forward pass while a chunk is computed.
TARGET_BATCH = 32


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created if missing), held while the block runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class TeacherTargets:
    """The teacher's outputs on training rows (see the module documentation)."""

    def __init__(self, task: Task, teacher: torch.nn.Module, cache_dir: Path) -> None:
        self.task = task
        self.teacher = teacher
        self.directory = Path(cache_dir) / "targets" / f"{task.name}-{task.fingerprint()}"
        self._chunks: dict[int, np.ndarray] = {}
        self.computed_rows = 0

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        """The teacher's outputs (float32) for training rows ``rows``, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        out = None
        for chunk in np.unique(rows // CHUNK_ROWS):
            values = self._chunk(int(chunk))
            picked = rows // CHUNK_ROWS == chunk
            if out is None:
                out = np.empty((len(rows), *values.shape[1:]), dtype=np.float32)
            out[picked] = values[rows[picked] % CHUNK_ROWS]
        assert out is not None
        return out

    def _chunk(self, chunk: int) -> np.ndarray:
        if chunk in self._chunks:
            return self._chunks[chunk]
        path = self.directory / f"chunk-{chunk:05d}.npy"
        values = self._load(path)
        if values is None:
            with file_lock(self.directory / f"chunk-{chunk:05d}.lock"):
                values = self._load(path)  # another worker may have written it while we waited
                if values is None:
                    values = self._compute(chunk)
                    save_array_atomically(path, values)
        self._chunks[chunk] = values
        return values

    @staticmethod
    def _load(path: Path) -> np.ndarray | None:
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None  # missing or damaged: computed (again)

    def _compute(self, chunk: int) -> np.ndarray:
        import torch

        parts = []
        start = chunk * CHUNK_ROWS
        rows = np.arange(start, min(start + CHUNK_ROWS, self.task.training_rows()))
        self.teacher.eval()
        with torch.no_grad():
            for i in range(0, len(rows), TARGET_BATCH):
                batch = self.task.training_inputs(rows[i : i + TARGET_BATCH])
                parts.append(run_model(self.teacher, to_torch(batch)).float().numpy())
        self.computed_rows += len(rows)
        return np.concatenate(parts)


def teacher_targets(task: Task, teacher: torch.nn.Module, cache_dir: Path | None) -> TeacherTargets | None:
    """A :class:`TeacherTargets` for ``task``, or None when it cannot cache them (no cache
    directory, a classifier, or no :meth:`~lepton_search.objectives.tasks.Task.training_inputs`)."""
    if cache_dir is None or task.output_kind != "embedding" or not task.indexed_training:
        return None
    return TeacherTargets(task, teacher, cache_dir)
