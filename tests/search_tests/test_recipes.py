"""``[[recipes]]``: configurations a study file asks to be evaluated before the sampler proposes
anything (the known-good starting points a user would try by hand), checked against ``[space]``."""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.trial import TrialState

from lepton_search.errors import ConfigError
from lepton_search.search import Locations, parse_study
from lepton_search.search._study import open_study, queue_recipes
from lepton_search.spaces import CompressionConfig, PruneConfig, QuantizeConfig
from lepton_search.testing import study_dict

INT8 = {
    "precision": "int8",
    "int8_mode": "static",
    "calibration_method": "minmax",
    "calibration_batches": 2,
}
RECIPES = [
    {"quantization": INT8},
    {"quantization": INT8, "pruning": {"method": "channel", "ratio": 0.5}},
]


def _spec(tmp_path: Path, recipes: list) -> object:
    return parse_study(study_dict(tmp_path, tmp_path / "artifacts", recipes=recipes))


def test_recipes_are_queued_once_ahead_of_the_sampler_with_their_numbers(tmp_path: Path) -> None:
    spec = _spec(tmp_path, RECIPES)
    study = open_study(spec, Locations.resolve(spec))

    assert queue_recipes(study, spec) == 2
    assert queue_recipes(study, spec) == 0  # a rerun does not queue them again

    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs["recipe_number"] for t in waiting] == [1, 2]
    first, second = study.ask(), study.ask()  # queued trials come before anything sampled
    assert spec.space.suggest(first) == CompressionConfig(quantization=QuantizeConfig(**INT8))
    assert spec.space.suggest(second) == CompressionConfig(
        quantization=QuantizeConfig(**INT8), pruning=PruneConfig("channel", 0.5)
    )


def test_a_recipe_outside_the_space_is_refused_with_its_number_and_the_fix(tmp_path: Path) -> None:
    outside = {"quantization": INT8, "pruning": {"method": "channel", "ratio": 0.75}}
    with pytest.raises(ConfigError) as caught:
        _spec(tmp_path, [RECIPES[0], outside])
    message = str(caught.value)
    assert "recipe 2" in message and "outside [space]" in message and "Widen [space]" in message


def test_a_recipe_that_is_no_configuration_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _spec(tmp_path, [{"quantization": {"precision": "int3"}}])
    message = str(caught.value)
    assert "recipe 1 is not a valid configuration" in message and "int3" in message
