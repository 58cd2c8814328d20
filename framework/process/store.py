"""Where process managers keep their facts: SQL tables in the read-model database.

- ``keel_pm_facts``: each instance's stream, ``(pm, instance_id, version)`` -> kind, data. The
  primary key is the optimistic-concurrency check: two workers appending the same version of one
  instance cannot both commit.
- ``keel_pm_instances``: one row per instance (open or completed, version, when started) for
  the status and the admin; moved with a guarded ``UPDATE ... WHERE version = :expected``.
- ``keel_pm_deadlines``: the open deadlines, derived from the facts, for the deadline runner
  (a parked one is left out: it waits in ``keel_dead_letters`` for a re-drive).
- ``keel_outbox``: the commands to send, each with its deterministic id. The relay marks them
  sent; sending one twice is harmless (the target dedups by command id).
- ``keel_pm_counters``: the counted outcomes (duplicates, unknown instances, late deadlines,
  skipped and parked handlers), reported as ``keel.process.outcomes``.

All of an input's rows (facts, instance, deadlines, outbox, counters) and the input worker's
position change in **one** transaction: a crash leaves either all of them or none.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from framework.errors import ProcessConflictError
from framework.positions import framework_metadata, now
from framework.process.manager import Fact, Instance, Outcome, ProcessManager

__all__ = [
    "count",
    "counters",
    "counters_table",
    "deadlines_table",
    "facts_table",
    "instances_table",
    "load_instance",
    "outbox_table",
    "record",
    "timeline",
]

facts_table = sa.Table(
    "keel_pm_facts",
    framework_metadata,
    sa.Column("pm", sa.String(200), primary_key=True),
    sa.Column("instance_id", sa.String(200), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
)

instances_table = sa.Table(
    "keel_pm_instances",
    framework_metadata,
    sa.Column("pm", sa.String(200), primary_key=True),
    sa.Column("instance_id", sa.String(200), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("completed", sa.Boolean, nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_keel_pm_instances_open", "pm", "completed", "started_at"),
)

deadlines_table = sa.Table(
    "keel_pm_deadlines",
    framework_metadata,
    sa.Column("pm", sa.String(200), primary_key=True),
    sa.Column("instance_id", sa.String(200), primary_key=True),
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_keel_pm_deadlines_due", "pm", "due_at"),
)

outbox_table = sa.Table(
    "keel_outbox",
    framework_metadata,
    sa.Column("command_id", sa.Uuid, primary_key=True),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("pm", sa.String(200), nullable=False),
    sa.Column("instance_id", sa.String(200), nullable=False),
    sa.Column("command_type", sa.String(200), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("outcome", sa.String(2000), nullable=True),
    sa.Index("ix_keel_outbox_pending", "sent_at", "seq"),
)

counters_table = sa.Table(
    "keel_pm_counters",
    framework_metadata,
    sa.Column("pm", sa.String(200), primary_key=True),
    sa.Column("counter", sa.String(60), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
)


def load_instance(conn: Connection, pm: ProcessManager, instance_id: str) -> Instance:
    """Fold the stream of ``instance_id`` (empty: a new instance at version 0)."""
    t = facts_table
    instance = Instance(pm, instance_id)
    rows = conn.execute(
        sa.select(t.c.kind, t.c.data)
        .where(t.c.pm == pm.name, t.c.instance_id == instance_id)
        .order_by(t.c.version)
    )
    for kind, data in rows:
        instance.apply(Fact(kind, data))
    return instance


def record(conn: Connection, instance: Instance, outcome: Outcome) -> None:
    """Append ``outcome``'s facts to ``instance`` inside ``conn``'s transaction, with every
    derived row; raises :class:`ProcessConflictError` when another worker moved it first."""
    pm = instance.pm
    if outcome.reason:
        count(conn, pm.name, outcome.reason)
    if not outcome.facts:
        return
    stamp = now()
    expected = instance.version
    _move_instance(conn, pm.name, instance, expected, len(outcome.facts), outcome, stamp)
    conn.execute(
        facts_table.insert(),
        [
            {
                "pm": pm.name,
                "instance_id": instance.instance_id,
                "version": expected + i + 1,
                "kind": fact.kind,
                "data": fact.data,
                "recorded_at": stamp,
            }
            for i, fact in enumerate(outcome.facts)
        ],
    )
    for fact in outcome.facts:
        instance.apply(fact)
    _sync_deadlines(conn, instance)
    commands = outcome.commands
    if commands:
        seq = _next_seq(conn)
        conn.execute(
            outbox_table.insert(),
            [
                {
                    "command_id": uuid.UUID(c["command_id"]),
                    "seq": seq + i,
                    "pm": pm.name,
                    "instance_id": instance.instance_id,
                    "command_type": c["command_type"],
                    "payload": c["payload"],
                    "created_at": stamp,
                }
                for i, c in enumerate(commands)
            ],
        )


def _move_instance(
    conn: Connection,
    pm: str,
    instance: Instance,
    expected: int,
    added: int,
    outcome: Outcome,
    stamp: datetime,
) -> None:
    t = instances_table
    completed = any(f.kind == "Completed" for f in outcome.facts) or instance.completed
    values = {"version": expected + added, "completed": completed, "updated_at": stamp}
    if expected == 0:
        try:
            with conn.begin_nested():
                conn.execute(
                    t.insert().values(
                        pm=pm, instance_id=instance.instance_id, started_at=stamp, **values
                    )
                )
        except sa.exc.IntegrityError as error:
            raise _conflict(pm, instance, expected) from error
        return
    moved = conn.execute(
        t.update()
        .where(t.c.pm == pm, t.c.instance_id == instance.instance_id, t.c.version == expected)
        .values(**values)
    )
    if moved.rowcount != 1:
        raise _conflict(pm, instance, expected)


def _conflict(pm: str, instance: Instance, expected: int) -> ProcessConflictError:
    return ProcessConflictError(
        f"{pm}: instance {instance.instance_id} is no longer at version {expected} (another "
        "worker handled it first); retried on fresh state"
    )


def _sync_deadlines(conn: Connection, instance: Instance) -> None:
    t = deadlines_table
    key = (t.c.pm == instance.pm.name) & (t.c.instance_id == instance.instance_id)
    conn.execute(t.delete().where(key))
    # A parked deadline is not fired again until re-driven: it waits in the dead letters.
    firing = [d for d in instance.deadlines.values() if not d.parked]
    if firing:
        conn.execute(
            t.insert(),
            [
                {
                    "pm": instance.pm.name,
                    "instance_id": instance.instance_id,
                    "name": d.name,
                    "due_at": d.due_at,
                }
                for d in firing
            ],
        )


def _next_seq(conn: Connection) -> int:
    # Orders the outbox; ties between workers are harmless (command ids are unique).
    current = conn.execute(sa.select(sa.func.max(outbox_table.c.seq))).scalar()
    return int(current or 0) + 1


def count(conn: Connection, pm: str, counter: str, by: int = 1) -> None:
    """Add ``by`` to ``pm``'s ``counter`` (in the caller's transaction)."""
    t = counters_table
    moved = conn.execute(
        t.update().where(t.c.pm == pm, t.c.counter == counter).values(value=t.c.value + by)
    )
    if moved.rowcount == 0:
        try:
            with conn.begin_nested():
                conn.execute(t.insert().values(pm=pm, counter=counter, value=by))
        except sa.exc.IntegrityError:
            conn.execute(
                t.update().where(t.c.pm == pm, t.c.counter == counter).values(value=t.c.value + by)
            )


def counters(conn: Connection, pm: str) -> dict[str, int]:
    t = counters_table
    return {
        c: int(v) for c, v in conn.execute(sa.select(t.c.counter, t.c.value).where(t.c.pm == pm))
    }


def timeline(conn: Connection, pm: str, instance_id: str) -> Sequence[dict[str, Any]]:
    """An instance's facts, oldest first (for the CLI and the admin)."""
    t = facts_table
    rows = conn.execute(
        sa.select(t.c.version, t.c.kind, t.c.data, t.c.recorded_at)
        .where(t.c.pm == pm, t.c.instance_id == instance_id)
        .order_by(t.c.version)
    )
    return [dict(r._mapping) for r in rows]
