"""Recording what the driver learns into the study.

The driver is the only writer. Each trial's outcome (values, constraints, user attributes, the
exported model) is written before Optuna is told, because Optuna refuses updates to a finished
trial; a crash, exception, timeout or NaN becomes a FAIL trial whose ``fail_reason`` says why, and
the study goes on. A trial's result is also kept in the result cache under a key of everything
that decided it (:func:`result_key`), so a repeated configuration is served instead of evaluated.
After the budget, the frontier is re-measured in fresh workers and the best frontier
configuration's speed is split into its techniques; both are stored on the study, and a failure of
either is reported, never fatal.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lepton_search import __version__
from lepton_search.objectives import TrialRequest, TrialResult, get_backend
from lepton_search.search._attrs import (
    DUPLICATE_OF,
    FAIL_REASON,
    REMEASURED_PREFIX,
    REQUEUED,
    STUDY_FACTORS_ATTR,
    STUDY_OBJECTIVES_ATTR,
)
from lepton_search.search._executor import RayExecutor, describe_failure
from lepton_search.search._record import trial_attributes
from lepton_search.search._spec import StudySpec
from lepton_search.search._study import ProgressCallback
from lepton_search.spaces import CompressionConfig
from lepton_search.storage import ResultCache, cache_key, set_trial_user_attrs

if TYPE_CHECKING:
    import optuna


def objective_values(spec: StudySpec, result: TrialResult) -> list[float]:
    available = {
        "accuracy": result.accuracy,
        "latency_ms": result.latency_ms,
        "cost_usd_per_million": result.cost_usd_per_million,
        "size_mb": result.size_bytes / 1e6,
    }
    return [float(available[name]) for name in spec.objective_names]


def constraint_values(spec: StudySpec, result: TrialResult, baseline_accuracy: float) -> dict[str, float]:
    """Optuna constraint values: <= 0 means feasible."""
    c = spec.constraints
    values: dict[str, float] = {}
    if c.max_accuracy_drop is not None:
        values["accuracy_drop"] = (baseline_accuracy - result.accuracy) - c.max_accuracy_drop
    if c.latency_slo_ms is not None:
        values["latency_slo"] = result.latency_ms - c.latency_slo_ms
    if c.max_size_mb is not None:
        values["size"] = result.size_bytes / 1e6 - c.max_size_mb
    return values


def result_key(
    request: TrialRequest, task_fingerprint: str, config: CompressionConfig, device_class: str | None = None
) -> str:
    """The result-cache key of ``config``: task, config and the whole measurement setup.

    The device part includes the device class (a hash of the CPU's or GPU's kernel-relevant
    identity, ``devices/_machine.py``), so a result measured on one ISA is never served on
    another. ``device_class`` names the class a result was measured on; by default it is this
    machine's, where a lookup expects the trial to be measured.
    """
    manifest = get_backend(request.settings.backend, require_usable=False).manifest(request.settings.threads)
    if device_class is not None:
        manifest = {**manifest, "device_class": device_class}
    settings = dataclasses.asdict(request.settings)
    settings.pop("seed")
    return cache_key(
        task=request.task,
        task_options=request.task_options,
        fingerprint=task_fingerprint,
        config=config.config_hash,
        fidelity=request.max_distill_epochs,
        settings=settings,
        cost=dataclasses.asdict(request.cost),
        device={
            k: manifest.get(k) for k in ("backend", "device_kind", "device_class", "device", "onnxruntime", "threads")
        },
        version=__version__,
    )


def cached_result(cache: ResultCache, key: str, artifact_store: Any) -> tuple[TrialResult, dict[str, Any]] | None:
    """The cached result for ``key`` with its model bytes, or None when absent or its model is gone."""
    entry = cache.get(key)
    if entry is None or not entry["artifact_id"]:
        return None
    try:
        with artifact_store.open_reader(entry["artifact_id"]) as reader:
            onnx_bytes = reader.read()
    except Exception:  # the artifact was deleted or lives in another store: evaluate again
        return None
    result = TrialResult(**entry["payload"], onnx_bytes=onnx_bytes)
    return result, {"study": entry["study_name"], "trial": entry["trial_number"]}


def record_result(
    study: optuna.Study,
    trial: optuna.Trial,
    config: CompressionConfig,
    result: TrialResult,
    spec: StudySpec,
    artifact_store: Any,
    baseline_accuracy: float,
    cached_from: dict[str, Any] | None = None,
    artifact_id: str | None = None,
) -> str | None:
    """Stores the model artifact and writes the attributes (in one transaction) and constraints of
    ``result``; returns the artifact id, and the caller tells Optuna the values (after anything
    that must be in place when other drivers see the trial COMPLETE, such as its cached result).

    Values that are not finite fail the trial instead (told here, with the reason): None. With
    ``artifact_id`` (a repeated configuration) the trial points at that stored model instead of
    uploading a copy.
    """
    from optuna.trial import TrialState

    attrs = trial_attributes(config, result, cached_from)
    values = objective_values(spec, result)
    if not all(math.isfinite(v) for v in values):
        attrs[FAIL_REASON] = f"non-finite objective values {dict(zip(spec.objective_names, values))}"
        set_trial_user_attrs(trial, {key: _jsonable(value) for key, value in attrs.items()})
        study.tell(trial, state=TrialState.FAIL)
        return None
    if artifact_id is None:
        artifact_id = upload_model(trial, result, artifact_store)
    attrs["artifact_id"] = artifact_id
    set_trial_user_attrs(trial, {key: _jsonable(value) for key, value in attrs.items()})
    constraints = constraint_values(spec, result, baseline_accuracy)
    for key, value in constraints.items():
        trial.set_constraint(key, value)
    if constraints:
        # optuna-dashboard 0.21 reads only the legacy list key; write it too so infeasible trials
        # show as infeasible there.
        study._storage.set_trial_system_attr(trial._trial_id, "constraints", list(constraints.values()))
    return artifact_id


def upload_model(trial: optuna.Trial, result: TrialResult, artifact_store: Any) -> str:
    """Stores the model ``result`` exported as an artifact of ``trial``; returns the artifact id."""
    from optuna.artifacts import upload_artifact

    with tempfile.TemporaryDirectory() as tmp:
        suffix = ".pt2" if result.model_format == "torch-export" else ".onnx"
        path = Path(tmp) / f"trial-{trial.number}{suffix}"
        path.write_bytes(result.onnx_bytes)
        return upload_artifact(
            artifact_store=artifact_store,
            file_path=str(path),
            study_or_trial=trial,
            mimetype="application/octet-stream",
        )


def _jsonable(value: Any) -> Any:
    """``value`` with non-finite floats as None: attributes are stored as JSON, which has neither NaN nor infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def fail_trial(study: optuna.Study, trial: optuna.Trial, reason: str, *, requeue: bool = False) -> None:
    from optuna.trial import TrialState

    trial.set_user_attr(FAIL_REASON, reason)
    if requeue:
        trial.set_user_attr(REQUEUED, True)
    study.tell(trial, state=TrialState.FAIL)
    if requeue and trial.params:
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})


