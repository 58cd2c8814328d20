"""The rows of session windows: a key's contributions clustered by the gap.

A session ends ``gap`` after its last contribution. A contribution less than ``gap`` from a
session joins it, and one that bridges several merges them into one row (the others are
deleted in the same transaction: no orphans). A removal can split a session in two, so the
key's contributions in it are regrouped from the ledger. A session is named after its first
contribution (``session_id``), so the rows are a function of the accepted events alone and the
same in every interleaving. With ``emit="final"`` open sessions live in ``<table>__open`` and
move to the table as they close (a late event or a correction can take one back).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from framework.projection import Projection
from framework.streaming._aggregates import Order
from framework.streaming._closing import announce, note_open
from framework.streaming._projection import StreamContext
from framework.streaming._values import WINDOW_IDS, dumps, loads, utc
from framework.streaming._windows import Session

if TYPE_CHECKING:
    from framework.streaming._windowed import Windowed

__all__ = ["SessionWindows"]


class SessionWindows:
    """Keeps the rows of a :class:`~framework.streaming.Windowed` table of sessions."""

    def __init__(self, windowed: Windowed) -> None:
        assert isinstance(windowed.window, Session)
        self.windowed = windowed
        self.gap: timedelta = windowed.window.gap

    def session_id(self, key: Mapping[str, Any], first: str) -> uuid.UUID:
        """The id of the key's session whose first contribution is ``first``."""
        return uuid.uuid5(WINDOW_IDS, dumps([self.windowed.name, dict(key), first]))

    def _rows(
        self, projection: Projection, ctx: StreamContext, key: Mapping[str, Any], *where: Any
    ) -> list[tuple[sa.Table, Any]]:
        """The key's sessions matching ``where``, each with its table: the result table (with
        ``emit="final"`` only closed sessions) and the open sessions' one."""
        w = self.windowed
        tables = [w.current(projection, "rows")]
        if w.emit == "final":
            tables.append(w.current(projection, "open"))
        found: list[tuple[sa.Table, Any]] = []
        for table in tables:
            c = table.c
            condition = [clause(c) for clause in where]
            for row in ctx.conn.execute(
                sa.select(table).where(*(c[k] == v for k, v in key.items()), *condition)
            ):
                found.append((table, row))
        return found

    def add(
        self,
        projection: Projection,
        ctx: StreamContext,
        key: Mapping[str, Any],
        moment: datetime,
        values: Mapping[str, Any],
        order: Order,
        late: bool,
    ) -> None:
        """Add a contribution: to the session it falls in, merging the sessions it bridges
        (open or closed: the rows are the same in every interleaving)."""
        w, gap = self.windowed, self.gap
        touching = self._rows(
            projection,
            ctx,
            key,
            lambda c: c.window_start < moment + gap,
            lambda c: c.window_end > moment,
        )
        states = {n: a.add(a.init(), values[n], order) for n, a in w.aggregates.items()}
        first = [order[0], order[1]]
        start, end = moment, moment + gap
        contributions, late_events = 1, int(late)
        for table, row in touching:
            stored = loads(row.state)
            states = {n: a.merge(stored[n], states[n]) for n, a in w.aggregates.items()}
            if (stored["_first"][0], stored["_first"][1]) < (first[0], first[1]):
                first = stored["_first"]
            start, end = min(start, utc(row.window_start)), max(end, utc(row.window_end))
            contributions += row.contributions
            late_events += row.late_events
            ctx.conn.execute(table.delete().where(*w.pk(table, key, row.window_start)))
        self._place(projection, ctx, key, start, end, states, first, contributions, late_events)

    def remove(
        self,
        projection: Projection,
        ctx: StreamContext,
        key: Mapping[str, Any],
        moment: datetime,
        values: Mapping[str, Any],
        order: Order,
        late: bool,
        retracted: bool,
    ) -> None:
        """Take the contribution at ``moment`` (already gone from the ledger) out of its
        session: the session's other contributions are regrouped by the gap."""
        w, gap = self.windowed, self.gap
        holding = self._rows(
            projection,
            ctx,
            key,
            lambda c: c.window_start <= moment,
            lambda c: c.window_end > moment,
        )
        if not holding:
            return
        table, row = holding[0]
        ctx.conn.execute(table.delete().where(*w.pk(table, key, row.window_start)))
        ledger = w.current(projection, "contrib")
        lc = ledger.c
        found = ctx.conn.execute(
            sa.select(lc.contribution_id, lc.event_time, lc.contributed, lc.late).where(
                *(lc[k] == v for k, v in key.items()),
                lc.event_time >= utc(row.window_start),
                lc.event_time < utc(row.window_end),
            )
        ).all()
        items = sorted(
            ((utc(r.event_time), r.contribution_id, loads(r.contributed), r.late) for r in found),
            key=lambda i: (i[0], i[1]),
        )
        pieces: list[list[Any]] = []
        for item in items:
            if pieces and item[0] - pieces[-1][-1][0] < gap:
                pieces[-1].append(item)
            else:
                pieces.append([item])
        for piece in pieces:
            states = {n: a.init() for n, a in w.aggregates.items()}
            for moment_, cid, values_, _late in piece:
                for n, a in w.aggregates.items():
                    states[n] = a.add(states[n], values_[n], (moment_, cid))
            self._place(
                projection,
                ctx,
                key,
                piece[0][0],
                piece[-1][0] + gap,
                states,
                [piece[0][0], piece[0][1]],
                len(piece),
                sum(1 for i in piece if i[3]),
            )

    def _place(
        self,
        projection: Projection,
        ctx: StreamContext,
        key: Mapping[str, Any],
        start: datetime,
        end: datetime,
        states: Mapping[str, Any],
        first: list[Any],
        contributions: int,
        late_events: int,
    ) -> None:
        """Write a session where it belongs now. With ``emit="final"``: the result table once
        closed, else the open sessions' table (a late event can open a closed one again). A
        session placed closed is announced, unless its id was before (see ``_closing``)."""
        w = self.windowed
        session_id = self.session_id(key, first[1])
        closed = ctx.closed(end, w.grace)
        if not closed:
            note_open(w, ctx, end)
        row: dict[str, Any] = {
            **key,
            "window_start": start,
            "window_end": end,
            "session_id": session_id,
            "contributions": contributions,
            "revision": contributions,  # sessions: the events it holds (merges renumber)
            "late_events": late_events,
            "amended_after_close": late_events > 0,
            "closed": closed,
            "state": dumps({**states, "_first": first}),
            **{n: a.result(states[n]) for n, a in w.aggregates.items()},
        }
        table = w.current(projection, "rows" if w.emit == "update" or closed else "open")
        ctx.conn.execute(table.insert().values(**row))
        if closed:
            announce(w, projection, ctx, [row])
