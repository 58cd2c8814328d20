"""JSON views: queries over read models, and commands.

**Queries** (:class:`ReadModelQuery`) need a logged-in user with the read model's ``view_*``
permission by default (401 anonymous, 403 without it, checked before anything is read or
waited for; ``permission=`` changes it per view). ``GET`` a list with whitelisted filters and
ordering, pagination by ``limit``/``offset`` (``limit`` at most ``max_limit``) with a ``next``
link, or one row by key (404 when unknown). Bad parameters get a 400 with a JSON message
naming the parameter. ``?after=0:123,1:45`` (the positions a command returned) makes the view
wait, at most ``KEEL['WAIT_TIMEOUT']`` seconds, until the read model has applied them:
read-your-writes (a partition the store lacks, or an offset past its end, is a 400 rather
than a wait). The answer says whether it caught up (``"caught_up": false`` after a timeout:
the data may be stale, ask again).

**Commands** (:func:`command_view`): ``POST /api/commands/<CommandType>`` with a JSON object.

=====  ===========================================================================
200    executed before (same ``command_id``): the first result, nothing written
201    executed; the body is the CommandResult with ``positions`` and ``after``
400    not JSON, not an object, or invalid: ``errors`` lists pydantic's field errors
401    not logged in
403    no ``keel.execute_<command>`` permission
404    unknown command type (``known`` lists those the user may execute), or the aggregate
       the command names does not exist
405    not a POST
409    a domain rule refused it, the id is taken, or it lost a race
413    the body is larger than ``max_body`` bytes
415    the body is not ``application/json``
503    the event store is unreachable (nothing written; retry)
504    the outcome is unknown (retry with the same ``command_id``)
=====  ===========================================================================

The view uses Django's session authentication, so it is CSRF-protected like any form post.
"""

from __future__ import annotations

import datetime as dt
import decimal
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pydantic_core
import sqlalchemy as sa
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET

from framework.contrib.django.conf import command_classes, get_application, get_engine
from framework.contrib.django.execution import (
    check_positions,
    error_status,
    execute,
    format_positions,
    parse_positions,
    wait_for,
)
from framework.contrib.django.models import execute_permission
from framework.contrib.django.readmodels import model_for_table
from framework.database import read_only
from framework.errors import CommandValidationError, FrameworkError

__all__ = [
    "AUTO",
    "LOGIN_REQUIRED",
    "PUBLIC",
    "Filter",
    "ReadModelQuery",
    "command_view",
    "json_error",
]

log = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 200

AUTO = "auto"
"""``ReadModelQuery.permission``: the ``view_*`` permission of the read model's Django model."""
LOGIN_REQUIRED = "login"
"""``ReadModelQuery.permission``: any logged-in user."""
PUBLIC = "public"
"""``ReadModelQuery.permission``: anyone, anonymous users too (opt in only for public data)."""


def json_error(status: int, message: str, **extra: Any) -> JsonResponse:
    """``{"error": message, ...}`` with ``status``."""
    return JsonResponse({"error": message, **extra}, status=status)


class BadParameter(ValueError):
    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


