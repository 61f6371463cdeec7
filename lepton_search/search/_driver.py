"""The driver: the one process that owns a study.

:func:`run_study` opens and readies the study (``_study.py``), runs the loop that asks Optuna for
trials, evaluates them on the executor and records every outcome before telling Optuna
(``_run.py``, ``_recording.py``), with successive halving when the study file asks for it
(``_fidelity.py``), and after the budget evaluates the tie groups' cores and re-measures the
frontier. Ray tasks never touch the database. A crash, exception, timeout or NaN becomes a FAIL
trial whose ``fail_reason`` says why; the study goes on. Ctrl-C fails what is in flight and queues
it again, so that a rerun of the same study file resumes where this one stopped.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from lepton_search.errors import LeptonSearchError, RunInterrupted
from lepton_search.search._attrs import STUDY_ACCURACY_RESOLUTION_ATTR, TIE_CORE_OF
from lepton_search.search._executor import RayExecutor, gpus_per_trial
from lepton_search.search._fidelity import successive_halving
from lepton_search.search._recording import record_factors, remeasure_frontier
from lepton_search.search._run import _Run
from lepton_search.search._samplers import check_sampler_space
from lepton_search.search._spec import StudySpec
from lepton_search.search._study import (
    Locations,
    ProgressCallback,
    RunSummary,
    counted_trials,
    open_study,
    prepare_study,
)
from lepton_search.spaces import CompressionConfig, SearchSpace
from lepton_search.storage import ResultCache, get_artifact_store

if TYPE_CHECKING:
    import optuna


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

    It is a little over 80 lines because it is the run's steps in the order their failures must
    surface (check, prepare, announce, build the loop, drive it, release), each step a call;
    splitting it further would only pass its locals around.

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
    spec, study, coordination, request, baseline = prepare_study(spec, locations, summary)
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
    try:
        _drive(run, locations, own_executor=own_executor, always_remeasure=always_remeasure, started=started)
    finally:
        cache.dispose()
        coordination.finish()
    summary.elapsed_s = time.monotonic() - started
    return summary


def _drive(run: _Run, locations: Locations, *, own_executor: bool, always_remeasure: bool, started: float) -> None:
    """Runs ``run``'s loop (successive halving under ``[fidelity]``) and what follows the budget,
    starting and stopping the executor when the run owns it.

    Raises:
        RunInterrupted: Ctrl-C or SIGTERM, after the run that was active failed and re-queued what
            it had in flight.
    """
    spec, study, summary, executor = run.spec, run.study, run.summary, run.executor
    context = _executor(executor) if own_executor else contextlib.nullcontext(executor)
    # The run the loop is in now (a screening round's, under successive halving) is the one an
    # interrupt must cancel.
    active = [run]
    try:
        with context:
            if spec.fidelity is not None:
                successive_halving(run, locations, active)
            else:
                run.loop()
            after_budget(run, always_remeasure=always_remeasure)
    except KeyboardInterrupt:
        active[0].interrupt()
        summary.elapsed_s = time.monotonic() - started
        raise RunInterrupted(
            f"Interrupted. {counted_trials(study)} finished trials of study {spec.study.name!r} are "
            "saved; run the same command again to continue."
        ) from None


def after_budget(run: _Run, *, always_remeasure: bool) -> None:
    """What a run does once its loop has used the budget: evaluates the tie groups' cores, then
    re-measures the frontier and splits the best frontier configuration's speed into its techniques
    (when ``[measurement].remeasure_sessions`` asks for it and there is something new, or always)."""
    spec, summary, budget, notify = run.spec, run.summary, run.spec.budget, run.notify
    if summary.completed and run.stopped is None:
        summary.tie_cores = evaluate_tie_cores(run)
    if spec.measurement.remeasure_sessions and (summary.completed or always_remeasure):
        notify("remeasure-start", {"sessions": spec.measurement.remeasure_sessions})
        summary.remeasured = remeasure_frontier(
            run.study,
            run.executor,
            run.request,
            run.artifact_store,
            sessions=spec.measurement.remeasure_sessions,
            timeout_s=budget.trial_timeout_s,
            notify=notify,
        )
        summary.factors_of = record_factors(
            run.study,
            run.executor,
            run.request,
            sessions=spec.measurement.remeasure_sessions,
            timeout_s=budget.trial_timeout_s,
            notify=notify,
        )


def load_existing_study(spec: StudySpec, locations: Locations) -> optuna.Study:
    """The stored study for ``spec``, for read-only commands (frontier, report, export)."""
    return open_study(spec, locations, create=False, seed=0)
