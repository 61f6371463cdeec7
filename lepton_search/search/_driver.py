"""The driver: the one process that owns a study.

It asks Optuna for trials, turns their suggestions into configs, sends them to the executor, and
records every outcome (values, constraints, user attributes, the exported model) before telling
Optuna. Ray tasks never touch the database. A crash, exception, timeout or NaN becomes a FAIL trial
whose ``fail_reason`` says why; the study goes on.

Resume: a rerun of the same study file loads the study. Trials left RUNNING by a driver that was
killed are failed with a reason and their parameters are queued again, so the budget counts only
trials that really finished; sampler seeds are derived from the history so a resumed study does
not replay its first proposals.

Budget: ``n_trials`` counts evaluations, i.e. distinct configurations. A proposal that repeats a
configuration this study already evaluated is served from the result cache at once, told to
Optuna (the sampler learns it was proposed again), marked ``duplicate_of``, and not counted; one
proposed while the same configuration is still being evaluated waits for that evaluation's outcome.
After ``[budget].max_repeats`` repeats in a row, or when the sampler says it has tried every
configuration (``bruteforce``), the run stops and says why.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lepton_search import __version__
from lepton_search.devices._machine import device_class_of
from lepton_search.errors import ConfigError, LeptonSearchError, RunInterrupted, StudyNotFoundError
from lepton_search.objectives import (
    CostModel,
    MeasurementSettings,
    TrialRequest,
    TrialResult,
    get_backend,
    prepare,
)
from lepton_search.objectives._compress import canonical_config
from lepton_search.objectives._evaluate import load_task
from lepton_search.objectives._latency import DEFAULT_NOISE_BAND
from lepton_search.search._attrs import (
    DRIVER,
    DUPLICATE_OF,
    FAIL_REASON,
    REMEASURED_PREFIX,
    REQUEUED,
    STUDY_ACCURACY_RESOLUTION_ATTR,
    STUDY_BASELINE_ATTR,
    STUDY_FACTORS_ATTR,
    STUDY_HARDWARE_ATTR,
    STUDY_HYPERVOLUME_ATTR,
    STUDY_OBJECTIVES_ATTR,
    STUDY_SPEC_ATTR,
    TIE_CORE_OF,
    WAITS_FOR,
)
from lepton_search.search._executor import RayExecutor, describe_failure, gpus_per_trial
from lepton_search.search._frontier import hypervolume, reference_point
from lepton_search.search._samplers import SamplerSpaceError, check_sampler_space, create_sampler, run_seed
from lepton_search.search._spec import StudySpec
from lepton_search.spaces import CompressionConfig, SearchSpace
from lepton_search.spaces._hardware import SpaceHardware
from lepton_search.storage import (
    DEFAULT_ARTIFACT_DIR,
    DEFAULT_STORAGE_URL,
    ResultCache,
    StudyCoordination,
    cache_key,
    get_artifact_store,
    get_storage,
    mask_url,
)

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)


@dataclass
class Locations:
    """Where a study lives: its storage URL and artifact directory."""

    # Not in repr: the URL may hold a password.
    storage_url: str = field(repr=False)
    artifact_dir: Path = field()

    @classmethod
    def resolve(cls, spec: StudySpec, storage: str | None = None, artifacts: str | None = None) -> Locations:
        return cls(
            storage_url=storage or spec.study.storage or DEFAULT_STORAGE_URL,
            artifact_dir=Path(artifacts or spec.study.artifacts or DEFAULT_ARTIFACT_DIR),
        )

    @property
    def cache_dir(self) -> Path:
        return self.artifact_dir / "cache"


@dataclass
class RunSummary:
    """What one ``run`` did."""

    study_name: str
    completed: int = 0
    failed: int = 0
    orphans_requeued: int = 0
    remeasured: int = 0
    cached: int = 0
    warm_started: int = 0
    recipes_queued: int = 0
    #: The trial whose techniques were measured one at a time (``lepton:factors``), if any.
    factors_of: int | None = None
    screened: int = 0
    #: Simpler configurations that tie groups share, evaluated after the budget (``tie_core_of``).
    tie_cores: int = 0
    # Proposals that repeated a configuration of the study: served from the cache, not counted.
    duplicates: int = 0
    # Why the run stopped before its budget, when the sampler had nothing new to propose.
    stopped: str | None = None
    elapsed_s: float = 0.0
    failures: list[str] = field(default_factory=list)


def stored_spec(spec: StudySpec) -> dict[str, Any]:
    """``spec`` as JSON for the study's ``lepton:spec`` attribute, which the dashboard serves to
    anyone who reaches it: the storage URL's password is masked."""
    data = spec.model_dump(mode="json")
    if data["study"].get("storage"):
        data["study"]["storage"] = mask_url(data["study"]["storage"])
    return data


def open_study(spec: StudySpec, locations: Locations, *, create: bool = True, seed: int | None = None) -> optuna.Study:
    """Loads the study named in ``spec`` (creating it when ``create``), checking its objectives."""
    import optuna

    storage = get_storage(locations.storage_url, create=create)
    name = spec.study.name
    existing = {s.study_name: s for s in storage.get_all_studies()}
    if name not in existing and not create:
        raise StudyNotFoundError(
            f"Study {name!r} is not in {mask_url(locations.storage_url)}; studies there: "
            f"{sorted(existing) or '(none)'}. Run `lepton-search run` first, or pass --storage."
        )
    trials_so_far = len(storage.get_all_trials(existing[name]._study_id, deepcopy=False)) if name in existing else 0
    sampler = create_sampler(
        spec.sampler.name, spec.sampler.options, seed if seed is not None else run_seed(spec.study.seed, trials_so_far)
    )
    directions = spec.directions
    if name in existing:
        stored = [d.name.lower() for d in existing[name].directions]
        if stored != directions:
            raise ConfigError(
                f"Study {name!r} already exists with directions {stored}, but the study file asks "
                f"for {directions} ({spec.objective_names}). Objectives cannot change within a "
                "study: give the study a new [study].name."
            )
    study = optuna.create_study(
        study_name=name, storage=storage, directions=directions, sampler=sampler, load_if_exists=True
    )
    if name not in existing:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(spec.objective_names)
        study.set_user_attr(STUDY_OBJECTIVES_ATTR, spec.objective_names)
        study.set_user_attr(STUDY_SPEC_ATTR, stored_spec(spec))
        study.set_user_attr(STUDY_HARDWARE_ATTR, spec.space.hardware.to_dict())
        study.set_user_attr("lepton:version", __version__)
    return study


