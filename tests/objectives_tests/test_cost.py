"""Cost: dollars per million inferences from a device price and a measured batch latency."""

from __future__ import annotations

import pytest

from lepton_search.objectives import CostModel
from lepton_search.objectives._cost import DEFAULT_CPU_CORE_USD_PER_HOUR, DEFAULT_GPU_USD_PER_HOUR


def test_usd_per_million_arithmetic() -> None:
    cost = CostModel()
    # 10 ms per batch of 64 -> 156.25 us per inference; a million take 156.25 s = 0.0434 h.
    # At $3.60/h that is $0.15625.
    assert cost.usd_per_million(10.0, 64, 3.6) == pytest.approx(0.15625)
    # One inference per second for a million seconds at $3.60/h: $1000.
    assert cost.usd_per_million(1000.0, 1, 3.6) == pytest.approx(1000.0)


def test_usd_per_million_scales_with_latency_price_and_batch() -> None:
    cost = CostModel()
    base = cost.usd_per_million(4.0, 32, 1.0)
    assert cost.usd_per_million(8.0, 32, 1.0) == pytest.approx(2 * base)
    assert cost.usd_per_million(4.0, 32, 3.0) == pytest.approx(3 * base)
    assert cost.usd_per_million(4.0, 64, 1.0) == pytest.approx(base / 2)
    assert cost.usd_per_million(0.0, 32, 1.0) == 0.0


def test_cpu_price_is_per_thread() -> None:
    cost = CostModel()
    assert cost.price_per_hour("cpu", 1) == pytest.approx(DEFAULT_CPU_CORE_USD_PER_HOUR)
    assert cost.price_per_hour("cpu", 2) == pytest.approx(2 * DEFAULT_CPU_CORE_USD_PER_HOUR)
    assert cost.price_per_hour("cpu", 0) == pytest.approx(DEFAULT_CPU_CORE_USD_PER_HOUR)  # at least one core
    assert CostModel(cpu_core_usd_per_hour=0.1).price_per_hour("cpu", 4) == pytest.approx(0.4)
    # The GPU name plays no part in a CPU price.
    assert cost.price_per_hour("cpu", 1, "NVIDIA H100") == pytest.approx(DEFAULT_CPU_CORE_USD_PER_HOUR)


@pytest.mark.parametrize(
    ("gpu_name", "price"),
    [
        ("Tesla T4", 0.53),
        ("NVIDIA L4", 0.80),
        ("NVIDIA A10G", 1.01),
        ("NVIDIA A100-SXM4-80GB", 3.67),
        ("NVIDIA A100 80GB PCIe", 3.67),
        ("NVIDIA H100 80GB HBM3", 6.98),
        ("nvidia h100 nvl", 6.98),
        ("NVIDIA H200", 10.6),
    ],
)
def test_gpu_price_is_looked_up_by_name(gpu_name: str, price: float) -> None:
    assert CostModel().price_per_hour("gpu", 1, gpu_name) == pytest.approx(price)


@pytest.mark.parametrize("gpu_name", ["NVIDIA L40S", "NVIDIA GeForce RTX 4090", ""])
def test_unlisted_gpu_is_priced_at_the_most_expensive_listed_one(gpu_name: str) -> None:
    # "L40S" contains "L4", but it is a different (and dearer) GPU: it must not get the L4 price.
    assert CostModel().price_per_hour("gpu", 1, gpu_name) == pytest.approx(max(DEFAULT_GPU_USD_PER_HOUR.values()))


def test_a_study_price_table_replaces_the_defaults() -> None:
    cost = CostModel(gpu_usd_per_hour={"L40S": 1.9, "L4": 0.7})
    assert cost.price_per_hour("gpu", 1, "NVIDIA L40S") == pytest.approx(1.9)
    assert cost.price_per_hour("gpu", 1, "NVIDIA L4") == pytest.approx(0.7)
    assert cost.price_per_hour("gpu", 1, "NVIDIA H100") == pytest.approx(1.9)  # unlisted: the dearest


def test_default_tables_are_not_shared_between_instances() -> None:
    a, b = CostModel(), CostModel()
    a.gpu_usd_per_hour["T4"] = 99.0
    assert b.gpu_usd_per_hour["T4"] == DEFAULT_GPU_USD_PER_HOUR["T4"] == 0.53
