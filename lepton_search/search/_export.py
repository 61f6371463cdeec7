"""`lepton-search export`: a trial's model (ONNX, or a torch.export ``.pt2`` program for a trial
deployed on a torch backend) and config, written to a directory."""

from __future__ import annotations

import json
import os
from pathlib import Path

from lepton_search._atomic import write_text_atomically
from lepton_search.errors import LeptonSearchError, StorageError
from lepton_search.search._driver import load_existing_study
from lepton_search.search._frontier import objective_names, trial_entry
from lepton_search.search._spec import StudySpec
from lepton_search.search._study import Locations
from lepton_search.spaces import CompressionConfig
from lepton_search.storage import get_artifact_store


def export_trial(spec: StudySpec, locations: Locations, number: int, out_dir: Path) -> list[Path]:
    """Downloads trial ``number``'s model artifact and writes ``model.onnx`` (``model.pt2`` for a
    trial deployed on a torch backend), ``config.json`` and ``trial.json`` (values and latency
    statistics) into ``out_dir``."""
    from optuna.artifacts import download_artifact
    from optuna.trial import TrialState

    study = load_existing_study(spec, locations)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        raise LeptonSearchError(
            f"Study {spec.study.name!r} has no trial {number}; it has trials 0..{max(trials, default=-1)}. "
            "`lepton-search frontier` lists the frontier's trial numbers."
        )
    trial = trials[number]
    if trial.state != TrialState.COMPLETE or "artifact_id" not in trial.user_attrs:
        raise LeptonSearchError(
            f"Trial {number} is {trial.state.name}"
            + (f" ({trial.user_attrs['fail_reason']})" if "fail_reason" in trial.user_attrs else "")
            + " and has no exported model; choose a COMPLETE trial."
        )
    torch_program = trial.user_attrs.get("model_format") == "torch-export"
    model_path = out_dir / ("model.pt2" if torch_program else "model.onnx")
    config_path = out_dir / "config.json"
    info_path = out_dir / "trial.json"
    store = get_artifact_store(locations.artifact_dir, create=False)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LeptonSearchError(
            f"Cannot create the export directory {str(out_dir)!r}: {e.strerror or e}. Choose a writable -o folder."
        ) from e
    for path in (model_path, config_path, info_path):
        # A link planted in the output folder would make export overwrite whatever it points to.
        if path.is_symlink():
            raise LeptonSearchError(
                f"Refusing to export: {str(path)!r} is a symbolic link (to {os.readlink(path)!r}), and export does "
                "not write through links. Remove it, or export into an empty directory."
            )
    from optuna.artifacts.exceptions import ArtifactNotFound

    staged = out_dir / f".{model_path.name}.{os.getpid()}.tmp"
    staged.unlink(missing_ok=True)
    try:
        download_artifact(artifact_store=store, file_path=str(staged), artifact_id=trial.user_attrs["artifact_id"])
    except (ArtifactNotFound, FileNotFoundError):
        staged.unlink(missing_ok=True)
        raise StorageError(
            f"Trial {number}'s model (artifact {trial.user_attrs['artifact_id']}) is missing from the artifact store "
            f"{str(locations.artifact_dir)!r}. Pass the study's --artifacts directory, or rebuild the model with "
            "`lepton-search compress --config ... --task ...`."
        ) from None
    # os.replace swaps the name itself: a link that appeared meanwhile is replaced, never followed.
    os.replace(staged, model_path)
    config = CompressionConfig.from_dict(trial.user_attrs["config"])
    write_text_atomically(config_path, json.dumps(json.loads(config.to_json()), indent=2) + "\n")
    entry = trial_entry(trial, objective_names(study), study)
    # task, task_options and seed are what `lepton-search compress` needs to rebuild this model.
    entry.update(
        {
            "study": study.study_name,
            "task": spec.study.task,
            "task_options": dict(spec.study.task_options),
            "seed": trial.user_attrs.get("compression_seed", spec.study.seed + trial.number),
            "device": trial.user_attrs.get("device"),
        }
    )
    write_text_atomically(info_path, json.dumps(entry, indent=2) + "\n")
    return [model_path, config_path, info_path]
