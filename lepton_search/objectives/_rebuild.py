"""Rebuilding a compressed model from its config, outside any study (`lepton-search compress`).

A trial's model is a function of the task (its reference and options, which fix the teacher), the
:class:`~lepton_search.spaces.CompressionConfig` and the seed: pruning, distillation and calibration
read the task's batches in seeded orders and the torch RNG is seeded before compression. So the
config that `lepton-search export` writes, with the task and seed recorded beside it in
``trial.json``, rebuilds the model the study measured. The task itself is always named by the
caller (``--task``): ``trial.json`` is data and may come from someone else, so a task reference in
it is shown, never imported.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lepton_search._atomic import atomic_path
from lepton_search.errors import ConfigError
from lepton_search.spaces import CompressionConfig

#: What `lepton-search export` writes beside ``config.json``; its task, options and seed are the
#: defaults of a rebuild from that directory.
TRIAL_INFO_FILE = "trial.json"


@dataclass(frozen=True)
class RebuildRecipe:
    """Everything a rebuild depends on."""

    task: str
    config: CompressionConfig
    task_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    @classmethod
    def from_files(
        cls,
        config_path: Path,
        *,
        task: str | None = None,
        task_options: dict[str, Any] | None = None,
        seed: int | None = None,
    ) -> RebuildRecipe:
        """The recipe of ``config_path`` (a ``config.json``) for the task the caller names.

        The task is never taken from ``trial.json``: a task reference is code to import, and a file
        that came with an export bundle is data, so only the caller's explicit ``task`` is used.
        When ``trial.json`` records the same task, its options and seed are the defaults.

        Raises:
            ConfigError: the config cannot be read, or no task is given (the message shows the task
                ``trial.json`` names, as the flag to pass).
        """
        try:
            text = config_path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(
                f"The config {str(config_path)!r} is not text ({e.reason} at byte {e.start}); pass the config.json "
                "that `lepton-search export` wrote."
            ) from e
        except OSError as e:
            raise ConfigError(f"Cannot read the config {str(config_path)!r}: {e.strerror or e}.") from e
        config = CompressionConfig.from_json(text)
        info: dict[str, Any] = {}
        info_path = config_path.parent / TRIAL_INFO_FILE
        if info_path.exists():
            try:
                info = json.loads(info_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise ConfigError(
                    f"{str(info_path)!r} beside the config is not readable JSON ({e}); pass --task and --seed "
                    "explicitly, or remove the file."
                ) from e
            if not isinstance(info, dict):
                info = {}
        recorded = info.get("task")
        if not task:
            if isinstance(recorded, str) and recorded:
                raise ConfigError(
                    f"No --task for {str(config_path)!r}. {TRIAL_INFO_FILE} beside it names the task {recorded!r}, "
                    f"but a task is imported only from a reference you write: if you trust it, pass "
                    f"--task {shlex.quote(recorded)}."
                )
            raise ConfigError(
                f"No task for {str(config_path)!r}: pass --task (a built-in name or package.module:factory)."
            )
        same_task = task == recorded
        options = task_options if task_options is not None else dict((same_task and info.get("task_options")) or {})
        if seed is None:
            seed = info.get("seed", 0) if same_task else 0
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise ConfigError(f"{str(info_path)!r} records the seed {seed!r}, not an integer; pass --seed.")
        return cls(task=task, config=config, task_options=options, seed=seed)


@dataclass(frozen=True)
class RebuiltModel:
    """What :func:`rebuild` wrote."""

    model_path: Path
    config_path: Path
    summary_path: Path
    summary: dict[str, Any]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def rebuild(recipe: RebuildRecipe, out_dir: Path, cache_dir: Path, *, threads: int = 1) -> RebuiltModel:
    """Compresses the recipe's teacher with its config and writes ``model.onnx`` (``model.pt2`` for a
    config deployed on a torch backend), ``config.json`` and ``compress.json`` (task, seed,
    validation and test metric, size, sha256) into ``out_dir``.

    The teacher is loaded from (or trained into) ``cache_dir``, as in a study.
    """
    import torch

    from lepton_search.objectives._compress import compress
    from lepton_search.objectives._evaluate import (
        MODEL_SUFFIX,
        deployment_settings,
        load_teacher,
        model_predictor,
        trial_backend,
    )
    from lepton_search.objectives._torch_export import compress_to_program
    from lepton_search.objectives.latency import MeasurementSettings
    from lepton_search.objectives.tasks import resolve_task

    torch.set_num_threads(threads)
    task = resolve_task(recipe.task, recipe.task_options)
    cache_dir.mkdir(parents=True, exist_ok=True)
    teacher = load_teacher(task, cache_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # A config deployed on a torch backend is a torch.export program, as in its trial.
    settings = deployment_settings(MeasurementSettings(threads=threads), recipe.config.deployment)
    backend = trial_backend(recipe.config, settings)
    build = compress if backend.model_format == "onnx" else compress_to_program
    with tempfile.TemporaryDirectory(prefix="lepton-compress-") as tmp:
        compressed = build(teacher, recipe.config, task, Path(tmp), seed=recipe.seed, cache_dir=cache_dir)
        model_path = out_dir / f"model{MODEL_SUFFIX[backend.model_format]}"
        with atomic_path(model_path) as staged:
            shutil.copyfile(compressed.onnx_path, staged)
    predict = model_predictor(model_path, backend, threads)
    summary = {
        "task": recipe.task,
        "task_options": recipe.task_options,
        "seed": recipe.seed,
        "config": recipe.config.to_dict(),
        "config_hash": recipe.config.config_hash,
        "label": recipe.config.describe(),
        "metric": {"validation": task.evaluate(predict, "validation"), "test": task.evaluate(predict, "test")},
        "size_bytes": model_path.stat().st_size,
        "sha256": _sha256(model_path),
        "parameters": compressed.parameters,
        "sparsity": compressed.sparsity,
        "notes": compressed.notes,
    }
    config_path = out_dir / "config.json"
    config_path.write_text(json.dumps(json.loads(recipe.config.to_json()), indent=2) + "\n")
    summary_path = out_dir / "compress.json"
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return RebuiltModel(model_path=model_path, config_path=config_path, summary_path=summary_path, summary=summary)
