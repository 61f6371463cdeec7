"""How fast do samplers find the measured grid's frontier? Replays samplers on the grid table.

    python benchmarks/search_efficiency.py [--json] [--seeds 10] [--first-seed 0] [--budgets 0.05,0.1,0.2]
        [--table benchmarks/data/digits_grid.json] [--tolerance 0.05] [--horizon 0.5]
        [--samplers tpe,random,nsga2,gp,qmc,bruteforce] [--default tpe] [--options NAME=JSON ...]
        [--count evaluations|trials] [--no-constraint]

Nothing is re-measured. Each replay is an Optuna study over the grid's own parameters (names and
distributions of ``measure_grid.suggest_grid``, a conditional categorical/discrete space) with the
sampler built by the registry (``create_sampler``, default options unless ``--options``). Each
proposal is looked up in the table and told to Optuna as (accuracy: maximize, latency_ms: minimize),
with the ``accuracy_drop`` constraint the driver records for ``max_accuracy_drop = tolerance`` (as
in ``studies/quickstart.toml``; ``--no-constraint`` leaves it out).

The budget is counted as the driver counts ``[budget].n_trials`` (``--count evaluations``, the
default): a proposal that repeats a configuration already evaluated is told its values at once but
does not count, and a replay stops early, like the driver, after ``[budget].max_repeats`` repeats
in a row or when the sampler has tried every configuration. ``--count trials`` counts every
proposal instead (how the driver counted before), for comparison. Results give both the counted
evaluations and the proposals (Optuna trials) they took.

Metrics, per sampler, budget and seed:

- HV ratio: hypervolume of the feasible configurations tried so far over the hypervolume of the
  whole grid, against the task-relevant reference point (baseline accuracy - tolerance, baseline
  latency = the median of the baseline's latency over all the grid's measurement windows), the rule
  of ``lepton_search.search._frontier.reference_point``. Only points better than the reference in
  both objectives count. The ratio does not depend on how objectives are scaled.
- IGD+ (Ishibuchi et al.): mean distance from each point of the grid's frontier inside the
  reference box to the nearest tried point, counting only the amounts by which the tried point is
  worse. Objectives are normalised to the box: 0 = best value on the grid's frontier, 1 = reference.
- Evaluations to 95%: the first counted evaluation at which the HV ratio reaches 0.95, within a
  horizon of ``--horizon`` x grid size (``null``: not reached).
- One-sided Mann-Whitney U of each sampler's HV ratios against random's at each budget (H1: the
  sampler's are larger), with the Vargha-Delaney A12 effect size.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # GPSampler's torch: before torch is imported anywhere

import argparse
import importlib.util
import json
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_TABLE = HERE / "data" / "digits_grid.json"
DEFAULT_SAMPLERS = ("tpe", "random", "nsga2", "gp", "qmc", "bruteforce")
TARGET_HV_RATIO = 0.95
TARGET_BUDGET = 0.2
ALPHA = 0.05
COUNTS = ("evaluations", "trials")
DIRECTIONS = ("maximize", "minimize")  # accuracy, latency_ms
SIGNS = np.array([-1.0, 1.0])  # to minimisation form


# --------------------------------------------------------------------------------------------
# The table


@dataclass(frozen=True)
class Table:
    """A fully measured grid: values per configuration key, and how a trial proposes a key.

    ``values[key]`` is ``(accuracy, latency_ms)``, or ``None`` for a configuration whose evaluation
    failed (replayed as a failed trial). ``suggest(trial)`` asks an Optuna trial for one
    configuration and returns its key. ``reference`` is in the objectives' own directions.
    """

    values: dict[str, tuple[float, float] | None]
    suggest: Callable[[Any], str]
    reference: tuple[float, float]
    baseline_accuracy: float
    tolerance: float
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.values)


def _load_measure_grid() -> Any:
    spec = importlib.util.spec_from_file_location("measure_grid", HERE / "measure_grid.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_grid_table(path: Path, tolerance: float, latency: str = "measured") -> Table:
    """The table written by ``measure_grid.py``; it must cover the whole grid.

    ``latency``: ``measured`` uses each configuration's ``latency_ms`` (median of its session
    medians, as the driver tells Optuna); ``ratio`` uses ``ratio_to_baseline`` x the baseline's
    median over the grid, which cancels the machine's load in each configuration's own window
    (a sensitivity check, since the candidate and the baseline were measured interleaved).
    """
    if latency not in ("measured", "ratio"):
        raise SystemExit(f"--latency {latency!r}: use 'measured' or 'ratio'")
    grid = _load_measure_grid()
    data = json.loads(Path(path).read_text())
    rows = {r["key"]: r for r in data["configs"]}
    expected = {grid.params_key(p) for p in grid.grid_params()}
    missing = expected - set(rows)
    if missing:
        raise SystemExit(
            f"{path} covers {len(expected) - len(missing)} of the grid's {len(expected)} configurations; "
            f"finish it with: python benchmarks/measure_grid.py --out {path}"
        )
    rows = {k: rows[k] for k in expected}
    ok = [r for r in rows.values() if "error" not in r]
    baseline_accuracy = float(data["meta"]["baseline"]["accuracy"])
    baseline_latency = float(statistics.median(r["baseline_latency_ms"] for r in ok))

    def latency_of(r: dict[str, Any]) -> float:
        return float(r["latency_ms"]) if latency == "measured" else float(r["ratio_to_baseline"]) * baseline_latency

    values = {k: (None if "error" in r else (float(r["accuracy"]), latency_of(r))) for k, r in rows.items()}

    def suggest(trial: Any) -> str:
        return grid.params_key(grid.suggest_grid(trial))

    return Table(
        values=values,
        suggest=suggest,
        reference=(baseline_accuracy - tolerance, baseline_latency),
        baseline_accuracy=baseline_accuracy,
        tolerance=tolerance,
        meta={
            "path": str(path),
            "configs": len(values),
            "failed": sum(v is None for v in values.values()),
            "baseline": {"accuracy": baseline_accuracy, "latency_ms": baseline_latency},
            "machine": data["meta"].get("machine"),
            "latency": latency,
            "baseline_latency_ms_range": [
                min(r["baseline_latency_ms"] for r in ok),
                max(r["baseline_latency_ms"] for r in ok),
            ],
            "setup": {k: data["meta"]["setup"][k] for k in ("task", "settings")},
        },
    )


# --------------------------------------------------------------------------------------------
# Metrics (minimisation form inside; inputs in the objectives' own directions)


def _min_form(points: np.ndarray) -> np.ndarray:
    return np.asarray(points, dtype=float).reshape(-1, 2) * SIGNS


def pareto_mask(points_min: np.ndarray) -> np.ndarray:
    """Which rows are non-dominated (minimisation); duplicates of a non-dominated point all are."""
    n = len(points_min)
    keep = np.ones(n, dtype=bool)
    for i in range(n):
        others = points_min
        dominated = (others <= points_min[i]).all(axis=1) & (others < points_min[i]).any(axis=1)
        keep[i] = not dominated.any()
    return keep


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """Hypervolume of ``points`` (accuracy, latency_ms) against ``reference``, like
    ``_frontier.hypervolume``: only points better than the reference in every objective count."""
    from optuna._hypervolume import compute_hypervolume

    if len(points) == 0:
        return 0.0
    pts = _min_form(np.asarray(points))
    ref = _min_form(np.asarray(reference))[0]
    pts = pts[(pts < ref).all(axis=1)]
    if len(pts) == 0:
        return 0.0
    return float(compute_hypervolume(pts, ref, assume_pareto=False))


@dataclass(frozen=True)
class Frontier:
    """The grid's frontier inside the reference box, and its hypervolume."""

    hv: float
    points: np.ndarray  # (accuracy, latency_ms) of the frontier points that count
    ideal_min: np.ndarray  # best values over those points, minimisation form
    ref_min: np.ndarray


