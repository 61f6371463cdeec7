"""Several drivers on one study: who is alive, and which trial evaluates each configuration.

Each ``lepton-search run`` registers as a driver and beats a heartbeat while it runs. A RUNNING
trial belongs to the driver that asked for it; it is an orphan (to fail and queue again) only when
that driver's heartbeat has stopped. Before evaluating a configuration, a driver claims it by
config hash: the table's primary key lets exactly one claim of a configuration succeed, on SQLite
and PostgreSQL alike, so a second driver that proposes it waits for the first one's result instead
of evaluating it again.

The budget is shared the same way: it is a set of numbered slots, and a driver holds one before it
asks for a trial to evaluate (:meth:`StudyCoordination.reserve_slot`). Counting the study's trials
instead lets two drivers that count at the same moment both take the last evaluation.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
import uuid
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from lepton_search.storage._migrate import engine_for, upgrade
from lepton_search.storage._tables import budget_slots, config_claims, drivers

#: Seconds between heartbeats, and without one after which a driver counts as gone.
HEARTBEAT_S = 5.0
ALIVE_S = 60.0


class StudyCoordination:
    """One driver's registration on a study, its heartbeat and its configuration claims."""

    def __init__(self, url: str, study_name: str) -> None:
        self._engine = engine_for(url)
        upgrade(self._engine)
        self.study_name = study_name
        self.driver_id = str(uuid.uuid4())
        self._last_beat = 0.0

    def register(self) -> int:
        """Registers this driver; returns how many other drivers of the study are alive (0 when it
        runs alone), which makes its sampler's seed differ from theirs."""
        now = time.time()
        with self._engine.begin() as conn:
            others = conn.execute(
                select(func.count())
                .select_from(drivers)
                .where(
                    drivers.c.study_name == self.study_name,
                    drivers.c.finished_at.is_(None),
                    drivers.c.heartbeat_at >= now - ALIVE_S,
                )
            ).scalar_one()
            conn.execute(
                insert(drivers).values(
                    driver_id=self.driver_id,
                    study_name=self.study_name,
                    host=socket.gethostname()[:255],
                    pid=os.getpid(),
                    started_at=now,
                    heartbeat_at=now,
                )
            )
        self._last_beat = now
        return int(others)

    def heartbeat(self) -> bool:
        """Tells the other drivers this one is alive, at most every :data:`HEARTBEAT_S` seconds;
        returns whether it did (the moment to look for drivers that stopped)."""
        now = time.time()
        if now - self._last_beat < HEARTBEAT_S:
            return False
        with self._engine.begin() as conn:
            conn.execute(update(drivers).where(drivers.c.driver_id == self.driver_id).values(heartbeat_at=now))
        self._last_beat = now
        return True

    def finish(self) -> None:
        with self._engine.begin() as conn:
            conn.execute(update(drivers).where(drivers.c.driver_id == self.driver_id).values(finished_at=time.time()))
        self._engine.dispose()

    def live_drivers(self) -> set[str]:
        """The drivers of this study, other than this one, whose heartbeat is recent and, on this
        host, whose process still runs (a driver killed here a second ago is not alive)."""
        host = socket.gethostname()[:255]
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(drivers.c.driver_id, drivers.c.host, drivers.c.pid).where(
                    drivers.c.study_name == self.study_name,
                    drivers.c.finished_at.is_(None),
                    drivers.c.heartbeat_at >= time.time() - ALIVE_S,
                    drivers.c.driver_id != self.driver_id,
                )
            ).all()
        return {driver_id for driver_id, where, pid in rows if where != host or _process_runs(pid)}

    def claim(self, config_hash: str, trial_number: int) -> int | None:
        """Claims ``config_hash`` for trial ``trial_number``: ``None`` when the claim is this
        trial's now, else the number of the trial that holds it.

        That number is ``trial_number`` itself when another driver claimed this same trial: on
        SQLite, which ignores ``SELECT ... FOR UPDATE``, two drivers can pop one queued trial (a
        recipe, a requeued orphan) at once, and only the driver whose claim landed may evaluate it
        (:meth:`claim_driver` names that driver)."""
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    insert(config_claims).values(
                        study_name=self.study_name,
                        config_hash=config_hash,
                        trial_number=trial_number,
                        driver_id=self.driver_id,
                        claimed_at=time.time(),
                    )
                )
            return None
        except IntegrityError:
            with self._engine.connect() as conn:
                holder, holder_driver = conn.execute(
                    select(config_claims.c.trial_number, config_claims.c.driver_id).where(
                        config_claims.c.study_name == self.study_name, config_claims.c.config_hash == config_hash
                    )
                ).one()
            return None if holder == trial_number and holder_driver == self.driver_id else int(holder)

    def claim_driver(self, config_hash: str) -> str | None:
        """The driver that holds the claim of ``config_hash`` (None: unclaimed)."""
        with self._engine.connect() as conn:
            return conn.execute(
                select(config_claims.c.driver_id).where(
                    config_claims.c.study_name == self.study_name, config_claims.c.config_hash == config_hash
                )
            ).scalar_one_or_none()

    def take_over(self, config_hash: str, holder: int, trial_number: int) -> bool:
        """Moves the claim of ``config_hash`` from trial ``holder`` (which failed) to
        ``trial_number``; False when another driver moved it first."""
        with self._engine.begin() as conn:
            moved = conn.execute(
                update(config_claims)
                .where(
                    config_claims.c.study_name == self.study_name,
                    config_claims.c.config_hash == config_hash,
                    config_claims.c.trial_number == holder,
                )
                .values(trial_number=trial_number, driver_id=self.driver_id, claimed_at=time.time())
            )
        return moved.rowcount == 1

    def reserve_slot(self, total: int) -> int | None:
        """Reserves a budget slot of the study's ``total`` for this driver's next evaluation and
        returns its number; None when every slot is held (the budget is spent, or in flight)."""
        return self._take_slot(None, total)

    def bind_slot(self, slot: int, trial_number: int) -> str | None:
        """Binds this driver's reserved ``slot`` to trial ``trial_number``, which now counts
        against the budget. Returns None, or, when another driver's slot already holds that trial
        (both popped one queued trial), that driver's id; ``slot`` then stays reserved here."""
        try:
            with self._engine.begin() as conn:
                conn.execute(update(budget_slots).where(*self._own_slot(slot)).values(trial_number=trial_number))
            return None
        except IntegrityError:
            with self._engine.connect() as conn:
                return conn.execute(
                    select(budget_slots.c.driver_id).where(
                        self._slots_of_study, budget_slots.c.trial_number == trial_number
                    )
                ).scalar_one()

    def release_slot(self, slot: int) -> None:
        """Gives back this driver's ``slot``: its trial did not count (a repeat), or none was asked."""
        with self._engine.begin() as conn:
            conn.execute(delete(budget_slots).where(*self._own_slot(slot)))

    def release_trial_slots(self, trial_numbers: list[int]) -> None:
        """Gives back the slots of trials that no longer count (orphans failed and queued again)."""
        if trial_numbers:
            with self._engine.begin() as conn:
                conn.execute(
                    delete(budget_slots).where(self._slots_of_study, budget_slots.c.trial_number.in_(trial_numbers))
                )

    def release_unbound_slots(self, alive: set[str]) -> None:
        """Gives back the slots that drivers no longer alive reserved and never bound to a trial."""
        with self._engine.begin() as conn:
            conn.execute(
                delete(budget_slots).where(
                    self._slots_of_study,
                    budget_slots.c.trial_number.is_(None),
                    budget_slots.c.driver_id.not_in(alive | {self.driver_id}),
                )
            )

    def ensure_slots(self, trial_numbers: list[int]) -> None:
        """Gives each of ``trial_numbers`` (the study's evaluations) a slot, if it has none: a study
        from before budget slots, or evaluations recorded by a driver of that version."""
        with self._engine.connect() as conn:
            held = set(
                conn.execute(
                    select(budget_slots.c.trial_number).where(
                        self._slots_of_study, budget_slots.c.trial_number.is_not(None)
                    )
                ).scalars()
            )
        for trial_number in sorted(set(trial_numbers) - held):
            self._take_slot(trial_number, None)

    def _take_slot(self, trial_number: int | None, total: int | None) -> int | None:
        """Takes the smallest free slot number for ``trial_number`` (None: reserved, not bound yet)
        and returns it; None when ``total`` slots are held, or when another driver gave
        ``trial_number`` its slot first.

        Every taker picks the smallest free number, so two that read the same slots pick the same
        one and the primary key lets only one of them have it; the other reads again."""
        while True:
            with self._engine.connect() as conn:
                rows = conn.execute(
                    select(budget_slots.c.slot, budget_slots.c.trial_number).where(self._slots_of_study)
                ).all()
            if trial_number is not None and any(number == trial_number for _, number in rows):
                return None
            if total is not None and len(rows) >= total:
                return None
            taken = {slot for slot, _ in rows}
            slot = next(number for number in itertools.count() if number not in taken)
            try:
                with self._engine.begin() as conn:
                    conn.execute(
                        insert(budget_slots).values(
                            study_name=self.study_name,
                            slot=slot,
                            driver_id=self.driver_id,
                            trial_number=trial_number,
                            reserved_at=time.time(),
                        )
                    )
                return slot
            except IntegrityError:
                continue

    @property
    def _slots_of_study(self) -> Any:
        return budget_slots.c.study_name == self.study_name

    def _own_slot(self, slot: int) -> tuple[Any, ...]:
        return self._slots_of_study, budget_slots.c.slot == slot, budget_slots.c.driver_id == self.driver_id


def _process_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it runs
        return True
    return True
