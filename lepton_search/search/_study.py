"""Opening a study and readying it for a run, and the types a run is described by.

A study is found by the name and storage its file gives (:class:`Locations`), checked against the
file (objectives cannot change within a study), and keeps the hardware decisions of the CPU it was
created on, so that a resumed study's parameters keep their choices.

Resume: a rerun of the same study file loads the study. Trials left RUNNING by a driver that was
killed are failed with a reason and their parameters are queued again, so the budget counts only
trials that really finished; sampler seeds are derived from the history so a resumed study does
not replay its first proposals. Before the first proposal a run queues, once, the frontier of the
studies it warm-starts from and the study file's recipes.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lepton_search import __version__
from lepton_search.errors import ConfigError, StudyNotFoundError
from lepton_search.objectives import CostModel, MeasurementSettings, TrialRequest, prepare
from lepton_search.objectives.latency import DEFAULT_NOISE_BAND
from lepton_search.search._attrs import (
    DRIVER,
    DUPLICATE_OF,
    FAIL_REASON,
    REQUEUED,
    STUDY_BASELINE_ATTR,
    STUDY_HARDWARE_ATTR,
    STUDY_OBJECTIVES_ATTR,
    STUDY_SPEC_ATTR,
    TIE_CORE_OF,
)
from lepton_search.search._samplers import create_sampler, run_seed
from lepton_search.search._spec import StudySpec
from lepton_search.spaces import CompressionConfig, SearchSpace
from lepton_search.spaces._hardware import SpaceHardware
from lepton_search.storage import (
    DEFAULT_ARTIFACT_DIR,
    DEFAULT_STORAGE_URL,
    StudyCoordination,
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


#: What a run reports as it goes: ``(kind, info)``, e.g. ``("trial", {...})`` after each trial.
ProgressCallback = Callable[[str, dict[str, Any]], None]


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
) -> list[int]:
    """Fails every RUNNING trial with ``reason`` and queues its parameters again, except the trials
    of the drivers in ``alive`` (drivers running the study now, whose trials are theirs). Returns
    the numbers of the trials it failed.
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
    return [trial.number for trial in orphans]


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


def prepare_study(
    spec: StudySpec, locations: Locations, summary: RunSummary
) -> tuple[StudySpec, optuna.Study, StudyCoordination, TrialRequest, dict[str, float]]:
    """Opens (or creates) the study for a run and readies it for the first proposal: registers this
    driver, reseeds the sampler when other drivers run the study too, keeps the study's hardware
    decisions, queues warm-start configurations and recipes, re-queues orphans and makes sure of
    the baseline; ``summary`` counts what was queued.

    Returns ``spec`` with the study's hardware decisions, the study, this driver's registration
    (to be finished by the caller), the base trial request and the baseline. A start that fails
    finishes the registration, and removes a study this call created, before the error goes on.
    """
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
        alive = coordination.live_drivers()
        orphans = requeue_orphans(
            study,
            "orphaned: the driver stopped before this trial finished (killed or crashed); its parameters were queued "
            "again",
            alive=alive,
        )
        summary.orphans_requeued = len(orphans)
        coordination.release_unbound_slots(alive)
        finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
        # Trials that stopped counting (orphans just failed and queued again, trials interrupted
        # by Ctrl-C) give their slots back.
        coordination.release_trial_slots([t.number for t in finished if not counts_toward_budget(t)])
        coordination.ensure_slots([t.number for t in finished if counts_toward_budget(t)])
        request = base_request(spec, locations)
        baseline = ensure_baseline(study, request)
    except BaseException:
        coordination.finish()
        if not existed:
            # A start that failed (a task that does not build, a missing warm-start study) leaves no
            # half-made study for the next run to resume: nothing was evaluated.
            discard_unstarted_study(study, locations)
        raise
    return spec, study, coordination, request, baseline