def grid_frontier(table: Table) -> Frontier:
    pts = np.array([v for v in table.values.values() if v is not None], dtype=float)
    ref_min = _min_form(np.asarray(table.reference))[0]
    pmin = _min_form(pts)
    inside = (pmin < ref_min).all(axis=1)
    front = pmin[inside][pareto_mask(pmin[inside])] if inside.any() else np.empty((0, 2))
    front = np.unique(front, axis=0)
    hv = hypervolume(pts, table.reference)
    if hv <= 0 or len(front) == 0:
        raise SystemExit(
            f"No configuration of the grid is better than the reference point {table.reference} in both "
            "objectives, so the hypervolume ratio is undefined; check the tolerance."
        )
    return Frontier(hv=hv, points=front * SIGNS, ideal_min=front.min(axis=0), ref_min=ref_min)


def igd_plus(points: Sequence[Sequence[float]], frontier: Frontier) -> float:
    """IGD+ of the tried ``points`` to the grid's frontier, in objectives normalised to the box."""
    if len(points) == 0:
        return math.inf
    scale = frontier.ref_min - frontier.ideal_min
    a = (_min_form(np.asarray(points)) - frontier.ideal_min) / scale
    z = (_min_form(frontier.points) - frontier.ideal_min) / scale
    worse = np.maximum(a[None, :, :] - z[:, None, :], 0.0)  # (front, tried, objective)
    return float(np.sqrt((worse**2).sum(axis=2)).min(axis=1).mean())


