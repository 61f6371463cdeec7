"""The ``[space.graph]`` knobs: what a trial may ask of the exported graph, how each choice maps to a
parameter and back, and what is refused with the reason."""

from __future__ import annotations

import itertools

import optuna
import pytest

from lepton_search.errors import ConfigError
from lepton_search.spaces import CompressionConfig, GraphConfig, QuantizeConfig, SearchSpace

SPACE = SearchSpace.model_validate(
    {
        "quantization": {"precision": ["fp32", "int8"], "int8_mode": ["dynamic"]},
        "graph": {
            "fusion": ["none", "transformer"],
            "skip_layer_norm": ["default", "unfused"],
            "optimization_level": ["basic", "all"],
        },
    }
)


def test_defaults_collapse_to_one_config_and_leave_the_json_unchanged() -> None:
    assert GraphConfig(fusion="none", optimization_level="all") == GraphConfig()
    assert GraphConfig().is_default and not GraphConfig(optimization_level="basic").rewrites_graph
    assert "graph" not in CompressionConfig().to_dict()  # existing studies' config hashes stand
    config = CompressionConfig(graph=GraphConfig(skip_layer_norm="unfused"))
    assert CompressionConfig.from_dict(config.to_dict()) == config
    assert config.config_hash != CompressionConfig().config_hash


@pytest.mark.parametrize(
    ("fusion", "skip", "level"), list(itertools.product([None, "transformer"], [None, "unfused"], [None, "basic"]))
)
def test_every_graph_choice_round_trips_through_its_parameters(
    fusion: str | None, skip: str | None, level: str | None
) -> None:
    config = CompressionConfig(
        quantization=QuantizeConfig(precision="int8", int8_mode="dynamic"),
        graph=GraphConfig(fusion=fusion, skip_layer_norm=skip, optimization_level=level),
    )
    assert SPACE.contains(config)

    params = SearchSpace.params_of(config, SPACE)

    assert SPACE.suggest(optuna.trial.FixedTrial(params)) == config


def test_static_int8_is_never_offered_with_fused_attention() -> None:
    space = SearchSpace.model_validate(
        {
            "quantization": {
                "precision": ["int8"],
                "int8_mode": ["static"],
                "calibration_method": ["minmax"],
                "calibration_batches": [2, 2],
            },
            "graph": {"fusion": ["none", "transformer"]},
        }
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    fusions = {space.suggest(study.ask()).graph.fusion for _ in range(20)}
    assert fusions == {None}


def test_a_static_int8_config_with_fusion_is_refused_with_the_reason() -> None:
    static = QuantizeConfig(precision="int8", int8_mode="static", calibration_method="minmax", calibration_batches=2)
    with pytest.raises(ConfigError, match="static") as caught:
        CompressionConfig(quantization=static, graph=GraphConfig(fusion="transformer"))
    assert "fusion" in str(caught.value)


def test_unknown_graph_values_name_what_is_allowed() -> None:
    with pytest.raises(ConfigError, match=r"graph\.fusion") as caught:
        GraphConfig(fusion="bert")
    assert "transformer" in str(caught.value)
    with pytest.raises(Exception, match="optimization_level"):
        SearchSpace.model_validate({"graph": {"optimization_level": ["everything"]}})
