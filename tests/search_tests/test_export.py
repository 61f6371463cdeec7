"""`lepton-search export` then `lepton-search compress`: a study's model is rebuilt from its config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import optuna
import pytest
from optuna.trial import TrialState

from lepton_search.objectives._rebuild import RebuildRecipe, rebuild
from lepton_search.objectives.tasks import resolve_task
from lepton_search.search import Locations, parse_study, run_study
from lepton_search.search._export import export_trial
from lepton_search.search._study import open_study
from lepton_search.spaces import CompressionConfig, DistillConfig, PruneConfig, QuantizeConfig, SearchSpace
from lepton_search.testing import study_dict

pytestmark = pytest.mark.usefixtures("ray_session")


def _outputs(model: Path, inputs: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: inputs})[0]


@pytest.mark.slow  # about 20 s: run in CI's slow pass, keeping the default suite under 10 minutes
def test_an_exported_trial_is_rebuilt_from_its_config(tmp_path: Path, artifacts: Path) -> None:
    spec = parse_study(
        study_dict(tmp_path, artifacts, study={"seed": 5}, budget={"n_trials": 2}, measurement={"noise_band": 0.05})
    )
    locations = Locations.resolve(spec)
    config = CompressionConfig(
        quantization=QuantizeConfig("int8", "static", "minmax", 2),
        pruning=PruneConfig("channel", 0.25),
        distillation=DistillConfig("hard", epochs=1),
    )
    open_study(spec, locations).enqueue_trial(SearchSpace.params_of(config))
    run_study(spec, locations=locations)
    study = optuna.load_study(study_name=spec.study.name, storage=locations.storage_url)
    trial = next(
        t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.user_attrs["config_hash"] == config.config_hash
    )
    assert trial.user_attrs["compression_seed"] == 5 + trial.number

    exported = export_trial(spec, locations, trial.number, tmp_path / "export")
    info = json.loads((tmp_path / "export" / "trial.json").read_text())
    assert (info["task"], info["seed"]) == (spec.study.task, 5 + trial.number)

    recipe = RebuildRecipe.from_files(exported[1], task=spec.study.task)
    rebuilt = rebuild(recipe, tmp_path / "rebuilt", locations.cache_dir)
    assert rebuilt.summary["metric"]["validation"] == pytest.approx(trial.user_attrs["accuracy"])
    inputs = resolve_task(spec.study.task).example_inputs(64)
    np.testing.assert_allclose(_outputs(rebuilt.model_path, inputs), _outputs(exported[0], inputs), atol=1e-5)