def study_exists(spec: StudySpec, locations: Locations) -> bool:
    """Whether the study named in ``spec`` is already in its storage (never creates anything)."""
    from lepton_search.storage import sqlite_path

    path = sqlite_path(locations.storage_url)
    if path is not None and not path.is_file():
        return False
    storage = get_storage(locations.storage_url, create=False)
    return spec.study.name in {s.study_name for s in storage.get_all_studies()}


def discard_unstarted_study(study: optuna.Study, locations: Locations) -> None:
    """Deletes ``study``, which this run created, if it holds no completed or running trial."""
    import optuna
    from optuna.trial import TrialState

    if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
        return
    try:
        optuna.delete_study(study_name=study.study_name, storage=get_storage(locations.storage_url))
    except Exception as e:  # the original error matters more; say why the study stayed
        logger.warning("could not remove study %r after its start failed: %s", study.study_name, e)


def study_hardware(study: optuna.Study) -> SpaceHardware:
    """The CPU ``study``'s space decides for: the one recorded when it was created, or, for a
    study created before that was recorded, the decisions of that version (:meth:`SpaceHardware.legacy`)."""
    recorded = study.user_attrs.get(STUDY_HARDWARE_ATTR)
    if recorded:
        try:
            return SpaceHardware.from_dict(recorded)
        except (KeyError, TypeError, ValueError):
            pass  # a damaged record: fall back to the legacy decisions, which kept every choice
    return SpaceHardware.legacy()


def with_study_hardware(spec: StudySpec, study: optuna.Study) -> StudySpec:
    """``spec`` whose space makes the hardware decisions ``study`` was created with.

    Optuna requires a parameter's choices to stay fixed within a study, and bf16 on torch-cpu,
    ``reduce_range`` and the int8 format depend on the CPU, so a study resumed on another CPU keeps
    its own decisions (and says so): its trials are still measured, and keyed, on the CPU they run on.
    """
    hardware = study_hardware(study)
    here = SpaceHardware.detect()
    if not hardware.decisions_equal(here):
        logger.warning(
            "Study %r was created on %s; this machine is %s, where its space would differ (bf16 on torch-cpu, "
            "reduce_range or the int8 format). The study keeps its own space; trials are measured here and "
            "recorded with this device class. Start a new study ([study].name) to search this CPU's space.",
            study.study_name,
            hardware.description,
            here.description,
        )
    return spec.model_copy(update={"space": spec.space.for_hardware(hardware)})


def warm_start(study: optuna.Study, spec: StudySpec, storage_url: str) -> int:
    """Queues the frontier configurations of ``[study].warm_start_from`` studies into a new study.

    Only configurations inside this study's space are queued; a study that already has trials is
    left alone (warm starts happen once). Returns the number of trials queued.
    """
    import optuna

    if not spec.study.warm_start_from or study.get_trials(deepcopy=False):
        return 0
    known = {s.study_name for s in study._storage.get_all_studies()}
    queued: set[str] = set()
    for name in spec.study.warm_start_from:
        if name not in known:
            raise ConfigError(
                f"[study].warm_start_from names study {name!r}, which is not in {mask_url(storage_url)}; studies "
                f"there: {sorted(known - {spec.study.name}) or '(none)'}."
            )
        source = optuna.load_study(study_name=name, storage=study._storage)
        for trial in source.best_trials:
            config = CompressionConfig.from_dict(trial.user_attrs["config"])
            if config.config_hash in queued or not spec.space.contains(config):
                continue
            queued.add(config.config_hash)
            params = SearchSpace.params_of(config, spec.space)
            study.enqueue_trial(params, user_attrs={"warm_start_from": f"{name}#{trial.number}"})
    return len(queued)


def queue_recipes(study: optuna.Study, spec: StudySpec) -> int:
    """Queues the study file's ``[[recipes]]`` that the study does not hold yet (by config hash,
    queued or evaluated), ahead of anything the sampler proposes. Returns how many were queued."""
    held = {t.user_attrs.get("config_hash") for t in study.get_trials(deepcopy=False)}
    held |= {t.user_attrs.get("recipe") for t in study.get_trials(deepcopy=False)}
    queued = 0
    for i, config in enumerate(spec.recipe_configs):
        if config.config_hash in held:
            continue
        held.add(config.config_hash)
        params = SearchSpace.params_of(config, spec.space)
        study.enqueue_trial(params, user_attrs={"recipe": config.config_hash, "recipe_number": i + 1})
        queued += 1
    return queued


def requeue_orphans(
    study: optuna.Study, reason: str, *, alive: Collection[str] = (), only_known_drivers: bool = False
) -> int:
    """Fails every RUNNING trial with ``reason`` and queues its parameters again, except the trials
    of the drivers in ``alive`` (drivers running the study now, whose trials are theirs).
    ``only_known_drivers`` leaves alone trials that name no driver yet (one just asked for, whose
    driver is about to name itself): a running driver's periodic check passes it."""
    from optuna.trial import TrialState

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    orphans = [
        t
        for t in running
        if t.user_attrs.get(DRIVER) not in alive and not (only_known_drivers and DRIVER not in t.user_attrs)
    ]
    for trial in orphans:
        storage = study._storage
        storage.set_trial_user_attr(trial._trial_id, FAIL_REASON, reason)
        storage.set_trial_user_attr(trial._trial_id, REQUEUED, True)
        study.tell(trial.number, state=TrialState.FAIL)
        if trial.params:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    return len(orphans)


