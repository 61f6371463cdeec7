""" "N× faster": the speedup over the baseline, and its interval, beside the latency ratio."""

from __future__ import annotations

import pytest
from rich.console import Console

from lepton_search.search._frontier import speedup_of
from lepton_search.search._progress import frontier_table


def test_the_speedup_is_the_inverse_ratio_and_its_interval_swaps_ends() -> None:
    speedup, ci = speedup_of(0.25, [0.2, 0.5])
    assert speedup == pytest.approx(4.0) and ci == pytest.approx([2.0, 5.0])
    assert speedup_of(None, None) == (None, None)
    assert speedup_of(0.5, None) == (2.0, None)


def test_the_frontier_table_leads_with_the_speedup() -> None:
    data = {
        "study": "s",
        "objectives": [{"name": "accuracy"}, {"name": "latency_ms"}],
        "baseline": {"latency": {"median_ms": 10.0}, "values": {"accuracy": 0.99, "latency_ms": 10.0}},
        "trials": [
            {
                "number": 7,
                "label": "int8-dynamic",
                "values": {"accuracy": 0.99, "latency_ms": 3.2},
                "latency": {"ratio_to_baseline": 0.32, "ratio_ci": [0.3, 0.34], "verdict": "faster"},
                "slower_than_baseline": False,
            }
        ],
    }
    console = Console(width=200, record=True)
    console.print(frontier_table(data))
    text = console.export_text()
    assert "3.12x [2.94-3.33]" in text


def test_the_report_draws_where_the_speed_comes_from() -> None:
    from lepton_search.search._report import _factors_figure

    factors = {
        "trial": 2,
        "factors": {
            "graph": {"label": "fp32 + unfused skip-LN", "speedup": 1.12, "speedup_ci": [1.10, 1.20], "accuracy": 1.0},
            "combined": {"label": "int8 + unfused", "speedup": 2.68, "speedup_ci": [2.65, 2.92], "accuracy": 0.9913},
        },
    }
    figure = _factors_figure(factors)
    assert figure is not None and list(figure.data[0].x) == [1.12, 2.68]
    assert "trial 2" in figure.layout.title.text
    assert _factors_figure(None) is None
