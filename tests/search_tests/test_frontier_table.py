"""The frontier table at 80 columns: one line per tie group, led by its simplest configuration."""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console

from lepton_search.search._progress import frontier_table
from lepton_search.search._ties import groups_json
from lepton_search.spaces import (
    CompressionConfig,
    DeploymentConfig,
    DistillConfig,
    GraphConfig,
    PruneConfig,
    QuantizeConfig,
)

INT8 = QuantizeConfig("int8", int8_mode="static", calibration_method="percentile", calibration_batches=8)
NAMES = ["accuracy", "latency_ms", "cost_usd_per_million"]


def _entry(number: int, config: CompressionConfig, accuracy: float, ratio: float) -> dict[str, Any]:
    latency = 1.4 * ratio
    return {
        "number": number,
        "label": config.describe(),
        "config": config.to_dict(),
        "values": dict(zip(NAMES, [accuracy, latency, latency * 4.1e-5])),
        "latency": {"ratio_to_baseline": ratio, "ratio_ci": [ratio * 0.97, ratio * 1.03], "verdict": "faster"},
        "slower_than_baseline": False,
    }


def _frontier() -> dict[str, Any]:
    deployed = DeploymentConfig(backend="onnxruntime-cpu", batch_size=32, threads=2)
    trials = [
        # The pair: int8 + unstructured 15% and int8 + unstructured 60% + hard KD tie.
        _entry(7, CompressionConfig(quantization=INT8, pruning=PruneConfig("unstructured", 0.15)), 0.9556, 0.323),
        _entry(
            22,
            CompressionConfig(
                quantization=INT8,
                pruning=PruneConfig("unstructured", 0.6),
                distillation=DistillConfig("hard", epochs=4),
                deployment=deployed,
            ),
            0.9550,
            0.322,
        ),
        _entry(
            3,
            CompressionConfig(
                quantization=INT8,
                pruning=PruneConfig("channel", 0.5, importance="taylor", scope="global"),
                distillation=DistillConfig("soft", temperature=8.0, alpha=0.5, epochs=5),
                deployment=deployed,
            ),
            0.9500,
            0.090,
        ),
        _entry(1, CompressionConfig(), 0.9972, 0.999),
    ]
    data = {
        "study": "digits-quickstart",
        "objectives": [{"name": n} for n in NAMES],
        "baseline": {"latency": {"median_ms": 1.4}, "values": dict(zip(NAMES, [0.99721448, 1.40000001, 5.74e-05]))},
        "trials": trials,
    }
    data["groups"] = groups_json(data, accuracy_resolution=1 / 360)
    return data


def _lines(data: dict[str, Any], **options: Any) -> list[str]:
    console = Console(width=80, record=True, color_system=None)
    console.print(frontier_table(data, width=80, **options))
    return console.export_text().splitlines()


def test_each_group_is_one_line_at_80_columns_led_by_its_simplest_member() -> None:
    lines = _lines(_frontier())
    assert all(len(line) <= 80 for line in lines)
    rows = [line for line in lines if re.match(r"^\s*\d+\s", line)]
    assert [int(row.split()[0]) for row in rows] == [3, 7, 1]  # fastest first; 22 ties with 7
    (seven,) = [row for row in rows if row.split()[0] == "7"]
    assert "int8 + unstr 15%" in seven and seven.rstrip().endswith("22")
    (three,) = [row for row in rows if row.split()[0] == "3"]
    assert "11.1x [10.8-11.5]" in three
    assert not any("{" in line for line in lines)  # no raw dicts


def test_all_lists_every_non_dominated_trial_one_line_each() -> None:
    lines = _lines(_frontier(), grouped=False)
    rows = [line for line in lines if re.match(r"^\s*\d+\s", line)]
    assert sorted(int(row.split()[0]) for row in rows) == [1, 3, 7, 22]
    assert all(len(line) <= 80 for line in lines)


def test_short_labels_name_every_technique() -> None:
    config = CompressionConfig(
        quantization=INT8,
        pruning=PruneConfig("channel", 0.5),
        distillation=DistillConfig("soft", temperature=8.0, alpha=0.5, epochs=5),
        deployment=DeploymentConfig(batch_size=32, threads=2),
    )
    assert config.short_label() == "int8 + channel 50% + soft KD @b32 t2"
    assert CompressionConfig().short_label() == "fp32"
    unfused = CompressionConfig(
        quantization=QuantizeConfig("int8", int8_mode="dynamic"), graph=GraphConfig(skip_layer_norm="unfused")
    )
    assert unfused.short_label() == "int8 dyn + unfused LN"
