"""The driver's loop over one study: submit, collect, record, time out, interrupt.

:class:`_Run` asks Optuna for trials, turns their suggestions into configs, sends them to the
executor and records every outcome (``_recording.py``) before telling Optuna; Ray tasks never touch
the database.

Budget: ``n_trials`` counts evaluations, i.e. distinct configurations. A proposal that repeats a
configuration this study already evaluated is served from the result cache at once, told to
Optuna (the sampler learns it was proposed again), marked ``duplicate_of``, and not counted; one
proposed while the same configuration is still being evaluated waits for that evaluation's outcome.
After ``[budget].max_repeats`` repeats in a row, or when the sampler says it has tried every
configuration (``bruteforce``), the run stops and says why.

Drivers that run one study together (``storage.StudyCoordination``) share its budget and claim
configurations, so that none is evaluated twice: a proposal of a configuration another driver is
evaluating waits for that driver's result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lepton_search.devices._machine import device_class_of
from lepton_search.errors import LeptonSearchError, SamplerSpaceError
from lepton_search.objectives import TrialRequest, TrialResult
from lepton_search.objectives._compress import canonical_config
from lepton_search.objectives._evaluate import load_task
from lepton_search.search._attrs import DRIVER, DUPLICATE_OF, FAIL_REASON, STUDY_HYPERVOLUME_ATTR, WAITS_FOR
from lepton_search.search._executor import RayExecutor, describe_failure
from lepton_search.search._frontier import hypervolume, reference_point
from lepton_search.search._recording import cached_result, fail_trial, objective_values, record_result, result_key
from lepton_search.search._spec import StudySpec
from lepton_search.search._study import (
    ProgressCallback,
    RunSummary,
    evaluated_configs,
    requeue_orphans,
)
from lepton_search.spaces import CompressionConfig
from lepton_search.storage import ResultCache, StudyCoordination

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)


@dataclass
class _InFlight:
    trial: Any
    config: CompressionConfig
    owner: str
    started: float


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
        self.reference: list[float] | None = None  # of the hypervolume (record_hypervolume)
        # With successive halving the full-fidelity study only evaluates promoted (queued) trials.
        self.only_queued = False
        self.fidelity = "full"
        # Config hash -> the trial that evaluated it, for serving repeated proposals.
        self.evaluated = evaluated_configs(study)
        # Config hash -> proposals waiting for the in-flight evaluation of the same configuration.
        self.waiting: dict[str, list[Any]] = {}
        self.repeats = 0  # repeated proposals in a row
        self.stopped: str | None = None
        # The budget slot this driver holds for its next submission (hold_budget_slot).
        self.slot: int | None = None

    def may_submit(self) -> bool:
        from optuna.trial import TrialState

        if self.stopped is not None:
            return False
        if self.remaining is not None and self.submitted >= self.remaining:
            return False
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return False
        if self.only_queued and not self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return False
        return self.hold_budget_slot()  # last: it reserves what the next submission spends

    def hold_budget_slot(self) -> bool:
        """Whether this driver holds a slot of the study's budget (``total``) for its next
        submission, reserving one if not: False when every driver's evaluations, finished and in
        flight, fill the budget."""
        if self.total is None or self.coordination is None:
            return True
        if self.slot is None:
            self.slot = self.coordination.reserve_slot(self.total)
        return self.slot is not None

    def release_budget_slot(self) -> None:
        """Gives back the slot reserved for a submission that did not happen, or did not count."""
        if self.slot is not None and self.coordination is not None:
            self.coordination.release_slot(self.slot)
        self.slot = None

    def loop(self) -> None:
        try:
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
        finally:
            self.release_budget_slot()

    def submit_next(self) -> None:
        trial = self.study.ask()
        if self.coordination is not None:
            trial.set_user_attr(DRIVER, self.coordination.driver_id)
            if self.slot is not None:
                owner = self.coordination.bind_slot(self.slot, trial.number)
                if owner is not None:
                    # Another driver popped this same queued trial and counted it first: it is
                    # that driver's to evaluate, and this driver keeps its slot for the next one.
                    from optuna.exceptions import UpdateFinishedTrialError

                    with contextlib.suppress(UpdateFinishedTrialError):
                        trial.set_user_attr(DRIVER, owner)
                    return
                self.slot = None
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
            if self.coordination is not None:  # a repeat does not count: its slot goes back
                self.coordination.release_trial_slots([trial.number])
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
        orphans = requeue_orphans(
            self.study,
            "orphaned: its driver stopped (no heartbeat) before this trial finished; its parameters were queued again",
            alive=alive,
            only_known_drivers=True,
        )
        self.summary.orphans_requeued += len(orphans)
        self.coordination.release_trial_slots(orphans)
        self.coordination.release_unbound_slots(alive)

    def wait_for_other_driver(self, trial: Any, config: CompressionConfig) -> bool:
        """Claims ``config`` for ``trial``; returns True when another driver's trial holds the claim
        (then ``trial`` takes that trial's result, served from the cache, once it has one). A claim
        whose trial failed is taken over, and ``config`` is evaluated here."""
        from optuna.trial import TrialState

        if self.coordination is None:
            return False
        config_hash = config.config_hash
        holder = self.coordination.claim(config_hash, trial.number)
        if holder == trial.number:
            # Another driver popped this same queued trial and claimed it first: it evaluates and
            # tells it; this driver leaves it alone (telling it too would fail, as it is finished).
            # The trial names its owner again, so that it is not taken for this driver's orphan.
            from optuna.exceptions import UpdateFinishedTrialError

            with contextlib.suppress(UpdateFinishedTrialError):
                trial.set_user_attr(DRIVER, self.coordination.claim_driver(config_hash))
            return True
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
        if duplicate_of is not None:
            trial.set_user_attr(DUPLICATE_OF, duplicate_of[0])
        artifact_id = record_result(
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
        if artifact_id is not None:
            if duplicate_of is None and cached_from is None:
                # Before the tell: a driver that finds this trial COMPLETE while it waits for the
                # configuration serves the cached result, and would evaluate it again without one.
                self.cache_result(trial, config, result, artifact_id)
            self.study.tell(trial, objective_values(self.spec, result))
        self.check_exhausted()
        if duplicate_of is not None:
            self.summary.duplicates += 1
            return artifact_id is not None
        if artifact_id is None:
            self.count_failure(trial, config.describe(), trial.user_attrs.get(FAIL_REASON, ""))
            return False
        self.count_completion(trial, config, result, cached_from, artifact_id)
        return True

    def cache_result(self, trial: Any, config: CompressionConfig, result: TrialResult, artifact_id: str) -> None:
        """Keeps the fresh ``result`` of ``config`` for repeats, in this and later studies."""
        payload = {k: v for k, v in dataclasses.asdict(result).items() if k != "onnx_bytes"}
        # Keyed by the device class the result was measured on (a worker on another node can
        # differ from this driver's machine): it is served only to lookups for that class.
        measured_on = device_class_of(result.latency.get("device"))
        self.cache.put(
            result_key(self.request, self.fingerprint, config, measured_on),
            study_name=self.study.study_name,
            trial_number=trial.number,
            artifact_id=artifact_id,
            payload=payload,
        )

    def count_completion(
        self,
        trial: Any,
        config: CompressionConfig,
        result: TrialResult,
        cached_from: dict[str, Any] | None,
        artifact_id: str | None,
    ) -> None:
        """Counts a COMPLETE evaluation, extends the hypervolume history, indexes it for the repeats
        of ``config`` in this run, and reports it."""
        self.summary.completed += 1
        self.hypervolume = self.record_hypervolume(trial.number)
        self.evaluated.setdefault(config.config_hash, (trial.number, artifact_id))
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

    def check_exhausted(self) -> None:
        """Stops submitting when the sampler says it has tried every configuration (``bruteforce``)."""
        if getattr(self.study.sampler, "exhausted", False):
            self.stop("the sampler has proposed every configuration of the space")

    def record_hypervolume(self, number: int) -> float:
        """Appends (trial number, hypervolume) to the study's history and returns the value.

        The reference point is taken once per run, at its first completed trial, so that the run's
        values share one reference (the one the history records) and are not re-derived from
        every trial after each one."""
        if self.reference is None:
            self.reference = reference_point(self.study)
        reference = self.reference
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
        self.count_failure(trial, label, reason)

    def count_failure(self, trial: Any, label: str, reason: str) -> None:
        """Counts a FAIL trial in the summary and reports it."""
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
