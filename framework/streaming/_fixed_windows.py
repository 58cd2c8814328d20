"""The rows of fixed windows (tumbling, hopping, calendar): a contribution adds to every window
its time falls in, a removal takes it out of the same windows.

Three ways to write, by what the aggregates can do: with SQL arithmetic that merges folded
states, a batch's contributions fold per window into one UPSERT (see ``_held_writes``); with
SQL arithmetic only, one UPSERT per contribution; otherwise the row is read, and the states
(kept as JSON in ``state``) change in Python. A removal an aggregate's state cannot undo (the
minimum leaves) folds the window again from the ledger.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from framework.projection import Projection
from framework.streaming._aggregates import RECOMPUTE, Order
from framework.streaming._closing import announce, note_open
from framework.streaming._held_writes import Pending, held, upsert, window_params
from framework.streaming._projection import StreamContext
from framework.streaming._values import dumps, loads, utc

if TYPE_CHECKING:
    from framework.streaming._windowed import Windowed

__all__ = ["FixedWindows"]


class FixedWindows:
    """Keeps the rows of a :class:`~framework.streaming.Windowed` table of fixed windows."""

    def __init__(self, windowed: Windowed) -> None:
        self.windowed = windowed

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
        """Count a contribution at ``moment`` in each of its windows."""
        for start, end in self.windowed.window.windows(moment):
            self._add(projection, ctx, key, start, end, values, order, late)

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
        """Take a contribution out of the windows it was counted in."""
        for start, end in self.windowed.window.windows(moment):
            self._remove(projection, ctx, key, start, end, values, order, late, retracted)

    def _target(self, projection: Projection, ctx: StreamContext, end: datetime) -> sa.Table:
        w = self.windowed
        if w.emit == "final" and not ctx.closed(end, w.grace):
            return w.current(projection, "open")
        return w.current(projection, "rows")

    def _add(
        self,
        projection: Projection,
        ctx: StreamContext,
        key: Mapping[str, Any],
        start: datetime,
        end: datetime,
        values: Mapping[str, Any],
        order: Order,
        late: bool,
    ) -> None:
        w = self.windowed
        table = self._target(projection, ctx, end)
        closed = ctx.closed(end, w.grace)
        if not closed:
            note_open(w, ctx, end)
        # A window that closed before its first contribution (late, amended) never passes a
        # close again: its new row is announced here, once. Its effect id is the window's, the
        # one a history that saw the contribution in time announced at the close.
        first = closed and w.on_close is not None and self._row(ctx, table, key, start) is None
        self._count(ctx, table, key, start, end, values, order, late, closed)
        if first:
            ctx.flush()  # the row, if held back
            row = self._row(ctx, table, key, start)
            assert row is not None, "the row was just written"
            announce(w, projection, ctx, [row])

    def _row(
        self, ctx: StreamContext, table: sa.Table, key: Mapping[str, Any], start: datetime
    ) -> dict[str, Any] | None:
        """The window's row as a dict (``None``: none yet)."""
        row = ctx.conn.execute(sa.select(table).where(*self.windowed.pk(table, key, start)))
        found = row.first()
        return None if found is None else dict(found._mapping)

    def _count(
        self,
        ctx: StreamContext,
        table: sa.Table,
        key: Mapping[str, Any],
        start: datetime,
        end: datetime,
        values: Mapping[str, Any],
        order: Order,
        late: bool,
        closed: bool,
    ) -> None:
        w = self.windowed
        if not w.fast:
            row = ctx.conn.execute(sa.select(table).where(*w.pk(table, key, start))).first()
            states = self._states(row)
            states = {n: a.add(states[n], values[n], order) for n, a in w.aggregates.items()}
            self._write(ctx, table, row, key, start, end, states, late, closed, delta=1)
            return
        if not w.buffered:
            params = window_params(key, start, end, 1, int(late), closed)
            for n, a in w.aggregates.items():
                params[n] = a.result(a.add(a.init(), values[n], order))
                params[f"v_{n}"] = values[n]
            ctx.conn.execute(upsert(w, ctx.conn, table), params)
            return
        # Fold into the batch's pending row of this window: one UPSERT per window and batch,
        # written before anything reads the table (see _held_writes).
        pending = held(w, ctx)
        slot = (table, start, *key.values())
        entry = pending.rows.get(slot)
        if entry is None:
            entry = pending.rows[slot] = Pending(
                key, start, end, {n: a.init() for n, a in w.aggregates.items()}, closed
            )
        for n, a in w.aggregates.items():
            entry.states[n] = a.add(entry.states[n], values[n], order)
        entry.count += 1
        entry.late += late

    def _remove(
        self,
        projection: Projection,
        ctx: StreamContext,
        key: Mapping[str, Any],
        start: datetime,
        end: datetime,
        values: Mapping[str, Any],
        order: Order,
        late: bool,
        retracted: bool,
    ) -> None:
        w = self.windowed
        table = self._target(projection, ctx, end)
        c = table.c
        if w.fast:
            changes: dict[str, Any] = {}
            for n, a in w.aggregates.items():
                expression = a.sql_remove(c[n], values[n], retracted=retracted)
                if expression is None:
                    break
                if expression is not c[n]:
                    changes[n] = expression
            else:
                changes.update(contributions=c.contributions - 1, revision=c.revision + 1)
                if late:
                    changes.update(late_events=c.late_events + 1, amended_after_close=True)
                ctx.conn.execute(table.update().where(*w.pk(table, key, start)).values(changes))
                return
        row = ctx.conn.execute(sa.select(table).where(*w.pk(table, key, start))).first()
        if row is None:
            return
        states = self._states(row)
        removed = {
            n: a.remove(states[n], values[n], order, retracted=retracted)
            for n, a in w.aggregates.items()
        }
        if any(s is RECOMPUTE for s in removed.values()):
            removed = self._refold(projection, ctx, key, start, end, states, retracted)
        self._write(
            ctx, table, row, key, start, end, removed, late, ctx.closed(end, w.grace), delta=-1
        )

    def _refold(
        self,
        projection: Projection,
        ctx: StreamContext,
        key: Mapping[str, Any],
        start: datetime,
        end: datetime,
        states: Mapping[str, Any],
        retracted: bool,
    ) -> dict[str, Any]:
        """Fold a window again from its ledger (after a removal the states cannot undo)."""
        aggregates = self.windowed.aggregates
        fresh = {n: a.init() for n, a in aggregates.items()}
        for cid, moment, values in self._contributions(projection, ctx, key, start, end):
            for n, a in aggregates.items():
                fresh[n] = a.add(fresh[n], values[n], (moment, cid))
        for n, a in aggregates.items():
            if a.counts_retractions:
                fresh[n] = a.remove(states[n], None, (start, ""), retracted=retracted)
        return fresh

    def _contributions(
        self,
        projection: Projection,
        ctx: StreamContext,
        key: Mapping[str, Any],
        start: datetime,
        end: datetime,
    ) -> list[tuple[str, datetime, dict[str, Any]]]:
        ledger = self.windowed.current(projection, "contrib")
        c = ledger.c
        rows = ctx.conn.execute(
            sa.select(c.contribution_id, c.event_time, c.contributed).where(
                *(c[k] == v for k, v in key.items()), c.event_time >= start, c.event_time < end
            )
        ).all()
        found = [(r.contribution_id, utc(r.event_time), loads(r.contributed)) for r in rows]
        found.sort(key=lambda r: (r[1], r[0]))
        return found

    def _states(self, row: Any) -> dict[str, Any]:
        w = self.windowed
        if row is None:
            return {n: a.init() for n, a in w.aggregates.items()}
        if w.fast:
            return {n: getattr(row, n) for n in w.aggregates}
        stored: dict[str, Any] = loads(row.state)
        return stored

    def _write(
        self,
        ctx: StreamContext,
        table: sa.Table,
        row: Any,
        key: Mapping[str, Any],
        start: datetime,
        end: datetime,
        states: Mapping[str, Any],
        late: bool,
        closed: bool,
        *,
        delta: int,
    ) -> None:
        w = self.windowed
        values: dict[str, Any] = {n: a.result(states[n]) for n, a in w.aggregates.items()}
        if not w.fast:
            values["state"] = dumps(dict(states))
        if row is None:
            ctx.conn.execute(
                table.insert().values(
                    **key,
                    window_start=start,
                    window_end=end,
                    contributions=max(delta, 0),
                    revision=1,
                    late_events=int(late),
                    amended_after_close=late,
                    closed=closed,
                    **values,
                )
            )
            return
        ctx.conn.execute(
            table.update()
            .where(*w.pk(table, key, start))
            .values(
                contributions=row.contributions + delta,
                revision=row.revision + 1,
                late_events=row.late_events + int(late),
                amended_after_close=row.amended_after_close or late,
                **values,
            )
        )