def counted_trials(study: optuna.Study) -> int:
    """Finished trials that count against the budget: evaluations. Re-queued orphans, repeated
    proposals served from the cache (``duplicate_of``) and the tie groups' cores evaluated after
    the budget (``tie_core_of``) do not count."""
    return sum(1 for t in study.get_trials(deepcopy=False) if t.state.is_finished() and counts_toward_budget(t))


def counts_toward_budget(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether ``trial`` is one of the budget's evaluations (see :func:`counted_trials`)."""
    attrs = trial.user_attrs
    return not attrs.get(REQUEUED) and DUPLICATE_OF not in attrs and TIE_CORE_OF not in attrs


def evaluated_configs(study: optuna.Study) -> dict[str, tuple[int, str | None]]:
    """Config hash -> (number, artifact id) of the first COMPLETE trial that evaluated it."""
    from optuna.trial import TrialState

    evaluated: dict[str, tuple[int, str | None]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        config_hash = t.user_attrs.get("config_hash")
        if config_hash and DUPLICATE_OF not in t.user_attrs:
            evaluated.setdefault(config_hash, (t.number, t.user_attrs.get("artifact_id")))
    return evaluated


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
) -> None:
    """Writes attributes, constraints and the model artifact, then tells Optuna the values.

    Everything is written before ``tell``: Optuna refuses updates to a finished trial. With
    ``artifact_id`` (a repeated configuration) the trial points at that stored model instead of
    uploading a copy.
    """
    from optuna.artifacts import upload_artifact
    from optuna.trial import TrialState

    latency = result.latency
    attrs: dict[str, Any] = {
        "config": config.to_dict(),
        "config_hash": config.config_hash,
        "label": config.describe(),
        "accuracy": result.accuracy,
        "test_accuracy": result.test_accuracy,
        "latency": latency["candidate"],
        "baseline_latency": latency["baseline"],
        "ratio_to_baseline": latency["ratio"],
        "ratio_ci": latency["ratio_ci"],
        "verdict": latency["verdict"],
        "noise_band": latency["noise_band"],
        "slower_than_baseline": latency["verdict"] == "slower",
        "device": latency["device"],
        "cost_usd_per_million": result.cost_usd_per_million,
        "size_bytes": result.size_bytes,
        "gzip_size_bytes": result.gzip_size_bytes,
        "parameters": result.parameters,
        "sparsity": result.sparsity,
        "timings_s": result.timings_s,
        "notes": result.notes,
        "peak_rss_mb": result.peak_rss_mb,
        # The backend, batch size and threads the trial was measured (and priced) at.
        "deployment": latency.get("deployment"),
        "model_format": result.model_format,
        "graph_ops": result.graph_ops,
        "student": result.student,
    }
    if result.compression_seed is not None:
        attrs["compression_seed"] = result.compression_seed
    if "noise_calibration" in latency:
        attrs["noise_calibration"] = latency["noise_calibration"]
    if cached_from is not None:
        attrs["cached_from"] = cached_from
    values = objective_values(spec, result)
    if not all(math.isfinite(v) for v in values):
        attrs[FAIL_REASON] = f"non-finite objective values {dict(zip(spec.objective_names, values))}"
        for key, value in attrs.items():
            trial.set_user_attr(key, _jsonable(value))
        study.tell(trial, state=TrialState.FAIL)
        return
    for key, value in attrs.items():
        trial.set_user_attr(key, _jsonable(value))
    constraints = constraint_values(spec, result, baseline_accuracy)
    for key, value in constraints.items():
        trial.set_constraint(key, value)
    if constraints:
        # optuna-dashboard 0.21 reads only the legacy list key; write it too so infeasible trials
        # show as infeasible there.
        study._storage.set_trial_system_attr(trial._trial_id, "constraints", list(constraints.values()))
    if artifact_id is None:
        with tempfile.TemporaryDirectory() as tmp:
            suffix = ".pt2" if result.model_format == "torch-export" else ".onnx"
            path = Path(tmp) / f"trial-{trial.number}{suffix}"
            path.write_bytes(result.onnx_bytes)
            artifact_id = upload_artifact(
                artifact_store=artifact_store,
                file_path=str(path),
                study_or_trial=trial,
                mimetype="application/octet-stream",
            )
    trial.set_user_attr("artifact_id", artifact_id)
    study.tell(trial, values)


def _jsonable(value: Any) -> Any:
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


@dataclass
class _InFlight:
    trial: Any
    config: CompressionConfig
    owner: str
    started: float


ProgressCallback = Callable[[str, dict[str, Any]], None]


def measurement_settings(spec: StudySpec) -> MeasurementSettings:
    m = spec.measurement
    return MeasurementSettings(
        backend=m.backend,
        threads=m.threads,
        batch_size=m.batch_size,
        sessions=m.sessions,
        warmup_runs=m.warmup_runs,
        warmup_s=m.warmup_s,
        min_iterations=m.min_iterations,
        min_session_s=m.min_session_s,
        bootstrap_resamples=m.bootstrap_resamples,
        # "auto": calibrated per host and run (TrialRequest.calibration_dir); the fixed band is
        # then only the fallback of a measurement made outside a run.
        noise_band=DEFAULT_NOISE_BAND if m.noise_band == "auto" else m.noise_band,
        calibration_runs=m.calibration_runs if m.noise_band == "auto" else 0,
        seed=spec.study.seed,
    )


def base_request(spec: StudySpec, locations: Locations) -> TrialRequest:
    return TrialRequest(
        task=spec.study.task,
        task_options=dict(spec.study.task_options),
        config_json=CompressionConfig().to_json(),
        cache_dir=str(locations.cache_dir.resolve()),
        settings=measurement_settings(spec),
        cost=CostModel(
            cpu_core_usd_per_hour=spec.cost.cpu_core_usd_per_hour,
            gpu_usd_per_hour=dict(spec.cost.gpu_usd_per_hour),
        ),
        seed=spec.study.seed,
        calibration_dir=str(run_calibration_dir(spec, locations)),
    )


def run_calibration_dir(spec: StudySpec, locations: Locations) -> Path:
    """A directory of this run's own for the noise calibrations of its hosts (see ``[measurement]
    noise_band = "auto"``): a rerun calibrates again, against the machine as it is then."""
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in spec.study.name)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return locations.cache_dir.resolve() / "noise-bands" / f"{name}-{stamp}-{os.getpid()}"


