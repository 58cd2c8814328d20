"""Exact, deterministic JSON for the values streaming tables keep (ledger values, aggregate
states): Decimals, datetimes, dates and UUIDs survive the round trip with their types, and the
same value always gives the same bytes."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

__all__ = ["WINDOW_IDS", "dumps", "loads", "utc"]

WINDOW_IDS = UUID("0f6b8b8e-5a57-4d0c-b3d1-8f1f3c2a9e41")
"""The ``uuid5`` namespace of session ids and of windows' effect ids (stored: never change it)."""


def utc(moment: datetime) -> datetime:
    """``moment`` as an aware UTC datetime (SQLite hands back naive ones)."""
    if moment.tzinfo is UTC:
        return moment  # the usual case, per event: no conversion
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def _tag(value: Any) -> Any:
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        # Exact: two floats that print alike are the same float.
        return {"$f": repr(value)}
    if isinstance(value, Decimal):
        return {"$d": str(value)}
    if isinstance(value, datetime):
        return {"$t": utc(value).isoformat()}
    if isinstance(value, date):
        return {"$date": value.isoformat()}
    if isinstance(value, UUID):
        return {"$u": str(value)}
    if isinstance(value, list | tuple):
        return [_tag(v) for v in value]
    if isinstance(value, dict):
        return {"$o": [[str(k), _tag(v)] for k, v in sorted(value.items())]}
    raise TypeError(f"a streaming table cannot keep a {type(value).__name__}: {value!r}")


def _untag(value: Any) -> Any:
    if isinstance(value, list):
        return [_untag(v) for v in value]
    if not isinstance(value, dict):
        return value
    ((tag, raw),) = value.items()
    if tag == "$f":
        return float(raw)
    if tag == "$d":
        return Decimal(raw)
    if tag == "$t":
        return datetime.fromisoformat(raw)
    if tag == "$date":
        return date.fromisoformat(raw)
    if tag == "$u":
        return UUID(raw)
    return {k: _untag(v) for k, v in raw}


def dumps(value: Any) -> str:
    return json.dumps(_tag(value), separators=(",", ":"), sort_keys=True)


def loads(text: str | None) -> Any:
    return None if text is None else _untag(json.loads(text))
