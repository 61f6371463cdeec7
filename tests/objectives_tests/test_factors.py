"""Where the speed comes from: a configuration split into its techniques, each built, scored and
measured in the same rounds against the same baseline as the whole."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lepton_search.errors import ConfigError
from lepton_search.objectives import MeasurementSettings, TrialRequest
from lepton_search.objectives._factors import COMBINED, factor_configs, measure_factors
from lepton_search.spaces import (
    CompressionConfig,
    DeploymentConfig,
    DistillConfig,
    GraphConfig,
    PruneConfig,
    QuantizeConfig,
)

STATIC_INT8 = QuantizeConfig(precision="int8", int8_mode="static", calibration_method="minmax", calibration_batches=2)


def test_each_technique_is_split_out_at_the_configurations_deployment() -> None:
    deployment = DeploymentConfig(threads=2)
    config = CompressionConfig(
        quantization=QuantizeConfig(precision="int8", int8_mode="dynamic"),
        pruning=PruneConfig("channel", 0.25),
        distillation=DistillConfig("soft", temperature=1.0, alpha=0.0, steps=10),
        graph=GraphConfig(skip_layer_norm="unfused"),
        deployment=deployment,
    )

    factors = factor_configs(config)

    assert list(factors) == ["pruning", "graph", "quantization", COMBINED]
    assert factors["pruning"] == CompressionConfig(
        pruning=config.pruning, distillation=config.distillation, deployment=deployment
    )
    assert factors["graph"] == CompressionConfig(graph=config.graph, deployment=deployment)
    assert factors["quantization"] == CompressionConfig(quantization=config.quantization, deployment=deployment)
    assert factors[COMBINED] == config
    assert list(factor_configs(CompressionConfig(quantization=STATIC_INT8))) == ["quantization", COMBINED]


@pytest.mark.slow
def test_factors_are_measured_in_one_window_against_one_baseline(
    teacher: Any, teacher_cache: Path, fast_settings: MeasurementSettings
) -> None:
    config = CompressionConfig(
        quantization=STATIC_INT8, pruning=PruneConfig("channel", 0.5), distillation=DistillConfig("hard", epochs=1)
    )
    request = TrialRequest(
        task="digits-cnn",
        config_json=config.to_json(),
        cache_dir=str(teacher_cache),
        settings=fast_settings,
        task_options=teacher.options,
    )

    factors = measure_factors(request, factor_configs(config), sessions=3)

    assert set(factors) == {"pruning", "quantization", COMBINED}
    baselines = {f["baseline_ms"] for f in factors.values()}
    assert len(baselines) == 1  # one baseline, measured in the same rounds as every factor
    for f in factors.values():
        low, high = f["speedup_ci"]
        assert low <= f["speedup"] <= high and f["speedup"] == pytest.approx(1 / f["ratio"])
        assert 0.8 < f["accuracy"] <= 1.0 and f["verdict"] in ("faster", "slower", "tie"), factors
    # Half the channels of every layer is ~4x fewer MACs: the pruned model is faster, and so is the whole.
    assert factors["pruning"]["verdict"] == factors[COMBINED]["verdict"] == "faster"


def test_factors_at_different_deployments_are_refused(teacher: Any, teacher_cache: Path) -> None:
    configs = {
        "a": CompressionConfig(deployment=DeploymentConfig(threads=1)),
        "b": CompressionConfig(deployment=DeploymentConfig(threads=2)),
    }
    request = TrialRequest(
        task="digits-cnn",
        config_json=CompressionConfig().to_json(),
        cache_dir=str(teacher_cache),
        settings=MeasurementSettings(),
        task_options=teacher.options,
    )
    with pytest.raises(ConfigError, match="one deployment"):
        measure_factors(request, configs, sessions=2)
