"""Pull queries over streaming tables, and a server-sent-events push of their changes.

:func:`window_query` makes a :class:`~framework.contrib.django.views.ReadModelQuery` over a
:class:`~framework.streaming.Windowed` table, with the filters a ksqlDB pull query has
(``SELECT ... WHERE key = .. AND WINDOWSTART >= ..``) and the views' usual conventions
(whitelisted filters and ordering, ``limit``/``offset``, ``after=`` for read-your-writes)::

    hourly = window_query(SalesPerHourProjection.hourly, projection="sales_per_hour")
    path("sales/hourly", hourly.list_view), path("sales/hourly/events", push_view(hourly))

===============  ============================================================================
``since``        windows starting at or after this ISO time (``window_start >= since``)
``until``        windows starting at or before it (``window_start <= until``)
``ends_by``      windows ending at or before it (``window_end <= ends_by``)
``<key>``        each group-by column, e.g. ``country=CH,DE``
``closed``       ``true``: only windows every partition has passed; ``false``: open ones
``amended``      ``true``: rows changed by a late event (``amended_after_close``)
===============  ============================================================================

:func:`push_view` streams a query's rows as ``text/event-stream``: every matching row first,
then each row that changes (a window's new ``revision``, a join row's new values) as an
``event: row``, a ``: keep-alive`` comment while nothing changes, and ``event: end`` after
``seconds`` (the browser's ``EventSource`` reconnects by itself). It polls the read model:
rows change only when a worker commits, and the view needs nothing beside the database. Each
open stream holds one thread of a WSGI server for up to ``seconds``: size the server's threads
for the listeners you expect, or serve it under ASGI.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import sqlalchemy as sa
from django.http import HttpRequest, HttpResponseBase, StreamingHttpResponse
from django.views.decorators.http import require_GET

from framework.contrib.django.views import (
    BadParameter,
    Filter,
    ReadModelQuery,
    _jsonable,
    json_error,
)
from framework.database import read_only
from framework.streaming import Windowed

__all__ = ["push_view", "window_query"]


def window_query(
    windowed: Windowed,
    *,
    projection: str,
    filters: Mapping[str, Filter] | None = None,
    **options: Any,
) -> ReadModelQuery:
    """A query over ``windowed``'s table: window bounds, group-by keys, closed and amended
    rows (see the module docstring); ``filters`` adds or replaces some; ``options`` go to
    :class:`ReadModelQuery` (``permission``, ``max_limit``, ...)."""
    table = windowed.table
    keys = list(windowed.key)
    wanted: dict[str, Filter] = {
        "since": Filter("window_start", lookup="gte"),
        "until": Filter("window_start", lookup="lte"),
        "ends_by": Filter("window_end", lookup="lte"),
        **{k: Filter(k) for k in keys},
        "closed": Filter("closed"),
        "amended": Filter("amended_after_close"),
        **(filters or {}),
    }
    aggregates = list(windowed.aggregates)
    options.setdefault("ordering", ["window_start", "window_end", *keys, *aggregates])
    options.setdefault("default_ordering", ["-window_start", *keys])
    options.setdefault("columns", [c.name for c in table.columns if c.name != "state"])
    return ReadModelQuery(
        table=table, key="window_start", filters=wanted, projection=projection, **options
    )


def push_view(
    query: ReadModelQuery, *, seconds: float = 300.0, poll: float = 1.0
) -> Callable[[HttpRequest], HttpResponseBase]:
    """A view streaming ``query``'s rows (with its filters) as server-sent events."""

    @require_GET
    def view(request: HttpRequest) -> HttpResponseBase:
        refused = query.refuse(request)
        if refused is not None:
            return refused
        known = set(query.filters)
        for name in request.GET:
            if name not in known:
                return json_error(
                    400, f"unknown parameter {name!r}; use {', '.join(sorted(known))}"
                )
        try:
            where = [
                spec.clause(query.table, name, request.GET[name])
                for name, spec in query.filters.items()
                if name in request.GET
            ]
        except BadParameter as error:
            return json_error(400, str(error), parameter=error.parameter)
        response = StreamingHttpResponse(
            _events(query, where, seconds, poll), content_type="text/event-stream"
        )
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # let a proxy pass each event at once
        return response

    view.__name__ = f"{query.table.name}_push"
    return view


def _events(
    query: ReadModelQuery, where: list[Any], seconds: float, poll: float
) -> Iterator[bytes]:
    table = query.table
    columns = [table.c[name] for name in (query.columns or table.c.keys())]
    pk = [c.name for c in table.primary_key.columns]
    select = sa.select(*columns).where(*where).order_by(*table.primary_key.columns)
    seen: dict[tuple[Any, ...], str] = {}
    deadline = time.monotonic() + seconds
    sequence = 0
    yield b"retry: 2000\n\n"
    while True:
        with query.engine().connect() as conn, read_only(conn).begin():
            rows = [{k: _jsonable(v) for k, v in r._mapping.items()} for r in conn.execute(select)]
        changed = False
        for row in rows:
            identity = tuple(row[k] for k in pk)
            version = json.dumps(row, sort_keys=True, default=str)
            if seen.get(identity) != version:
                seen[identity] = version
                sequence += 1
                changed = True
                yield f"id: {sequence}\nevent: row\ndata: {version}\n\n".encode()
        if time.monotonic() >= deadline:
            yield b"event: end\ndata: {}\n\n"
            return
        if not changed:
            yield b": keep-alive\n\n"
        time.sleep(poll)
