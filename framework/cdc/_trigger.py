"""The default change source, with no Java: a trigger changelog read below the xid fence.

An ``AFTER INSERT OR UPDATE OR DELETE`` trigger on the legacy table writes every change, in the
legacy transaction itself, to ``keel_cdc.changelog`` with the writing transaction's id
(``xid8``) and an identity ``seq``. The reader takes only rows of transactions that are over,
``xid < pg_snapshot_xmin(pg_current_snapshot())``, in ``(xid, seq)`` order from its cursor. A
transaction that commits late holds the fence back (the reader waits) but is never skipped,
which is where high-water-mark polling on ``updated_at`` or an id loses rows (see
:class:`HighWaterMarkSource`).

The initial snapshot (:meth:`PostgresTriggerSource.install`) copies the table into the
changelog as ``read`` rows in one ``REPEATABLE READ`` transaction that also records its own
snapshot. The feed reads those rows first, then every change the snapshot did not see
(``NOT pg_visible_in_snapshot(xid, snapshot)``): nothing is missed and nothing is read twice.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from framework.cdc._changes import Lag, RowChange
from framework.database import create_engine, reaching, without_password
from framework.errors import ConfigurationError

__all__ = ["HighWaterMarkSource", "PostgresTriggerSource"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")

SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS keel_cdc;
CREATE TABLE IF NOT EXISTS keel_cdc.changelog (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    source text NOT NULL,
    op text NOT NULL,
    before jsonb,
    after jsonb,
    changed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS changelog_source_xid_seq ON keel_cdc.changelog (source, xid, seq);
CREATE TABLE IF NOT EXISTS keel_cdc.snapshots (
    source text PRIMARY KEY,
    xid xid8 NOT NULL,
    snapshot pg_snapshot NOT NULL,
    taken_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE OR REPLACE FUNCTION keel_cdc.capture() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO keel_cdc.changelog (source, op, before, after)
    VALUES (TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, lower(TG_OP),
            CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
            CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END);
    RETURN NULL;
END $$;
"""


# The text xid gets its own name: an output column called ``xid`` would be what ``ORDER BY
# xid`` sorts, as text, and "1000" sorts before "999" (issue 14: the cursor passed every
# shorter xid once the readable changes spanned a power of ten).
_COLUMNS = (
    "SELECT seq, xid::text AS xid_text, op, before, after, changed_at FROM keel_cdc.changelog "
)
_AFTER = "(xid, seq) > (CAST(:x AS xid8), :q)"
# Not the snapshot's own rows, and not a change the snapshot already saw.
_UNSEEN = "xid <> CAST(:sx AS xid8) AND NOT pg_visible_in_snapshot(xid, CAST(:snap AS pg_snapshot))"
_SNAPSHOT_ROWS = "xid = CAST(:sx AS xid8) AND op = 'read' AND seq > :q"
_FENCE = "xid < pg_snapshot_xmin(pg_current_snapshot())"


def _engine(database: Engine | str) -> Engine:
    return create_engine(database) if isinstance(database, str) else database


class _SqlSource(Protocol):
    engine: Engine
    name: str


_S = TypeVar("_S", bound=_SqlSource)
_P = ParamSpec("_P")
_R = TypeVar("_R")


