"""Settings of a dedicated worker or writer process as a whole, applied once it has started.

**The garbage collector.** A projection worker or a writer allocates in batches: a poll brings
a thousand records, each turned into several objects that live until the batch is written.
With Python's default threshold (a young-generation collection every 700 allocations) those
objects are walked again and again while they wait, and the collector took about a quarter of
a projection worker's CPU (measured: 1.9 s of collector time over three runs of 50,000
records). :func:`tune_garbage_collector` moves everything start-up created out of the
collector's sight (``gc.freeze``: the modules, the application, the mappings, which live as
long as the process) and collects the young generation every ``KEEL_GC_THRESHOLD`` (default
10,000) allocations instead; memory held by garbage cycles waits a little longer, nothing is
leaked. ``KEEL_GC_THRESHOLD=0`` keeps Python's defaults.

The worker, writer, process-manager and CDC feed command lines (and their management
commands) call it once their start-up is done; a
process that hosts a worker among other work (a web process running one in a thread) is left as
it is unless it calls this itself.
"""

from __future__ import annotations

import gc
import os

from framework.errors import ConfigurationError

__all__ = ["DEFAULT_GC_THRESHOLD", "gc_threshold", "tune_garbage_collector"]

DEFAULT_GC_THRESHOLD = 10_000
"""Allocations between two young-generation collections in a tuned process."""


def gc_threshold() -> int:
    """``KEEL_GC_THRESHOLD`` (allocations between young-generation collections; 0 keeps
    Python's defaults), else :data:`DEFAULT_GC_THRESHOLD`."""
    raw = os.environ.get("KEEL_GC_THRESHOLD", "").strip()
    if not raw:
        return DEFAULT_GC_THRESHOLD
    try:
        threshold = int(raw)
    except ValueError:
        threshold = -1
    if threshold < 0:
        raise ConfigurationError(
            f"KEEL_GC_THRESHOLD={raw!r} is not a whole number of allocations (0 or more; 0 "
            f"keeps Python's defaults; unset means {DEFAULT_GC_THRESHOLD:,})"
        )
    return threshold


def tune_garbage_collector(threshold: int | None = None) -> bool:
    """Freeze what start-up created and collect the young generation every ``threshold``
    allocations (default: :func:`gc_threshold`). Returns whether anything changed."""
    threshold = gc_threshold() if threshold is None else threshold
    if threshold <= 0:
        return False
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(threshold, older, oldest)
    return True
