"""Aggregates over a window's contributions: count, sum, min, max, mean, latest, earliest,
collect, and retractions; subclass :class:`Aggregate` for your own.

An aggregate folds *states*: ``add`` a contribution's value, ``remove`` it again (a retraction
or a correction), ``merge`` two states (session windows joining). Every state must be a value
:mod:`framework.streaming._values` can store (numbers, Decimals, strings, datetimes, UUIDs,
lists, dicts), and the folds must be commutative and associative: that is what makes a table
identical whatever order the partitions interleave in. Sums are exact (Decimal), never float.

``order`` is the contribution's ``(event_time, contribution_id)``: a total order independent of
delivery, which ``Latest``/``Earliest``/``Collect`` break ties with.
"""

from __future__ import annotations

import bisect
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Final
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from framework.errors import ConfigurationError

__all__ = [
    "RECOMPUTE",
    "Aggregate",
    "Collect",
    "Count",
    "Earliest",
    "Latest",
    "Max",
    "Mean",
    "Min",
    "Retractions",
    "Sum",
]

Order = tuple[datetime, str]


class _Recompute:
    def __repr__(self) -> str:
        return "RECOMPUTE"


RECOMPUTE: Final = _Recompute()
"""Returned by :meth:`Aggregate.remove` when a state cannot forget a value by itself (the
minimum was removed): the window is then folded again from its contribution ledger."""


def _decimal(value: Any) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigurationError(f"cannot sum {type(value).__name__} {value!r}: give numbers")
    return Decimal(str(value))


def _plain(value: Any) -> Any:
    """A JSON column's view of a value (Decimal and friends as strings)."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date | UUID):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


class Aggregate(ABC):
    """One column of a windowed table, folded from the contributions in the window.

    ``of`` extracts the value from the contributing event (``None``: the aggregate needs no
    value, like :class:`Count`); ``type`` is the column's SQL type. Subclasses implement
    ``init``, ``add``, ``merge`` (abstract: an aggregate must say how two states merge) and,
    when they can forget a value cheaply, ``remove``.
    """

    type: sa.types.TypeEngine[Any] = sa.JSON()
    counts_retractions = False

    def __init__(
        self,
        of: Callable[[Any], Any] | None = None,
        *,
        type: sa.types.TypeEngine[Any] | None = None,
    ) -> None:
        self.of = of
        if type is not None:
            self.type = type

    def value(self, event: Any) -> Any:
        return None if self.of is None else self.of(event)

    @abstractmethod
    def init(self) -> Any:
        """The state of an empty window."""

    @abstractmethod
    def add(self, state: Any, value: Any, order: Order) -> Any:
        """The state with one more contribution."""

    def remove(self, state: Any, value: Any, order: Order, *, retracted: bool) -> Any:
        """The state without a contribution (``retracted``: by a retraction, not a move), or
        :data:`RECOMPUTE`."""
        return RECOMPUTE

    @abstractmethod
    def merge(self, a: Any, b: Any) -> Any:
        """One state from two (windows merging)."""

    def result(self, state: Any) -> Any:
        """The column's value."""
        return state

    # The fast path: a single UPSERT with SQL arithmetic, when every aggregate of a table has it.
    # ``value`` is a bound parameter of the aggregate's type (statements are built once).
    def sql_add(self, column: ColumnElement[Any], value: Any) -> ColumnElement[Any] | None:
        return None

    def sql_remove(
        self, column: ColumnElement[Any], value: Any, *, retracted: bool
    ) -> ColumnElement[Any] | None:
        return None

    # Within one batch a table folds the contributions to each window in Python and writes
    # them with one statement: ``state`` is a bound parameter holding the folded state.
    def sql_merge(self, column: ColumnElement[Any], state: Any) -> ColumnElement[Any] | None:
        return None

    @property
    def has_sql(self) -> bool:
        return type(self).sql_add is not Aggregate.sql_add

    @property
    def has_sql_merge(self) -> bool:
        return type(self).sql_merge is not Aggregate.sql_merge


class Count(Aggregate):
    """How many contributions the window holds."""

    type = sa.Integer()

    def init(self) -> int:
        return 0

    def add(self, state: int, value: Any, order: Order) -> int:
        return state + 1

    def remove(self, state: int, value: Any, order: Order, *, retracted: bool) -> int:
        return state - 1

    def merge(self, a: int, b: int) -> int:
        return a + b

    def sql_add(self, column: ColumnElement[Any], value: Any) -> ColumnElement[Any]:
        return column + 1

    def sql_remove(
        self, column: ColumnElement[Any], value: Any, *, retracted: bool
    ) -> ColumnElement[Any]:
        return column - 1

    def sql_merge(self, column: ColumnElement[Any], state: Any) -> ColumnElement[Any]:
        merged: ColumnElement[Any] = column + state
        return merged