def _reaching(method: Callable[Concatenate[_S, _P], _R]) -> Callable[Concatenate[_S, _P], _R]:
    """Turn an unreachable source database into a StoreUnavailableError that names it: the
    run loop retries that, ``status`` reports it, and neither shows a driver traceback."""

    @functools.wraps(method)
    def call(self: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with reaching(self.engine, f"change source {self.name}"):
            return method(self, *args, **kwargs)

    return call


def _qualified(table: str) -> str:
    if not _NAME.match(table):
        raise ConfigurationError(
            f"legacy table {table!r} is not a plain [schema.]name: quote-free identifiers only"
        )
    return table if "." in table else f"public.{table}"


class PostgresTriggerSource:
    """Changes of ``table`` (``schema.name``) in the PostgreSQL database ``database`` (a URL
    or an engine), through the trigger changelog. ``key`` names the primary-key columns.

    Call :meth:`install` once (idempotent): it creates the changelog and the trigger and,
    with ``snapshot=True``, copies the rows already there as ``read`` changes."""

    def __init__(self, database: Engine | str, table: str, key: Sequence[str]) -> None:
        self.engine = _engine(database)
        if self.engine.dialect.name != "postgresql":
            raise ConfigurationError(
                "the trigger changelog needs PostgreSQL 13 or newer (xid8), and "
                f"{without_password(self.engine.url)} is {self.engine.dialect.name}: give the "
                "source the legacy database's PostgreSQL URL (postgresql://user@host/db), or read "
                "another database through Debezium (DebeziumTopicSource)"
            )
        self.name = _qualified(table)
        if not key:
            raise ConfigurationError(f"name the primary-key column(s) of {self.name}")
        self.key = tuple(key)

    # -- set-up -----------------------------------------------------------------------------

    @_reaching
    def install(self, *, snapshot: bool = True) -> int:
        """Create the changelog and the trigger (once); then, with ``snapshot`` and no snapshot
        taken yet, copy the table's rows into the changelog. Returns the rows copied."""
        schema, table = self.name.split(".")
        with self.engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('keel_cdc.install'))"))
            # DDL on the changelog would wait for every open legacy transaction: only once.
            if conn.execute(sa.text("SELECT to_regclass('keel_cdc.snapshots')")).scalar() is None:
                conn.exec_driver_sql(SCHEMA_SQL)
            exists = conn.execute(
                sa.text(
                    "SELECT 1 FROM pg_trigger WHERE tgname = 'keel_cdc_capture' "
                    "AND tgrelid = CAST(:t AS regclass)"
                ),
                {"t": self.name},
            ).first()
            if exists is None:
                conn.exec_driver_sql(
                    "CREATE TRIGGER keel_cdc_capture AFTER INSERT OR UPDATE OR DELETE "
                    f'ON "{schema}"."{table}" FOR EACH ROW EXECUTE FUNCTION keel_cdc.capture()'
                )
        if not snapshot:
            return 0
        # The trigger is committed first, so every change the snapshot misses is in the log.
        with self.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                # The first statement fixes the transaction's snapshot for all that follow.
                conn.execute(sa.text("SELECT pg_current_snapshot()"))
                taken = conn.execute(
                    sa.text(
                        "INSERT INTO keel_cdc.snapshots (source, xid, snapshot) "
                        "VALUES (:s, pg_current_xact_id(), pg_current_snapshot()) "
                        "ON CONFLICT (source) DO NOTHING RETURNING 1"
                    ),
                    {"s": self.name},
                ).first()
                if taken is None:
                    return 0
                copied = conn.execute(
                    sa.text(
                        "INSERT INTO keel_cdc.changelog (source, op, after) "
                        f'SELECT :s, \'read\', to_jsonb(t) FROM "{schema}"."{table}" t'
                    ),
                    {"s": self.name},
                )
                return int(copied.rowcount)

    @_reaching
    def uninstall(self) -> None:
        """Drop the trigger and this table's changelog rows (other tables' stay)."""
        schema, table = self.name.split(".")
        with self.engine.begin() as conn:
            conn.exec_driver_sql(f'DROP TRIGGER IF EXISTS keel_cdc_capture ON "{schema}"."{table}"')
            conn.execute(
                sa.text("DELETE FROM keel_cdc.changelog WHERE source = :s"), {"s": self.name}
            )
            conn.execute(
                sa.text("DELETE FROM keel_cdc.snapshots WHERE source = :s"), {"s": self.name}
            )

    # -- reading ----------------------------------------------------------------------------

    def _start(self, conn: sa.Connection) -> dict[str, Any]:
        row = conn.execute(
            sa.text(
                "SELECT xid::text, snapshot::text, pg_snapshot_xmin(snapshot)::text "
                "FROM keel_cdc.snapshots WHERE source = :s"
            ),
            {"s": self.name},
        ).first()
        if row is None:
            return {"phase": "stream", "xid": "0", "seq": 0, "snap": None, "snap_xid": None}
        return {
            "phase": "snapshot",
            "xid": row[0],
            "seq": 0,
            "snap": row[1],
            "snap_xid": row[0],
            "from": row[2],
        }

    @_reaching
    def read(self, cursor: str | None, limit: int) -> list[RowChange]:
        with self.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                state = json.loads(cursor) if cursor else self._start(conn)
                changes: list[RowChange] = []
                if state["phase"] == "snapshot":
                    rows = conn.execute(
                        sa.text(
                            f"{_COLUMNS} WHERE source = :s AND {_SNAPSHOT_ROWS} "
                            "ORDER BY seq LIMIT :n"
                        ),
                        {"s": self.name, "sx": state["snap_xid"], "q": state["seq"], "n": limit},
                    ).all()
                    changes = [self._change(r, {**state, "seq": r[0]}) for r in rows]
                    if len(changes) == limit:
                        return changes
                    # Snapshot done: the stream starts at its xmin (everything older it saw).
                    state = {**state, "phase": "stream", "xid": state["from"], "seq": 0}
                    if changes:
                        changes[-1] = _with_cursor(changes[-1], state)
                    limit -= len(changes)
                rows = self._after(
                    conn, state, state["xid"], state["seq"], _FENCE, "xid, seq", limit=limit
                )
                changes += [self._change(r, {**state, "xid": r[1], "seq": r[0]}) for r in rows]
                if rows:
                    changes = self._earlier_first(conn, changes, state, cursor or "")
                return changes

    def _earlier_first(
        self, conn: sa.Connection, changes: list[RowChange], state: dict[str, Any], cursor: str
    ) -> list[RowChange]:
        """Put before each streamed change the changes of its row that happened earlier but
        that xid order puts after it (later in this batch, or past it).

        A transaction that took its xid early may change a row after a later-xid transaction
        changed it and committed (it waited for the row's lock): xid order has the two the
        wrong way round. ``seq`` is taken while the row is locked, so for one row it is the
        order the changes happened in, and such an earlier change is committed (the later
        one waited for it), so it is readable now, whatever the fence. One past the batch
        comes again in its own place, where its commands replay (their ids are the same)."""
        streamed = [c for c in changes if c.op != "read"]
        if not streamed:
            return changes
        xid, seq = streamed[-1].position.split(":")
        top = max(c.offset for c in streamed)
        rows = self._after(conn, state, xid, int(seq), "seq < :top", "seq", top=top)
        # Every known change of each row, in the order it happened (seq).
        known: dict[str, list[RowChange]] = {}
        for change in streamed + [
            self._change(row, {**state, "xid": row[1], "seq": row[0]}) for row in rows
        ]:
            known.setdefault(_row_key(change), []).append(change)
        for group in known.values():
            group.sort(key=lambda c: c.offset)
        ordered: list[RowChange] = []
        done: set[int] = set()
        for change in changes:
            if change.op != "read":
                if change.offset in done:
                    continue  # it went earlier, before a later change of its row
                for early in known[_row_key(change)]:
                    if early.offset >= change.offset:
                        break
                    if early.offset not in done:  # an earlier change: it keeps the cursor
                        before = ordered[-1].cursor if ordered else cursor
                        ordered.append(dataclasses.replace(early, cursor=before))
                        done.add(early.offset)
            ordered.append(change)
            done.add(change.offset)
        # The whole batch is done once the last change is: the cursor may move past it.
        ordered[-1] = dataclasses.replace(ordered[-1], cursor=changes[-1].cursor)
        return ordered

    def _after(
        self,
        conn: sa.Connection,
        state: dict[str, Any],
        xid: str,
        seq: int,
        where: str,
        order: str,
        *,
        limit: int | None = None,
        **params: Any,
    ) -> Sequence[sa.Row[Any]]:
        """The changelog rows past ``(xid, seq)`` that the snapshot (if any) did not see and
        that match ``where``, in ``order``: a stream batch, or its rows' earlier changes."""
        unseen = "" if state["snap"] is None else f" AND {_UNSEEN}"
        top = "" if limit is None else " LIMIT :n"
        return conn.execute(
            sa.text(
                f"{_COLUMNS} WHERE source = :s AND {_AFTER} AND {where}{unseen} "
                f"ORDER BY {order}{top}"
            ),
            {
                "s": self.name,
                "x": xid,
                "q": seq,
                "sx": state["snap_xid"],
                "snap": state["snap"],
                "n": limit,
                **params,
            },
        ).all()

    def _change(self, row: Any, state: dict[str, Any]) -> RowChange:
        seq, xid, op, before, after, changed_at = row
        image = after if after is not None else before
        return RowChange(
            table=self.name,
            op=op,
            key={k: image.get(k) for k in self.key},
            before=before,
            after=after,
            position=f"{xid}:{seq}",
            partition=0,
            offset=int(seq),
            committed_at=changed_at,
            cursor=json.dumps(state, sort_keys=True),
        )

    @_reaching
    def lag(self, cursor: str | None) -> Lag:
        """Changes after the cursor (the snapshot's rows included), and the age of the oldest."""
        with self.engine.connect() as conn, conn.begin():
            state = json.loads(cursor) if cursor else self._start(conn)
            if state["phase"] == "snapshot":
                where = f"({_SNAPSHOT_ROWS}) OR ({_UNSEEN})"
            elif state["snap"] is not None:
                where = f"{_AFTER} AND {_UNSEEN}"
            else:
                where = _AFTER
            count, oldest = conn.execute(
                sa.text(
                    "SELECT count(*), min(changed_at) FROM keel_cdc.changelog "
                    f"WHERE source = :s AND ({where})"
                ),
                {
                    "s": self.name,
                    "x": state["xid"],
                    "q": state["seq"],
                    "sx": state["snap_xid"],
                    "snap": state["snap"],
                },
            ).one()
        seconds = 0.0 if oldest is None else max(0.0, (datetime.now(UTC) - oldest).total_seconds())
        return Lag(changes=int(count), seconds=seconds)

    @_reaching
    def prune(self, cursor: str) -> int:
        """Delete changelog rows the cursor is past (run it after the feed has moved on)."""
        state = json.loads(cursor)
        if state["phase"] != "stream":
            return 0
        with self.engine.begin() as conn:
            gone = conn.execute(
                sa.text(
                    "DELETE FROM keel_cdc.changelog WHERE source = :s "
                    "AND (xid, seq) <= (CAST(:x AS xid8), :q)"
                ),
                {"s": self.name, "x": state["xid"], "q": state["seq"]},
            )
        return int(gone.rowcount)

    def close(self) -> None:
        self.engine.dispose()


