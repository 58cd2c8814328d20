"""The deadline runner: fire the deadlines that fell due, under the manager's error policy,
and re-drive the parked ones.

- :func:`fire_due` reaches each deadline the clock says is due, in one transaction with
  everything it changes (the ``DeadlineReached`` fact, the state, the outbox commands). A
  deadline of an instance that completed meanwhile is a no-op, counted
  (``deadline_after_completion``).
- **A failing handler follows** ``pm.on_error``, as the manager's inputs do. ``"park"``
  (default) retries it ``max_attempts`` times with capped backoff (``retry_initial``,
  ``retry_max``; an error with ``retryable = False`` is parked at once), then parks it: a
  ``DeadlineParked`` fact and a row in ``keel_dead_letters`` (projection: the manager's name)
  in one transaction. A parked deadline is no longer fired, nor overdue: it is listed as
  parked (status, CLI, admin) until :func:`redrive_deadlines` fires it. ``"skip"`` records
  ``DeadlineFailed`` (the deadline is closed; the instance goes on); ``"stop"`` stops the
  worker and leaves the deadline due, to fire after a restart.
- **Re-drive fires a parked deadline once**: its dead letter is deleted in the transaction
  that records ``DeadlineReached``, and the instance's version guard and the delete's row
  count make a second, concurrent re-drive roll back.

A parked deadline's dead letter holds no event: ``partition`` is ``-1`` (no log position),
``offset`` a stable 63-bit key of the instance and the deadline's trigger (so one deadline can
never be parked twice), ``aggregate_id`` the instance id (a uuid5 of it when longer than the
column), ``version`` the instance version that scheduled it, ``event_type``
``deadline:<name>``, and ``payload`` the JSON of :class:`ParkedDeadline`'s identity.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from framework import dead_letters
from framework.database import Backoff, is_connectivity_error
from framework.dead_letters import DeadLetter, RedriveResult
from framework.errors import ProcessConflictError, ProcessError
from framework.observability import deadline_span
from framework.positions import dead_letters_table, now
from framework.process.manager import (
    COMMAND_NAMESPACE,
    Clock,
    Deadline,
    Instance,
    ProcessManager,
    SystemClock,
)
from framework.process.store import deadlines_table, load_instance, record

__all__ = [
    "DEADLINE_PARTITION",
    "ParkedDeadline",
    "fire_due",
    "parked_deadlines",
    "redrive_deadlines",
]

log = logging.getLogger(__name__)

DEADLINE_PARTITION = -1
"""The ``partition`` of a parked deadline's dead letter: it has no position in any log."""


@dataclass(frozen=True)
class ParkedDeadline:
    """A deadline whose handler failed every attempt, waiting in the dead letters."""

    id: int
    """The dead letter's id (to re-drive or discard it)."""
    instance_id: str
    name: str
    trigger: str
    due_at: datetime
    error_type: str
    error_message: str
    attempts: int
    parked_at: datetime

    @classmethod
    def of(cls, letter: DeadLetter) -> ParkedDeadline:
        held = json.loads(letter.payload)
        return cls(
            id=letter.id,
            instance_id=held["instance_id"],
            name=held["deadline"],
            trigger=held["trigger"],
            due_at=datetime.fromisoformat(held["due_at"]),
            error_type=letter.error_type,
            error_message=letter.error_message,
            attempts=letter.attempts,
            parked_at=letter.created_at,
        )


def parked_deadlines(
    pm: ProcessManager | str, engine: Engine, *, limit: int | None = None
) -> list[ParkedDeadline]:
    """The parked deadlines of ``pm``, oldest first."""
    name = pm if isinstance(pm, str) else pm.name
    letters = dead_letters.list_dead_letters(engine, name, limit=limit)
    return sorted(
        (ParkedDeadline.of(d) for d in letters if d.partition == DEADLINE_PARTITION),
        key=lambda p: p.id,
    )


# -- firing -----------------------------------------------------------------------------------


def fire_due(
    pm: ProcessManager,
    engine: Engine,
    clock: Clock,
    *,
    limit: int = 100,
    stop: threading.Event | None = None,
) -> int:
    """Reach every deadline of ``pm`` that is due by ``clock`` (see the module docstring for
    what a failing handler does); returns how many were settled (fired, parked, skipped or
    found closed). ``stop`` ends the retries early (the deadline stays due)."""
    moment = clock.now()
    t = deadlines_table
    with engine.connect() as conn:
        due = conn.execute(
            sa.select(t.c.instance_id, t.c.name)
            .where(t.c.pm == pm.name, t.c.due_at <= moment)
            .order_by(t.c.due_at)
            .limit(limit)
        ).all()
    settled = 0
    for instance_id, name in due:
        if stop is not None and stop.is_set():
            break
        with deadline_span(pm.name, name):
            if _fire(pm, engine, instance_id, name, moment, stop):
                settled += 1
    return settled


