"""Cooperating drivers' bookkeeping: live drivers and one claim per configuration, on SQLite and
PostgreSQL."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import update

from lepton_search.storage import StudyCoordination, get_storage
from lepton_search.storage._coordination import ALIVE_S
from lepton_search.storage._tables import drivers


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'db.sqlite'}"
        get_storage(url)
        return url
    return request.getfixturevalue("postgres_url")


def test_one_claim_per_configuration_wins(url: str) -> None:
    first, second = StudyCoordination(url, "s"), StudyCoordination(url, "s")
    assert first.register() == 0 and second.register() == 1
    assert first.claim("hash-a", 3) is None
    assert first.claim("hash-a", 3) is None  # the holder claiming again
    assert second.claim("hash-a", 7) == 3
    assert StudyCoordination(url, "other-study").claim("hash-a", 1) is None  # claims are per study
    # Trial 3 failed: one driver takes the claim over, and a second attempt finds it moved.
    assert second.take_over("hash-a", 3, 7) and not first.take_over("hash-a", 3, 9)
    assert first.claim("hash-a", 9) == 7
    first.finish()
    second.finish()


def test_two_drivers_that_popped_one_queued_trial_learn_which_of_them_owns_it(url: str) -> None:
    # SQLite ignores SELECT ... FOR UPDATE, so two drivers can pop the same queued trial (here
    # trial 4): the second claim must not be granted as the holder's own re-claim.
    first, second = StudyCoordination(url, "s"), StudyCoordination(url, "s")
    first.register(), second.register()
    assert first.claim("hash-q", 4) is None
    assert second.claim("hash-q", 4) == 4  # held by this very trial number, but by the other driver
    assert second.claim_driver("hash-q") == first.driver_id and first.claim("hash-q", 4) is None
    assert second.claim_driver("hash-unclaimed") is None
    first.finish()
    second.finish()


def test_concurrent_claims_of_one_configuration_give_exactly_one_holder(url: str) -> None:
    coordinators = [StudyCoordination(url, "s") for _ in range(4)]
    results: list[int | None] = [None] * 4
    barrier = threading.Barrier(4)

    def claim(i: int) -> None:
        barrier.wait()
        results[i] = coordinators[i].claim("hash-b", 100 + i)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [i for i, r in enumerate(results) if r is None]
    assert len(winners) == 1
    assert all(r == 100 + winners[0] for r in results if r is not None)


def test_a_driver_without_a_heartbeat_is_no_longer_alive(url: str) -> None:
    gone, alive = StudyCoordination(url, "s"), StudyCoordination(url, "s")
    gone.register()
    alive.register()
    assert alive.live_drivers() == {gone.driver_id}
    with alive._engine.begin() as conn:  # the driver was killed a while ago
        conn.execute(
            update(drivers).where(drivers.c.driver_id == gone.driver_id).values(heartbeat_at=time.time() - ALIVE_S - 1)
        )
    assert alive.live_drivers() == set()
    assert StudyCoordination(url, "s").register() == 1  # only `alive` counts


def test_a_driver_killed_on_this_host_is_not_alive_even_with_a_fresh_heartbeat(url: str) -> None:
    import subprocess
    import sys

    # A driver that registers and dies at once (as under SIGKILL): it never says it finished.
    code = (
        "import sys\n"
        "from lepton_search.storage import StudyCoordination\n"
        "StudyCoordination(sys.argv[1], 's').register()\n"
    )
    subprocess.run([sys.executable, "-c", code, url], check=True, timeout=60)
    survivor = StudyCoordination(url, "s")
    assert survivor.register() == 1  # its heartbeat is fresh...
    assert survivor.live_drivers() == set()  # ...but its process is gone


def test_concurrent_drivers_never_hold_more_budget_slots_than_the_budget(url: str) -> None:
    coordinators = [StudyCoordination(url, "s") for _ in range(4)]
    for coordinator in coordinators:
        coordinator.register()
    assert coordinators[0].reserve_slot(3) == 0
    coordinators[0].bind_slot(0, 10)
    results: list[list[int]] = [[] for _ in coordinators]
    barrier = threading.Barrier(len(coordinators))

    def reserve(i: int) -> None:
        barrier.wait()
        while (slot := coordinators[i].reserve_slot(3)) is not None:
            results[i].append(slot)

    threads = [threading.Thread(target=reserve, args=(i,)) for i in range(len(coordinators))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    held = sorted(slot for slots in results for slot in slots)
    assert held == [1, 2], results  # the two slots left, each held once
    for coordinator in coordinators:
        coordinator.finish()


def test_budget_slots_come_back_from_repeats_orphans_and_dead_drivers(url: str) -> None:
    first, second = StudyCoordination(url, "s"), StudyCoordination(url, "s")
    first.register(), second.register()
    assert first.reserve_slot(2) == 0 and second.reserve_slot(2) == 1 and first.reserve_slot(2) is None
    assert first.bind_slot(0, 5) is None
    # Both drivers popped queued trial 5: the second learns whose it is, and keeps its slot.
    assert second.bind_slot(1, 5) == first.driver_id
    assert first.reserve_slot(2) is None
    second.release_slot(1)  # its proposal was a repeat
    assert second.reserve_slot(2) == 1
    first.release_trial_slots([5])  # trial 5 was an orphan, queued again
    assert first.reserve_slot(2) == 0
    # A driver that died holding an unbound slot gives it back to the living.
    second.finish()
    first.release_unbound_slots(alive=set())
    assert first.reserve_slot(2) == 1 and first.reserve_slot(2) is None
    first.finish()


def test_evaluations_from_before_budget_slots_are_given_slots_once(url: str) -> None:
    first, second = StudyCoordination(url, "s"), StudyCoordination(url, "s")
    first.ensure_slots([0, 1, 2])
    second.ensure_slots([1, 2, 3])  # a second driver starting at once, or a later run
    assert first.reserve_slot(4) is None and first.reserve_slot(5) == 4
    first.finish()
    second.finish()
