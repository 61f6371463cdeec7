"""The search space on real Optuna trials: conditional suggestions, params_of round trips, validators."""

from __future__ import annotations

import math
from typing import Any

import optuna
import pytest
from optuna.trial import FixedTrial
from pydantic import ValidationError

from lepton_search.spaces import (
    CompressionConfig,
    DistillationSpace,
    DistillConfig,
    PruneConfig,
    PruningSpace,
    QuantizationSpace,
    QuantizeConfig,
    SearchSpace,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

WIDE_SPACE = SearchSpace(
    quantization=QuantizationSpace(
        precision=["fp32", "fp16", "int8"],
        int8_mode=["dynamic", "static"],
        calibration_method=["minmax", "entropy", "percentile"],
        calibration_batches=(1, 16),
    ),
    pruning=PruningSpace(method=["none", "unstructured", "channel"], ratio=(0.05, 0.9), ratio_step=0.05),
    distillation=DistillationSpace(
        method=["none", "soft", "hard"], temperature=(1.0, 20.0), alpha=(0.0, 1.0), epochs=(1, 10), learning_rate=5e-4
    ),
)
SPACES = {"default": SearchSpace(), "wide": WIDE_SPACE}


def _expected_param_names(config: CompressionConfig) -> set[str]:
    """The parameters that apply to ``config``, written out independently of ``params_of``."""
    names = {"precision", "prune_method", "distill_method"}
    q, p, d = config.quantization, config.pruning, config.distillation
    if q.precision == "int8":
        names.add("int8_mode")
        if q.int8_mode == "static":
            names |= {"calibration_method", "calibration_batches"}
    if p.method != "none":
        names.add("prune_ratio")
    if d.method != "none":
        names.add("distill_epochs")
        if d.method == "soft":
            names |= {"distill_temperature", "distill_alpha"}
    return names


def _sample(space: SearchSpace, n: int, seed: int = 0) -> list[tuple[optuna.trial.Trial, CompressionConfig]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append((trial, space.suggest(trial)))
        study.tell(trial, 0.0)
    return out


# ---------------------------------------------------------------------------------------------
# suggest: conditional parameters
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("space_name", sorted(SPACES))
def test_suggest_asks_only_for_parameters_that_apply(space_name: str) -> None:
    space = SPACES[space_name]
    samples = _sample(space, 200, seed=1)
    for trial, config in samples:
        assert set(trial.params) == _expected_param_names(config), (trial.params, config)
        if config.quantization.precision != "int8":
            assert "int8_mode" not in trial.params
        if config.pruning.method == "none":
            assert "prune_ratio" not in trial.params
        if config.distillation.method != "soft":
            assert "distill_temperature" not in trial.params
            assert "distill_alpha" not in trial.params
    # 200 random trials reach every branch the space allows.
    configs = [c for _, c in samples]
    assert {c.quantization.precision for c in configs} == set(space.quantization.precision)
    assert {c.pruning.method for c in configs} == set(space.pruning.method)
    assert {c.distillation.method for c in configs} == set(space.distillation.method)
    if "dynamic" in space.quantization.int8_mode:
        assert {c.quantization.int8_mode for c in configs} == {None, "dynamic", "static"}


@pytest.mark.parametrize("space_name", sorted(SPACES))
def test_suggested_values_respect_the_space(space_name: str) -> None:
    space = SPACES[space_name]
    q, p, d = space.quantization, space.pruning, space.distillation
    for trial, config in _sample(space, 200, seed=2):
        if config.quantization.int8_mode == "static":
            assert q.calibration_batches[0] <= config.quantization.calibration_batches <= q.calibration_batches[1]
            assert config.quantization.calibration_method in q.calibration_method
        if config.pruning.method != "none":
            ratio = config.pruning.ratio
            assert p.ratio[0] <= ratio <= p.ratio[1]
            steps = (ratio - p.ratio[0]) / p.ratio_step
            assert steps == pytest.approx(round(steps), abs=1e-6), ratio
            assert ratio == round(ratio, 6)
            assert ratio == pytest.approx(trial.params["prune_ratio"])
        if config.distillation.method != "none":
            assert d.epochs[0] <= config.distillation.epochs <= d.epochs[1]
            assert config.distillation.learning_rate == d.learning_rate
        if config.distillation.method == "soft":
            assert d.temperature[0] <= config.distillation.temperature <= d.temperature[1]
            assert d.alpha[0] <= config.distillation.alpha <= d.alpha[1]


def test_temperature_is_log_scaled_and_ratio_stepped() -> None:
    study = optuna.create_study()
    trial = study.ask()
    SearchSpace(distillation=DistillationSpace(method=["soft"])).suggest(trial)
    distribution = trial.distributions["distill_temperature"]
    assert isinstance(distribution, optuna.distributions.FloatDistribution)
    assert distribution.log
    assert (distribution.low, distribution.high) == (1.0, 20.0)
    ratio_space = SearchSpace(pruning=PruningSpace(method=["channel"], ratio=(0.2, 0.6), ratio_step=0.1))
    trial = optuna.create_study().ask()
    ratio_space.suggest(trial)
    ratio_distribution = trial.distributions["prune_ratio"]
    assert ratio_distribution.step == pytest.approx(0.1)
    assert (ratio_distribution.low, ratio_distribution.high) == (0.2, 0.6)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (
            {"precision": "fp32", "prune_method": "none", "distill_method": "none"},
            CompressionConfig(),
        ),
        (
            {"precision": "fp16", "prune_method": "channel", "prune_ratio": 0.5, "distill_method": "none"},
            CompressionConfig(quantization=QuantizeConfig("fp16"), pruning=PruneConfig("channel", 0.5)),
        ),
        (
            {"precision": "int8", "int8_mode": "dynamic", "prune_method": "none", "distill_method": "none"},
            CompressionConfig(quantization=QuantizeConfig("int8", "dynamic")),
        ),
        (
            {
                "precision": "int8",
                "int8_mode": "static",
                "calibration_method": "entropy",
                "calibration_batches": 3,
                "prune_method": "none",
                "distill_method": "none",
            },
            CompressionConfig(quantization=QuantizeConfig("int8", "static", "entropy", 3)),
        ),
        (
            {"precision": "fp32", "prune_method": "none", "distill_method": "hard", "distill_epochs": 4},
            CompressionConfig(distillation=DistillConfig("hard", epochs=4, learning_rate=5e-4)),
        ),
        (
            {
                "precision": "fp32",
                "prune_method": "unstructured",
                "prune_ratio": 0.35,
                "distill_method": "soft",
                "distill_epochs": 2,
                "distill_temperature": 6.5,
                "distill_alpha": 0.25,
            },
            CompressionConfig(
                pruning=PruneConfig("unstructured", 0.35),
                distillation=DistillConfig("soft", temperature=6.5, alpha=0.25, epochs=2, learning_rate=5e-4),
            ),
        ),
    ],
)
def test_fixed_trial_with_only_the_applicable_params(params: dict[str, Any], expected: CompressionConfig) -> None:
    """FixedTrial raises for a parameter it was not given, so these also prove nothing extra is asked."""
    assert WIDE_SPACE.suggest(FixedTrial(params)) == expected


