"""Waiting for commit markers, off the shard writer's thread.

A committed transaction is visible to ``read_committed`` readers only once the coordinator has
written its commit markers, a moment after ``commit_transaction`` returns. An append returns
only then, so whoever the caller tells can read what it wrote. Waiting on the writer's own
thread kept the next transaction from starting for that moment (a ``ListOffsets`` round trip
or more per batch); here one thread waits for every committed batch at once, with one request
per poll for all of them, while the writer goes on with the next.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from framework.errors import StoreUnavailableError
from framework.persistence import Positions, RecordedEvent

__all__ = ["Committed", "MarkerWatch", "positions_of"]

log = logging.getLogger(__name__)

_STOP = object()


def positions_of(recorded: Sequence[RecordedEvent]) -> Positions:
    """For each partition, the offset just past the last of ``recorded`` there (the last
    stable offset at which a ``read_committed`` reader sees them all)."""
    positions: Positions = {}
    for event in recorded:
        positions[event.partition] = max(positions.get(event.partition, 0), event.offset + 1)
    return positions


class Committed(Protocol):
    """What the watch completes: an append whose transaction has committed."""

    def succeed(self, recorded: list[RecordedEvent]) -> None: ...


@dataclass(eq=False)
class _Waiting:
    request: Committed
    recorded: list[RecordedEvent]
    wanted: Positions
    until: float


class MarkerWatch:
    """Completes committed appends once their commit markers are visible (or, committed being
    committed, once ``stable_timeout`` or the append's deadline has passed: then with a
    warning). ``end_offsets(partitions)`` gives the last stable offsets."""

    def __init__(
        self,
        end_offsets: Callable[[Iterable[int]], dict[int, int]],
        *,
        stable_timeout: float,
        name: str,
    ) -> None:
        self._end_offsets = end_offsets
        self._stable_timeout = stable_timeout
        self._queue: queue.Queue[object] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=f"keel-markers-{name}", daemon=True)
        self._thread.start()

    def hand(self, request: Committed, recorded: list[RecordedEvent], until: float) -> None:
        """Complete ``request`` with ``recorded`` once they are visible (by ``until`` at most)."""
        until = min(until, time.monotonic() + self._stable_timeout)
        self._queue.put(_Waiting(request, recorded, positions_of(recorded), until))

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def close(self, timeout: float) -> None:
        """Complete what was handed over, then stop."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        waiting: list[_Waiting] = []
        stopping = False
        delay = 0.001
        while waiting or not stopping:
            # Block for work only when there is nothing to poll for.
            fresh, stop = self._take(waiting, block=not waiting)
            stopping = stopping or stop
            if fresh:
                delay = 0.001
            if waiting:
                waiting = self._complete(waiting)
                if waiting:
                    time.sleep(delay)
                    delay = min(delay * 2, 0.05)

    def _take(self, waiting: list[_Waiting], *, block: bool) -> tuple[bool, bool]:
        """Move what was handed over into ``waiting``: (anything new, stop asked)."""
        fresh = stop = False
        try:
            item = self._queue.get(block=block)
            while True:
                if isinstance(item, _Waiting):
                    waiting.append(item)
                    fresh = True
                else:
                    stop = True
                item = self._queue.get_nowait()
        except queue.Empty:
            return fresh, stop

    def _complete(self, waiting: Sequence[_Waiting]) -> list[_Waiting]:
        """Complete the visible ones; return the rest."""
        wanted: dict[int, int] = {}
        for item in waiting:
            for partition, offset in item.wanted.items():
                wanted[partition] = max(wanted.get(partition, 0), offset)
        try:
            ends = self._end_offsets(wanted)
        except StoreUnavailableError:
            ends = {}
        now = time.monotonic()
        rest = []
        for item in waiting:
            visible = all(ends.get(p, 0) >= o for p, o in item.wanted.items())
            if not visible and now <= item.until:
                rest.append(item)
                continue
            if not visible:
                log.warning(
                    "commit markers before offsets %s still not visible after %.0f s",
                    item.wanted,
                    self._stable_timeout,
                )
            try:
                item.request.succeed(item.recorded)
            except Exception:  # one caller's completion must not stop the others'
                log.exception("completing a committed append failed")
        return rest