def _jsonable(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


@dataclass(frozen=True)
class Filter:
    """A query parameter that filters one column: ``Filter("status", choices=[...])``.

    ``lookup`` is ``"exact"`` (``col = value``; several comma-separated values mean ``IN``),
    ``"icontains"`` (a case-insensitive substring), ``"gte"`` or ``"lte"``.
    """

    column: str
    lookup: str = "exact"
    choices: Sequence[str] | None = None
    convert: Callable[[str], Any] | None = None

    def clause(self, table: sa.Table, parameter: str, raw: str) -> sa.ColumnElement[bool]:
        column = table.c[self.column]
        values = [v.strip() for v in raw.split(",")] if self.lookup == "exact" else [raw]
        if not all(values) or len(values) > 50:
            raise BadParameter(parameter, f"{parameter} needs 1 to 50 non-empty values")
        parsed = [self._parse(column, parameter, v) for v in values]
        if self.lookup == "icontains":
            escaped = str(parsed[0]).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            return column.ilike(f"%{escaped}%", escape="\\")
        if self.lookup == "gte":
            return sa.and_(column >= parsed[0])
        if self.lookup == "lte":
            return sa.and_(column <= parsed[0])
        return column.in_(parsed) if len(parsed) > 1 else column == parsed[0]

    def _parse(self, column: sa.Column[Any], parameter: str, value: str) -> Any:
        if self.choices is not None and value not in self.choices:
            raise BadParameter(
                parameter, f"{parameter} must be one of {', '.join(self.choices)}; got {value!r}"
            )
        try:
            if self.convert is not None:
                return self.convert(value)
            return _convert(column.type, value)
        except (ValueError, decimal.InvalidOperation, ArithmeticError) as error:
            raise BadParameter(
                parameter, f"{parameter}: {value!r} is not valid ({error})"
            ) from None


def _convert(kind: Any, value: str) -> Any:
    if isinstance(kind, sa.Uuid):
        return uuid.UUID(value)
    if isinstance(kind, sa.Integer):
        return int(value)
    if isinstance(kind, sa.Numeric):
        number = decimal.Decimal(value)
        if not number.is_finite():
            raise ValueError("not a finite number")
        return number
    if isinstance(kind, sa.DateTime):
        moment = dt.datetime.fromisoformat(value)
        return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
    if isinstance(kind, sa.Date):
        return dt.date.fromisoformat(value)
    if isinstance(kind, sa.Boolean):
        if value.lower() in {"1", "true", "yes"}:
            return True
        if value.lower() in {"0", "false", "no"}:
            return False
        raise ValueError("use true or false")
    return value


@dataclass
class ReadModelQuery:
    """JSON list and detail views over one read-model table.

    ::

        orders = ReadModelQuery(
            table=projections.orders.orders,
            key="order_id",
            filters={"status": Filter("status"), "customer": Filter("customer_id")},
            ordering=["placed_at", "total", "customer_name"],
            default_ordering=["-placed_at"],
            projection="orders",
        )
        urlpatterns = [path("orders/", orders.list_view), path("orders/<id>", orders.detail_view)]
    """

    table: sa.Table
    key: str
    filters: Mapping[str, Filter] = field(default_factory=dict)
    ordering: Sequence[str] = ()
    default_ordering: Sequence[str] = ()
    projection: str | None = None
    """The projection that writes ``table`` (what ``?after=`` waits for); all when None."""
    default_limit: int = 20
    max_limit: int = 100
    columns: Sequence[str] | None = None
    engine: Callable[[], sa.Engine] = get_engine
    permission: str = AUTO
    """Who may read: :data:`AUTO` (a logged-in user with the ``view_*`` permission of the Django
    model generated over ``table``, e.g. ``shop.view_customer``; superusers only when there is
    no such model), a permission name (``"shop.view_order"``), :data:`LOGIN_REQUIRED` or
    :data:`PUBLIC`. Anonymous users get 401, others without it 403, before anything is read
    or waited for."""

    # -- views ---------------------------------------------------------------------------------

    @property
    def list_view(self) -> Callable[[HttpRequest], HttpResponse]:
        @require_GET
        def view(request: HttpRequest) -> HttpResponse:
            return self._respond(request, self._list)

        view.__name__ = f"{self.table.name}_list"
        return view

    @property
    def detail_view(self) -> Callable[..., HttpResponse]:
        @require_GET
        def view(request: HttpRequest, key: str) -> HttpResponse:
            return self._respond(request, lambda r, caught_up: self._detail(r, key, caught_up))

        view.__name__ = f"{self.table.name}_detail"
        return view

    def required_permission(self) -> str | None:
        """The permission a user needs: None when being logged in is enough, ``""`` when only
        superusers may read (AUTO without a generated Django model)."""
        if self.permission in (LOGIN_REQUIRED, PUBLIC):
            return None
        if self.permission != AUTO:
            return self.permission
        model = model_for_table(self.table)
        if model is None:
            return ""
        return f"{model._meta.app_label}.view_{model._meta.model_name}"

    def refuse(self, request: HttpRequest) -> HttpResponse | None:
        """A 401/403 answer when the request's user may not read this, else None."""
        if self.permission == PUBLIC:
            return None
        user: Any = request.user
        if not user.is_authenticated:
            return json_error(401, "log in first (session authentication)")
        needed = self.required_permission()
        if needed == "" and not user.is_superuser:
            return json_error(403, f"only superusers may read {self.table.name}")
        if needed and not user.has_perm(needed):
            return json_error(403, f"you may not read {self.table.name} (needs {needed})")
        return None

    def _respond(
        self, request: HttpRequest, build: Callable[[HttpRequest, bool], HttpResponse]
    ) -> HttpResponse:
        refused = self.refuse(request)
        if refused is not None:
            return refused
        try:
            caught_up = self._wait(request)
            return build(request, caught_up)
        except BadParameter as error:
            return json_error(400, str(error), parameter=error.parameter)

    def _wait(self, request: HttpRequest) -> bool:
        raw = request.GET.get("after")
        if raw is None:
            return True
        if len(raw) > 2000:
            raise BadParameter("after", "after is too long")
        try:
            positions = parse_positions(raw)
            check_positions(positions, get_application().store.head())
        except ValueError as error:
            raise BadParameter("after", f"after: {error}") from None
        return wait_for(
            positions, projections=None if self.projection is None else [self.projection]
        )

    def _columns(self) -> list[sa.Column[Any]]:
        names = self.columns or [c.name for c in self.table.columns]
        return [self.table.c[name] for name in names]

    def _row(self, row: sa.Row[Any]) -> dict[str, Any]:
        return {key: _jsonable(value) for key, value in row._mapping.items()}

    def _detail(self, request: HttpRequest, key: str, caught_up: bool) -> HttpResponse:
        column = self.table.c[self.key]
        try:
            value = _convert(column.type, key[:MAX_PARAM_LENGTH])
        except ValueError:
            return json_error(404, f"no {self.table.name} row has {self.key} {key[:100]!r}")
        with self.engine().connect() as conn, read_only(conn).begin():
            row = conn.execute(sa.select(*self._columns()).where(column == value)).first()
        if row is None:
            return json_error(
                404,
                f"no {self.table.name} row has {self.key} {key[:100]!r}",
                caught_up=caught_up,
            )
        return JsonResponse({"data": self._row(row), "caught_up": caught_up})

    def _list(self, request: HttpRequest, caught_up: bool) -> HttpResponse:
        known = {"limit", "offset", "ordering", "after", *self.filters}
        for name, raw in request.GET.items():
            if name not in known:
                raise BadParameter(
                    name,
                    f"unknown parameter {name!r}; use {', '.join(sorted(known))}",
                )
            if len(raw) > MAX_PARAM_LENGTH and name != "after":
                raise BadParameter(name, f"{name} is longer than {MAX_PARAM_LENGTH} characters")
        limit = self._int(request, "limit", self.default_limit, 1, self.max_limit)
        offset = self._int(request, "offset", 0, 0, 10_000_000)
        where = [
            spec.clause(self.table, name, request.GET[name])
            for name, spec in self.filters.items()
            if name in request.GET
        ]
        order = self._ordering(request.GET.get("ordering"))
        query = sa.select(*self._columns()).where(*where).order_by(*order)
        with self.engine().connect() as conn, read_only(conn).begin():
            total = conn.execute(
                sa.select(sa.func.count()).select_from(self.table).where(*where)
            ).scalar_one()
            rows = conn.execute(query.limit(limit).offset(offset)).all()
        body: dict[str, Any] = {
            "count": total,
            "limit": limit,
            "offset": offset,
            "next": self._link(request, limit, offset + limit) if offset + limit < total else None,
            "previous": self._link(request, limit, max(offset - limit, 0)) if offset else None,
            "results": [self._row(r) for r in rows],
            "caught_up": caught_up,
        }
        return JsonResponse(body)

    def _int(self, request: HttpRequest, name: str, default: int, low: int, high: int) -> int:
        raw = request.GET.get(name)
        if raw is None:
            return default
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:
            raise BadParameter(name, f"{name} must be a whole number from {low} to {high}")
        value = int(raw)
        if not low <= value <= high:
            raise BadParameter(name, f"{name} must be from {low} to {high}; got {value}")
        return value

    def _ordering(self, raw: str | None) -> list[sa.ColumnElement[Any]]:
        names = [n.strip() for n in raw.split(",")] if raw else list(self.default_ordering)
        clauses: list[sa.ColumnElement[Any]] = []
        for name in names:
            bare = name.removeprefix("-")
            if bare not in self.ordering:
                allowed = ", ".join(f"{o}, -{o}" for o in self.ordering) or "none"
                raise BadParameter("ordering", f"cannot order by {name!r}; allowed: {allowed}")
            column = self.table.c[bare]
            clauses.append(column.desc() if name.startswith("-") else column.asc())
        # A stable order for pagination: the key last.
        clauses.append(self.table.c[self.key].asc())
        return clauses

    def _link(self, request: HttpRequest, limit: int, offset: int) -> str:
        params = request.GET.copy()
        params["limit"] = str(limit)
        params["offset"] = str(offset)
        params.pop("after", None)
        return request.build_absolute_uri(f"{request.path}?{params.urlencode()}")


# -- commands -----------------------------------------------------------------------------------

MAX_BODY = 256 * 1024


def command_view(request: HttpRequest, command_type: str) -> HttpResponse:
    """``POST /api/commands/<CommandType>``: validate with the command's pydantic model, execute
    as the logged-in user, answer with the CommandResult (see the module docstring)."""
    if request.method != "POST":
        response = json_error(405, "use POST with a JSON object")
        response["Allow"] = "POST"
        return response
    if not request.user.is_authenticated:
        return json_error(401, "log in first (session authentication)")
    user: Any = request.user
    commands = command_classes()
    if len(command_type) > 100 or command_type not in commands:
        # Only the commands this user may execute: the list is no map for a stranger.
        return json_error(
            404,
            f"unknown command {command_type[:100]!r}",
            known=sorted(n for n in commands if user.has_perm(execute_permission(n))),
        )
    if not user.has_perm(execute_permission(command_type)):
        return json_error(403, f"you may not execute {command_type}")
    content_type = request.content_type or ""
    if content_type != "application/json":
        return json_error(415, "send the command as application/json")
    length = request.headers.get("Content-Length", "0")
    if not (length.isascii() and length.isdigit()) or int(length) > MAX_BODY:
        return json_error(413, f"the body must be at most {MAX_BODY} bytes")
    try:
        body = request.body
    except RequestDataTooBig:
        return json_error(413, f"the body must be at most {MAX_BODY} bytes")
    if len(body) > MAX_BODY:
        return json_error(413, f"the body must be at most {MAX_BODY} bytes")
    try:
        data = pydantic_core.from_json(body, allow_inf_nan=False)
    except ValueError as error:
        return json_error(400, f"the body is not valid JSON: {error}")
    if not isinstance(data, dict):
        return json_error(400, "the body must be a JSON object of the command's fields")
    cls = commands[command_type]
    try:
        command = cls.parse(data)
    except CommandValidationError as error:
        return json_error(
            400,
            f"invalid {command_type}",
            errors=[_error(e) for e in error.errors],
        )
    try:
        result = execute(command, request)
    except FrameworkError as error:
        status = error_status(error)
        if status >= 500:
            log.exception("%s failed", command_type)
        return json_error(status, str(error), type=type(error).__name__)
    answer = {
        "command_id": str(result.command_id),
        "aggregate_id": str(result.aggregate_id) if result.aggregate_id else None,
        "versions": {str(k): v for k, v in result.versions.items()},
        "positions": {str(k): v for k, v in result.positions.items()},
        "after": format_positions(result.positions),
        "replayed": result.replayed,
    }
    return JsonResponse(answer, status=200 if result.replayed else 201)


def _error(error: Mapping[str, Any]) -> dict[str, Any]:
    loc = [p if isinstance(p, int) else str(p)[:100] for p in error.get("loc", ())]
    return {
        "loc": loc,
        "field": ".".join(str(p) for p in loc),
        "msg": str(error.get("msg", ""))[:500],
        "type": str(error.get("type", "")),
    }