@pytest.mark.parametrize(
    ("params", "missing"),
    [
        ({"precision": "int8", "prune_method": "none", "distill_method": "none"}, "int8_mode"),
        ({"precision": "fp32", "prune_method": "channel", "distill_method": "none"}, "prune_ratio"),
        ({"precision": "fp32", "prune_method": "none", "distill_method": "hard"}, "distill_epochs"),
        (
            {"precision": "fp32", "prune_method": "none", "distill_method": "soft", "distill_epochs": 1},
            "distill_temperature",
        ),
    ],
)
def test_fixed_trial_without_a_needed_param_fails(params: dict[str, Any], missing: str) -> None:
    with pytest.raises(ValueError, match=missing):
        WIDE_SPACE.suggest(FixedTrial(params))


# ---------------------------------------------------------------------------------------------
# params_of: the inverse of suggest
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("space_name", sorted(SPACES))
def test_params_of_round_trips_sampled_configs(space_name: str) -> None:
    space = SPACES[space_name]
    samples = _sample(space, 200, seed=3)
    assert len({c for _, c in samples}) > 50
    for trial, config in samples:
        params = SearchSpace.params_of(config)
        assert set(params) == set(trial.params)
        for name, value in trial.params.items():
            assert params[name] == pytest.approx(value) if isinstance(value, float) else params[name] == value
        assert space.suggest(FixedTrial(params)) == config


def test_params_of_round_trips_through_an_enqueued_trial() -> None:
    """The path the driver uses to re-queue a configuration: enqueue_trial, then ask."""
    configs = [c for _, c in _sample(WIDE_SPACE, 40, seed=4)]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=5))
    for config in configs:
        study.enqueue_trial(SearchSpace.params_of(config))
    for config in configs:
        trial = study.ask()
        assert WIDE_SPACE.suggest(trial) == config
        study.tell(trial, 0.0)