def ensure_baseline(study: optuna.Study, request: TrialRequest) -> dict[str, float]:
    """Trains or loads the teacher, exports the baseline, and records its accuracy on the study."""
    baseline = study.user_attrs.get(STUDY_BASELINE_ATTR)
    fresh = prepare(request)
    if not baseline or baseline.get("accuracy") != fresh["accuracy"]:
        study.set_user_attr(STUDY_BASELINE_ATTR, fresh)
    return fresh


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


@contextlib.contextmanager
def _executor(executor: RayExecutor) -> Iterator[RayExecutor]:
    executor.start()
    try:
        yield executor
    finally:
        executor.shutdown()


def evaluate_tie_cores(run: _Run) -> int:
    """Evaluates, one more trial each, the simpler configurations that the frontier's tie groups
    share and no trial evaluated (int8 alone, when int8 + 15% and int8 + 60% unstructured pruning
    tie), so the group can be led by what a user should deploy. Runs after the budget, in the same
    loop; a core the study's space cannot express is skipped (it could not be queued as a trial).
    Returns how many were queued."""
    from lepton_search.search._frontier import frontier

    # A core tried before (failed, say) is not tried again on every run.
    tried = {
        CompressionConfig.from_dict(t.user_attrs["config"]).config_hash
        for t in run.study.get_trials(deepcopy=False)
        if t.user_attrs.get("config")
    }
    queued = 0
    for group in frontier(run.study)["groups"]:
        if group["core"] is None:
            continue
        core = CompressionConfig.from_dict(group["core"])
        if core.config_hash in tried:
            continue
        try:
            params = SearchSpace.params_of(core, run.spec.space)
        except LeptonSearchError:
            continue
        run.study.enqueue_trial(params, user_attrs={TIE_CORE_OF: group["leader"]})
        queued += 1
    if queued:
        run.notify("tie-cores", {"queued": queued})
        run.remaining = run.submitted + queued
        # The budget is spent; these few trials, outside it, finish what it found.
        run.deadline = run.total = None
        run.loop()
    return queued


