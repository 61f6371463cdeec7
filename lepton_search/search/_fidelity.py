"""Multi-fidelity search: successive halving between a cheap screen and the full study.

With ``[fidelity]`` the sampler proposes into a screen study (``<name>:screen``), evaluated with
fewer distillation epochs and measurement sessions; the best fraction of each screening round, by
Pareto rank, is queued into the main study and evaluated at full fidelity, and only those count
against its budget.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

from lepton_search.search._frontier import pareto_numbers
from lepton_search.search._run import _Run
from lepton_search.search._study import Locations, RunSummary, open_study, requeue_orphans
from lepton_search.spaces import CompressionConfig, SearchSpace

if TYPE_CHECKING:
    import optuna


def pareto_ranks(values: list[list[float]], directions: list[str]) -> list[int]:
    """Non-domination rank of each point (0 = on the front), by peeling fronts with
    :func:`~lepton_search.search._frontier.pareto_numbers`."""
    signs = [1.0 if d == "minimize" else -1.0 for d in directions]
    left = {i: tuple(v * s for v, s in zip(row, signs)) for i, row in enumerate(values)}
    ranks = [-1] * len(values)
    rank = 0
    while left:
        for i in pareto_numbers(left):
            ranks[i] = rank
            del left[i]
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