def test_params_of_lists_exactly_the_conditional_params() -> None:
    config = CompressionConfig(
        quantization=QuantizeConfig("int8", "static", "minmax", 2),
        pruning=PruneConfig("channel", 0.25),
        distillation=DistillConfig("soft", temperature=2.0, alpha=0.5, epochs=1),
    )
    assert SearchSpace.params_of(config) == {
        "precision": "int8",
        "int8_mode": "static",
        "calibration_method": "minmax",
        "calibration_batches": 2,
        "prune_method": "channel",
        "prune_ratio": 0.25,
        "distill_method": "soft",
        "distill_epochs": 1,
        "distill_temperature": 2.0,
        "distill_alpha": 0.5,
    }
    assert SearchSpace.params_of(CompressionConfig()) == {
        "precision": "fp32",
        "prune_method": "none",
        "distill_method": "none",
    }


# ---------------------------------------------------------------------------------------------
# Space validators
# ---------------------------------------------------------------------------------------------


def test_defaults_leave_out_fp16_and_dynamic_int8() -> None:
    space = SearchSpace()
    assert space.quantization.precision == ["fp32", "int8"]
    assert space.quantization.int8_mode == ["static"]
    assert space.pruning.ratio == (0.1, 0.75)


def test_space_accepts_toml_style_lists() -> None:
    space = SearchSpace.model_validate(
        {
            "quantization": {"precision": ["int8"], "calibration_batches": [2, 2]},
            "pruning": {"method": ["channel"], "ratio": [0.5, 0.5]},
            "distillation": {"method": ["hard"], "epochs": [3, 3]},
        }
    )
    config = space.suggest(optuna.create_study().ask())
    assert config == CompressionConfig(
        quantization=QuantizeConfig("int8", "static", config.quantization.calibration_method, 2),
        pruning=PruneConfig("channel", 0.5),
        distillation=DistillConfig("hard", epochs=3),
    )


@pytest.mark.parametrize(
    ("model", "data", "loc", "expected"),
    [
        (PruningSpace, {"ratio": [0.1, 1.5]}, ("ratio",), ["0 < low <= high <= 0.9", "[0.1, 1.5]"]),
        (PruningSpace, {"ratio": [0.0, 0.5]}, ("ratio",), ["0 < low", "[0.0, 0.5]"]),
        (PruningSpace, {"ratio": [0.6, 0.2]}, ("ratio",), ["low <= high", "[0.6, 0.2]"]),
        (PruningSpace, {"ratio": [0.1, math.nan]}, ("ratio", 1), ["finite"]),
        (PruningSpace, {"ratio_step": 0}, ("ratio_step",), ["greater than 0"]),
        (PruningSpace, {"ratio_step": 0.75}, ("ratio_step",), ["less than or equal to 0.5"]),
        (PruningSpace, {"method": []}, ("method",), ["pruning.method must list at least one choice"]),
        (PruningSpace, {"method": ["channel", "channel"]}, ("method",), ["pruning.method lists a choice twice"]),
        (PruningSpace, {"method": ["block"]}, ("method", 0), ["'none', 'unstructured', 'channel', 'depth' or '2:4'"]),
        (PruningSpace, {"rato": [0.1, 0.5]}, ("rato",), ["Extra inputs are not permitted"]),
        (DistillationSpace, {"temperature": [0.5, 4.0]}, ("temperature",), ["within [1, 20]", "[0.5, 4.0]"]),
        (DistillationSpace, {"temperature": [2.0, 25.0]}, ("temperature",), ["within [1, 20]"]),
        (DistillationSpace, {"alpha": [-0.1, 1.0]}, ("alpha",), ["within [0, 1]", "[-0.1, 1.0]"]),
        (DistillationSpace, {"epochs": [0, 3]}, ("epochs",), ["within [1, 100]", "[0, 3]"]),
        (DistillationSpace, {"epochs": [1, 101]}, ("epochs",), ["within [1, 100]"]),
        (DistillationSpace, {"learning_rate": 0}, ("learning_rate",), ["greater than 0"]),
        (DistillationSpace, {"learning_rate": math.inf}, ("learning_rate",), ["finite"]),
        (DistillationSpace, {"method": []}, ("method",), ["distillation.method must list at least one choice"]),
        (DistillationSpace, {"method": ["soft", "soft"]}, ("method",), ["distillation.method lists a choice twice"]),
        (DistillationSpace, {"temprature": [1.0, 4.0]}, ("temprature",), ["Extra inputs are not permitted"]),
        (QuantizationSpace, {"precision": []}, ("precision",), ["quantization.precision must list at least one"]),
        (QuantizationSpace, {"int8_mode": []}, ("int8_mode",), ["quantization.int8_mode must list at least one"]),
        (
            QuantizationSpace,
            {"calibration_method": ["minmax", "minmax"]},
            ("calibration_method",),
            ["quantization.calibration_method lists a choice twice"],
        ),
        (QuantizationSpace, {"precision": ["fp64"]}, ("precision", 0), ["'fp32', 'fp16', 'bf16', 'int8' or 'int4'"]),
        (QuantizationSpace, {"calibration_batches": [0, 4]}, ("calibration_batches",), ["1 <= low <= high"]),
        (QuantizationSpace, {"calibration_batches": [8, 2]}, ("calibration_batches",), ["[8, 2]"]),
        (QuantizationSpace, {"bits": [8]}, ("bits",), ["Extra inputs are not permitted"]),
        (SearchSpace, {"prunning": {}}, ("prunning",), ["Extra inputs are not permitted"]),
        (SearchSpace, {"pruning": {"ratio": [0.1, 1.5]}}, ("pruning", "ratio"), ["[0.1, 1.5]"]),
    ],
)
def test_space_validators_reject(model: type, data: dict[str, Any], loc: tuple[Any, ...], expected: list[str]) -> None:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    errors = info.value.errors()
    assert [tuple(e["loc"]) for e in errors] == [loc]
    for part in expected:
        assert part in errors[0]["msg"], f"{part!r} missing from {errors[0]['msg']!r}"