class _Run:
    """One run of the driver loop over a study: submit, collect, record, time out, interrupt."""

    def __init__(
        self,
        spec: StudySpec,
        study: optuna.Study,
        executor: RayExecutor,
        *,
        request: TrialRequest,
        artifact_store: Any,
        cache: ResultCache,
        baseline: dict[str, float],
        max_workers: int,
        remaining: int | None,
        deadline: float | None,
        summary: RunSummary,
        notify: ProgressCallback,
        coordination: StudyCoordination | None = None,
        total: int | None = None,
    ) -> None:
        self.spec, self.study, self.executor = spec, study, executor
        # Shared with other drivers of the study: the claims, and the budget across all of them.
        self.coordination, self.total = coordination, total
        # Config hash -> (the other driver's trial evaluating it, the proposals waiting for it).
        self.foreign: dict[str, tuple[int, list[Any]]] = {}
        self.request, self.artifact_store, self.cache = request, artifact_store, cache
        self.baseline, self.max_workers = baseline, max_workers
        self.remaining, self.deadline = remaining, deadline
        self.summary, self.notify = summary, notify
        self.task = load_task(request)
        self.fingerprint = self.task.fingerprint()
        self.inflight: dict[Any, _InFlight] = {}
        # Evaluations submitted in this run (repeated configurations are not submitted).
        self.submitted = 0
        self.hypervolume = 0.0
        # With successive halving the full-fidelity study only evaluates promoted (queued) trials.
        self.only_queued = False
        self.fidelity = "full"
        # Config hash -> the trial that evaluated it, for serving repeated proposals.
        self.evaluated = evaluated_configs(study)
        # Config hash -> proposals waiting for the in-flight evaluation of the same configuration.
        self.waiting: dict[str, list[Any]] = {}
        self.repeats = 0  # repeated proposals in a row
        self.stopped: str | None = None

    def may_submit(self) -> bool:
        from optuna.trial import TrialState

        if self.stopped is not None:
            return False
        if self.remaining is not None and self.submitted >= self.remaining:
            return False
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return False
        if self.total is not None and self.coordination is not None and self.study_budget_spent():
            return False
        return not self.only_queued or bool(self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

    def study_budget_spent(self) -> bool:
        """Whether the evaluations of every driver of the study, finished and running, fill the
        budget (``total``): a driver that runs beside others stops when they have it covered."""
        from optuna.trial import TrialState

        assert self.total is not None
        trials = self.study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING)
        )
        # A RUNNING trial is an evaluation once it holds a configuration and waits for no other.
        busy = sum(
            1
            for t in trials
            if counts_toward_budget(t)
            and (t.state.is_finished() or ("config" in t.user_attrs and WAITS_FOR not in t.user_attrs))
        )
        return busy >= self.total

    def loop(self) -> None:
        while self.inflight or self.foreign or self.may_submit():
            while len(self.inflight) < self.max_workers and self.may_submit():
                self.submit_next()
            if self.coordination is not None and self.coordination.heartbeat():
                self.requeue_dead_drivers_trials()
            self.settle_foreign()
            if not self.inflight:
                if self.foreign:
                    time.sleep(1.0)  # another driver is evaluating what this one waits for
                    continue
                break
            for ref in self.executor.wait(list(self.inflight), timeout=1.0):
                self.collect(ref, self.inflight.pop(ref))
            self.enforce_timeouts()

    def submit_next(self) -> None:
        trial = self.study.ask()
        if self.coordination is not None:
            trial.set_user_attr(DRIVER, self.coordination.driver_id)
        try:
            config = self.spec.space.suggest(trial)
        except SamplerSpaceError as e:  # the sampler cannot search this space: no later trial could either
            self.submitted += 1
            self.fail(trial, "-", f"invalid configuration: {e}")
            raise
        except LeptonSearchError as e:
            self.submitted += 1
            self.fail(trial, "-", f"invalid configuration: {e}")
            return
        trial.set_user_attr("fidelity", self.fidelity)
        canonical = canonical_config(config, self.task)
        if canonical != config:
            # Steps that change nothing (distilling an unpruned encoder, say) are dropped, so the
            # proposal is served as the configuration it equals (from the cache, if evaluated).
            trial.set_user_attr("proposed_config", config.to_dict())
            config = canonical
        if self.serve_repeat(trial, config) or self.wait_for_other_driver(trial, config):
            return
        self.repeats = 0
        self.submitted += 1
        hit = cached_result(self.cache, result_key(self.request, self.fingerprint, config), self.artifact_store)
        if hit is not None:
            self.summary.cached += 1
            self.record(trial, config, *hit)
            return
        trial.set_user_attr("config", config.to_dict())
        owner = f"{self.spec.study.name}/{trial.number}/{time.time_ns()}"
        request = dataclasses.replace(
            self.request, config_json=config.to_json(), seed=self.spec.study.seed + trial.number
        )
        self.inflight[self.executor.submit(request, owner)] = _InFlight(trial, config, owner, time.monotonic())

    def requeue_dead_drivers_trials(self) -> None:
        """Queues again the RUNNING trials of drivers that stopped while this one runs (killed on
        another machine, say), so that what this driver waits for, and the budget, move on."""
        assert self.coordination is not None
        alive = {*self.coordination.live_drivers(), self.coordination.driver_id}
        self.summary.orphans_requeued += requeue_orphans(
            self.study,
            "orphaned: its driver stopped (no heartbeat) before this trial finished; its parameters were queued again",
            alive=alive,
            only_known_drivers=True,
        )

    def wait_for_other_driver(self, trial: Any, config: CompressionConfig) -> bool:
        """Claims ``config`` for ``trial``; returns True when another driver's trial holds the claim
        (then ``trial`` takes that trial's result, served from the cache, once it has one). A claim
        whose trial failed is taken over, and ``config`` is evaluated here."""
        from optuna.trial import TrialState

        if self.coordination is None:
            return False
        config_hash = config.config_hash
        holder = self.coordination.claim(config_hash, trial.number)
        while holder is not None:
            state = self.trial_state(holder)
            if state == TrialState.COMPLETE:
                self.evaluated = evaluated_configs(self.study)
                if config_hash in self.evaluated and self.serve_duplicate(trial, config):
                    return True
                state = TrialState.FAIL  # its result is gone: evaluate the configuration again
            if state in (TrialState.RUNNING, TrialState.WAITING):
                trial.set_user_attr("config", config.to_dict())
                trial.set_user_attr(WAITS_FOR, holder)
                self.foreign.setdefault(config_hash, (holder, []))[1].append(trial)
                return True
            if self.coordination.take_over(config_hash, holder, trial.number):
                return False
            holder = self.coordination.claim(config_hash, trial.number)
        return False

    def trial_state(self, number: int) -> Any:
        storage = self.study._storage
        trial_id = storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number)
        return storage.get_trial(trial_id).state

    def settle_foreign(self) -> None:
        """Serves the proposals that wait for other drivers' evaluations that have finished."""
        from optuna.trial import TrialState

        for config_hash, (holder, trials) in list(self.foreign.items()):
            state = self.trial_state(holder)
            if not state.is_finished():
                continue
            del self.foreign[config_hash]
            self.evaluated = evaluated_configs(self.study)
            for trial in trials:
                config = CompressionConfig.from_dict(trial.user_attrs["config"])
                if (
                    state == TrialState.COMPLETE
                    and config_hash in self.evaluated
                    and self.serve_duplicate(trial, config)
                ):
                    continue
                trial.set_user_attr(DUPLICATE_OF, holder)
                fail_trial(self.study, trial, f"repeats trial {holder} of another driver, which did not complete")
                self.summary.duplicates += 1

    def serve_repeat(self, trial: Any, config: CompressionConfig) -> bool:
        """Serves a proposal that repeats a configuration of this study without evaluating it again:
        from the result cache when that evaluation finished, or, while it is still in flight, once
        it does. Returns False when ``config`` is new here (or its cached result is gone)."""
        config_hash = config.config_hash
        if config_hash in self.evaluated:
            if not self.serve_duplicate(trial, config):
                return False
        elif any(entry.config.config_hash == config_hash for entry in self.inflight.values()):
            trial.set_user_attr("config", config.to_dict())
            self.waiting.setdefault(config_hash, []).append(trial)
        else:
            return False
        self.repeats += 1
        if self.repeats >= self.spec.budget.max_repeats:
            self.stop(
                f"the sampler proposed only configurations this study has already evaluated, "
                f"{self.repeats} times in a row ([budget].max_repeats = {self.spec.budget.max_repeats}): "
                "the space is exhausted or the sampler has converged. Widen [space], choose another "
                "[sampler], or raise [budget].max_repeats"
            )
        return True

    def serve_duplicate(self, trial: Any, config: CompressionConfig) -> bool:
        """Records ``trial`` with the cached result of the trial that evaluated ``config``; not counted."""
        original, artifact_id = self.evaluated[config.config_hash]
        entry = self.cache.get(result_key(self.request, self.fingerprint, config))
        if entry is None:  # e.g. evaluated by another version of lepton-search: evaluate it again
            return False
        result = TrialResult(**entry["payload"], onnx_bytes=b"")
        cached_from = {"study": entry["study_name"], "trial": entry["trial_number"]}
        self.record(trial, config, result, cached_from, duplicate_of=(original, artifact_id))
        return True

    def settle_waiting(self, entry: _InFlight, failure: str | None) -> None:
        """Serves the proposals that waited for the evaluation in ``entry``; when it failed (or its
        cached result is gone), fails them with the reason. They are not counted either way."""
        for trial in self.waiting.pop(entry.config.config_hash, []):
            if failure is None and self.serve_duplicate(trial, entry.config):
                continue
            trial.set_user_attr(DUPLICATE_OF, entry.trial.number)
            reason = failure or "its cached result is missing"
            fail_trial(self.study, trial, f"repeats trial {entry.trial.number}, whose evaluation failed: {reason}")
            self.summary.duplicates += 1

    def stop(self, reason: str) -> None:
        """Submits nothing more; what is in flight still finishes."""
        if self.stopped is None:
            self.stopped = reason
            self.summary.stopped = reason
            logger.warning("Stopping study %r early: %s.", self.study.study_name, reason)

    def collect(self, ref: Any, entry: _InFlight) -> None:
        try:
            result = self.executor.result(ref)
        except Exception as e:  # Ray wraps worker errors in several types; each is a failed trial
            self.executor.release(entry.owner)
            self.fail(entry.trial, entry.config.describe(), describe_failure(e))
            self.settle_waiting(entry, describe_failure(e))
            return
        self.executor.release(entry.owner)
        completed = self.record(entry.trial, entry.config, result)
        self.settle_waiting(entry, None if completed else "its values were not finite")

    def record(
        self,
        trial: Any,
        config: CompressionConfig,
        result: TrialResult,
        cached_from: dict[str, Any] | None = None,
        *,
        duplicate_of: tuple[int, str | None] | None = None,
    ) -> bool:
        """Records ``result`` on ``trial`` and tells Optuna; returns whether the trial is COMPLETE.

        ``duplicate_of`` (number and artifact id of the trial that evaluated ``config``) marks a
        repeated proposal: it shares that trial's model, and does not count against the budget.
        """
        from optuna.trial import TrialState

        if duplicate_of is not None:
            trial.set_user_attr(DUPLICATE_OF, duplicate_of[0])
        record_result(
            self.study,
            trial,
            config,
            result,
            self.spec,
            self.artifact_store,
            self.baseline["accuracy"],
            cached_from,
            artifact_id=None if duplicate_of is None else duplicate_of[1],
        )
        self.check_exhausted()
        frozen = self.study._storage.get_trial(trial._trial_id)
        if duplicate_of is not None:
            self.summary.duplicates += 1
            return frozen.state == TrialState.COMPLETE
        if frozen.state != TrialState.COMPLETE:
            self.summary.failed += 1
            reason = frozen.user_attrs.get(FAIL_REASON, "")
            self.summary.failures.append(f"trial {trial.number}: {reason}")
            self.notify(
                "trial",
                {
                    "number": trial.number,
                    "state": "FAIL",
                    "reason": reason,
                    "label": config.describe(),
                    "fidelity": self.fidelity,
                },
            )
            return False
        self.summary.completed += 1
        self.hypervolume = self.record_hypervolume(trial.number)
        if cached_from is None:
            payload = {k: v for k, v in dataclasses.asdict(result).items() if k != "onnx_bytes"}
            # Keyed by the device class the result was measured on (a worker on another node can
            # differ from this driver's machine): it is served only to lookups for that class.
            measured_on = device_class_of(result.latency.get("device"))
            self.cache.put(
                result_key(self.request, self.fingerprint, config, measured_on),
                study_name=self.study.study_name,
                trial_number=trial.number,
                artifact_id=frozen.user_attrs.get("artifact_id"),
                payload=payload,
            )
        self.evaluated.setdefault(config.config_hash, (trial.number, frozen.user_attrs.get("artifact_id")))
        self.notify(
            "trial",
            {
                "number": trial.number,
                "state": "COMPLETE",
                "label": config.describe(),
                "accuracy": result.accuracy,
                "latency_ms": result.latency_ms,
                "ratio": result.latency["ratio"],
                "verdict": result.latency["verdict"],
                "cached": cached_from is not None,
                "hypervolume": self.hypervolume,
                "fidelity": self.fidelity,
            },
        )
        return True

    def check_exhausted(self) -> None:
        """Stops submitting when the sampler says it has tried every configuration (``bruteforce``)."""
        if getattr(self.study.sampler, "exhausted", False):
            self.stop("the sampler has proposed every configuration of the space")

    def record_hypervolume(self, number: int) -> float:
        """Appends (trial number, hypervolume) to the study's history and returns the value."""
        reference = reference_point(self.study)
        value = hypervolume(self.study, reference)
        history = dict(self.study.user_attrs.get(STUDY_HYPERVOLUME_ATTR) or {})
        history["reference_point"] = reference
        history["objectives"] = self.spec.objective_names
        history["history"] = [*history.get("history", []), [number, value]]
        self.study.set_user_attr(STUDY_HYPERVOLUME_ATTR, history)
        return value

    def fail(self, trial: Any, label: str, reason: str) -> None:
        fail_trial(self.study, trial, reason)
        self.check_exhausted()
        self.summary.failed += 1
        self.summary.failures.append(f"trial {trial.number}: {reason}")
        self.notify(
            "trial",
            {"number": trial.number, "state": "FAIL", "reason": reason, "label": label, "fidelity": self.fidelity},
        )

    def enforce_timeouts(self) -> None:
        limit = self.spec.budget.trial_timeout_s
        now = time.monotonic()
        for ref, entry in list(self.inflight.items()):
            # Time spent queued behind other trials' measurement windows is not the trial's own
            # work, so it does not count against its timeout.
            if now - entry.started <= limit or now - entry.started - self.executor.waited_s(entry.owner) <= limit:
                continue
            self.inflight.pop(ref)
            self.executor.cancel(ref, entry.owner)
            reason = f"timeout: the trial ran longer than budget.trial_timeout_s = {limit:g} s and was cancelled"
            self.fail(entry.trial, entry.config.describe(), reason)
            self.settle_waiting(entry, reason)

    def interrupt(self) -> None:
        """Cancels what is in flight; each unfinished trial is failed and its parameters re-queued."""
        from optuna.trial import TrialState

        for ref, entry in self.inflight.items():
            with contextlib.suppress(Exception):
                self.executor.cancel(ref, entry.owner)
            with contextlib.suppress(Exception):
                if self.study._storage.get_trial(entry.trial._trial_id).state == TrialState.RUNNING:
                    fail_trial(
                        self.study,
                        entry.trial,
                        "interrupted: the run was stopped; its parameters were queued again",
                        requeue=True,
                    )
            with contextlib.suppress(Exception):
                self.settle_waiting(entry, "interrupted: the run was stopped")
        self.inflight.clear()


