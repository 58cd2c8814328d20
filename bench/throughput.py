"""Section 1: command throughput, commands/s end to end.

Each command is a deposit into an existing account: the pydantic command is built (validated)
inside the timed loop, then ``Application.execute`` checks the command id, loads the account,
decides and appends with the version check. The peer is the eventsourcing library's own
``Application`` doing the same (validate the same command, ``repository.get``, decide, ``save``
with its version check) on its SQLite and PostgreSQL recorders, with the same number of commands
and the same number of caller threads. Every caller has its own accounts, so nothing conflicts.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any
from uuid import UUID

from bench.domain import Deposit, OpenAccount, PeerBank, build_app, build_peer
from bench.harness import Context, Row, Section, ServiceMissing, Stopwatch, deciding, rate
from framework.application import Application

TITLE = "Command throughput (commands/s through execute, end to end)"
CALLERS = (1, 8)
AMOUNT = Decimal("10.00")


def drive(
    callers: int, setup: Callable[[int], Any], work: Callable[[Any, int], None], per_caller: int
) -> tuple[float, int]:
    """Run ``setup(caller)`` in each of ``callers`` threads, then, all released at once,
    ``work(state, i)`` ``per_caller`` times each. Returns (seconds of the timed part, errors)."""
    barrier = threading.Barrier(callers + 1)
    done = threading.Barrier(callers + 1)
    errors: list[BaseException] = []

    def caller(index: int) -> None:
        state = None
        try:
            state = setup(index)
        except BaseException as error:
            errors.append(error)
        barrier.wait()
        if state is not None:
            for i in range(per_caller):
                try:
                    work(state, i)
                except BaseException as error:
                    errors.append(error)
                    break
        done.wait()

    threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(callers)]
    for t in threads:
        t.start()
    barrier.wait()
    with Stopwatch() as sw:
        done.wait()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} commands failed; first: {errors[0]!r}") from errors[0]
    return sw.seconds, len(errors)


def accounts_per_caller(commands: int, callers: int) -> int:
    # About 20 deposits per account: histories stay short (no snapshot is due) and alike.
    return max(1, commands // (callers * 20))


def measure_keel(app: Application, commands: int, callers: int) -> dict[str, Any]:
    per_caller = commands // callers
    accounts = accounts_per_caller(commands, callers)

    def setup(_: int) -> list[UUID]:
        ids = [uuid.uuid4() for _ in range(accounts)]
        for account_id in ids:
            app.execute(OpenAccount(account_id=account_id, owner="Ada", email="ada@example.org"))
        return ids

    def work(ids: list[UUID], i: int) -> None:
        app.execute(Deposit(account_id=ids[i % len(ids)], amount=AMOUNT), user="bench")

    seconds, _ = drive(callers, setup, work, per_caller)
    done = per_caller * callers
    return {
        "commands": done,
        "callers": callers,
        "seconds": round(seconds, 6),
        "events_per_command": 2,  # the deposit and the command record (idempotency key)
        "events_per_s": round(rate(done * 2, seconds), 1),
        "accounts": accounts * callers,
    }


def measure_peer(app: PeerBank, commands: int, callers: int) -> dict[str, Any]:
    per_caller = commands // callers
    accounts = accounts_per_caller(commands, callers)

    def setup(_: int) -> list[UUID]:
        ids = [uuid.uuid4() for _ in range(accounts)]
        for account_id in ids:
            app.open_account(
                OpenAccount(account_id=account_id, owner="Ada", email="ada@example.org")
            )
        return ids

    def work(ids: list[UUID], i: int) -> None:
        app.deposit(Deposit(account_id=ids[i % len(ids)], amount=AMOUNT))

    seconds, _ = drive(callers, setup, work, per_caller)
    done = per_caller * callers
    return {
        "commands": done,
        "callers": callers,
        "seconds": round(seconds, 6),
        "events_per_command": 1,
        "events_per_s": round(rate(done, seconds), 1),
        "accounts": accounts * callers,
    }


def _keel_store_url(ctx: Context, backend: str, name: str) -> str:
    if backend == "sqlite":
        return f"sqlite:///{ctx.path(name + '.db')}"
    if backend == "postgres":
        ctx.services.need_postgres()
        ctx.drop_postgres_tables_later(f"{name}_events", f"{name}_snapshots")
        return ctx.services.need_postgres()
    if backend == "kafka":
        return ctx.kafka_url(name)
    raise ValueError(backend)


def _peer_env(ctx: Context, backend: str, name: str) -> dict[str, str]:
    if backend == "sqlite":
        return {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(ctx.path(name + ".db")),
            "SQLITE_LOCK_TIMEOUT": "30",
        }
    env = {"PERSISTENCE_MODULE": "eventsourcing.postgres", **ctx.services.postgres_parts()}
    # The same pool as the keel PostgreSQL store (framework/backends/postgres.py: 5 + 5).
    env.update(POSTGRES_POOL_SIZE="5", POSTGRES_MAX_OVERFLOW="5", POSTGRES_PRE_PING="y")
    ctx.drop_postgres_tables_later(f"{name.lower()}_events", f"{name.lower()}_snapshots")
    return env


def keel_throughput(ctx: Context, backend: str, commands: int, callers: int) -> dict[str, Any]:
    name = ctx.name(f"tp{backend[:2]}{callers}")
    app = build_app(_keel_store_url(ctx, backend, name), name, snapshot_every=100)
    try:
        # On Kafka this process owns the shard, so execute() decides in place (the routed path
        # across processes is section "writers").
        with deciding(app):
            return measure_keel(app, commands, callers)
    finally:
        app.close()


def peer_throughput(ctx: Context, backend: str, commands: int, callers: int) -> dict[str, Any]:
    name = ctx.name(f"Peer{backend[:2]}{callers}")
    app = build_peer(name, _peer_env(ctx, backend, name))
    try:
        return measure_peer(app, commands, callers)
    finally:
        app.close()


def sizes(ctx: Context, backend: str, callers: int) -> int:
    """Commands per configuration (the peer runs the same number)."""
    if backend == "kafka" and callers == 1:
        return int(ctx.pick(16, 100, 600))  # about 30 commands/s: latency-bound
    return int(ctx.pick(16, 300, 3000))


def run(ctx: Context, callers_list: Sequence[int] = CALLERS) -> Section:
    section = Section("throughput", TITLE)
    backends = ["sqlite"] if ctx.smoke else ["sqlite", "postgres", "kafka"]
    for backend in backends:
        for callers in callers_list:
            # The peer runs on the same kind of database: SQLite for SQLite; PostgreSQL for
            # PostgreSQL and for Kafka (the goal: Kafka >= the library on PostgreSQL).
            peer_backend = "sqlite" if backend == "sqlite" else "postgres"
            commands = sizes(ctx, backend, callers)
            note = ""
            if backend == "kafka" and ctx.services.postgres is None:
                peer_backend = "sqlite"
                note = "PostgreSQL missing: compared with the library on SQLite"
            peer_key = f"es_{peer_backend}_{callers}_{commands}"
            try:
                if section.row(peer_key) is None:
                    ctx.log(f"  eventsourcing on {peer_backend}, {callers} callers, {commands}")
                    raw = peer_throughput(ctx, peer_backend, commands, callers)
                    section.add(
                        Row(
                            peer_key,
                            f"eventsourcing Application, {peer_backend}, {callers} caller(s), "
                            f"{commands:,} commands (peer)",
                            raw["commands"] / raw["seconds"],
                            "commands/s",
                            raw=raw,
                        )
                    )
                ctx.log(f"  keel on {backend}, {callers} callers, {commands}")
                raw = keel_throughput(ctx, backend, commands, callers)
                section.add(
                    Row(
                        f"keel_{backend}_{callers}",
                        f"keel Application, {backend} store, {callers} caller(s), "
                        f"{commands:,} commands",
                        raw["commands"] / raw["seconds"],
                        "commands/s",
                        peer=peer_key,
                        raw=raw,
                        note=note,
                    )
                )
            except ServiceMissing as missing:
                section.skipped.append(f"{backend}, {callers} caller(s): {missing}")
    section.notes.append(
        "each command: build (validate) a pydantic Deposit, load the account, decide, append "
        "with the version check; keel also records the command id (idempotency), so it writes "
        "2 events per command to the library's 1; every caller has its own accounts"
    )
    return section