def test_spaces_are_frozen() -> None:
    space = SearchSpace()
    with pytest.raises(ValidationError):
        space.pruning = PruningSpace()  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# Quantization: int4, granularity and mixed precision
# ---------------------------------------------------------------------------------------------

QUANT_SPACE = SearchSpace(
    quantization=QuantizationSpace(
        precision=["fp32", "fp16", "int8", "int4"],
        int8_mode=["dynamic", "static"],
        granularity=["per_channel", "per_tensor"],
        int4_block_size=[32, 128],
        int4_symmetric=[True, False],
        fp32_fraction=(0.0, 0.5),
        fp32_fraction_step=0.125,
    ),
    pruning=PruningSpace(method=["none"]),
    distillation=DistillationSpace(method=["none"]),
)


def _expected_quantization_params(q: QuantizeConfig) -> set[str]:
    names = {"precision"}
    if q.precision in ("int8", "int4"):
        names.add("fp32_fraction")
    if q.precision == "int4":
        names |= {"int4_block_size", "int4_symmetric"}
    if q.precision == "int8":
        names |= {"int8_mode", "int8_granularity"}
        if q.int8_mode == "static":
            names |= {"calibration_method", "calibration_batches"}
    return names


def test_quantization_knobs_are_asked_only_when_they_apply() -> None:
    samples = _sample(QUANT_SPACE, 300, seed=7)
    for trial, config in samples:
        assert set(trial.params) - {"prune_method", "distill_method"} == _expected_quantization_params(
            config.quantization
        )
        assert QUANT_SPACE.contains(config)
    quantizations = [c.quantization for _, c in samples]
    assert {q.precision for q in quantizations} == {"fp32", "fp16", "int8", "int4"}
    assert {q.granularity for q in quantizations if q.precision == "int8"} == {"per_channel", "per_tensor"}
    assert {(q.int4_block_size, q.int4_symmetric) for q in quantizations if q.precision == "int4"} == {
        (32, True),
        (32, False),
        (128, True),
        (128, False),
    }
    fractions = {q.fp32_fraction for q in quantizations if q.fp32_fraction is not None}
    assert fractions == {0.0, 0.125, 0.25, 0.375, 0.5}


def test_fp32_fraction_is_an_ordered_stepped_float() -> None:
    trial = optuna.create_study().ask()
    SearchSpace(quantization=QuantizationSpace(precision=["int4"], fp32_fraction=(0.1, 0.4))).suggest(trial)
    distribution = trial.distributions["fp32_fraction"]
    assert isinstance(distribution, optuna.distributions.FloatDistribution)
    assert (distribution.low, distribution.high, distribution.step) == (0.1, 0.4, 0.05)


def test_quantization_params_of_round_trips_through_an_enqueued_trial() -> None:
    configs = [c for _, c in _sample(QUANT_SPACE, 60, seed=8)]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=9))
    for config in configs:
        study.enqueue_trial(SearchSpace.params_of(config))
    for config in configs:
        trial = study.ask()
        assert QUANT_SPACE.suggest(trial) == config
        assert set(trial.params) == set(SearchSpace.params_of(config))
        study.tell(trial, 0.0)


