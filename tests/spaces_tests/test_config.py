"""Compression configs: field validation, the versioned JSON round trip and the stable hash."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
from typing import Any

import pytest

from lepton_search.errors import ConfigError, LeptonSearchError
from lepton_search.spaces import CompressionConfig, DistillConfig, PruneConfig, QuantizeConfig

QUANTIZATIONS = [
    QuantizeConfig(),
    QuantizeConfig("fp16"),
    QuantizeConfig("int8", "dynamic"),
    QuantizeConfig("int8", "static", "minmax", 1),
    QuantizeConfig("int8", "static", "entropy", 4),
    QuantizeConfig("int8", "static", "percentile", 8),
]
PRUNINGS = [
    PruneConfig(),
    PruneConfig("unstructured", 0.1),
    PruneConfig("channel", 0.5),
    PruneConfig("channel", 0.9),
]
DISTILLATIONS = [
    DistillConfig(),
    DistillConfig("hard", epochs=1),
    DistillConfig("hard", epochs=5, learning_rate=3e-4),
    DistillConfig("soft", temperature=1.0, alpha=0.0, epochs=2),
    DistillConfig("soft", temperature=20.0, alpha=1.0, epochs=6),
    DistillConfig("soft", temperature=3.7, alpha=0.25, epochs=3, learning_rate=1e-2),
]
# Every combination of the sections above: 6 * 4 * 6 = 144 distinct configs.
ALL_CONFIGS = [
    CompressionConfig(quantization=q, pruning=p, distillation=d)
    for q, p, d in itertools.product(QUANTIZATIONS, PRUNINGS, DISTILLATIONS)
]


# ---------------------------------------------------------------------------------------------
# Field validation: each message names the key, the value received and what is allowed.
# ---------------------------------------------------------------------------------------------

SECTIONS: dict[str, type] = {"quantization": QuantizeConfig, "pruning": PruneConfig, "distillation": DistillConfig}

# (id, section, keyword arguments, substrings the message must contain)
INVALID_SECTIONS: list[tuple[str, str, dict[str, Any], list[str]]] = [
    (
        "precision",
        "quantization",
        {"precision": "fp64"},
        ["quantization.precision", "'fp64'", "['fp32', 'fp16', 'bf16', 'int8', 'int4']"],
    ),
    (
        "fp32-with-int8-mode",
        "quantization",
        {"precision": "fp32", "int8_mode": "static"},
        ["quantization.precision = 'fp32'", "int8_mode = 'static'", "precision = 'int8'"],
    ),
    (
        "fp16-with-calibration",
        "quantization",
        {"precision": "fp16", "calibration_method": "minmax", "calibration_batches": 2},
        ["quantization.precision = 'fp16'", "calibration_method = 'minmax'", "calibration_batches = 2"],
    ),
    ("int8-without-mode", "quantization", {"precision": "int8"}, ["int8_mode", "['dynamic', 'static']"]),
    (
        "int8-mode",
        "quantization",
        {"precision": "int8", "int8_mode": "float"},
        ["quantization.int8_mode", "'float'", "['dynamic', 'static']"],
    ),
    (
        "int8-mode-not-a-string",
        "quantization",
        {"precision": "int8", "int8_mode": 8},
        ["quantization.int8_mode = 8", "['dynamic', 'static']"],
    ),
    (
        "dynamic-with-calibration",
        "quantization",
        {"precision": "int8", "int8_mode": "dynamic", "calibration_method": "minmax", "calibration_batches": 2},
        ["int8_mode = 'dynamic'", "calibration_method = 'minmax'", "calibration_batches = 2", "'static'"],
    ),
    (
        "static-without-calibration",
        "quantization",
        {"precision": "int8", "int8_mode": "static"},
        ["int8_mode = 'static'", "calibration_method", "['minmax', 'entropy', 'percentile']", "calibration_batches"],
    ),
    (
        "calibration-method",
        "quantization",
        {"precision": "int8", "int8_mode": "static", "calibration_method": "mse", "calibration_batches": 2},
        ["quantization.calibration_method", "'mse'", "['minmax', 'entropy', 'percentile']"],
    ),
    (
        "calibration-batches-zero",
        "quantization",
        {"precision": "int8", "int8_mode": "static", "calibration_method": "minmax", "calibration_batches": 0},
        ["quantization.calibration_batches = 0", "integer >= 1"],
    ),
    (
        "calibration-batches-float",
        "quantization",
        {"precision": "int8", "int8_mode": "static", "calibration_method": "minmax", "calibration_batches": 2.5},
        ["quantization.calibration_batches = 2.5", "integer >= 1"],
    ),
    (
        "calibration-batches-bool",
        "quantization",
        {"precision": "int8", "int8_mode": "static", "calibration_method": "minmax", "calibration_batches": True},
        ["quantization.calibration_batches = True", "integer >= 1"],
    ),
    (
        "prune-method",
        "pruning",
        {"method": "structured", "ratio": 0.5},
        ["pruning.method", "'structured'", "['none', 'unstructured', 'channel', 'depth', '2:4']"],
    ),
    ("prune-ratio-high", "pruning", {"method": "channel", "ratio": 1.5}, ["pruning.ratio = 1.5", "(0, 0.9]"]),
    ("prune-ratio-zero", "pruning", {"method": "unstructured", "ratio": 0.0}, ["pruning.ratio = 0.0", "(0, 0.9]"]),
    ("prune-ratio-negative", "pruning", {"method": "channel", "ratio": -0.2}, ["pruning.ratio = -0.2", "(0, 0.9]"]),
    ("prune-ratio-nan", "pruning", {"method": "channel", "ratio": math.nan}, ["pruning.ratio = nan", "finite number"]),
    ("prune-ratio-inf", "pruning", {"method": "channel", "ratio": math.inf}, ["pruning.ratio = inf", "finite number"]),
    (
        "prune-ratio-string",
        "pruning",
        {"method": "channel", "ratio": "0.5"},
        ["pruning.ratio = '0.5'", "finite number"],
    ),
    (
        "none-with-ratio",
        "pruning",
        {"method": "none", "ratio": 0.3},
        ["pruning.ratio = 0.3", "pruning.method = 'none'", "set it to 0"],
    ),
    (
        "distill-method",
        "distillation",
        {"method": "feature", "epochs": 1},
        ["distillation.method", "'feature'", "['none', 'soft', 'hard']"],
    ),
    (
        "none-with-temperature",
        "distillation",
        {"method": "none", "temperature": 4.0},
        ["distillation.method = 'none'", "temperature = 4.0", "'soft' or 'hard'"],
    ),
    (
        "none-with-epochs",
        "distillation",
        {"method": "none", "epochs": 3},
        ["distillation.method = 'none'", "epochs = 3"],
    ),
    (
        "soft-epochs-zero",
        "distillation",
        {"method": "soft", "temperature": 2.0, "alpha": 0.5, "epochs": 0},
        ["distillation.epochs = 0", "integer >= 1"],
    ),
    (
        "hard-epochs-bool",
        "distillation",
        {"method": "hard", "epochs": True},
        ["distillation.epochs = True", "integer >= 1"],
    ),
    (
        "hard-epochs-float",
        "distillation",
        {"method": "hard", "epochs": 2.0},
        ["distillation.epochs = 2.0", "integer >= 1"],
    ),
    (
        "hard-with-temperature",
        "distillation",
        {"method": "hard", "temperature": 2.0, "epochs": 1},
        ["distillation.method = 'hard'", "temperature = 2.0", "'soft'"],
    ),
    (
        "hard-with-alpha",
        "distillation",
        {"method": "hard", "alpha": 0.5, "epochs": 1},
        ["distillation.method = 'hard'", "alpha = 0.5"],
    ),
    (
        "soft-temperature-low",
        "distillation",
        {"method": "soft", "temperature": 0.5, "alpha": 0.5, "epochs": 1},
        ["distillation.temperature = 0.5", "[1, 20]"],
    ),
    (
        "soft-temperature-high",
        "distillation",
        {"method": "soft", "temperature": 21.0, "alpha": 0.5, "epochs": 1},
        ["distillation.temperature = 21.0", "[1, 20]"],
    ),
    (
        "soft-temperature-missing",
        "distillation",
        {"method": "soft", "alpha": 0.5, "epochs": 1},
        ["distillation.temperature = None", "finite number"],
    ),
    (
        "soft-temperature-string",
        "distillation",
        {"method": "soft", "temperature": "4", "alpha": 0.5, "epochs": 1},
        ["distillation.temperature = '4'", "finite number"],
    ),
    (
        "soft-alpha-high",
        "distillation",
        {"method": "soft", "temperature": 2.0, "alpha": 1.5, "epochs": 1},
        ["distillation.alpha = 1.5", "[0, 1]"],
    ),
    (
        "soft-alpha-missing",
        "distillation",
        {"method": "soft", "temperature": 2.0, "epochs": 1},
        ["distillation.alpha = None", "finite number"],
    ),
    (
        "learning-rate-zero",
        "distillation",
        {"method": "hard", "epochs": 1, "learning_rate": 0.0},
        ["distillation.learning_rate = 0.0", "> 0"],
    ),
    (
        "learning-rate-inf",
        "distillation",
        {"method": "hard", "epochs": 1, "learning_rate": math.inf},
        ["distillation.learning_rate = inf", "finite number"],
    ),
    (
        "learning-rate-string",
        "distillation",
        {"method": "hard", "epochs": 1, "learning_rate": "fast"},
        ["distillation.learning_rate = 'fast'", "finite number"],
    ),
]
IDS = [case[0] for case in INVALID_SECTIONS]


@pytest.mark.parametrize(("section", "kwargs", "expected"), [case[1:] for case in INVALID_SECTIONS], ids=IDS)
def test_invalid_section_names_key_value_and_allowed(section: str, kwargs: dict[str, Any], expected: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        SECTIONS[section](**kwargs)
    message = str(info.value)
    for part in expected:
        assert part in message, f"{part!r} missing from {message!r}"
    assert isinstance(info.value, LeptonSearchError)


@pytest.mark.parametrize(("section", "kwargs", "expected"), [case[1:] for case in INVALID_SECTIONS], ids=IDS)
def test_invalid_section_from_dict_gives_the_same_message(
    section: str, kwargs: dict[str, Any], expected: list[str]
) -> None:
    """Bad values read from a stored config raise ConfigError with the same message, never TypeError."""
    with pytest.raises(ConfigError) as info:
        CompressionConfig.from_dict({section: kwargs})
    for part in expected:
        assert part in str(info.value)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"quantization": "int8"}, "section quantization = 'int8' must be an object"),
        ({"pruning": None}, "section pruning = None must be an object"),
        ({"distillation": [1, 2]}, "section distillation = [1, 2] must be an object"),
    ],
)
def test_section_that_is_not_an_object_is_named(data: dict[str, Any], expected: str) -> None:
    for call in (lambda: CompressionConfig.from_dict(data), lambda: CompressionConfig.from_json(json.dumps(data))):
        with pytest.raises(ConfigError) as info:
            call()
        assert expected in str(info.value)


def test_defaults_are_the_baseline() -> None:
    config = CompressionConfig()
    assert config.is_baseline
    assert config.describe() == "fp32"
    assert not CompressionConfig(pruning=PruneConfig("channel", 0.5)).is_baseline
    assert not CompressionConfig(quantization=QuantizeConfig("fp16")).is_baseline


def test_configs_are_frozen() -> None:
    config = CompressionConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.pruning = PruneConfig("channel", 0.5)  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.pruning.ratio = 0.5  # type: ignore[misc]


def test_describe_labels_each_section() -> None:
    config = CompressionConfig(
        quantization=QuantizeConfig("int8", "static", "percentile", 4),
        pruning=PruneConfig("channel", 0.5),
        distillation=DistillConfig("soft", temperature=4.0, alpha=0.7, epochs=3),
    )
    assert config.describe() == "int8-static(percentile) + channel 50% + soft KD x3"
    assert CompressionConfig(quantization=QuantizeConfig("int8", "dynamic")).describe() == "int8-dynamic"


# ---------------------------------------------------------------------------------------------
# JSON round trip
# ---------------------------------------------------------------------------------------------


def test_all_configs_are_distinct() -> None:
    assert len(set(ALL_CONFIGS)) == len(ALL_CONFIGS) == 144


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=[c.describe() + f"#{i}" for i, c in enumerate(ALL_CONFIGS)])
def test_json_round_trip(config: CompressionConfig) -> None:
    text = config.to_json()
    back = CompressionConfig.from_json(text)
    assert back == config
    assert back.to_json() == text
    assert back.config_hash == config.config_hash
    assert CompressionConfig.from_dict(config.to_dict()) == config
    # As stored in Optuna user attributes: through json.dumps/json.loads of the plain dict.
    assert CompressionConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    # The bare dict (no envelope) is accepted by from_json as well.
    assert CompressionConfig.from_json(json.dumps(config.to_dict())) == config


def test_to_dict_leaves_out_none_values() -> None:
    assert CompressionConfig().to_dict() == {
        "quantization": {"precision": "fp32"},
        "pruning": {"method": "none", "ratio": 0.0},
        "distillation": {"method": "none", "epochs": 0, "learning_rate": 1e-3},
    }
    soft = CompressionConfig(
        quantization=QuantizeConfig("int8", "dynamic"),
        distillation=DistillConfig("soft", temperature=2.0, alpha=0.5, epochs=1),
    ).to_dict()
    assert soft["quantization"] == {"precision": "int8", "int8_mode": "dynamic"}
    assert soft["distillation"] == {
        "method": "soft",
        "temperature": 2.0,
        "alpha": 0.5,
        "epochs": 1,
        "learning_rate": 1e-3,
    }


def test_to_json_is_a_sorted_versioned_envelope() -> None:
    text = CompressionConfig(pruning=PruneConfig("channel", 0.25)).to_json()
    payload = json.loads(text)
    assert set(payload) == {"_type", "_version", "_data"}
    assert payload["_type"] == "CompressionConfig"
    assert payload["_version"] == CompressionConfig.SCHEMA_VERSION == 1
    assert payload["_data"]["pruning"] == {"method": "channel", "ratio": 0.25}
    assert text == json.dumps(payload, sort_keys=True, separators=(",", ":"))
    assert " " not in text


# ---------------------------------------------------------------------------------------------
# Stable hash
# ---------------------------------------------------------------------------------------------


def test_hash_is_sixteen_hex_digits_and_pinned() -> None:
    # Pinned: stored studies record this hash; a change to the canonical JSON must be deliberate.
    assert CompressionConfig().config_hash == "778748a2da1b806d"
    config = CompressionConfig(
        quantization=QuantizeConfig("int8", "static", "percentile", 4),
        pruning=PruneConfig("channel", 0.5),
        distillation=DistillConfig("soft", temperature=4.0, alpha=0.7, epochs=3),
    )
    assert config.config_hash == "7ae58f134f38c2c5"
    for c in ALL_CONFIGS:
        assert re.fullmatch(r"[0-9a-f]{16}", c.config_hash)


def test_different_configs_have_different_hashes() -> None:
    hashes = {c.config_hash for c in ALL_CONFIGS}
    assert len(hashes) == len(ALL_CONFIGS)


def test_equal_configs_have_equal_hashes() -> None:
    for config in ALL_CONFIGS:
        copy = CompressionConfig(
            quantization=QuantizeConfig(**dataclasses.asdict(config.quantization)),
            pruning=PruneConfig(**dataclasses.asdict(config.pruning)),
            distillation=DistillConfig(**dataclasses.asdict(config.distillation)),
        )
        assert copy == config
        assert copy is not config
        assert copy.config_hash == config.config_hash


def test_hash_is_independent_of_construction_order() -> None:
    by_position = CompressionConfig(
        QuantizeConfig("int8", "static", "entropy", 3),
        PruneConfig("unstructured", 0.4),
        DistillConfig("soft", 5.0, 0.3, 2, 1e-3),
    )
    by_keyword_reversed = CompressionConfig(
        distillation=DistillConfig(learning_rate=1e-3, epochs=2, alpha=0.3, temperature=5.0, method="soft"),
        pruning=PruneConfig(ratio=0.4, method="unstructured"),
        quantization=QuantizeConfig(
            calibration_batches=3, calibration_method="entropy", int8_mode="static", precision="int8"
        ),
    )
    data = by_position.to_dict()
    reversed_dict = {name: dict(reversed(list(data[name].items()))) for name in reversed(list(data))}
    from_reversed = CompressionConfig.from_dict(reversed_dict)
    assert by_position == by_keyword_reversed == from_reversed
    assert by_position.config_hash == by_keyword_reversed.config_hash == from_reversed.config_hash


def test_integer_and_float_spellings_of_a_number_hash_equally() -> None:
    """``temperature = 4`` and ``temperature = 4.0`` are the same config, so they hash the same."""
    as_int = CompressionConfig(distillation=DistillConfig("soft", temperature=4, alpha=1, epochs=2, learning_rate=1))
    as_float = CompressionConfig(
        distillation=DistillConfig("soft", temperature=4.0, alpha=1.0, epochs=2, learning_rate=1.0)
    )
    assert as_int == as_float
    assert as_int.config_hash == as_float.config_hash
    assert as_int.to_json() == as_float.to_json()
    assert isinstance(as_int.distillation.temperature, float)
    assert CompressionConfig(pruning=PruneConfig("none", 0)).config_hash == CompressionConfig().config_hash
    from_json_ints = CompressionConfig.from_json(
        '{"distillation": {"method": "soft", "temperature": 4, "alpha": 1, "epochs": 2, "learning_rate": 1}}'
    )
    assert from_json_ints.config_hash == as_float.config_hash


# ---------------------------------------------------------------------------------------------
# What from_json refuses
# ---------------------------------------------------------------------------------------------


def _envelope(**overrides: Any) -> str:
    payload: dict[str, Any] = {"_type": "CompressionConfig", "_version": 1, "_data": CompressionConfig().to_dict()}
    payload.update(overrides)
    return json.dumps({k: v for k, v in payload.items() if v is not ...})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (_envelope(_type="os.system"), ["_type 'os.system'", "'CompressionConfig'"]),
        (_envelope(_type="lepton_search.spaces.PruneConfig"), ["'lepton_search.spaces.PruneConfig'"]),
        (_envelope(_version=2), ["_version 2", "reads version 1"]),
        (_envelope(_version="1"), ["_version '1'", "reads version 1"]),
        (_envelope(_version=True), ["_version True", "reads version 1"]),
        (_envelope(_version=...), ["_version None", "reads version 1"]),
        (_envelope(_data=...), ["no _data"]),
        (_envelope(_extra=1), ["'_extra'", "_data"]),
        (_envelope(_data=[1, 2]), ["must be an object"]),
        (json.dumps({"quantisation": {"precision": "fp32"}}), ["'quantisation'", "'quantization'"]),
        (
            json.dumps({"pruning": {"method": "channel", "ratio": 0.5, "granularity": "block"}}),
            [
                "['granularity']",
                "in pruning",
                "['head_ratio', 'importance', 'iterations', 'method', 'ratio', 'reconstruction', 'scope']",
            ],
        ),
        ("{not json", ["not valid JSON"]),
        ("[1, 2]", ["must be an object", "list"]),
        ('"CompressionConfig"', ["must be an object", "str"]),
    ],
)
def test_from_json_rejects(text: str, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        CompressionConfig.from_json(text)
    for part in expected:
        assert part in str(info.value), f"{part!r} missing from {info.value}"


def test_from_json_never_imports_the_type_it_reads() -> None:
    import sys

    before = set(sys.modules)
    with pytest.raises(ConfigError):
        CompressionConfig.from_json(_envelope(_type="antigravity"))
    assert "antigravity" not in set(sys.modules) - before


# ---------------------------------------------------------------------------------------------
# Quantization knobs: int4, bf16, granularity, mixed precision
# ---------------------------------------------------------------------------------------------

NEW_QUANTIZATIONS = [
    QuantizeConfig("bf16"),
    QuantizeConfig("int4", int4_block_size=32, int4_symmetric=True),
    QuantizeConfig("int4", int4_block_size=128, int4_symmetric=False, fp32_fraction=0.25),
    QuantizeConfig("int8", "dynamic", granularity="per_tensor"),
    QuantizeConfig("int8", "dynamic", granularity="per_channel", fp32_fraction=0.0),
    QuantizeConfig("int8", "static", "entropy", 4, granularity="per_tensor", fp32_fraction=0.5),
]


@pytest.mark.parametrize("quantization", NEW_QUANTIZATIONS, ids=lambda q: q.precision)
def test_new_quantization_knobs_round_trip_through_json(quantization: QuantizeConfig) -> None:
    config = CompressionConfig(quantization=quantization)
    again = CompressionConfig.from_json(config.to_json())
    assert again == config and again.config_hash == config.config_hash


def test_configs_without_the_new_knobs_keep_their_json_and_hash() -> None:
    """Stored before int4, granularity and mixed precision existed: same JSON, same hash."""
    config = CompressionConfig(quantization=QuantizeConfig("int8", "static", "minmax", 2))
    assert config.to_dict()["quantization"] == {
        "precision": "int8",
        "int8_mode": "static",
        "calibration_method": "minmax",
        "calibration_batches": 2,
    }
    assert CompressionConfig.from_json(config.to_json()).config_hash == config.config_hash
    assert QuantizeConfig("int8", "dynamic").per_channel
    assert not QuantizeConfig("int8", "dynamic", granularity="per_tensor").per_channel
    # Distinct knobs give distinct hashes.
    hashes = {CompressionConfig(quantization=q).config_hash for q in NEW_QUANTIZATIONS}
    assert len(hashes) == len(NEW_QUANTIZATIONS)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"precision": "bf16", "int8_mode": "dynamic"}, ["precision = 'bf16'", "int8_mode = 'dynamic'"]),
        ({"precision": "fp16", "fp32_fraction": 0.5}, ["precision = 'fp16'", "fp32_fraction = 0.5", "int8"]),
        ({"precision": "fp32", "granularity": "per_tensor"}, ["granularity = 'per_tensor'", "precision = 'int8'"]),
        ({"precision": "int4"}, ["int4_block_size = None", "[16, 32, 64, 128, 256]"]),
        ({"precision": "int4", "int4_block_size": 48, "int4_symmetric": True}, ["int4_block_size = 48"]),
        ({"precision": "int4", "int4_block_size": 32.0, "int4_symmetric": True}, ["int4_block_size = 32.0"]),
        ({"precision": "int4", "int4_block_size": 32}, ["int4_symmetric = None", "true", "false"]),
        ({"precision": "int4", "int4_block_size": 32, "int4_symmetric": "yes"}, ["int4_symmetric = 'yes'"]),
        (
            {"precision": "int4", "int4_block_size": 32, "int4_symmetric": True, "int8_mode": "dynamic"},
            ["precision = 'int4'", "weight-only", "int8_mode = 'dynamic'"],
        ),
        (
            {"precision": "int4", "int4_block_size": 32, "int4_symmetric": True, "granularity": "per_tensor"},
            ["precision = 'int4'", "granularity = 'per_tensor'"],
        ),
        (
            {"precision": "int8", "int8_mode": "dynamic", "int4_block_size": 32},
            ["precision = 'int8'", "int4_block_size = 32", "precision = 'int4'"],
        ),
        (
            {"precision": "int8", "int8_mode": "dynamic", "granularity": "per_row"},
            ["quantization.granularity", "'per_row'", "['per_channel', 'per_tensor']"],
        ),
        ({"precision": "int8", "int8_mode": "dynamic", "fp32_fraction": 1.0}, ["fp32_fraction = 1.0", "[0, 1)"]),
        ({"precision": "int8", "int8_mode": "dynamic", "fp32_fraction": -0.1}, ["fp32_fraction = -0.1"]),
        ({"precision": "int8", "int8_mode": "dynamic", "fp32_fraction": True}, ["fp32_fraction = True", "finite"]),
        ({"precision": "int8", "int8_mode": "dynamic", "fp32_fraction": math.nan}, ["fp32_fraction = nan"]),
    ],
)
def test_invalid_quantization_knobs_name_key_value_and_allowed(kwargs: dict[str, Any], expected: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        QuantizeConfig(**kwargs)
    for part in expected:
        assert part in str(info.value), f"{part!r} missing from {info.value}"


def test_fp32_fraction_is_stored_as_float() -> None:
    config = QuantizeConfig("int8", "dynamic", fp32_fraction=0)
    assert config.fp32_fraction == 0.0 and isinstance(config.fp32_fraction, float)
    assert config == QuantizeConfig("int8", "dynamic", fp32_fraction=0.0)


@pytest.mark.parametrize(
    ("quantization", "label"),
    [
        (QuantizeConfig("bf16"), "bf16"),
        (QuantizeConfig("int4", int4_block_size=32, int4_symmetric=True), "int4(block 32, sym)"),
        (
            QuantizeConfig("int4", int4_block_size=64, int4_symmetric=False, fp32_fraction=0.25),
            "int4(block 64, asym) mixed(25% layers fp32)",
        ),
        (QuantizeConfig("int8", "dynamic", granularity="per_tensor"), "int8-dynamic(per-tensor)"),
        (QuantizeConfig("int8", "dynamic", granularity="per_channel"), "int8-dynamic"),
        (
            QuantizeConfig("int8", "static", "minmax", 2, granularity="per_tensor", fp32_fraction=0.1),
            "int8-static(minmax, per-tensor) mixed(10% layers fp32)",
        ),
    ],
)
def test_describe_names_the_new_quantization_knobs(quantization: QuantizeConfig, label: str) -> None:
    assert CompressionConfig(quantization=quantization).describe() == label