def make_sampler(name: str, options: dict[str, Any], seed: int) -> tuple[Any, dict[str, Any]]:
    """A sampler from the registry (``create_sampler``) and its full options."""
    from lepton_search.search._samplers import create_sampler, validate_sampler_options

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # QMCSampler and TPE's group are marked experimental
        return create_sampler(name, options, seed), validate_sampler_options(name, options).model_dump()


def default_max_repeats() -> int:
    """The driver's ``[budget].max_repeats`` default."""
    from lepton_search.search._spec import BudgetSpec

    return int(BudgetSpec.model_fields["max_repeats"].default)


@dataclass
class Run:
    """One replayed study: the configuration key of each counted evaluation, in order, and the
    number of proposals (Optuna trials) each had taken by then."""

    sampler: str
    seed: int
    keys: list[str]
    sampler_s: float
    study: Any = None
    proposals: list[int] = field(default_factory=list)
    stopped: str | None = None


def replay(
    table: Table,
    sampler: Any,
    n_evaluations: int,
    *,
    constraint: bool = True,
    name: str = "",
    seed: int = 0,
    count: str = "evaluations",
    max_repeats: int | None = None,
) -> Run:
    """Runs ``sampler`` by ask-and-tell, with values from ``table``, until ``n_evaluations`` count.

    ``count = "evaluations"`` counts as the driver does: a proposal that repeats a configuration
    already evaluated (with a result) is told that result but not counted, and the replay stops
    after ``max_repeats`` (default: the driver's) such proposals in a row, or when the sampler says
    it has tried every configuration. ``count = "trials"`` counts every proposal.
    """
    import optuna

    if count not in COUNTS:
        raise ValueError(f"count = {count!r}: use one of {COUNTS}")
    max_repeats = default_max_repeats() if max_repeats is None else max_repeats
    study = optuna.create_study(directions=list(DIRECTIONS), sampler=sampler)
    keys: list[str] = []
    proposals: list[int] = []
    evaluated: set[str] = set()
    repeats, asked, stopped = 0, 0, None
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental / independent-sampling fallbacks, per trial
        while len(keys) < n_evaluations:
            trial = study.ask()
            asked += 1
            key = table.suggest(trial)
            if key not in table.values:
                raise KeyError(f"The sampler proposed {key}, which is not in the table")
            repeat = count == "evaluations" and key in evaluated
            repeats = repeats + 1 if repeat else 0
            if not repeat:
                keys.append(key)
                proposals.append(asked)
            values = table.values[key]
            if values is None:  # a failed evaluation: the driver evaluates it again if proposed again
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                evaluated.add(key)
                if constraint:
                    # As the driver records max_accuracy_drop: <= 0 is feasible.
                    trial.set_constraint("accuracy_drop", (table.baseline_accuracy - values[0]) - table.tolerance)
                study.tell(trial, list(values))
            if getattr(study.sampler, "exhausted", False):
                stopped = "exhausted"
                break
            if count == "evaluations" and repeats >= max_repeats:
                stopped = "repeats"
                break
    return Run(
        sampler=name,
        seed=seed,
        keys=keys,
        sampler_s=time.perf_counter() - start,
        study=study,
        proposals=proposals,
        stopped=stopped,
    )


