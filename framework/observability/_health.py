"""Liveness and readiness, for container orchestrators.

A :class:`Health` is a list of named :class:`Check` results; it is ready when every check
passes. The Django host turns it into ``/health/live`` and ``/health/ready`` (200 or 503) and
``manage.py keel_health`` (exit code 0 or 1); other hosts can call :func:`store_check` and
:func:`database_check` themselves.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Check", "Health", "bounded", "database_check", "store_check"]


@dataclass(frozen=True)
class Check:
    """One named condition: passed or not, and why."""

    name: str
    ok: bool
    detail: str = ""


@dataclass
class Health:
    """The checks of one probe."""

    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def add(self, check: Check) -> Health:
        self.checks.append(check)
        return self

    def as_json(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.ok else "unavailable",
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
        }

    def describe(self) -> str:
        lines = [f"{'ready' if self.ok else 'NOT READY'}"]
        lines += [f"  {'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}" for c in self.checks]
        return "\n".join(lines)


def bounded(work: Callable[[], Any], timeout: float) -> Any:
    """``work()``, or TimeoutError when it takes longer than ``timeout`` seconds (a probe must
    answer even while a broker connection hangs; the call goes on in a daemon thread)."""
    result: list[Any] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as error:
            failure.append(error)

    thread = threading.Thread(target=run, name="keel-health-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {timeout:g} s")
    if failure:
        raise failure[0]
    return result[0] if result else None


def store_check(store: Any, timeout: float = 3.0) -> Check:
    """The event store answers (on Kafka: the broker gives the topic's end offsets)."""
    try:
        head = bounded(store.head, timeout)
    except Exception as error:
        return Check("event store", False, f"unreachable: {type(error).__name__}: {error}"[:300])
    return Check("event store", True, f"{len(head)} partition(s)")


def database_check(engine: Any, timeout: float = 3.0) -> Check:
    """The read-model database answers ``SELECT 1``."""
    import sqlalchemy as sa

    def ping() -> None:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    try:
        bounded(ping, timeout)
    except Exception as error:
        return Check("read-model database", False, f"unreachable: {error}"[:300])
    return Check("read-model database", True, "answers")
