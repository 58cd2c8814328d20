"""Process managers and policies: events in, commands out (see :mod:`framework.process.manager`).

Write one with :class:`ProcessManager`, ``@reacts`` and ``@deadline``; test it with
:func:`framework.process.testing.given`; run it with :class:`ProcessWorker` or
``python -m framework.process run MODULE:FACTORY``. A deadline whose handler keeps failing is
parked (:mod:`framework.process.deadlines`) and re-driven with ``ProcessWorker.redrive``
(:func:`redrive_parked` refuses ids that are not parked) or
``python -m framework.process dead-letters MODULE:FACTORY --redrive``.
"""

from framework.process.deadlines import (
    ParkedDeadline,
    fire_due,
    parked_deadlines,
    redrive_deadlines,
)
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
    redrive_parked,
    start_at_head,
    status,
)

__all__ = [
    "Clock",
    "Context",
    "FakeClock",
    "ParkedDeadline",
    "ProcessManager",
    "ProcessState",
    "ProcessStatus",
    "ProcessWorker",
    "Relay",
    "SystemClock",
    "UnknownInstanceError",
    "deadline",
    "fire_due",
    "parked_deadlines",
    "reacts",
    "redrive_deadlines",
    "redrive_parked",
    "start_at_head",
    "status",
]