def best_frontier_trial(study: optuna.Study, latency_index: int | None) -> Any:
    """The feasible frontier trial with the lowest latency (the one a user picks for speed), or
    None (no latency objective, or no feasible frontier trial)."""
    if latency_index is None:
        return None
    feasible = [
        t
        for t in study.best_trials
        if all(v <= 0 for v in t.constraints.values()) and "config" in t.user_attrs and DUPLICATE_OF not in t.user_attrs
    ]
    return min(feasible, key=lambda t: (t.values[latency_index], t.number), default=None)


def record_factors(
    study: optuna.Study,
    executor: RayExecutor,
    request: TrialRequest,
    *,
    sessions: int,
    timeout_s: float,
    notify: ProgressCallback,
) -> int | None:
    """Measures where the best frontier configuration's speed comes from (each of its techniques
    alone, ``objectives/_factors.py``) in a fresh worker, and stores it on the study as
    ``lepton:factors``. Returns the trial's number, or None when there is nothing to split (no
    feasible frontier trial, or one technique only) or the measurement failed (reported)."""
    from lepton_search.objectives._factors import factor_configs

    objectives = study.user_attrs.get(STUDY_OBJECTIVES_ATTR) or []
    latency_index = objectives.index("latency_ms") if "latency_ms" in objectives else None
    trial = best_frontier_trial(study, latency_index)
    if trial is None:
        return None
    config = CompressionConfig.from_dict(trial.user_attrs["config"])
    configs = factor_configs(config)
    if len(configs) < 3:  # one technique: it is its own breakdown
        return None
    owner = f"factors/{study.study_name}/{trial.number}/{time.time_ns()}"
    ref = executor.submit_factors(request, {n: c.to_json() for n, c in configs.items()}, sessions, owner)
    try:
        ready = executor.wait([ref], timeout=timeout_s)
        if not ready:
            executor.cancel(ref, owner)
            notify("factors", {"number": trial.number, "error": "timeout"})
            return None
        factors = executor.result(ref)
    except Exception as e:  # the study's results stand without the breakdown
        notify("factors", {"number": trial.number, "error": describe_failure(e)})
        return None
    finally:
        executor.release(owner)
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    study.set_user_attr(STUDY_FACTORS_ATTR, _jsonable({"trial": trial.number, "at": at, "factors": factors}))
    notify("factors", {"number": trial.number, "factors": {n: f["speedup"] for n, f in factors.items()}})
    return trial.number


