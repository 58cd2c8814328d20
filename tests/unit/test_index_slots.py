"""Stale local-index slots of the Kafka store are deleted; slots in use or recent are kept."""

from __future__ import annotations

import os
import time
from pathlib import Path

from framework.backends.kafka_index import lock_index_file, prune_index_slots


def make_slot(base: Path, name: str, age_days: float) -> Path:
    path = base / name
    for part in (path, Path(f"{path}-wal")):
        part.write_bytes(b"x")
        old = time.time() - age_days * 86400
        os.utime(part, (old, old))
    return path


def test_free_slots_unused_for_a_week_are_deleted(tmp_path: Path) -> None:
    mine = make_slot(tmp_path, "shop.events.0.sqlite", 30)
    stale = make_slot(tmp_path, "shop.events.1.sqlite", 8)
    recent = make_slot(tmp_path, "shop.events.2.sqlite", 1)
    held = make_slot(tmp_path, "bank.events.0.sqlite", 30)
    lock = lock_index_file(held)  # another live store holds it
    assert lock is not None
    try:
        deleted = prune_index_slots(tmp_path, keep=mine, max_age_days=7)
    finally:
        lock.close()
    assert deleted == [stale]
    assert not stale.exists() and not Path(f"{stale}-wal").exists()
    assert mine.exists() and recent.exists() and held.exists()