def pareto_ranks(values: list[list[float]], directions: list[str]) -> list[int]:
    """Non-domination rank of each point (0 = on the front), by repeated peeling."""
    signs = [1.0 if d == "minimize" else -1.0 for d in directions]
    points = [[v * s for v, s in zip(row, signs)] for row in values]
    ranks = [-1] * len(points)
    rank = 0
    left = set(range(len(points)))
    while left:
        front = {
            i
            for i in left
            if not any(
                all(a <= b for a, b in zip(points[j], points[i])) and points[j] != points[i] for j in left if j != i
            )
        }
        for i in front:
            ranks[i] = rank
        left -= front
        rank += 1
    return ranks


def promote(
    screen: optuna.Study,
    since: int,
    fraction: float,
    target: optuna.Study,
    directions: list[str],
    space: SearchSpace | None = None,
    limit: int | None = None,
) -> int:
    """Queues the best ``fraction`` (by Pareto rank) of the screen trials numbered ``>= since`` into
    ``target``, skipping configurations ``target`` already holds, and at most ``limit`` (the main
    study's budget left: a promotion that cannot run would wait in the study for ever). Returns how
    many were queued."""
    import math as _math

    from optuna.trial import TrialState

    done = [t for t in screen.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.number >= since]
    if not done:
        return 0
    ranks = pareto_ranks([list(t.values) for t in done], directions)
    order = sorted(range(len(done)), key=lambda i: (ranks[i], done[i].number))
    held = {t.user_attrs.get("config_hash") for t in target.get_trials(deepcopy=False)}
    held |= {
        CompressionConfig.from_dict(t.user_attrs["config"]).config_hash
        for t in target.get_trials(deepcopy=False)
        if "config" in t.user_attrs
    }
    queued = 0
    for i in order[: max(1, _math.ceil(fraction * len(done)))]:
        config = CompressionConfig.from_dict(done[i].user_attrs["config"])
        if config.config_hash in held:
            continue
        if limit is not None and queued >= limit:
            break
        held.add(config.config_hash)
        params = SearchSpace.params_of(config, space)
        target.enqueue_trial(params, user_attrs={"promoted_from": f"screen#{done[i].number}"})
        queued += 1
    return queued


