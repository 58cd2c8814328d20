"""Child-process workers and history checks for the Kafka fault tests (imported by spawn)."""

from __future__ import annotations

import os
import random
import signal
import uuid
from collections import Counter
from collections.abc import Iterable
from decimal import Decimal
from multiprocessing.connection import Connection
from typing import Any

from framework.application import Application
from framework.backends.kafka import KafkaEventStore, open_store
from framework.backends.kafka_client import KafkaProducer
from framework.errors import (
    ConcurrencyError,
    OutcomeUnknownError,
    StoreError,
    StoreUnavailableError,
)
from framework.persistence import NewEvent, RecordedEvent
from tests.support.bank import Deposit, build

Outcome = tuple[str, str, str, int | None]
"""(kind, command id, account id, version written): kind is ok, conflict, info or fail."""


def deposit_once(app: Application, account: uuid.UUID) -> Outcome:
    """One T1 attempt: load the account at version v and append v+1 (through ``execute``)."""
    command = Deposit(account_id=account, amount=Decimal(1))
    try:
        result = app.execute(command)
    except ConcurrencyError:
        return ("conflict", str(command.command_id), str(account), None)
    except (OutcomeUnknownError, StoreUnavailableError):
        return ("info", str(command.command_id), str(account), None)
    except StoreError:
        return ("fail", str(command.command_id), str(account), None)
    return ("ok", str(command.command_id), str(account), result.versions[account])


def race(
    url: str, name: str, accounts: list[str], attempts: int, seed: int, barrier: Any
) -> list[Outcome]:
    """A T1 writer with its own store instance: ``attempts`` deposits to random accounts,
    starting when every writer has opened its store (``barrier``)."""
    app = build(open_store(url, name=name), name=name, max_conflict_retries=1)
    rng = random.Random(seed)
    try:
        barrier.wait(120)
        return [deposit_once(app, uuid.UUID(rng.choice(accounts))) for _ in range(attempts)]
    finally:
        app.close()


def check_streams(
    app: Application, outcomes: Iterable[Outcome], initial: dict[str, int]
) -> dict[str, int]:
    """T1 figures over every account's final stream (see reliability.md)."""
    outcomes = list(outcomes)
    kinds = Counter(kind for kind, *_ in outcomes)
    dup_versions = gaps = missing_ok = info_landed = conflict_landed = final = 0
    for account in {a for _, _, a, _ in outcomes} | set(initial):
        events = app.store.read(uuid.UUID(account))
        versions = [e.version for e in events]
        dup_versions += len(versions) - len(set(versions))
        gaps += (max(versions) - len(set(versions))) if versions else 0
        final += len(events)
        by_command = {
            str(h.metadata.command_id): h.recorded.version for h in app.history(uuid.UUID(account))
        }
        for kind, command_id, acc, version in outcomes:
            if acc != account:
                continue
            if kind == "ok" and by_command.get(command_id) != version:
                missing_ok += 1
            elif kind == "info" and command_id in by_command:
                info_landed += 1
            elif kind in ("conflict", "fail") and command_id in by_command:
                conflict_landed += 1
    return {
        "attempts": len(outcomes),
        "ok": kinds["ok"],
        "conflicts": kinds["conflict"],
        "info": kinds["info"],
        "fail": kinds["fail"],
        "initial_length": sum(initial.values()),
        "final_length": final,
        "dup_versions": dup_versions,
        "gaps": gaps,
        "missing_ok": missing_ok,
        "info_landed": info_landed,
        "conflict_landed": conflict_landed,
    }


def zombie(url: str, name: str, aggregate: str, stop_in: str, conn: Connection) -> None:
    """T4: a writer that SIGSTOPs itself inside an append (at ``begin_transaction`` or just
    before ``commit_transaction``), then reports how that append ended once resumed."""
    store = open_store(url, name=name)
    assert isinstance(store, KafkaEventStore)
    target = uuid.UUID(aggregate)
    store.append([NewEvent(uuid.uuid4(), 1, "Warmup", b"{}")])  # init + catch up first
    armed = {"on": False}
    original = getattr(KafkaProducer, stop_in)

    def stopping(self: KafkaProducer) -> Any:
        if armed["on"]:
            armed["on"] = False
            os.kill(os.getpid(), signal.SIGSTOP)
        return original(self)

    setattr(KafkaProducer, stop_in, stopping)
    version = len(store.read(target)) + 1
    conn.send(("ready", version))
    conn.recv()
    armed["on"] = True
    state = f'{{"zombie":{os.getpid()}}}'.encode()
    try:
        positions = store.append([NewEvent(target, version, "Zombie", state)])
        result: tuple[Any, ...] = ("ok", version, positions)
    except Exception as error:
        result = (type(error).__name__, version, str(error))
    stats = {shard: dict(w.stats) for shard, w in store._writers.items()}
    conn.send((*result, stats))
    conn.recv()
    store.close()


def versions_of(events: Iterable[RecordedEvent]) -> list[int]:
    return [e.version for e in events]