def remeasure_frontier(
    study: optuna.Study,
    executor: RayExecutor,
    request: TrialRequest,
    artifact_store: Any,
    *,
    sessions: int,
    timeout_s: float,
    notify: ProgressCallback,
) -> int:
    """Re-measures every frontier trial in a fresh worker process with ``sessions`` sessions and
    stores the result in the study's user attributes under ``lepton:remeasured:<number>``.

    Returns the number of trials re-measured. A failed re-measurement is reported, not fatal.
    """
    pending: dict[Any, tuple[Any, str]] = {}
    for trial in study.best_trials:
        artifact_id = trial.user_attrs.get("artifact_id")
        if not artifact_id or DUPLICATE_OF in trial.user_attrs:  # the same model as another frontier trial
            continue
        with artifact_store.open_reader(artifact_id) as reader:
            data = reader.read()
        owner = f"remeasure/{study.study_name}/{trial.number}/{time.time_ns()}"
        # Re-measured at the trial's own deployment (its config's backend, batch size and threads).
        config_json = CompressionConfig.from_dict(trial.user_attrs["config"]).to_json()
        trial_request = dataclasses.replace(request, config_json=config_json)
        pending[executor.submit_remeasure(trial_request, data, sessions, owner)] = (trial, owner)
    done = 0
    deadline = time.monotonic() + timeout_s
    while pending:
        ready = executor.wait(list(pending), timeout=1.0)
        for ref in ready:
            trial, owner = pending.pop(ref)
            executor.release(owner)
            try:
                measured = executor.result(ref)
            except Exception as e:  # a failed re-measurement leaves the trial's own figures
                notify("remeasure", {"number": trial.number, "error": describe_failure(e)})
                continue
            measured["at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            study.set_user_attr(f"{REMEASURED_PREFIX}{trial.number}", _jsonable(measured))
            notify("remeasure", {"number": trial.number, "ratio": measured["ratio"], "verdict": measured["verdict"]})
            done += 1
        if time.monotonic() > deadline:
            for ref, (trial, owner) in pending.items():
                executor.cancel(ref, owner)
                notify("remeasure", {"number": trial.number, "error": "timeout"})
            break
    return done
