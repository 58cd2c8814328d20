"""Closing windows, and the hook that runs as each closes.

A row closes when ``min st[p] - grace`` (the watermark less the table's grace) reaches its
end: with ``emit="final"`` it moves from ``<table>__open`` to the table, otherwise its
``closed`` flag is set, in the transaction that moved the watermark.

**on_close, exactly once.** ``on_close(row, ctx)`` runs for each row that closes, in the
transaction that closed it: the one whose watermark passed the row's end plus grace, or, for a
row that only comes to exist after that, the one that writes it closed: a fixed window whose
first contribution is a late event the policy amends or a correction moved there (its row has
``amended_after_close``), a session a late event starts or a void splits off under a new id. It
runs once per window: a fixed window's row is never deleted, and a session id whose hook has
run is remembered in ``<table>__announced``, so a merge that absorbs an announced session and a
void that splits it out again, or a late event that reopens it, do not announce it again.
``ctx.effect_id`` (``uuid5`` of the table and the window's start and key, or of the table and
the ``session_id``) is
the same in every history, and a history that saw the late contribution in time announced the
same window at its close, so effects keyed by it happen once, rebuilds included. A closed
session that changes afterwards can change its id (a bridging event merges it into the earlier
one; a void of its first contribution names it after the next): histories that closed it before
and after the change then announce different ids, each once.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from framework.projection import Projection
from framework.streaming._held_writes import flush
from framework.streaming._projection import StreamContext
from framework.streaming._values import WINDOW_IDS, dumps, utc

if TYPE_CHECKING:
    from framework.streaming._windowed import Windowed

__all__ = ["CloseContext", "CloseHook", "announce", "close_windows", "note_open"]


class CloseContext:
    """What an ``on_close`` hook gets besides the row: the transaction's connection and an
    ``effect_id`` unique to the window (``uuid5`` of table, window and key) to key any effect
    by, so a rebuild or a second worker that closes the same window again changes nothing."""

    def __init__(self, conn: sa.Connection, effect_id: uuid.UUID, projection: Projection) -> None:
        self.conn = conn
        self.effect_id = effect_id
        self.projection = projection


CloseHook = Callable[[dict[str, Any], CloseContext], None]
"""The shape of ``Windowed(on_close=...)`` and ``IntervalJoin(on_unmatched=...)``: the row as a
dict and a :class:`CloseContext`. It runs inside the projection's transaction, once per window
(or unmatched row) in every history; key any effect by ``ctx.effect_id`` (an outbox row, a
command id) so a rebuild or a second close adds nothing: the trigger of a process manager."""


def note_open(windowed: Windowed, ctx: StreamContext, end: datetime) -> None:
    """A window ending at ``end`` is open: the next close may be due earlier."""
    known = ctx.cache.get(windowed.next_close_key, False)
    if known is not False and (known is None or end < known):
        ctx.cache[windowed.next_close_key] = end


def _next_close(windowed: Windowed, projection: Projection, ctx: StreamContext) -> datetime | None:
    name = windowed.next_close_key
    if name not in ctx.cache:
        flush(windowed, ctx)  # windows this batch opened are not in the table yet
        table = windowed.current(projection, "open" if windowed.emit == "final" else "rows")
        found = ctx.conn.execute(
            sa.select(sa.func.min(table.c.window_end)).where(table.c.closed.is_(False))
        ).scalar()
        ctx.cache[name] = None if found is None else utc(found)
    value: datetime | None = ctx.cache[name]
    return value


def close_windows(
    windowed: Windowed, projection: Projection, ctx: StreamContext, watermark: datetime
) -> None:
    """Close the rows ``watermark`` less grace has passed, and announce them."""
    w = windowed
    limit = watermark - w.grace
    upcoming = _next_close(w, projection, ctx)
    if upcoming is None or upcoming > limit:
        return
    ctx.flush()  # every pending write, before rows are read and hooks run
    rows_table = w.current(projection, "rows")
    source = w.current(projection, "open" if w.emit == "final" else "rows")
    due = [source.c.closed.is_(False), source.c.window_end <= limit]
    order = [*(source.c[k] for k in w.key), source.c.window_start]
    closing = [
        dict(r._mapping) for r in ctx.conn.execute(sa.select(source).where(*due).order_by(*order))
    ]
    for row in closing:
        row["closed"] = True
    if w.emit == "final":
        if closing:
            ctx.conn.execute(rows_table.insert(), closing)
        ctx.conn.execute(source.delete().where(*due))
    else:
        ctx.conn.execute(source.update().where(*due).values(closed=True))
    if w.retention is not None:
        ledger = w.current(projection, "contrib")
        ctx.conn.execute(ledger.delete().where(ledger.c.event_time < limit - w.retention))
    ctx.cache.pop(w.next_close_key, None)
    announce(w, projection, ctx, closing)


def announce(
    windowed: Windowed, projection: Projection, ctx: StreamContext, rows: list[dict[str, Any]]
) -> None:
    """Run ``on_close`` for rows that have just closed: once per window, and for sessions once
    per session id (the ones announced before are skipped)."""
    if windowed.on_close is None or not rows:
        return
    if windowed.session:
        rows = _first_announcements(windowed, projection, ctx, rows)
    ctx.flush()  # the hook may read the tables
    for row in rows:
        shown = {k: v for k, v in row.items() if k != "state"}
        shown["closed"] = True
        context = CloseContext(ctx.conn, effect_id(windowed, row), projection)
        windowed.on_close(shown, context)


def _first_announcements(
    windowed: Windowed, projection: Projection, ctx: StreamContext, rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The sessions among ``rows`` whose id has never been announced, recorded in
    ``<table>__announced`` now (their ``on_close`` is about to run)."""
    table = windowed.current(projection, "announced")
    ids = [row["session_id"] for row in rows]
    known: set[uuid.UUID] = set()
    for i in range(0, len(ids), 500):
        chosen = table.c.session_id.in_(ids[i : i + 500])
        known.update(ctx.conn.execute(sa.select(table.c.session_id).where(chosen)).scalars())
    fresh = [row for row in rows if row["session_id"] not in known]
    if fresh:
        ctx.conn.execute(table.insert(), [{"session_id": row["session_id"]} for row in fresh])
    return fresh


def effect_id(windowed: Windowed, row: Mapping[str, Any]) -> uuid.UUID:
    """What ``on_close`` effects are keyed by: a window's start and key, a session's id (its
    start moves when a late event extends it)."""
    if windowed.session:
        return uuid.uuid5(WINDOW_IDS, dumps([windowed.name, row["session_id"]]))
    return uuid.uuid5(
        WINDOW_IDS,
        dumps([windowed.name, utc(row["window_start"]), [row[k] for k in windowed.key]]),
    )