def hv_curve(table: Table, keys: Sequence[str], frontier: Frontier) -> list[float]:
    """HV ratio after each counted evaluation (index t: after t + 1 of them)."""
    tried: list[tuple[float, float]] = []
    seen: set[str] = set()
    curve: list[float] = []
    ratio = 0.0
    for key in keys:
        values = table.values[key]
        if key not in seen and values is not None:
            seen.add(key)
            tried.append(values)
            ratio = hypervolume(tried, table.reference) / frontier.hv
        curve.append(ratio)
    return curve


def trials_to(curve: Sequence[float], target: float) -> int | None:
    """The number of counted evaluations after which the HV ratio first reaches ``target`` (None: never)."""
    for t, value in enumerate(curve, 1):
        if value >= target - 1e-12:
            return t
    return None


def budget_trials(fraction: float, size: int) -> int:
    return max(1, round(fraction * size))


def run_metrics(table: Table, run: Run, frontier: Frontier, budgets: Sequence[int]) -> dict[str, Any]:
    """Per budget (counted evaluations): HV ratio, IGD+, distinct configurations, and proposals."""
    curve = hv_curve(table, run.keys, frontier)
    out: dict[str, Any] = {"trials_to_95": trials_to(curve, TARGET_HV_RATIO), "sampler_s": run.sampler_s}
    for b in budgets:
        keys = run.keys[:b]
        tried = [table.values[k] for k in dict.fromkeys(keys) if table.values[k] is not None]
        out[b] = {
            # A replay that stopped early (space exhausted, or only repeats) keeps its last value.
            "hv_ratio": curve[min(b, len(curve)) - 1] if curve else 0.0,
            "igd_plus": igd_plus(tried, frontier),
            "unique": len(set(keys)),
            "proposals": run.proposals[min(b, len(keys)) - 1] if keys else 0,
        }
    return out


# --------------------------------------------------------------------------------------------
# Statistics


def mann_whitney_greater(x: Sequence[float], y: Sequence[float]) -> float:
    """One-sided Mann-Whitney U p-value for H1: ``x`` tends to be larger than ``y``."""
    from scipy.stats import mannwhitneyu

    if len(x) == 0 or len(y) == 0:
        return math.nan
    if np.ptp(np.concatenate([x, y])) == 0:  # all equal: no evidence either way
        return 1.0
    return float(mannwhitneyu(x, y, alternative="greater", method="auto").pvalue)


def a12(x: Sequence[float], y: Sequence[float]) -> float:
    """Vargha-Delaney A12: P(X > Y) + P(X = Y) / 2."""
    xa, ya = np.asarray(x)[:, None], np.asarray(y)[None, :]
    return float(((xa > ya).sum() + 0.5 * (xa == ya).sum()) / (xa.size * ya.size))


def _quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    q1, q2, q3 = np.percentile(np.asarray(values, dtype=float), [25, 50, 75])
    return float(q2), float(q1), float(q3)


