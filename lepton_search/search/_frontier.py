"""The Pareto frontier of a study, as data: the JSON that `lepton-search frontier` prints."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

from lepton_search.search._attrs import (
    DUPLICATE_OF,
    REMEASURED_PREFIX,
    STUDY_ACCURACY_RESOLUTION_ATTR,
    STUDY_BASELINE_ATTR,
    STUDY_FACTORS_ATTR,
    STUDY_OBJECTIVES_ATTR,
    STUDY_SPEC_ATTR,
)
from lepton_search.search._record import LatencyRecord, TrialRecord, recorded_deployment

if TYPE_CHECKING:
    import optuna

DEFAULT_ACCURACY_TOLERANCE = 0.05


def objective_names(study: optuna.Study) -> list[str]:
    names = study.user_attrs.get(STUDY_OBJECTIVES_ATTR) or study.metric_names
    return list(names or [f"objective_{i}" for i in range(len(study.directions))])


_DEPLOYMENT_KEYS = ("backend", "batch_size", "threads")


def default_deployment(study: optuna.Study) -> dict[str, Any]:
    """The study's ``[measurement]`` backend, batch size and threads (where a trial without
    deployment knobs is measured)."""
    measurement = (study.user_attrs.get(STUDY_SPEC_ATTR) or {}).get("measurement") or {}
    defaults = {"backend": "onnxruntime-cpu", "batch_size": 64, "threads": 1}
    return {k: measurement.get(k, defaults[k]) for k in _DEPLOYMENT_KEYS}


def trial_deployment(trial: optuna.trial.FrozenTrial, default: dict[str, Any]) -> dict[str, Any]:
    """The backend, batch size and threads ``trial`` was measured at."""
    return recorded_deployment(trial.user_attrs, default)


def baseline_summary(study: optuna.Study) -> dict[str, Any]:
    """The uncompressed model: its metric, and the median of its latency and cost over the trial
    windows measured at the study's default deployment (``[measurement]``).

    Each trial measures the baseline at the trial's own deployment; only those at the default one
    describe the study's baseline. A study none of whose trials ran there falls back to every
    window, and says so (``latency.deployment`` is then ``"mixed"``).
    """
    from optuna.trial import TrialState

    names = objective_names(study)
    stored = study.user_attrs.get(STUDY_BASELINE_ATTR, {})
    default = default_deployment(study)
    # A repeated proposal carries its original's measurement; counting it would weigh that window twice.
    measured = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if "baseline_latency" in t.user_attrs and DUPLICATE_OF not in t.user_attrs
    ]
    at_default = [t for t in measured if trial_deployment(t, default) == default]
    windows = at_default or measured
    medians = [t.user_attrs["baseline_latency"]["median_ms"] for t in windows]
    latency_ms = statistics.median(medians) if medians else None
    costs = []
    for t in windows:
        cost = t.user_attrs["baseline_latency"].get("cost_usd_per_million")
        if cost is None and t.user_attrs.get("ratio_to_baseline") and t.user_attrs.get("cost_usd_per_million"):
            cost = t.user_attrs["cost_usd_per_million"] / t.user_attrs["ratio_to_baseline"]  # before costs were stored
        if cost is not None:
            costs.append(cost)
    cost_usd = statistics.median(costs) if costs else None
    values: dict[str, Any] = {}
    if "accuracy" in names:
        values["accuracy"] = stored.get("accuracy")
    if "latency_ms" in names:
        values["latency_ms"] = latency_ms
    if "cost_usd_per_million" in names:
        values["cost_usd_per_million"] = cost_usd
    return {
        "values": values,
        "test_accuracy": stored.get("test_accuracy"),
        "latency": {
            "median_ms": latency_ms,
            "windows": len(medians),
            "deployment": default if at_default or not measured else "mixed",
        },
        "cost_usd_per_million": cost_usd,
    }


def speedup_of(ratio: float | None, ratio_ci: list[float] | None) -> tuple[float | None, list[float] | None]:
    """``(speedup, speedup_ci)``: how many times faster than the baseline, ``1 / ratio``, and its
    interval (the ratio's interval inverted, so its ends swap)."""
    if not ratio:
        return None, None
    ci = [1.0 / ratio_ci[1], 1.0 / ratio_ci[0]] if ratio_ci and all(ratio_ci) else None
    return 1.0 / ratio, ci


def shown_speedup(entry: dict[str, Any]) -> tuple[float | None, list[float] | None]:
    """``(speedup, speedup_ci)`` of a frontier JSON entry as tables show it: from the re-measurement
    in fresh processes where there is one, else from the trial's own measurement."""
    latency = entry["latency"].get("remeasured") or entry["latency"]
    return speedup_of(latency.get("ratio_to_baseline"), latency.get("ratio_ci"))


def remeasured(study: optuna.Study, number: int) -> dict[str, Any] | None:
    """The frontier re-measurement of trial ``number``, in the frontier JSON's latency shape."""
    data = study.user_attrs.get(f"{REMEASURED_PREFIX}{number}")
    return LatencyRecord.from_remeasurement(data).remeasurement_json() if data else None


def trial_entry(trial: optuna.trial.FrozenTrial, names: list[str], study: optuna.Study | None = None) -> dict[str, Any]:
    """The frontier JSON's entry for ``trial``: its :class:`TrialRecord`, as JSON."""
    return trial_record(trial, names, study).to_json()


def trial_record(trial: optuna.trial.FrozenTrial, names: list[str], study: optuna.Study | None = None) -> TrialRecord:
    """The :class:`TrialRecord` of ``trial``, with its re-measurement and deployment from ``study``."""
    if study is None:
        return TrialRecord.from_trial(trial, names)
    return TrialRecord.from_trial(
        trial,
        names,
        remeasurement=study.user_attrs.get(f"{REMEASURED_PREFIX}{trial.number}"),
        default_deployment=default_deployment(study),
    )


def frontier_records(study: optuna.Study) -> list[TrialRecord]:
    """The frontier's trials (as in :func:`frontier`'s ``trials``) as records, by trial number."""
    names = objective_names(study)
    return [trial_record(t, names, study) for t in _frontier_trials(study)]


def _frontier_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    # A repeated proposal has its original's values; the original stands for both.
    return sorted((t for t in study.best_trials if DUPLICATE_OF not in t.user_attrs), key=lambda t: t.number)


def frontier(study: optuna.Study) -> dict[str, Any]:
    """The frontier JSON: study, objectives, baseline and the non-dominated feasible trials.

    Trials whose latency verdict is "slower" than the baseline stay visible but carry
    ``slower_than_baseline: true``, so they are never silently on the frontier.
    """
    from optuna.trial import TrialState

    from lepton_search.search._ties import groups_json

    names = objective_names(study)
    best = _frontier_trials(study)
    on_frontier = {t.number for t in best}
    alternatives = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.number not in on_frontier and DUPLICATE_OF not in t.user_attrs and is_feasible(t)
    ]
    data: dict[str, Any] = {
        "study": study.study_name,
        "objectives": [{"name": n, "direction": d.name.lower()} for n, d in zip(names, study.directions)],
        "baseline": baseline_summary(study),
        "trials": [trial_entry(t, names, study) for t in best],
        # Where the best frontier configuration's speed comes from (None until a run measured it).
        "factors": study.user_attrs.get(STUDY_FACTORS_ATTR),
    }
    data["accuracy_resolution"] = accuracy_resolution(study)
    data["groups"] = groups_json(
        data,
        accuracy_resolution=data["accuracy_resolution"],
        alternatives=[trial_entry(t, names, study) for t in alternatives],
    )
    return data


