"""The Pareto frontier of a study, as data: the JSON that `lepton-search frontier` prints."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

from lepton_search.search._attrs import REMEASURED_PREFIX, STUDY_BASELINE_ATTR, STUDY_OBJECTIVES_ATTR, STUDY_SPEC_ATTR

if TYPE_CHECKING:
    import optuna

DEFAULT_ACCURACY_TOLERANCE = 0.05


def objective_names(study: optuna.Study) -> list[str]:
    names = study.user_attrs.get(STUDY_OBJECTIVES_ATTR) or study.metric_names
    return list(names or [f"objective_{i}" for i in range(len(study.directions))])


def baseline_summary(study: optuna.Study) -> dict[str, Any]:
    """The uncompressed model: its metric, and the median of its latency over every trial window."""
    from optuna.trial import TrialState

    names = objective_names(study)
    stored = study.user_attrs.get(STUDY_BASELINE_ATTR, {})
    medians = [
        t.user_attrs["baseline_latency"]["median_ms"]
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if "baseline_latency" in t.user_attrs
    ]
    latency_ms = statistics.median(medians) if medians else None
    values: dict[str, Any] = {}
    if "accuracy" in names:
        values["accuracy"] = stored.get("accuracy")
    if "latency_ms" in names:
        values["latency_ms"] = latency_ms
    return {
        "values": values,
        "test_accuracy": stored.get("test_accuracy"),
        "latency": {"median_ms": latency_ms, "windows": len(medians)},
    }


def remeasured(study: optuna.Study, number: int) -> dict[str, Any] | None:
    """The frontier re-measurement of trial ``number``, in the frontier JSON's latency shape."""
    data = study.user_attrs.get(f"{REMEASURED_PREFIX}{number}")
    if not data:
        return None
    candidate = data["candidate"]
    return {
        "median_ms": candidate["median_ms"],
        "ci_ms": candidate["ci_ms"],
        "p95_ms": candidate["p95_ms"],
        "cv": candidate["cv"],
        "sessions": candidate["sessions"],
        "ratio_to_baseline": data["ratio"],
        "ratio_ci": data["ratio_ci"],
        "verdict": data["verdict"],
        "baseline_median_ms": data["baseline"]["median_ms"],
        "at": data.get("at"),
    }


def trial_entry(trial: optuna.trial.FrozenTrial, names: list[str], study: optuna.Study | None = None) -> dict[str, Any]:
    attrs = trial.user_attrs
    latency = attrs.get("latency", {})
    again = remeasured(study, trial.number) if study is not None else None
    slower = bool(attrs.get("slower_than_baseline")) or (again is not None and again["verdict"] == "slower")
    return {
        "number": trial.number,
        "label": attrs.get("label"),
        "config": attrs.get("config", {}),
        "values": dict(zip(names, trial.values or [])),
        "latency": {
            "median_ms": latency.get("median_ms"),
            "ratio_to_baseline": attrs.get("ratio_to_baseline"),
            "ratio_ci": attrs.get("ratio_ci"),
            "ci_ms": latency.get("ci_ms"),
            "p95_ms": latency.get("p95_ms"),
            "cv": latency.get("cv"),
            "sessions": latency.get("sessions"),
            "verdict": attrs.get("verdict"),
            "remeasured": again,
        },
        "slower_than_baseline": slower,
        "test_accuracy": attrs.get("test_accuracy"),
        "size_bytes": attrs.get("size_bytes"),
        "cost_usd_per_million": attrs.get("cost_usd_per_million"),
        "notes": attrs.get("notes", []),
        "constraints": dict(trial.constraints) if hasattr(trial, "constraints") else {},
    }


def frontier(study: optuna.Study) -> dict[str, Any]:
    """The frontier JSON: study, objectives, baseline and the non-dominated feasible trials.

    Trials whose latency verdict is "slower" than the baseline stay visible but carry
    ``slower_than_baseline: true``, so they are never silently on the frontier.
    """
    names = objective_names(study)
    best = sorted(study.best_trials, key=lambda t: t.number)
    return {
        "study": study.study_name,
        "objectives": [{"name": n, "direction": d.name.lower()} for n, d in zip(names, study.directions)],
        "baseline": baseline_summary(study),
        "trials": [trial_entry(t, names, study) for t in best],
    }


def reference_point(study: optuna.Study, tolerance: float | None = None) -> list[float] | None:
    """A task-relevant hypervolume reference point, in the objectives' own directions.

    Accuracy: the baseline's minus ``tolerance``; latency and cost: the baseline's (so only
    configurations that really help count); size: the largest size seen.
    """
    from optuna.trial import TrialState

    names = objective_names(study)
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not trials:
        return None
    base = baseline_summary(study)
    spec = study.user_attrs.get(STUDY_SPEC_ATTR, {})
    if tolerance is None:
        tolerance = (spec.get("constraints") or {}).get("max_accuracy_drop") or DEFAULT_ACCURACY_TOLERANCE
    point: list[float] = []
    for i, name in enumerate(names):
        if name == "accuracy" and base["values"].get("accuracy") is not None:
            point.append(base["values"]["accuracy"] - tolerance)
        elif name == "latency_ms" and base["latency"]["median_ms"]:
            point.append(base["latency"]["median_ms"])
        elif name == "cost_usd_per_million":
            ratios = [
                t.values[i] / t.user_attrs["ratio_to_baseline"] for t in trials if t.user_attrs.get("ratio_to_baseline")
            ]
            point.append(statistics.median(ratios) if ratios else max(t.values[i] for t in trials))
        else:
            point.append(max(t.values[i] for t in trials) * 1.1)
    return point


def hypervolume(study: optuna.Study, reference: list[float] | None = None) -> float:
    """Hypervolume of the feasible frontier against ``reference`` (default: :func:`reference_point`).

    Only points better than the reference in every objective count, so compressions that are not
    faster than the baseline, or lose more accuracy than the tolerance, add nothing.
    """
    import numpy as np
    from optuna._hypervolume import compute_hypervolume
    from optuna.study import StudyDirection

    reference = reference if reference is not None else reference_point(study)
    best = study.best_trials
    if reference is None or not best:
        return 0.0
    signs = np.array([1.0 if d == StudyDirection.MINIMIZE else -1.0 for d in study.directions])
    ref = np.asarray(reference, dtype=float) * signs
    points = np.array([t.values for t in best], dtype=float) * signs
    points = points[(points < ref).all(axis=1)]
    if len(points) == 0:
        return 0.0
    return float(compute_hypervolume(points, ref, assume_pareto=False))