def _median_censored(values: Sequence[int | None]) -> int | float | None:
    """Median of trial counts where None means "not reached" (larger than any count)."""
    ordered = sorted(values, key=lambda v: math.inf if v is None else v)
    n = len(ordered)
    if n == 0:
        return None
    lo, hi = ordered[(n - 1) // 2], ordered[n // 2]
    if lo is None or hi is None:
        return None
    return (lo + hi) / 2


# --------------------------------------------------------------------------------------------
# The benchmark


def benchmark(
    table: Table,
    samplers: Sequence[str],
    seeds: int,
    budget_fractions: Sequence[float],
    *,
    default: str = "tpe",
    options: dict[str, dict[str, Any]] | None = None,
    horizon: float = 0.5,
    constraint: bool = True,
    first_seed: int = 0,
    count: str = "evaluations",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Replays every sampler over ``seeds`` seeds and summarises the metrics (see the module doc)."""
    from lepton_search.search._samplers import run_seed

    options = options or {}
    max_repeats = default_max_repeats()
    frontier = grid_frontier(table)
    budgets = [budget_trials(f, table.size) for f in budget_fractions]
    n_trials = max([*budgets, budget_trials(horizon, table.size)])
    names = list(dict.fromkeys([default, *samplers]))
    per_sampler: dict[str, list[dict[str, Any]]] = {}
    full_options: dict[str, dict[str, Any]] = {}
    for name in names:
        per_sampler[name] = []
        for s in range(first_seed, first_seed + seeds):
            sampler, full_options[name] = make_sampler(name, options.get(name, {}), seed=run_seed(s, 0))
            run = replay(
                table, sampler, n_trials, constraint=constraint, name=name, seed=s, count=count, max_repeats=max_repeats
            )
            per_sampler[name].append(
                {**run_metrics(table, run, frontier, budgets), "asked": len(run.study.trials), "stopped": run.stopped}
            )
        if progress:
            spent = sum(m["sampler_s"] for m in per_sampler[name])
            progress(f"{name}: {seeds} seeds x {n_trials} {count} in {spent:.1f} s")

    rows: list[dict[str, Any]] = []
    for name in names:
        metrics = per_sampler[name]
        reached = [m["trials_to_95"] for m in metrics]
        for fraction, b in zip(budget_fractions, budgets):
            hv = [m[b]["hv_ratio"] for m in metrics]
            igd = [m[b]["igd_plus"] for m in metrics]
            unique = [m[b]["unique"] for m in metrics]
            proposals = [m[b]["proposals"] for m in metrics]
            hv_med, hv_q1, hv_q3 = _quartiles(hv)
            igd_med, igd_q1, igd_q3 = _quartiles(igd)
            random_hv = [m[b]["hv_ratio"] for m in per_sampler["random"]] if "random" in per_sampler else []
            rows.append(
                {
                    "sampler": name,
                    "options": full_options[name],
                    "budget_fraction": fraction,
                    "trials": b,
                    "unique_evaluations_median": statistics.median(unique),
                    "unique_evaluations_range": [min(unique), max(unique)],
                    "proposals_median": statistics.median(proposals),
                    "proposals_range": [min(proposals), max(proposals)],
                    "hv_ratio_median": hv_med,
                    "hv_ratio_iqr": [hv_q1, hv_q3],
                    "igd_plus_median": igd_med,
                    "igd_plus_iqr": [igd_q1, igd_q3],
                    "reached_95_fraction": sum(r is not None and r <= b for r in reached) / len(reached),
                    "p_value_vs_random": None
                    if name == "random" or not random_hv
                    else mann_whitney_greater(hv, random_hv),
                    "a12_vs_random": None if name == "random" or not random_hv else a12(hv, random_hv),
                    "hv_ratio_per_seed": hv,
                }
            )
    trials_to_95 = {
        name: {
            "median": _median_censored([m["trials_to_95"] for m in per_sampler[name]]),
            "per_seed": [m["trials_to_95"] for m in per_sampler[name]],
            "horizon": n_trials,
            "sampler_s_per_trial": sum(m["sampler_s"] for m in per_sampler[name])
            / sum(m["asked"] for m in per_sampler[name]),
            "stopped_early": sum(m["stopped"] is not None for m in per_sampler[name]),
        }
        for name in names
    }
    target_fraction = TARGET_BUDGET if TARGET_BUDGET in budget_fractions else max(budget_fractions)
    head = next(r for r in rows if r["sampler"] == default and r["budget_fraction"] == target_fraction)
    met = head["hv_ratio_median"] >= TARGET_HV_RATIO and (head["p_value_vs_random"] or 1.0) < ALPHA
    return {
        "default_sampler": default,
        "default_options": head["options"],
        "budget_fraction": target_fraction,
        "budget_trials": head["trials"],
        "hv_ratio_median": head["hv_ratio_median"],
        "hv_ratio_iqr": head["hv_ratio_iqr"],
        "igd_plus_median": head["igd_plus_median"],
        "unique_evaluations_median": head["unique_evaluations_median"],
        "proposals_median": head["proposals_median"],
        "p_value_vs_random": head["p_value_vs_random"],
        "a12_vs_random": head["a12_vs_random"],
        "trials_to_95_median": trials_to_95[default]["median"],
        "target": {
            "hv_ratio": TARGET_HV_RATIO,
            "budget_fraction": TARGET_BUDGET,
            "alpha": ALPHA,
            "met": bool(met),
        },
        "seeds": seeds,
        "first_seed": first_seed,
        "count": count,
        "max_repeats": max_repeats,
        "constraint": constraint,
        "grid": {
            "path": None,
            "configs": table.size,
            "failed": sum(v is None for v in table.values.values()),
            "baseline": {"accuracy": table.baseline_accuracy, "latency_ms": table.reference[1]},
            **table.meta,
            "hypervolume": frontier.hv,
            "reference_point": {"accuracy": table.reference[0], "latency_ms": table.reference[1]},
            "tolerance": table.tolerance,
            "frontier_in_box": [{"accuracy": float(p[0]), "latency_ms": float(p[1])} for p in frontier.points],
        },
        "trials_to_95": trials_to_95,
        "table": rows,
    }


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats (IGD+ of an empty set) as None, so the output is valid JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def format_text(result: dict[str, Any]) -> str:
    g = result["grid"]
    ref = g["reference_point"]
    lines = [
        f"Grid {g['path']}: {g['configs']} configurations ({g['failed']} failed), "
        f"{len(g['frontier_in_box'])} frontier points inside the reference box",
        f"Reference point: accuracy {ref['accuracy']:.4f} (baseline {g['baseline']['accuracy']:.4f} - "
        f"{g['tolerance']}), latency {ref['latency_ms']:.3f} ms (baseline median); grid HV {g['hypervolume']:.5g}",
        f"Latency objective: {g.get('latency', 'measured')}",
        f"{result['seeds']} seeds (from {result['first_seed']}); accuracy_drop constraint "
        f"{'on' if result['constraint'] else 'off'}; median [IQR] over seeds; p: one-sided Mann-Whitney U vs random",
        f"Budget counted in {result['count']}"
        + (
            f" (repeats told but not counted; stop after {result['max_repeats']} in a row), as the driver counts it"
            if result["count"] == "evaluations"
            else " (every proposal counts)"
        ),
        "",
        f"{'sampler':<11}{'budget':>13}{'unique':>8}{'asked':>7}  {'HV ratio [IQR]':<22}{'IGD+ [IQR]':<24}"
        f"{'>=95%':>6}{'p vs random':>13}{'A12':>6}",
    ]
    for r in result["table"]:
        p = "" if r["p_value_vs_random"] is None else f"{r['p_value_vs_random']:.4f}"
        a = "" if r["a12_vs_random"] is None else f"{r['a12_vs_random']:.2f}"
        lines.append(
            f"{r['sampler']:<11}{r['trials']:>4} ({r['budget_fraction']:>4.0%}){r['unique_evaluations_median']:>8g}"
            f"{r['proposals_median']:>7g}  "
            f"{r['hv_ratio_median']:.3f} [{r['hv_ratio_iqr'][0]:.3f}, {r['hv_ratio_iqr'][1]:.3f}]   "
            f"{r['igd_plus_median']:.3f} [{r['igd_plus_iqr'][0]:.3f}, {r['igd_plus_iqr'][1]:.3f}]    "
            f"{r['reached_95_fraction']:>5.0%}{p:>13}{a:>6}"
        )
    lines.append("")
    lines.append(f"Budget ({result['count']}) to reach 95% of grid HV, median over seeds (- = not within the horizon):")
    for name, t in result["trials_to_95"].items():
        med = "-" if t["median"] is None else f"{t['median']:g}"
        per = ", ".join("-" if v is None else str(v) for v in t["per_seed"])
        ms = 1000 * t["sampler_s_per_trial"]
        early = f"; {t['stopped_early']} stopped early" if t["stopped_early"] else ""
        lines.append(f"  {name:<11}{med:>6} of {t['horizon']} ({per}); sampler time {ms:.0f} ms/trial{early}")
    verdict = "MET" if result["target"]["met"] else "MISSED"
    p = result["p_value_vs_random"]
    lines.append("")
    lines.append(
        f"Target ({result['default_sampler']}: median HV ratio >= {TARGET_HV_RATIO} at {result['budget_fraction']:.0%} "
        f"of the grid and p < {ALPHA} vs random): {verdict} - HV ratio {result['hv_ratio_median']:.3f}, "
        f"p = {'n/a' if p is None else f'{p:.4f}'}"
    )
    return "\n".join(lines)


def _parse_options(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep:
            raise SystemExit(f"--options {item!r}: expected NAME=JSON, e.g. tpe='{{\"n_startup_trials\": 5}}'")
        out[name] = json.loads(text)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument(
        "--first-seed", type=int, default=0, help="replay seeds are first-seed .. first-seed + seeds - 1"
    )
    parser.add_argument("--budgets", default="0.05,0.1,0.2", help="fractions of the grid's size")
    parser.add_argument("--table", type=Path, default=DEFAULT_TABLE)
    parser.add_argument("--tolerance", type=float, default=0.05, help="accuracy below the baseline's that still counts")
    parser.add_argument("--horizon", type=float, default=0.5, help="trials per replay, as a fraction of the grid")
    parser.add_argument("--samplers", default=",".join(DEFAULT_SAMPLERS))
    parser.add_argument("--default", default="tpe", help="the sampler the target is checked for")
    parser.add_argument("--options", action="append", default=[], metavar="NAME=JSON", help="sampler options")
    parser.add_argument("--no-constraint", action="store_true", help="do not record the accuracy_drop constraint")
    parser.add_argument(
        "--count",
        choices=COUNTS,
        default="evaluations",
        help="what the budget counts: evaluations (distinct configurations, as the driver) or every proposal",
    )
    parser.add_argument(
        "--latency",
        choices=["measured", "ratio"],
        default="measured",
        help="latency objective: the measured latency_ms, or ratio_to_baseline x the baseline's grid median",
    )
    args = parser.parse_args(argv)

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if args.seeds < 2:
        parser.error("--seeds must be at least 2")
    fractions = [float(f) for f in args.budgets.split(",") if f.strip()]
    if not fractions or not all(0 < f <= 1 for f in fractions):
        parser.error("--budgets must be fractions in (0, 1]")
    table = load_grid_table(args.table, args.tolerance, args.latency)
    samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    if "random" not in samplers:
        samplers.append("random")
    result = benchmark(
        table,
        samplers,
        args.seeds,
        fractions,
        default=args.default,
        options=_parse_options(args.options),
        horizon=args.horizon,
        constraint=not args.no_constraint,
        first_seed=args.first_seed,
        count=args.count,
        progress=None if args.json else (lambda line: print(line, file=sys.stderr, flush=True)),
    )
    print(json.dumps(json_safe(result), indent=1) if args.json else format_text(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