def _row_key(change: RowChange) -> str:
    return json.dumps(dict(change.key), sort_keys=True, default=str)


def _with_cursor(change: RowChange, state: dict[str, Any]) -> RowChange:
    return dataclasses.replace(change, cursor=json.dumps(state, sort_keys=True))


class HighWaterMarkSource:
    """**Only for append-only tables whose writers commit in id order.** Polls ``table`` for
    rows whose integer ``column`` (an increasing id) is past the last one seen, as Kafka
    Connect JDBC's ``incrementing`` mode does. It sees no updates or deletes, and it *skips* a
    row whose transaction commits after a later row's (kafka-connect-jdbc #172; a delay window
    only narrows that race). Use :class:`PostgresTriggerSource` for anything else."""

    def __init__(self, database: Engine | str, table: str, column: str, key: Sequence[str]) -> None:
        self.engine = _engine(database)
        self.name = _qualified(table)
        if not _NAME.match(column):
            raise ConfigurationError(f"column {column!r} is not a plain name")
        self.column = column
        self.key = tuple(key)

    @_reaching
    def read(self, cursor: str | None, limit: int) -> list[RowChange]:
        schema, table = self.name.split(".")
        since = "" if cursor is None else f'WHERE "{self.column}" > :last'
        with self.engine.connect() as conn, conn.begin():
            rows = conn.execute(
                sa.text(
                    f'SELECT to_jsonb(t) FROM "{schema}"."{table}" t {since} '
                    f'ORDER BY "{self.column}" LIMIT :n'
                ),
                {"last": None if cursor is None else json.loads(cursor), "n": limit},
            ).all()
        return [
            RowChange(
                table=self.name,
                op="insert",
                key={k: row[0].get(k) for k in self.key},
                before=None,
                after=row[0],
                position=f"hwm:{row[0][self.column]}",
                cursor=json.dumps(row[0][self.column]),
            )
            for row in rows
        ]

    @_reaching
    def lag(self, cursor: str | None) -> Lag:
        schema, table = self.name.split(".")
        since = "" if cursor is None else f'WHERE "{self.column}" > :last'
        with self.engine.connect() as conn, conn.begin():
            count = conn.execute(
                sa.text(f'SELECT count(*) FROM "{schema}"."{table}" {since}'),
                {"last": None if cursor is None else json.loads(cursor)},
            ).scalar_one()
        return Lag(changes=int(count), seconds=0.0)

    def close(self) -> None:
        self.engine.dispose()
