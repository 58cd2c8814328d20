"""The interval (stream-stream) join: "confirmed, but not paid within 30 minutes".

A left event pairs with the first right event of the same key within ``within`` after it
(``left_time <= right_time <= left_time + within``, both ends in). Matched rows appear when the
pair is seen. Rows that only the passing of time decides (a left event nobody answered, with
``how="left"`` or ``"outer"``; a right event no left event claims, with ``"outer"``) appear
once the close rule says no event that could change the decision can still come, and
``on_unmatched`` runs then, keyed by ``ctx.effect_id``: the trigger a process manager needs.
Both sides are buffered in SQL, so they may come from topics with different partition counts.

**on_unmatched, exactly once, the same in every interleaving.** Each buffered event keeps
``seen``: its own time, or for an event later than grace the point its partition had reached
(``st[p] - grace`` when it came), so ``seen`` depends on its partition's sequence only.

- A key's left event is *decided* once ``min st[p] - grace`` has passed both its interval's end
  and its ``seen`` (strictly: an event at exactly that point may still be on time). Then every
  event that can count has come, in every interleaving: for an on-time left event that is its
  interval's close; a left event that comes after its interval closed (late, amended or
  re-driven) is decided at the next advance of the watermark (a tick), under the effect id an
  in-time history uses.
- A right event in the interval *answers* the left event when its ``seen`` is not past the
  left's decision point: it came before its own partition passed it, so no history decides the
  left before it comes. ``on_unmatched`` runs at the decision when no right event answered.
- A right event later than that (late, kept by ``late="amend"`` or a re-drive) still corrects
  the row to ``matched``, but the trigger stands: some interleaving ran it before the payment
  came, so all do. It gets the ``unmatched`` row, whatever the table shows by then.
- One left event per key: the one decided first (on-time events: the earliest); another left
  event of the key does not add a trigger. The key's trigger runs at most once; its effect id
  is ``uuid5`` of the table and key.
- ``how="outer"``: a right event is decided once the watermark less grace is past its time and
  has reached its ``seen``; a left event claims it when ``left_time <= right_time <= left_time
  + within`` and the left came before its partition passed the right event (its ``seen`` not
  past the right's time, or before the right's ``seen``). An unclaimed one triggers once,
  keyed by the table, key and its time; a left event that claims it later does not undo that.

There are no retractions of a left event: a cancellation is a right event of another join, or
a handler of the projection.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from framework.codec import EventEnvelope
from framework.domain import DomainEvent
from framework.errors import ConfigurationError
from framework.projection import Projection, upsert
from framework.streaming._closing import CloseContext, CloseHook
from framework.streaming._projection import Stream, StreamContext
from framework.streaming._values import dumps, utc
from framework.streaming._windowed import LATE_POLICIES

__all__ = ["IntervalJoin"]

_EFFECTS = uuid.UUID("6d2f7c1a-3b8e-4f5d-a9c2-1e4b7d8f0a63")


class IntervalJoin(Stream):
    """A left event and the first right event of the same key within ``within`` after it::

        unpaid = IntervalJoin(
            "shop_unpaid_orders", metadata,
            left=Order.Confirmed, right=Payment.Received,
            key=("order_id", sa.Uuid, lambda e: e.originator_id),
            within=timedelta(minutes=30), how="left",
            on_unmatched=start_reminder,        # optional: (row, ctx) -> None, once per left
        )

    Rows, one per key: ``key, left_time, right_time, status``:

    ============== ===================================================================
    ``matched``    a left event and the first right event within ``within`` after it
    ``unmatched``  ``how="left"`` or ``"outer"``: a left event whose interval closed
                   with no right event in it
    ``right_only`` ``how="outer"``: right events of a key no left event has, written
                   once no on-time left event could still match the earliest of them
                   (``left_time`` NULL)
    ============== ===================================================================

    ``on_unmatched(row, ctx)`` runs once for each key whose left event no right event answered
    in time, and for each right event no left event claims (``"outer"``), in the transaction
    that decides it (see the module's rules); ``ctx.effect_id`` (``uuid5`` of the table and
    key) keys its effects, so a rebuild or a re-close changes nothing: the shape a process
    manager or an outbox plugs into. ``late`` decides about late right (or left) events as for
    :class:`Windowed`, and each is recorded. A late event with ``late="amend"`` still corrects
    the row (an ``unmatched`` row a late payment reaches becomes ``matched``); a trigger that
    runs in some interleaving runs in all, and never twice.
    """

    closes = True

    def __init__(
        self,
        name: str,
        metadata: sa.MetaData,
        *,
        left: type[DomainEvent],
        right: type[DomainEvent],
        key: tuple[str, sa.types.TypeEngine[Any], Callable[[Any], Any]],
        within: timedelta,
        how: str = "left",
        grace: timedelta = timedelta(0),
        late: str = "amend",
        time: Callable[[Any], datetime] | None = None,
        on_unmatched: CloseHook | None = None,
    ) -> None:
        super().__init__()
        if how not in ("inner", "left", "outer"):
            raise ConfigurationError(f"{name}: how= must be 'inner', 'left' or 'outer'")
        if late not in LATE_POLICIES:
            raise ConfigurationError(f"{name}: late= must be one of {LATE_POLICIES}")
        if within <= timedelta(0):
            raise ConfigurationError(f"{name}: within= must be positive")
        self.name = name
        self.left, self.right = left, right
        self.key_name, key_type, self.key_of = key
        self.within, self.how, self.grace, self.late = within, how, grace, late
        self.time = time
        self.on_unmatched = on_unmatched

        def key_column() -> sa.Column[Any]:
            return sa.Column(self.key_name, key_type, primary_key=True)

        self.tables = {
            "rows": sa.Table(
                name,
                metadata,
                key_column(),
                sa.Column("left_time", sa.DateTime(timezone=True), nullable=how == "outer"),
                sa.Column("right_time", sa.DateTime(timezone=True), nullable=True),
                sa.Column("status", sa.String(10), nullable=False),
            ),
            "left": sa.Table(
                f"{name}__left",
                metadata,
                key_column(),
                sa.Column("left_time", sa.DateTime(timezone=True), nullable=False),
                sa.Column("closes_at", sa.DateTime(timezone=True), nullable=False),
                sa.Column("seen", sa.DateTime(timezone=True), nullable=False),
                sa.Column("emitted", sa.Boolean, nullable=False),
                sa.Index(f"ix_{name}__left_open", "emitted", "closes_at"),
            ),
            "right": sa.Table(
                f"{name}__right",
                metadata,
                key_column(),
                sa.Column("right_time", sa.DateTime(timezone=True), primary_key=True),
                sa.Column("seen", sa.DateTime(timezone=True), nullable=False),
                *([sa.Column("emitted", sa.Boolean, nullable=False)] if how == "outer" else []),
            ),
        }

    def events(self) -> set[type[DomainEvent]]:
        return {self.left, self.right}

    def apply(
        self, projection: Projection, ctx: StreamContext, event: Any, envelope: EventEnvelope
    ) -> None:
        moment = utc(self.time(event) if self.time else type(projection).event_time(event))  # type: ignore[attr-defined]
        key = self.key_of(event)
        partition = envelope.recorded.partition
        late_by = ctx.late_by(partition, moment, self.grace)
        seen = moment
        if late_by is not None:
            action = ctx.policy(self.late, envelope)
            ctx.record_late(self, envelope, moment, None, late_by, action)
            if action != "amend":
                return
            seen = moment + late_by  # where its partition was: st[p] - grace
        if type(event) is self.left:
            self._left(projection, ctx, key, moment, seen)
        else:
            self._right(projection, ctx, key, moment, seen)

    def _left(
        self, projection: Projection, ctx: StreamContext, key: Any, moment: datetime, seen: datetime
    ) -> None:
        lt = self.current(projection, "left")
        found = ctx.conn.execute(sa.select(lt).where(lt.c[self.key_name] == key)).first()
        closes = moment + self.within
        decides = max(closes, seen)
        if found is not None and (_decides(found), utc(found.left_time)) <= (decides, moment):
            # One left per key: the one decided first (then the earliest). One that comes after
            # the key's left was decided is always decided later: a decided left stays.
            return
        rows = self.current(projection, "rows")
        if found is not None or self.how == "outer":  # a left row replaces a right_only one
            ctx.conn.execute(rows.delete().where(rows.c[self.key_name] == key))
            ctx.cache.pop(f"{self.attr}:next_right", None)
        if found is not None:
            ctx.conn.execute(lt.delete().where(lt.c[self.key_name] == key))
        rt = self.current(projection, "right")
        inside = (rt.c[self.key_name] == key, rt.c.right_time >= moment, rt.c.right_time <= closes)
        first = ctx.conn.execute(sa.select(sa.func.min(rt.c.right_time)).where(*inside)).scalar()
        answered = first is not None and (
            ctx.conn.execute(
                sa.select(rt.c.right_time).where(*inside, rt.c.seen <= decides)
            ).first()
            is not None
        )
        ctx.conn.execute(
            lt.insert().values(
                {
                    self.key_name: key,
                    "left_time": moment,
                    "closes_at": closes,
                    "seen": seen,
                    "emitted": answered,
                }
            )
        )
        if first is not None:
            self._write(projection, ctx, self._row(key, moment, utc(first), "matched"))
        # Not decided yet even if late: ``decides`` is at least where the watermark is.
        ctx.cache.pop(f"{self.attr}:next_close", None)

    def _right(
        self, projection: Projection, ctx: StreamContext, key: Any, moment: datetime, seen: datetime
    ) -> None:
        rt = self.current(projection, "right")
        values: dict[str, Any] = {self.key_name: key, "right_time": moment, "seen": seen}
        if self.how == "outer":
            values["emitted"] = False
            ctx.cache.pop(f"{self.attr}:next_right", None)
        # A copy of the same right event keeps the earliest ``seen`` of its copies.
        earliest = sa.case((rt.c.seen > seen, seen), else_=rt.c.seen)
        upsert(ctx.conn, rt, values, update={"seen": earliest})
        self._match(projection, ctx, key, moment, seen)
        mark = ctx.watermark()
        if self.how == "outer" and mark is not None:
            limit = mark - self.grace
            if moment < limit and seen <= limit:
                # A late right event no close would come back for: decide about it now.
                self._close_rights(projection, ctx, limit)

    def _match(
        self, projection: Projection, ctx: StreamContext, key: Any, moment: datetime, seen: datetime
    ) -> None:
        """Pair the right event at ``moment`` with the key's left event, if it falls in its
        interval and comes before the right event the row shows; it answers the left (no
        trigger) if it came before the left's decision point."""
        lt = self.current(projection, "left")
        left = ctx.conn.execute(sa.select(lt).where(lt.c[self.key_name] == key)).first()
        if left is None:
            return
        start = utc(left.left_time)
        if not (start <= moment <= start + self.within):
            return
        if not left.emitted and seen <= _decides(left):
            ctx.conn.execute(lt.update().where(lt.c[self.key_name] == key).values(emitted=True))
        rows = self.current(projection, "rows")
        row = ctx.conn.execute(sa.select(rows).where(rows.c[self.key_name] == key)).first()
        if row is not None and row.right_time is not None and utc(row.right_time) <= moment:
            return
        self._write(projection, ctx, self._row(key, start, moment, "matched"))

    def _row(
        self, key: Any, left_time: datetime | None, right_time: datetime | None, status: str
    ) -> dict[str, Any]:
        return {
            self.key_name: key,
            "left_time": left_time,
            "right_time": right_time,
            "status": status,
        }

    def _write(self, projection: Projection, ctx: StreamContext, row: dict[str, Any]) -> None:
        upsert(ctx.conn, self.current(projection, "rows"), row)

    def _unmatched(
        self, projection: Projection, ctx: StreamContext, key: Any, at: datetime
    ) -> None:
        """The key's left event is decided and no right event answered it: its trigger. The
        row shows ``matched`` if a right event came too late to answer; the hook gets the
        ``unmatched`` row in every history."""
        lt = self.current(projection, "left")
        ctx.conn.execute(lt.update().where(lt.c[self.key_name] == key).values(emitted=True))
        if self.how != "inner":
            rows = self.current(projection, "rows")
            row = self._row(key, at, None, "unmatched")
            shown = ctx.conn.execute(sa.select(rows).where(rows.c[self.key_name] == key)).first()
            if shown is None:
                self._write(projection, ctx, row)
            self._trigger(projection, ctx, row, [self.name, key])

    def _trigger(
        self, projection: Projection, ctx: StreamContext, row: dict[str, Any], effect: list[Any]
    ) -> None:
        """Run the hook for a row only closing decides, keyed by ``uuid5(effect)``."""
        if self.on_unmatched is not None:
            effect_id = uuid.uuid5(_EFFECTS, dumps(effect))
            self.on_unmatched(dict(row), CloseContext(ctx.conn, effect_id, projection))

    def close(self, projection: Projection, ctx: StreamContext, watermark: datetime) -> None:
        limit = watermark - self.grace
        self._close_lefts(projection, ctx, limit)
        if self.how == "outer":
            self._close_rights(projection, ctx, limit)

    def _close_lefts(self, projection: Projection, ctx: StreamContext, limit: datetime) -> None:
        """Left events every partition has passed (their interval's end and their ``seen``)
        with no right event answering them."""
        name = f"{self.attr}:next_close"
        lt = self.current(projection, "left")
        if name not in ctx.cache:
            decides = sa.case((lt.c.seen > lt.c.closes_at, lt.c.seen), else_=lt.c.closes_at)
            found = ctx.conn.execute(
                sa.select(sa.func.min(decides)).where(lt.c.emitted.is_(False))
            ).scalar()
            ctx.cache[name] = None if found is None else utc(found)
        upcoming = ctx.cache[name]
        if upcoming is None or upcoming >= limit:
            return
        due = ctx.conn.execute(
            sa.select(lt.c[self.key_name], lt.c.left_time)
            .where(lt.c.emitted.is_(False), lt.c.closes_at < limit, lt.c.seen < limit)
            .order_by(lt.c[self.key_name])
        ).all()
        for key, left_time in due:
            self._unmatched(projection, ctx, key, utc(left_time))
        ctx.cache.pop(name, None)

    def _close_rights(self, projection: Projection, ctx: StreamContext, limit: datetime) -> None:
        """Right events no left event claims. A left event at ``l`` claims a right one at ``t``
        when ``l <= t <= l + within`` and it came before its partition passed the right event;
        once every partition is past ``t`` and at its ``seen``, no such left event can still
        come, so the decision is the same in every interleaving. Each such right event runs the
        hook once; the key's row shows the earliest of them unless a left event of the key
        gives it a row of its own."""
        name = f"{self.attr}:next_right"
        rt, lt = self.current(projection, "right"), self.current(projection, "left")
        rows = self.current(projection, "rows")
        k = rt.c[self.key_name]
        pending = sa.and_(
            rt.c.emitted.is_(False),
            ~sa.exists().where(
                lt.c[self.key_name] == k,
                lt.c.left_time <= rt.c.right_time,
                lt.c.closes_at >= rt.c.right_time,
                sa.or_(lt.c.seen <= rt.c.right_time, lt.c.seen < rt.c.seen),
            ),
        )
        if name not in ctx.cache:
            decides = sa.case((rt.c.seen > rt.c.right_time, rt.c.seen), else_=rt.c.right_time)
            first = sa.select(sa.func.min(decides)).where(pending)
            found = ctx.conn.execute(first).scalar()
            ctx.cache[name] = None if found is None else utc(found)
        upcoming = ctx.cache[name]
        if upcoming is None or upcoming > limit:
            return
        due = ctx.conn.execute(
            sa.select(k, rt.c.right_time)
            .where(pending, rt.c.right_time < limit, rt.c.seen <= limit)
            .order_by(k, rt.c.right_time)
        ).all()
        for key, right_time in due:
            moment = utc(right_time)
            ctx.conn.execute(
                rt.update().where(k == key, rt.c.right_time == right_time).values(emitted=True)
            )
            row = ctx.conn.execute(sa.select(rows).where(rows.c[self.key_name] == key)).first()
            owned = ctx.conn.execute(sa.select(lt.c.left_time).where(lt.c[self.key_name] == key))
            shown = owned.first() is None and (  # a left event of the key owns its row
                row is None or (row.status == "right_only" and utc(row.right_time) > moment)
            )
            unclaimed = self._row(key, None, moment, "right_only")
            if shown:
                self._write(projection, ctx, unclaimed)
            self._trigger(projection, ctx, unclaimed, [self.name, key, moment.isoformat()])
        ctx.cache.pop(name, None)


def _decides(left: Any) -> datetime:
    """When a buffered left event is decided: past its interval's end and its ``seen``."""
    return max(utc(left.closes_at), utc(left.seen))