#: For studies recorded before runs stored their task's resolution (``Task.accuracy_resolution``).
DEFAULT_ACCURACY_RESOLUTION = 1e-3


def accuracy_resolution(study: optuna.Study) -> float:
    """The accuracy difference below which two frontier points tie: the task's, as the last run
    recorded it."""
    return float(study.user_attrs.get(STUDY_ACCURACY_RESOLUTION_ATTR) or DEFAULT_ACCURACY_RESOLUTION)


def is_feasible(trial: optuna.trial.FrozenTrial) -> bool:
    """True when ``trial`` meets every study constraint (accuracy drop, latency or cost caps)."""
    return all(v <= 0 for v in (getattr(trial, "constraints", None) or {}).values())


def reference_point(study: optuna.Study, tolerance: float | None = None) -> list[float] | None:
    """A task-relevant hypervolume reference point, in the objectives' own directions.

    Accuracy: the baseline's minus ``tolerance``; latency and cost: the baseline's at the study's
    default deployment (``[measurement]``), so only configurations that really help count, whether
    by compression or by a better deployment; size: the largest size seen.
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
        elif name == "cost_usd_per_million" and base["cost_usd_per_million"]:
            point.append(base["cost_usd_per_million"])
        else:
            point.append(max(t.values[i] for t in trials) * 1.1)
    return point


def pareto_numbers(points: dict[int, tuple[float, ...]]) -> set[int]:
    """The keys of the non-dominated ``points``, every coordinate to be minimised."""
    front = set()
    for k, p in points.items():
        dominated = any(
            all(a <= b for a, b in zip(q, p)) and any(a < b for a, b in zip(q, p)) for j, q in points.items() if j != k
        )
        if not dominated:
            front.add(k)
    return front


def speed_cost_frontiers(study: optuna.Study) -> dict[str, Any]:
    """The latency frontier and the cost frontier of the feasible completed trials.

    The latency frontier is non-dominated in (accuracy, latency), the cost frontier in (accuracy,
    cost), whatever the study's objectives (the trials record both). With a fixed deployment the
    two coincide; with batch size or threads in the space they differ: a larger batch costs less
    per inference but takes longer per request, and more threads cut latency but each is paid for.
    """
    from optuna.trial import TrialState

    rows: dict[int, dict[str, Any]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        attrs = t.user_attrs
        feasible = is_feasible(t)
        latency = (attrs.get("latency") or {}).get("median_ms")
        cost = attrs.get("cost_usd_per_million")
        if not feasible or latency is None or cost is None:
            continue
        rows[t.number] = {"accuracy": attrs.get("accuracy"), "latency_ms": latency, "cost_usd_per_million": cost}

    def front(key: str) -> list[int]:
        points = {n: ((-r["accuracy"],) if r["accuracy"] is not None else ()) + (r[key],) for n, r in rows.items()}
        return sorted(pareto_numbers(points))

    return {"trials": rows, "latency_frontier": front("latency_ms"), "cost_frontier": front("cost_usd_per_million")}


def hypervolume(study: optuna.Study, reference: list[float] | None = None) -> float:
    """Hypervolume of the feasible frontier against ``reference`` (default: :func:`reference_point`).

    Only points better than the reference in every objective count, so compressions that are not
    faster than the baseline, or lose more accuracy than the tolerance, add nothing.
    """
    import numpy as np
    from optuna._hypervolume import compute_hypervolume
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    reference = reference if reference is not None else reference_point(study)
    # Every feasible point, not ``study.best_trials``: dominated points add nothing to the volume,
    # and best_trials deep-copies every trial of the study, which the driver paid after each trial.
    feasible = [
        t.values for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values and is_feasible(t)
    ]
    if reference is None or not feasible:
        return 0.0
    signs = np.array([1.0 if d == StudyDirection.MINIMIZE else -1.0 for d in study.directions])
    ref = np.asarray(reference, dtype=float) * signs
    points = np.array(feasible, dtype=float) * signs
    points = points[(points < ref).all(axis=1)]
    if len(points) == 0:
        return 0.0
    return float(compute_hypervolume(points, ref, assume_pareto=False))
