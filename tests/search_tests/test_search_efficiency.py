"""The sampler-replay benchmark's machinery, on a 12-configuration table whose frontier is known by hand."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest

optuna.logging.set_verbosity(optuna.logging.WARNING)

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str) -> Any:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


se = _load("search_efficiency")
grid = _load("measure_grid")

# A conditional space of 12 configurations: method "none" (1), "p" with ratio 0.1..0.5 (5), "q"
# with level 1..6 (6). Reference point: baseline accuracy 1.0 - tolerance 0.1 = 0.9, latency 10.
VALUES: dict[str, tuple[float, float] | None] = {
    "none": (1.0, 10.0),  # the baseline: on the reference point, adds nothing
    "p0.1": (0.98, 8.0),  # frontier
    "p0.2": (0.95, 8.0),  # dominated by p0.3 and p0.1
    "p0.3": (0.95, 5.0),  # frontier
    "p0.4": (0.92, 6.0),  # dominated by p0.3
    "p0.5": (0.92, 2.0),  # frontier
    "q1": (0.85, 1.0),  # loses more accuracy than the tolerance
    "q2": (0.99, 11.0),  # slower than the baseline
    "q3": (0.80, 0.5),
    "q4": (0.91, 10.5),
    "q5": (0.97, 9.5),  # inside the box, dominated by p0.1
    "q6": None,  # its evaluation failed
}
# Staircase of the frontier (accuracy above 0.9 times latency below 10):
# latency [2, 5) x 0.02 + [5, 8) x 0.05 + [8, 10] x 0.08 = 0.06 + 0.15 + 0.16
GRID_HV = 0.37


def _suggest(trial: Any) -> str:
    method = trial.suggest_categorical("method", ["none", "p", "q"])
    if method == "p":
        return f"p{round(trial.suggest_float('ratio', 0.1, 0.5, step=0.1), 6)}"
    if method == "q":
        return f"q{trial.suggest_int('level', 1, 6)}"
    return "none"


@pytest.fixture
def table() -> Any:
    return se.Table(values=VALUES, suggest=_suggest, reference=(0.9, 10.0), baseline_accuracy=1.0, tolerance=0.1)


def test_grid_frontier_and_hypervolume_by_hand(table: Any) -> None:
    frontier = se.grid_frontier(table)
    assert frontier.hv == pytest.approx(GRID_HV)
    assert sorted(map(tuple, frontier.points.tolist())) == [(0.92, 2.0), (0.95, 5.0), (0.98, 8.0)]
    assert se.hypervolume([VALUES["p0.3"]], table.reference) == pytest.approx(0.05 * 5)
    # Points outside the box (on it, infeasible, slower) add nothing.
    outside = [VALUES[k] for k in ("none", "q1", "q2", "q3", "q4")]
    assert se.hypervolume(outside, table.reference) == 0.0


def test_igd_plus_by_hand(table: Any) -> None:
    frontier = se.grid_frontier(table)
    assert se.igd_plus([v for v in VALUES.values() if v is not None], frontier) == pytest.approx(0.0)
    # Normalised to the box (ideal accuracy 0.98 / latency 2, reference 0.9 / 10), p0.3 sits at
    # (0.375, 0.375); it is worse than p0.5 by 0.375 in accuracy and than p0.1 by 0.375 in latency.
    assert se.igd_plus([VALUES["p0.3"]], frontier) == pytest.approx((0.375 + 0 + 0.375) / 3)
    assert se.igd_plus([], frontier) == math.inf


def _sampler(name: str, seed: int) -> Any:
    return se.make_sampler(name, {}, seed)[0]


def test_hv_curve_and_trials_to_95(table: Any) -> None:
    frontier = se.grid_frontier(table)
    keys = ["q5", "p0.3", "p0.3", "q6", "p0.1", "p0.5", "none"]
    curve = se.hv_curve(table, keys, frontier)
    # q5 alone: 0.07 x 0.5; with p0.3: 0.25 + 0.035 - overlap 0.05 x 0.5; p0.1 covers q5 and adds
    # 0.16 - overlap 0.05 x 2; p0.5 completes the frontier.
    expected = [0.035, 0.26, 0.26, 0.26, 0.31, 0.37, 0.37]
    assert curve == pytest.approx([v / GRID_HV for v in expected])
    assert se.trials_to(curve, 0.95) == 6
    assert se.trials_to(curve, 0.8) == 5
    assert se.trials_to(curve[:5], 0.95) is None
    metrics = se.run_metrics(table, se.Run("x", 0, keys, 0.0, proposals=[1, 2, 3, 5, 6, 8, 9]), frontier, [3, 7])
    # Normalised, q5 sits at (0.125, 0.9375): nearer than p0.3 to p0.1 (0, 0.75), by
    # sqrt(0.125^2 + 0.1875^2); p0.3 is 0.375 from p0.5 and 0 from itself.
    igd = (math.hypot(0.125, 0.1875) + 0.375 + 0.0) / 3
    assert metrics[3]["hv_ratio"] == pytest.approx(0.26 / GRID_HV) and metrics[3]["unique"] == 2
    assert metrics[3]["igd_plus"] == pytest.approx(igd)
    assert (metrics[3]["proposals"], metrics[7]["proposals"]) == (3, 9)
    assert metrics[7]["unique"] == 6 and metrics[7]["hv_ratio"] == pytest.approx(1.0)
    assert metrics["trials_to_95"] == 6
    # A replay that stopped before the budget keeps its last value.
    assert se.run_metrics(table, se.Run("x", 0, keys[:2], 0.0, proposals=[1, 2]), frontier, [3])[3]["hv_ratio"] == (
        pytest.approx(0.26 / GRID_HV)
    )


def test_replay_counts_evaluations_as_the_driver_does(table: Any) -> None:
    """Repeats of an evaluated configuration are told its values but not counted; a failed one is
    evaluated (and counted) again, as the driver does."""
    run = se.replay(table, _sampler("random", 5), 11)
    trials = run.study.trials
    assert len(run.keys) == 11 and len(trials) == run.proposals[-1] > 11  # random repeats on 12 configs
    successful = [k for k in run.keys if VALUES[k] is not None]
    assert len(successful) == len(set(successful))
    first_told: dict[str, Any] = {}
    for trial in trials:
        key = _suggest(optuna.trial.FixedTrial(trial.params))
        if key in first_told:  # a repeat: told the same values as the first time
            assert trial.values == first_told[key]
        elif trial.state == optuna.trial.TrialState.COMPLETE:
            first_told[key] = trial.values
    # Counting every proposal instead: the keys are the proposals, repeats included.
    by_trials = se.replay(table, _sampler("random", 5), 11, count="trials")
    assert len(by_trials.keys) == len(by_trials.study.trials) == 11
    assert len(set(by_trials.keys)) < 11


def test_replay_stops_after_max_repeats_in_a_row() -> None:
    values = {**VALUES, "q6": (0.5, 1.0)}  # no failures: nothing is evaluated twice
    table = se.Table(values=values, suggest=_suggest, reference=(0.9, 10.0), baseline_accuracy=1.0, tolerance=0.1)
    run = se.replay(table, _sampler("random", 0), 100, max_repeats=3)
    assert run.stopped == "repeats"
    assert len(run.keys) == len(set(run.keys)) <= 12
    assert len(run.study.trials) - run.proposals[-1] == 3  # the three repeats in a row after the last evaluation


def test_bruteforce_enumerates_every_config_once_then_stops(table: Any) -> None:
    run = se.replay(table, _sampler("bruteforce", 3), 14)
    assert sorted(run.keys) == sorted(VALUES)  # each of the 12 exactly once
    # No RuntimeError from tell once the space is exhausted: the sampler says so, and the replay stops.
    assert run.stopped == "exhausted" and len(run.study.trials) == 12
    frontier = se.grid_frontier(table)
    curve = se.hv_curve(table, run.keys, frontier)
    assert curve[11] == pytest.approx(1.0)
    tried = [VALUES[k] for k in run.keys if VALUES[k] is not None]
    assert se.igd_plus(tried, frontier) == 0.0
    # The failed configuration is a failed trial; the others carry the accuracy_drop constraint.
    states = {k: t.state for k, t in zip(run.keys, run.study.trials)}
    assert states["q6"] == optuna.trial.TrialState.FAIL
    first_p01 = run.study.trials[run.keys.index("p0.1")]
    assert first_p01.constraints == {"accuracy_drop": pytest.approx((1.0 - 0.98) - 0.1)}


def test_replay_agrees_with_the_projects_hypervolume(table: Any) -> None:
    """All configurations tried: the project's own study hypervolume equals the grid's."""
    from lepton_search.search._frontier import hypervolume as study_hypervolume

    run = se.replay(table, _sampler("bruteforce", 0), 12)
    assert study_hypervolume(run.study, list(table.reference)) == pytest.approx(GRID_HV)
    # Feasible and non-dominated: the hand frontier plus the baseline (most accurate; on the box edge).
    best = sorted(tuple(t.values) for t in run.study.best_trials)
    assert best == [(0.92, 2.0), (0.95, 5.0), (0.98, 8.0), (1.0, 10.0)]


def test_exhaustive_sampler_enumerates_the_measured_grid_once() -> None:
    """``suggest_grid`` (the replay space) and ``grid_params`` (what was measured) are the same grid."""
    keys = {grid.params_key(p) for p in grid.grid_params()}
    assert len(keys) == 120
    values = dict.fromkeys(keys, (1.0, 1.0))
    table = se.Table(
        values=values,
        suggest=lambda t: grid.params_key(grid.suggest_grid(t)),
        reference=(0.5, 2.0),
        baseline_accuracy=1.0,
        tolerance=0.5,
    )
    run = se.replay(table, _sampler("bruteforce", 0), 120, constraint=False)
    assert sorted(run.keys) == sorted(keys)
    assert len({grid.config_of(json.loads(k)).config_hash for k in keys}) == 120


def test_benchmark_summary(table: Any) -> None:
    result = se.benchmark(table, ["random", "bruteforce"], 3, [0.5, 1.0], default="bruteforce", horizon=1.0)
    rows = {(r["sampler"], r["budget_fraction"]): r for r in result["table"]}
    full = rows[("bruteforce", 1.0)]
    assert full["trials"] == 12 and full["unique_evaluations_median"] == 12
    assert full["hv_ratio_per_seed"] == pytest.approx([1.0, 1.0, 1.0]) and full["igd_plus_median"] == 0.0
    assert full["reached_95_fraction"] == 1.0 and full["proposals_median"] == 12
    assert result["count"] == "evaluations" and result["max_repeats"] == 100
    assert rows[("bruteforce", 0.5)]["trials"] == 6
    assert rows[("random", 0.5)]["p_value_vs_random"] is None
    assert 0.0 < full["p_value_vs_random"] <= 1.0
    assert result["budget_fraction"] == 1.0 and result["default_sampler"] == "bruteforce"
    assert result["grid"]["hypervolume"] == pytest.approx(GRID_HV)
    assert all(t is not None and t <= 12 for t in result["trials_to_95"]["bruteforce"]["per_seed"])
    json.dumps(se.json_safe(result), allow_nan=False)
    assert "Budget (evaluations) to reach 95% of grid HV" in se.format_text(result)


def test_mann_whitney_and_a12() -> None:
    better, worse = [0.9, 0.95, 0.97, 0.99, 1.0], [0.5, 0.6, 0.62, 0.7, 0.8]
    assert se.mann_whitney_greater(better, worse) == pytest.approx(1 / 252)  # exact: 1 of C(10, 5) orderings
    assert se.mann_whitney_greater(worse, better) > 0.99
    assert se.mann_whitney_greater([1.0] * 5, [1.0] * 5) == 1.0
    assert se.a12(better, worse) == 1.0 and se.a12(worse, better) == 0.0 and se.a12([1, 2], [1, 2]) == 0.5


def test_median_of_censored_counts() -> None:
    assert se._median_censored([3, 5, None]) == 5
    assert se._median_censored([3, None, None]) is None
    assert se._median_censored([2, 4, 6, 8]) == 5


def test_committed_grid_table_is_complete_and_consistent() -> None:
    path = BENCHMARKS / "data" / "digits_grid.json"
    data = json.loads(path.read_text())
    meta = data["meta"]
    assert meta["setup"]["task"] == "digits-cnn"
    assert (meta["setup"]["settings"]["batch_size"], meta["setup"]["settings"]["threads"]) == (64, 1)
    assert meta["setup"]["settings"]["sessions"] == 3
    assert meta["machine"]["cpu"] and meta["runs"][0]["command"] and meta["runs"][0]["versions"]["optuna"]
    table = se.load_grid_table(path, tolerance=0.05)
    assert table.size == 120
    for row in data["configs"]:
        assert grid.config_of(row["params"]).config_hash == row["config_hash"]
        if "error" not in row:
            assert 0 <= row["accuracy"] <= 1 and row["latency_ms"] > 0 and row["size_bytes"] > 0
            assert row["cost_usd_per_million"] > 0
    assert se.grid_frontier(table).hv > 0
