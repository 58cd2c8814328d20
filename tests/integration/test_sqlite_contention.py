"""T21: eight processes write one SQLite file (WAL) at once, racing on a few aggregates. Every
command reads its aggregate, then appends the next version; the history goes through the
list-append checker. "database is locked" must be retried within the lock timeout, never
surfaced, and no write may be lost."""

from __future__ import annotations

import multiprocessing
import random
import uuid
from pathlib import Path

import pytest

from framework.errors import ConcurrencyError, StoreUnavailableError
from framework.persistence import NewEvent, open_store
from tests.support.checkers import Append, check_list_append

PROCESSES = 8
COMMANDS = 40
AGGREGATES = [uuid.UUID(int=i + 1) for i in range(4)]


def writer(url: str, seed: int) -> list[tuple[str, str, list[str], str, str]]:
    """One process: COMMANDS read-then-append commands; (outcome, aggregate, read, value, error)."""
    rng = random.Random(seed)
    ops = []
    with open_store(url, name="contention") as store:
        for i in range(COMMANDS):
            aggregate = rng.choice(AGGREGATES)
            value = f"p{seed}-{i}"
            read = [e.state.decode() for e in store.read(aggregate)]
            try:
                store.append([NewEvent(aggregate, len(read) + 1, "T.Appended", value.encode())])
                ops.append(("ok", str(aggregate), read, value, ""))
            except ConcurrencyError:
                ops.append(("fail", str(aggregate), read, value, ""))
            except StoreUnavailableError as error:  # e.g. "database is locked" surfaced
                ops.append(("info", str(aggregate), read, value, str(error)))
    return ops


@pytest.mark.timeout(300)
def test_eight_processes_on_one_sqlite_file_lose_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/events.db?lock_timeout=30"
    with open_store(url, name="contention"):
        pass  # create the tables once, before the race
    context = multiprocessing.get_context("spawn")
    with context.Pool(PROCESSES) as pool:
        results = pool.starmap(writer, [(url, seed) for seed in range(PROCESSES)], chunksize=1)
    ops = [op for result in results for op in result]
    with open_store(url, name="contention") as store:
        final = {str(a): [e.state.decode() for e in store.read(a)] for a in AGGREGATES}
        versions = {str(a): [e.version for e in store.read(a)] for a in AGGREGATES}
    history = [
        Append(outcome, {aggregate: read}, {aggregate: [value]})
        for outcome, aggregate, read, value, _ in ops
    ]
    found = check_list_append(history, final)
    outcomes = {kind: sum(op[0] == kind for op in ops) for kind in ("ok", "fail", "info")}
    locked = sum("locked" in op[4] for op in ops)
    gaps = sum(v != list(range(1, len(v) + 1)) for v in versions.values())
    written = sum(len(v) for v in final.values())
    print(
        f"\nT21[sqlite]: processes={PROCESSES} attempts={len(ops)} ok={outcomes['ok']} "
        f"conflicts={outcomes['fail']} info={outcomes['info']} locked_surfaced={locked} "
        f"written={written} gaps={gaps} "
        + " ".join(f"{name}={count}" for name, count in found.items())
    )
    assert len(ops) == PROCESSES * COMMANDS
    assert set(found.values()) == {0}
    assert (locked, outcomes["info"], gaps) == (0, 0, 0)
    assert written == outcomes["ok"] > 0
