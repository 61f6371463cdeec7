"""Pruning and distillation knobs of the config and the space: channel importance and scope, depth
pruning, 2:4 sparsity and hidden-state distillation; old configs keep their JSON and hash."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
from optuna.trial import FixedTrial
from pydantic import ValidationError

from lepton_search.errors import ConfigError
from lepton_search.spaces import (
    CompressionConfig,
    DistillationSpace,
    DistillConfig,
    PruneConfig,
    PruningSpace,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

KNOB_PRUNING = PruningSpace(
    method=["none", "unstructured", "channel", "depth", "2:4"],
    ratio=(0.1, 0.6),
    importance=["l1", "l2", "taylor", "activation"],
    scope=["uniform", "global"],
)
KNOB_DISTILLATION = DistillationSpace(method=["none", "soft", "hard"], hidden_weight=(0.0, 1.0))


def _sample(n: int, seed: int) -> list[tuple[optuna.trial.Trial, PruneConfig, DistillConfig]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append((trial, KNOB_PRUNING.suggest(trial), KNOB_DISTILLATION.suggest(trial)))
        study.tell(trial, 0.0)
    return out


# ------------------------------------------------------------------------------ configs


def test_old_configs_keep_their_json_and_hash() -> None:
    config = CompressionConfig(
        pruning=PruneConfig("channel", 0.5), distillation=DistillConfig("soft", temperature=2.0, alpha=0.5, epochs=2)
    )
    data = config.to_dict()

    assert data["pruning"] == {"method": "channel", "ratio": 0.5}
    assert data["distillation"] == {
        "method": "soft",
        "temperature": 2.0,
        "alpha": 0.5,
        "epochs": 2,
        "learning_rate": 0.001,
    }
    assert CompressionConfig.from_json(config.to_json()) == config


def test_new_knobs_round_trip_through_json_and_change_the_hash() -> None:
    base = CompressionConfig(pruning=PruneConfig("channel", 0.5))
    knobs = CompressionConfig(
        pruning=PruneConfig("channel", 0.5, importance="taylor", scope="global"),
        distillation=DistillConfig("hard", epochs=1, hidden_weight=0.5),
    )

    assert CompressionConfig.from_json(knobs.to_json()) == knobs
    assert knobs.to_dict()["pruning"] == {"method": "channel", "ratio": 0.5, "importance": "taylor", "scope": "global"}
    assert knobs.to_dict()["distillation"]["hidden_weight"] == 0.5
    assert knobs.config_hash != base.config_hash
    assert CompressionConfig.from_json(CompressionConfig(pruning=PruneConfig("depth", 0.5)).to_json()).pruning == (
        PruneConfig("depth", 0.5)
    )


def test_two_four_has_a_fixed_ratio() -> None:
    assert PruneConfig("2:4").ratio == 0.5
    assert PruneConfig("2:4") == PruneConfig("2:4", 0.5)
    with pytest.raises(ConfigError, match=r"pruning.ratio = 0.3 is not allowed with pruning.method = '2:4'"):
        PruneConfig("2:4", 0.3)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"method": "depth", "ratio": 0.5, "importance": "l1"}, ["method = 'depth'", "importance = 'l1'", "'channel'"]),
        ({"method": "2:4", "scope": "global"}, ["method = '2:4'", "scope = 'global'"]),
        ({"method": "none", "importance": "l2"}, ["method = 'none'", "importance"]),
        ({"method": "channel", "ratio": 0.5, "importance": "fisher"}, ["pruning.importance", "'fisher'", "'taylor'"]),
        ({"method": "channel", "ratio": 0.5, "scope": "layer"}, ["pruning.scope", "'layer'", "['uniform', 'global']"]),
        ({"method": "depth", "ratio": 0.95}, ["pruning.ratio = 0.95", "(0, 0.9]"]),
        ({"method": "depth", "ratio": 0.0}, ["pruning.ratio = 0.0", "(0, 0.9]"]),
    ],
)
def test_invalid_pruning_knobs_name_value_and_fix(kwargs: dict[str, Any], expected: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        PruneConfig(**kwargs)
    for text in expected:
        assert text in str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"method": "hard", "epochs": 1, "hidden_weight": 1.5}, ["hidden_weight = 1.5", "[0, 1]"]),
        ({"method": "hard", "epochs": 1, "hidden_weight": "0.5"}, ["hidden_weight = '0.5'", "finite number"]),
        ({"method": "none", "hidden_weight": 0.5}, ["method = 'none'", "hidden_weight = 0.5"]),
    ],
)
def test_invalid_hidden_weight_names_value_and_fix(kwargs: dict[str, Any], expected: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        DistillConfig(**kwargs)
    for text in expected:
        assert text in str(caught.value)


def test_describe_mentions_the_new_knobs() -> None:
    label = CompressionConfig(
        pruning=PruneConfig("channel", 0.5, "taylor", "global"),
        distillation=DistillConfig("soft", temperature=2.0, alpha=0.5, epochs=3, hidden_weight=0.25),
    ).describe()

    assert "channel 50% (taylor, global)" in label and "soft KD x3 +hidden 0.25" in label
    assert "depth -50% blocks" in CompressionConfig(pruning=PruneConfig("depth", 0.5)).describe()
    assert "2:4 sparse" in CompressionConfig(pruning=PruneConfig("2:4")).describe()
    assert CompressionConfig(pruning=PruneConfig("channel", 0.5)).describe() == "fp32 + channel 50%"


# ------------------------------------------------------------------------------ space


def test_default_spaces_suggest_none_of_the_new_params() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(60):
        trial = study.ask()
        pruning, distillation = PruningSpace().suggest(trial), DistillationSpace().suggest(trial)
        assert not {"prune_importance", "prune_scope", "distill_hidden_weight"} & set(trial.params)
        assert pruning.importance is None and pruning.scope is None and distillation.hidden_weight is None
        study.tell(trial, 0.0)


def test_new_params_are_suggested_only_where_they_apply() -> None:
    samples = _sample(300, seed=1)
    for trial, pruning, distillation in samples:
        names = set(trial.params)
        assert ("prune_ratio" in names) == (pruning.method in ("unstructured", "channel", "depth"))
        assert ("prune_importance" in names) == ("prune_scope" in names) == (pruning.method == "channel")
        assert ("distill_hidden_weight" in names) == (distillation.method != "none")
        assert KNOB_PRUNING.contains(pruning) and KNOB_DISTILLATION.contains(distillation)
    assert {p.method for _, p, _ in samples} == set(KNOB_PRUNING.method)
    assert {p.importance for _, p, _ in samples} == {None, "l1", "l2", "taylor", "activation"}
    assert {p.scope for _, p, _ in samples} == {None, "uniform", "global"}


def test_params_of_is_the_inverse_of_suggest() -> None:
    samples = _sample(200, seed=2)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for trial, pruning, distillation in samples:
        params = {**PruningSpace.params_of(pruning), **DistillationSpace.params_of(distillation)}
        assert set(params) == set(trial.params)
        fixed = FixedTrial(params)
        assert KNOB_PRUNING.suggest(fixed) == pruning and KNOB_DISTILLATION.suggest(fixed) == distillation
        study.enqueue_trial(params)
    for _, pruning, distillation in samples[:30]:
        trial = study.ask()
        assert KNOB_PRUNING.suggest(trial) == pruning and KNOB_DISTILLATION.suggest(trial) == distillation
        study.tell(trial, 0.0)


def test_contains_tells_offered_knobs_from_defaults() -> None:
    assert not PruningSpace(method=["channel"]).contains(PruneConfig("channel", 0.5, importance="taylor"))
    assert not KNOB_PRUNING.contains(PruneConfig("channel", 0.5))  # the space always picks an importance
    assert KNOB_PRUNING.contains(PruneConfig("2:4")) and not PruningSpace().contains(PruneConfig("2:4"))
    assert not PruningSpace(method=["channel"], importance=["l1"], scope=["global"]).contains(
        PruneConfig("channel", 0.5, "l2", "global")
    )
    assert not DistillationSpace().contains(DistillConfig("hard", epochs=1, hidden_weight=0.5))
    assert not DistillationSpace(hidden_weight=(0.0, 0.4)).contains(DistillConfig("hard", epochs=1, hidden_weight=0.5))
    assert not DistillationSpace(hidden_weight=(0.0, 0.4)).contains(DistillConfig("hard", epochs=1))
    assert DistillationSpace(hidden_weight=(0.0, 0.4)).contains(DistillConfig("hard", epochs=1, hidden_weight=0.25))


@pytest.mark.parametrize(
    ("model", "data", "expected"),
    [
        (PruningSpace, {"importance": []}, "pruning.importance must list at least one choice"),
        (PruningSpace, {"importance": ["l1", "l1"]}, "pruning.importance lists a choice twice"),
        (PruningSpace, {"importance": ["fisher"]}, "'activation', 'contribution', 'l1', 'l2' or 'taylor'"),
        (PruningSpace, {"scope": ["layer"]}, "'uniform' or 'global'"),
        (DistillationSpace, {"hidden_weight": [0.5, 1.5]}, "hidden_weight must be [low, high] within [0, 1]"),
    ],
)
def test_space_validators_reject_bad_knob_lists(model: type, data: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValidationError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        model.model_validate(data)
