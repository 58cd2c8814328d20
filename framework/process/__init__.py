"""Process managers and policies: events in, commands out (see :mod:`framework.process.manager`).

Write one with :class:`ProcessManager`, ``@reacts`` and ``@deadline``; test it with
:func:`framework.process.testing.given`; run it with :class:`ProcessWorker` or
``python -m framework.process run MODULE:FACTORY``.
"""

from framework.process.manager import (
    Clock,
    Context,
    FakeClock,
    ProcessManager,
    ProcessState,
    SystemClock,
    UnknownInstanceError,
    deadline,
    reacts,
)
from framework.process.runner import (
    ProcessStatus,
    ProcessWorker,
    Relay,
    fire_due,
    start_at_head,
    status,
)

__all__ = [
    "Clock",
    "Context",
    "FakeClock",
    "ProcessManager",
    "ProcessState",
    "ProcessStatus",
    "ProcessWorker",
    "Relay",
    "SystemClock",
    "UnknownInstanceError",
    "deadline",
    "fire_due",
    "reacts",
    "start_at_head",
    "status",
]