def successive_halving(main: _Run, locations: Locations, active: list[_Run]) -> None:
    """Alternates screening rounds (cheap fidelity, in ``<name>:screen``) with full-fidelity
    evaluation of what each round promotes, until the main study's budget is used."""
    spec, fidelity = main.spec, main.spec.fidelity
    assert fidelity is not None
    screen_spec = spec.model_copy(
        update={
            "study": spec.study.model_copy(update={"name": f"{spec.study.name}:screen", "warm_start_from": []}),
            "measurement": spec.measurement.model_copy(
                update={"sessions": fidelity.screen_sessions, "remeasure_sessions": 0}
            ),
        }
    )
    screen_study = open_study(screen_spec, locations)
    requeue_orphans(screen_study, "orphaned: the driver stopped during screening; its parameters were queued again")
    screen_request = dataclasses.replace(
        main.request,
        settings=dataclasses.replace(main.request.settings, sessions=fidelity.screen_sessions),
        max_distill_epochs=fidelity.screen_epochs,
    )
    main.only_queued = True
    fruitless = 0
    while True:
        if main.may_submit():  # promoted trials are waiting, and budget and time are left
            active[0] = main
            main.loop()
            continue
        if main.summary.stopped is not None:  # the screen has nothing new to propose
            break
        budget_left = main.remaining is None or main.submitted < main.remaining
        if not budget_left or (main.deadline is not None and time.monotonic() >= main.deadline):
            break
        since = len(screen_study.get_trials(deepcopy=False))
        screen = _Run(
            screen_spec,
            screen_study,
            main.executor,
            request=screen_request,
            artifact_store=main.artifact_store,
            cache=main.cache,
            baseline=main.baseline,
            max_workers=main.max_workers,
            remaining=fidelity.screen_trials,
            deadline=main.deadline,
            summary=RunSummary(study_name=screen_spec.study.name),
            notify=main.notify,
        )
        screen.fidelity = "screen"
        active[0] = screen
        screen.loop()
        main.summary.screened += screen.summary.completed + screen.summary.failed
        limit = None if main.remaining is None else max(0, main.remaining - main.submitted)
        promoted = promote(
            screen_study, since, fidelity.promote_fraction, main.study, spec.directions, spec.space, limit=limit
        )
        main.notify("promote", {"screened": screen.summary.completed, "promoted": promoted})
        if screen.stopped is not None:  # evaluate what this last round promoted, then stop
            main.summary.stopped = f"screening stopped: {screen.stopped}"
        fruitless = 0 if promoted else fruitless + 1
        if fruitless >= 5:  # the screen keeps proposing what was already promoted: the space is exhausted
            break