def test_default_space_asks_none_of_the_new_quantization_params() -> None:
    for trial, config in _sample(SearchSpace(), 60, seed=10):
        assert not {"int8_granularity", "int4_block_size", "int4_symmetric", "fp32_fraction"} & set(trial.params)
        assert config.quantization.granularity is None and config.quantization.fp32_fraction is None
    assert "bf16" not in SearchSpace().quantization.precision


def test_contains_tells_the_quantization_knobs_apart() -> None:
    space = QUANT_SPACE.quantization
    assert space.contains(QuantizeConfig("int4", int4_block_size=32, int4_symmetric=False, fp32_fraction=0.5))
    assert not space.contains(QuantizeConfig("int4", int4_block_size=64, int4_symmetric=False, fp32_fraction=0.5))
    assert not space.contains(QuantizeConfig("int4", int4_block_size=32, int4_symmetric=True, fp32_fraction=0.75))
    # Mixed precision on: a config without it was not drawn from this space (and the other way round).
    assert not space.contains(QuantizeConfig("int4", int4_block_size=32, int4_symmetric=True))
    assert not QuantizationSpace(precision=["int8"], int8_mode=["dynamic"]).contains(
        QuantizeConfig("int8", "dynamic", fp32_fraction=0.0)
    )
    # Granularity searched: explicit values only; not searched: only the default (None).
    assert space.contains(QuantizeConfig("int8", "dynamic", granularity="per_tensor", fp32_fraction=0.0))
    assert not space.contains(QuantizeConfig("int8", "dynamic", fp32_fraction=0.0))
    assert not QuantizationSpace(int8_mode=["dynamic"]).contains(
        QuantizeConfig("int8", "dynamic", granularity="per_tensor")
    )


@pytest.mark.parametrize(
    ("data", "loc", "expected"),
    [
        ({"int4_block_size": [48]}, ("int4_block_size",), ["[48]", "[16, 32, 64, 128, 256]"]),
        ({"int4_block_size": []}, ("int4_block_size",), ["must list at least one"]),
        ({"int4_symmetric": [True, True]}, ("int4_symmetric",), ["lists a choice twice"]),
        ({"granularity": ["per_row"]}, ("granularity", 0), ["'per_channel' or 'per_tensor'"]),
        ({"granularity": []}, ("granularity",), ["quantization.granularity must list at least one"]),
        ({"fp32_fraction": [0.2, 1.0]}, ("fp32_fraction",), ["0 <= low <= high < 1", "[0.2, 1.0]"]),
        ({"fp32_fraction": [0.5, 0.2]}, ("fp32_fraction",), ["[0.5, 0.2]"]),
        ({"fp32_fraction_step": 0}, ("fp32_fraction_step",), ["greater than 0"]),
        ({"precision": ["fp32", "bf16"]}, ("precision",), ["'bf16'", "torch-cpu", "torch_precision", "fp16/int8"]),
    ],
)
def test_quantization_space_validators_reject(data: dict[str, Any], loc: tuple[Any, ...], expected: list[str]) -> None:
    with pytest.raises(ValidationError) as info:
        QuantizationSpace.model_validate(data)
    errors = info.value.errors()
    assert [tuple(e["loc"]) for e in errors] == [loc]
    for part in expected:
        assert part in errors[0]["msg"], f"{part!r} missing from {errors[0]['msg']!r}"


# ---------------------------------------------------------------------------------------------
# Quantization-aware distillation: asked only of dynamic int8 trials that distil
# ---------------------------------------------------------------------------------------------

AWARE_SPACE = SearchSpace(
    quantization=QuantizationSpace(precision=["fp32", "int8"], int8_mode=["dynamic", "static"]),
    pruning=PruningSpace(method=["none", "channel"]),
    distillation=DistillationSpace(method=["none", "soft"], steps=[10], quantization_aware=[False, True]),
)


def test_quantization_awareness_is_asked_only_of_distilled_dynamic_int8_trials() -> None:
    samples = _sample(AWARE_SPACE, 200, seed=11)
    for trial, config in samples:
        q, d = config.quantization, config.distillation
        applies = q.precision == "int8" and q.int8_mode == "dynamic" and d.method != "none"
        assert ("distill_quantization_aware" in trial.params) == applies
        assert AWARE_SPACE.contains(config)
        params = SearchSpace.params_of(config, AWARE_SPACE)
        assert set(params) == set(trial.params)
        assert AWARE_SPACE.suggest(FixedTrial(params)) == config
    assert {c.distillation.quantization_aware for _, c in samples} == {None, True}
    aware = next(c for _, c in samples if c.distillation.quantization_aware)
    assert not SearchSpace(distillation=DistillationSpace(method=["soft"], steps=[10])).distillation.contains(
        aware.distillation
    )