def _fire(
    pm: ProcessManager,
    engine: Engine,
    instance_id: str,
    name: str,
    moment: datetime,
    stop: threading.Event | None,
) -> bool:
    backoff = Backoff(pm.retry_initial, pm.retry_max)
    attempts = 0
    trigger: str | None = None
    while True:
        attempts += 1
        try:
            with engine.begin() as conn:
                instance = load_instance(conn, pm, instance_id)
                open_now = instance.deadlines.get(name)
                trigger = open_now.trigger if open_now is not None else None
                record(conn, instance, pm.reach(instance, name, moment))
            return True
        except ProcessConflictError as conflict:
            log.info("%s", conflict)  # another runner got there first: looked at again later
            return False
        except Exception as error:
            if is_connectivity_error(error):
                raise  # the database, not the handler: the worker waits it out
            failure = error
        if pm.on_error == "stop":
            log.error(
                "%s: deadline %s of %s failed; on_error='stop' stops the worker (the deadline "
                "stays due): %s: %s",
                pm.name,
                name,
                instance_id,
                type(failure).__name__,
                failure,
            )
            if stop is not None:
                stop.set()
            raise ProcessError(
                f"{pm.name}: deadline {name} of instance {instance_id} failed and on_error is "
                f"'stop' (it fires again after a restart): {type(failure).__name__}: {failure}"
            ) from failure
        if pm.on_error == "skip":
            log.warning(
                "%s: skipping failing deadline %s of %s: %s", pm.name, name, instance_id, failure
            )
            return _close(pm, engine, instance_id, name, trigger, failure, attempts, park=False)
        if attempts >= pm.max_attempts or not getattr(failure, "retryable", True):
            log.error(
                "%s: parking deadline %s of %s as a dead letter after %d attempts: %s: %s",
                pm.name,
                name,
                instance_id,
                attempts,
                type(failure).__name__,
                failure,
            )
            return _close(pm, engine, instance_id, name, trigger, failure, attempts, park=True)
        log.warning(
            "%s: deadline %s of %s failed (attempt %d of %d): %s: %s",
            pm.name,
            name,
            instance_id,
            attempts,
            pm.max_attempts,
            type(failure).__name__,
            failure,
        )
        if not backoff.sleep(stop):
            return False  # stopped: still due, fired after a restart


def _close(
    pm: ProcessManager,
    engine: Engine,
    instance_id: str,
    name: str,
    trigger: str | None,
    error: BaseException,
    attempts: int,
    *,
    park: bool,
) -> bool:
    """Record that the deadline ``trigger`` failed for good: parked (with its dead letter) or
    skipped. A deadline that moved meanwhile is left to the next round."""
    try:
        with engine.begin() as conn:
            instance = load_instance(conn, pm, instance_id)
            found = instance.deadlines.get(name)
            if instance.completed or found is None or found.parked or found.trigger != trigger:
                return False
            record(conn, instance, pm.deadline_failed(instance, name, error, parked=park))
            if park:
                letter = _letter(pm, instance, found, error, attempts)
                conn.execute(dead_letters_table.insert().values(**letter))
    except ProcessConflictError as conflict:
        log.info("%s", conflict)
        return False
    return True


def _letter(
    pm: ProcessManager, instance: Instance, found: Deadline, error: BaseException, attempts: int
) -> dict[str, Any]:
    instance_id = instance.instance_id
    key = hashlib.sha256(f"{instance_id}\n{found.trigger}".encode()).digest()
    held = {
        "instance_id": instance_id,
        "deadline": found.name,
        "trigger": found.trigger,
        "due_at": found.due_at.isoformat(),
    }
    return {
        "projection": pm.name,
        "partition": DEADLINE_PARTITION,
        "offset": int.from_bytes(key[:8], "big") >> 1,
        "aggregate_id": instance_id
        if len(instance_id) <= 36
        else str(uuid.uuid5(COMMAND_NAMESPACE, instance_id)),
        "version": found.scheduled_at_version,
        "event_type": f"deadline:{found.name}"[:300],
        "payload": json.dumps(held).encode(),
        "reason": "failed",
        "error_type": _error_type(error),
        "error_message": str(error)[:4000],
        "attempts": attempts,
        "created_at": now(),
    }


def _error_type(error: BaseException) -> str:
    return f"{type(error).__module__}.{type(error).__qualname__}"[:200]


# -- re-drive ---------------------------------------------------------------------------------


def redrive_deadlines(
    pm: ProcessManager,
    engine: Engine,
    clock: Clock | None = None,
    *,
    ids: Collection[int] | None = None,
) -> RedriveResult:
    """Fire ``pm``'s parked deadlines again (after a fix), those with dead-letter ``ids`` or
    all. Each goes in one transaction with the removal of its dead letter, so a success fires
    it exactly once; one whose instance completed, or that was cancelled or moved since it was
    parked, is removed as a no-op (counted as ever). One that fails again keeps its dead
    letter, with the new error and one more attempt (``failed``: instance id -> error)."""
    result = RedriveResult()
    moment = (clock or SystemClock()).now()
    t = dead_letters_table
    for parked in parked_deadlines(pm, engine):
        if ids is not None and parked.id not in ids:
            continue
        try:
            with engine.begin() as conn:
                instance = load_instance(conn, pm, parked.instance_id)
                outcome = pm.reach(instance, parked.name, moment, redrive=parked.trigger)
                record(conn, instance, outcome)
                gone = conn.execute(t.delete().where(t.c.id == parked.id))
                if gone.rowcount != 1:
                    raise ProcessConflictError(
                        f"{pm.name}: another re-drive of deadline {parked.name} of "
                        f"{parked.instance_id} ran at the same time; rolled back"
                    )
            result.applied += 1
        except Exception as error:
            if is_connectivity_error(error):
                raise
            message = f"{type(error).__name__}: {error}"
            result.failed[parked.instance_id] = message
            log.warning(
                "re-drive of deadline %s of %s failed: %s", parked.name, parked.instance_id, message
            )
            if isinstance(error, ProcessConflictError):
                continue  # not the handler's failure: nothing to record on the letter
            with engine.begin() as conn:
                conn.execute(
                    t.update()
                    .where(t.c.id == parked.id)
                    .values(
                        error_type=_error_type(error),
                        error_message=str(error)[:4000],
                        attempts=t.c.attempts + 1,
                    )
                )
    result.remaining = dead_letters.count(engine, pm.name)
    return result
