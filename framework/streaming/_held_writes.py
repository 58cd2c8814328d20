"""The writes a windowed table holds back within a batch, and the fast path's one statement.

Within a run of events, ledger entries collect and the contributions to each fixed window fold
in Python into one pending row. :func:`flush` writes them (one ``executemany`` per table)
before anything reads the tables: a retraction or correction, a close, a handler of the
projection, the end of the run. The rows are those one statement per event gives, because
every buffered aggregate's SQL merges a folded state as it adds a value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from framework.streaming._projection import StreamContext

if TYPE_CHECKING:
    from framework.streaming._windowed import Windowed

__all__ = ["HeldWrites", "Pending", "flush", "held", "ledger_insert", "upsert", "window_params"]


@dataclass
class Pending:
    """The contributions a batch made to one window, folded (written by :func:`flush`)."""

    key: Mapping[str, Any]
    start: datetime
    end: datetime
    states: dict[str, Any]
    closed: bool
    count: int = 0
    late: int = 0


@dataclass
class HeldWrites:
    """A windowed table's writes held back within a batch."""

    rows: dict[tuple[Any, ...], Pending] = field(default_factory=dict)
    ledger: list[dict[str, Any]] = field(default_factory=list)
    ledger_table: sa.Table | None = None


def held(windowed: Windowed, ctx: StreamContext) -> HeldWrites:
    """The table's held writes in this transaction (registered with ``ctx`` to be flushed)."""
    pending: HeldWrites | None = ctx.cache.get(windowed.pending_key)
    if pending is None:
        pending = ctx.cache[windowed.pending_key] = HeldWrites()
        ctx.pending[windowed.attr] = lambda: flush(windowed, ctx)
    return pending


def flush(windowed: Windowed, ctx: StreamContext) -> None:
    """Write what this batch held back: ledger entries, then one UPSERT per window (an
    ``executemany`` per table)."""
    pending: HeldWrites | None = ctx.cache.pop(windowed.pending_key, None)
    ctx.pending.pop(windowed.attr, None)
    if pending is None:
        return
    if pending.ledger_table is not None and pending.ledger:
        ctx.conn.execute(ledger_insert(windowed, pending.ledger_table), pending.ledger)
    by_table: dict[sa.Table, list[dict[str, Any]]] = {}
    for (table, *_slot), entry in pending.rows.items():
        params = window_params(
            entry.key, entry.start, entry.end, entry.count, entry.late, entry.closed
        )
        for n, a in windowed.aggregates.items():
            params[n] = a.result(entry.states[n])
            params[f"v_{n}"] = entry.states[n]
        by_table.setdefault(table, []).append(params)
    for table, rows in by_table.items():
        ctx.conn.execute(upsert(windowed, ctx.conn, table), rows)


def window_params(
    key: Mapping[str, Any], start: datetime, end: datetime, n: int, late: int, closed: bool
) -> dict[str, Any]:
    """The parameters of :func:`upsert` but the aggregates' (``<name>`` and ``v_<name>``)."""
    return {
        **key,
        "window_start": start,
        "window_end": end,
        "n": n,
        "late_n": late,
        "late_b": late > 0,
        "closed": closed,
    }


def ledger_insert(windowed: Windowed, ledger: sa.Table) -> Any:
    """The ledger's INSERT (built once per table)."""
    cached = windowed.statements.get((ledger.name, "insert"))
    if cached is None or cached[0] is not ledger:
        columns = ["contribution_id", "event_time", "late", "contributed", *windowed.key]
        statement = ledger.insert().values({c: sa.bindparam(c) for c in columns})
        cached = (ledger, statement)
        windowed.statements[(ledger.name, "insert")] = cached
    return cached[1]


def upsert(windowed: Windowed, conn: sa.Connection, table: sa.Table) -> Any:
    """The fast path's one statement (built once per table and dialect: building a statement
    per event costs more than running it): ``n`` contributions folded into the states
    ``v_<aggregate>``."""
    cache_key = (table.name, conn.dialect.name)
    cached = windowed.statements.get(cache_key)
    if cached is not None and cached[0] is table:
        return cached[1]
    from sqlalchemy.dialects import postgresql, sqlite

    c = table.c
    count = sa.bindparam("n", type_=sa.Integer())
    late_n = sa.bindparam("late_n", type_=sa.Integer())
    late_b = sa.bindparam("late_b", type_=sa.Boolean())
    insert_values: dict[str, Any] = {k: sa.bindparam(k) for k in windowed.key}
    insert_values.update(
        window_start=sa.bindparam("window_start"),
        window_end=sa.bindparam("window_end"),
        contributions=count,
        revision=count,
        late_events=late_n,
        amended_after_close=late_b,
        closed=sa.bindparam("closed"),
    )
    update: dict[str, Any] = {
        "contributions": c.contributions + count,
        "revision": c.revision + count,
        "late_events": c.late_events + late_n,
        "amended_after_close": sa.or_(c.amended_after_close, late_b),
    }
    for n, a in windowed.aggregates.items():
        insert_values[n] = sa.bindparam(n, type_=a.type)
        folded = sa.bindparam(f"v_{n}", type_=a.type)
        expression = a.sql_merge(c[n], folded) if windowed.buffered else a.sql_add(c[n], folded)
        if expression is not None and expression is not c[n]:
            update[n] = expression
    dialect: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = (
        dialect.insert(table)
        .values(insert_values)
        .on_conflict_do_update(
            index_elements=[col.name for col in table.primary_key.columns], set_=update
        )
    )
    # Neither dialect's INSERT ... ON CONFLICT has a cache key (SQLAlchemy compiles it on
    # every execution): compile it once into a text statement with typed parameters.
    compiled = statement.compile(dialect=dialect.dialect(paramstyle="named"))
    text = sa.text(str(compiled)).bindparams(
        *(
            sa.bindparam(name, value=bind.value, type_=bind.type)
            for bind, name in compiled.bind_names.items()
        )
    )
    windowed.statements[cache_key] = (table, text)
    return text