class Retractions(Aggregate):
    """How many contributions were retracted from the window (cancelled orders)."""

    type = sa.Integer()
    counts_retractions = True

    def init(self) -> int:
        return 0

    def add(self, state: int, value: Any, order: Order) -> int:
        return state

    def remove(self, state: int, value: Any, order: Order, *, retracted: bool) -> int:
        return state + 1 if retracted else state

    def merge(self, a: int, b: int) -> int:
        return a + b

    def sql_add(self, column: ColumnElement[Any], value: Any) -> ColumnElement[Any]:
        return column

    def sql_remove(
        self, column: ColumnElement[Any], value: Any, *, retracted: bool
    ) -> ColumnElement[Any]:
        return column + 1 if retracted else column

    def sql_merge(self, column: ColumnElement[Any], state: Any) -> ColumnElement[Any]:
        return column  # adding contributions retracts nothing


class Sum(Aggregate):
    """The exact (Decimal) sum of the values."""

    type = sa.Numeric(20, 4)

    def value(self, event: Any) -> Decimal:
        return _decimal(super().value(event))

    def init(self) -> Decimal:
        return Decimal(0)

    def add(self, state: Decimal, value: Decimal, order: Order) -> Decimal:
        return state + value

    def remove(self, state: Decimal, value: Decimal, order: Order, *, retracted: bool) -> Decimal:
        return state - value

    def merge(self, a: Decimal, b: Decimal) -> Decimal:
        return a + b

    def sql_add(self, column: ColumnElement[Any], value: Any) -> ColumnElement[Any]:
        added: ColumnElement[Any] = column + value
        return added

    def sql_remove(
        self, column: ColumnElement[Any], value: Any, *, retracted: bool
    ) -> ColumnElement[Any]:
        removed: ColumnElement[Any] = column - value
        return removed

    def sql_merge(self, column: ColumnElement[Any], state: Any) -> ColumnElement[Any]:
        return self.sql_add(column, state)


class _Extreme(Aggregate):
    _smaller: bool

    def init(self) -> Any:
        return None

    def _wins(self, new: Any, old: Any) -> bool:
        return bool(new < old) if self._smaller else bool(new > old)

    def add(self, state: Any, value: Any, order: Order) -> Any:
        return value if state is None or self._wins(value, state) else state

    def remove(self, state: Any, value: Any, order: Order, *, retracted: bool) -> Any:
        return RECOMPUTE if value == state else state

    def merge(self, a: Any, b: Any) -> Any:
        return b if a is None else a if b is None else self.add(a, b, (datetime.min, ""))

    def sql_add(self, column: ColumnElement[Any], value: Any) -> ColumnElement[Any]:
        beaten = column > value if self._smaller else column < value
        return sa.case((column.is_(None) | beaten, value), else_=column)

    def sql_merge(self, column: ColumnElement[Any], state: Any) -> ColumnElement[Any]:
        return self.sql_add(column, state)  # the state is the extreme of the folded values


class Min(_Extreme):
    """The smallest value (``type`` defaults to Numeric)."""

    type = sa.Numeric(20, 4)
    _smaller = True


class Max(_Extreme):
    """The largest value (``type`` defaults to Numeric)."""

    type = sa.Numeric(20, 4)
    _smaller = False


class Mean(Aggregate):
    """The exact mean of the values (a Decimal; kept as sum and count)."""

    type = sa.Numeric(20, 4)

    def value(self, event: Any) -> Decimal:
        return _decimal(super().value(event))

    def init(self) -> list[Any]:
        return [Decimal(0), 0]

    def add(self, state: list[Any], value: Decimal, order: Order) -> list[Any]:
        return [state[0] + value, state[1] + 1]

    def remove(self, state: list[Any], value: Decimal, order: Order, *, retracted: bool) -> Any:
        return [state[0] - value, state[1] - 1]

    def merge(self, a: list[Any], b: list[Any]) -> list[Any]:
        return [a[0] + b[0], a[1] + b[1]]

    def result(self, state: list[Any]) -> Decimal | None:
        return state[0] / state[1] if state[1] else None


class Latest(Aggregate):
    """The value of the contribution with the latest event time (ties: the contribution id)."""

    _latest = True

    def init(self) -> Any:
        return None

    def add(self, state: Any, value: Any, order: Order) -> Any:
        if state is None or (order > tuple(state[0])) == self._latest:
            return [list(order), value]
        return state

    def remove(self, state: Any, value: Any, order: Order, *, retracted: bool) -> Any:
        return RECOMPUTE if state is not None and tuple(state[0]) == order else state

    def merge(self, a: Any, b: Any) -> Any:
        return a if b is None else self.add(a, b[1], (b[0][0], b[0][1]))

    def result(self, state: Any) -> Any:
        return None if state is None else _plain(state[1])


class Earliest(Latest):
    """The value of the contribution with the earliest event time."""

    _latest = False


class Collect(Aggregate):
    """Every value, in event-time order (a JSON list)."""

    def init(self) -> list[Any]:
        return []

    def add(self, state: list[Any], value: Any, order: Order) -> list[Any]:
        items = list(state)
        keys = [(i[0], i[1]) for i in items]
        items.insert(bisect.bisect(keys, order), [order[0], order[1], value])
        return items

    def remove(self, state: list[Any], value: Any, order: Order, *, retracted: bool) -> Any:
        return [i for i in state if (i[0], i[1]) != order]

    def merge(self, a: list[Any], b: list[Any]) -> list[Any]:
        return sorted([*a, *b], key=lambda i: (i[0], i[1]))

    def result(self, state: list[Any]) -> list[Any]:
        return [_plain(i[2]) for i in state]