def run_study(
    spec: StudySpec,
    *,
    locations: Locations,
    n_trials: int | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
    on_event: ProgressCallback | None = None,
    executor: RayExecutor | None = None,
    always_remeasure: bool = False,
) -> RunSummary:
    """Runs (or continues) the study in ``spec`` until its trial budget or timeout is used.

    Args:
        spec: The validated study file.
        locations: Storage URL and artifact directory.
        n_trials: Overrides ``[budget].n_trials``: the evaluations (distinct configurations) the
            study should hold; repeated proposals and re-queued orphans do not count.
        workers: Overrides ``[budget].workers``.
        ray_address: Joins an existing Ray cluster instead of starting a local one.
        on_event: Called with ``("start", info)`` once, ``("trial", info)`` after each trial and
            ``("remeasure", info)`` after each frontier re-measurement.
        executor: A prepared executor (tests share one Ray instance).
        always_remeasure: Re-measure the frontier even when this run adds no trial (nightly).

    Raises:
        RunInterrupted: Ctrl-C or SIGTERM; in-flight trials are failed, re-queued, and saved.
    """
    notify = on_event or (lambda kind, info: None)
    budget = spec.budget
    total = n_trials if n_trials is not None else budget.n_trials
    started = time.monotonic()
    summary = RunSummary(study_name=spec.study.name)

    check_sampler_space(spec.sampler.name, spec.space.suggest)  # before anything is written
    artifact_store = get_artifact_store(locations.artifact_dir)  # refuses an unwritable store
    existed = study_exists(spec, locations)
    study = open_study(spec, locations)
    coordination = StudyCoordination(locations.storage_url, spec.study.name)
    try:
        others = coordination.register()
        if others:
            # Drivers that started on the same history would propose the same configurations.
            study.sampler = create_sampler(
                spec.sampler.name, spec.sampler.options, run_seed(spec.study.seed, len(study.trials), driver=others)
            )
        spec = with_study_hardware(spec, study)
        summary.warm_started = warm_start(study, spec, locations.storage_url)
        summary.recipes_queued = queue_recipes(study, spec)
        summary.orphans_requeued = requeue_orphans(
            study,
            "orphaned: the driver stopped before this trial finished (killed or crashed); its parameters were queued "
            "again",
            alive=coordination.live_drivers(),
        )
        request = base_request(spec, locations)
        baseline = ensure_baseline(study, request)
    except BaseException:
        coordination.finish()
        if not existed:
            # A start that failed (a task that does not build, a missing warm-start study) leaves no
            # half-made study for the next run to resume: nothing was evaluated.
            discard_unstarted_study(study, locations)
        raise
    done_before = counted_trials(study)
    remaining = None if total is None else max(total - done_before, 0)
    notify(
        "start",
        {
            "study": spec.study.name,
            "done_before": done_before,
            "total": total,
            "remaining": remaining,
            "orphans": summary.orphans_requeued,
            "baseline": baseline,
        },
    )
    if remaining == 0 and not always_remeasure:
        coordination.finish()
        summary.elapsed_s = time.monotonic() - started
        return summary

    max_workers = workers or budget.workers
    executor = executor or RayExecutor(
        workers=max_workers, address=ray_address, gpus_per_trial=max(gpus_per_trial(b) for b in spec.backends)
    )
    own_executor = not executor._windows
    cache = ResultCache(locations.storage_url)
    run = _Run(
        spec,
        study,
        executor,
        request=request,
        artifact_store=artifact_store,
        cache=cache,
        baseline=baseline,
        max_workers=max_workers,
        remaining=remaining,
        deadline=started + budget.timeout_s if budget.timeout_s else None,
        summary=summary,
        notify=notify,
        coordination=coordination,
        total=total,
    )
    study.set_user_attr(STUDY_ACCURACY_RESOLUTION_ATTR, run.task.accuracy_resolution())
    context = _executor(executor) if own_executor else contextlib.nullcontext(executor)
    active = [run]
    try:
        with context:
            if spec.fidelity is not None:
                successive_halving(run, locations, active)
            else:
                run.loop()
            if summary.completed and run.stopped is None:
                summary.tie_cores = evaluate_tie_cores(run)
            if spec.measurement.remeasure_sessions and (summary.completed or always_remeasure):
                notify("remeasure-start", {"sessions": spec.measurement.remeasure_sessions})
                summary.remeasured = remeasure_frontier(
                    study,
                    executor,
                    request,
                    artifact_store,
                    sessions=spec.measurement.remeasure_sessions,
                    timeout_s=budget.trial_timeout_s,
                    notify=notify,
                )
                summary.factors_of = record_factors(
                    study,
                    executor,
                    request,
                    sessions=spec.measurement.remeasure_sessions,
                    timeout_s=budget.trial_timeout_s,
                    notify=notify,
                )
    except KeyboardInterrupt:
        active[0].interrupt()
        summary.elapsed_s = time.monotonic() - started
        raise RunInterrupted(
            f"Interrupted. {counted_trials(study)} finished trials of study {spec.study.name!r} are "
            "saved; run the same command again to continue."
        ) from None
    finally:
        cache.dispose()
        coordination.finish()
    summary.elapsed_s = time.monotonic() - started
    return summary


def load_existing_study(spec: StudySpec, locations: Locations) -> optuna.Study:
    """The stored study for ``spec``, for read-only commands (frontier, report, export)."""
    return open_study(spec, locations, create=False, seed=0)
