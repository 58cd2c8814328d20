"""Section 5: the cost of loading an aggregate against the length of its history.

One account per history length (10, 1,000 and 100,000 events) on the SQLite store, loaded with
``Application.load`` with snapshots (``snapshot_every=100``: the newest snapshot is the one the
application would have taken, at the last multiple of 100) and without. The peer is the
eventsourcing library's ``Application`` on its SQLite recorder, loading the same account
(``repository.get``), with snapshotting on (snapshot at the same version) and off.

Each figure is the median of several loads of a warm database (the file is in the page cache).
"""

from __future__ import annotations

import dataclasses
import functools
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any
from uuid import UUID

from eventsourcing.domain import Snapshot as LibrarySnapshot

from bench.domain import Account, PeerAccount, build_app, build_peer, history, more_deposits
from bench.harness import Context, Row, Section, Stopwatch, median
from framework.codec import codec
from framework.persistence import EventStore, NewEvent, open_store

TITLE = "Aggregate load cost vs history length (ms per load, SQLite store)"
SNAPSHOT_EVERY = 100


def timed(fn: Callable[[], Any], repeats: int) -> dict[str, Any]:
    samples = []
    for _ in range(repeats):
        with Stopwatch() as sw:
            fn()
        samples.append(sw.seconds * 1000)
    return {"median_ms": median(samples), "min_ms": min(samples), "repeats": repeats}


def append_chunked(store: EventStore, events: list[NewEvent]) -> None:
    for start in range(0, len(events), 1000):
        store.append(events[start : start + 1000])


STAMP_ABOVE = 1000
"""Longer histories are stamped from one encoded deposit (its payload does not hold the version
or the aggregate id), so writing 100,000 events costs the database's time, not the domain's."""


def write_keel(store: EventStore, events: int) -> tuple[UUID, Account]:
    """An account with ``events`` events, plus the snapshot the application would have taken
    (at ``events`` itself when it is a multiple of SNAPSHOT_EVERY)."""
    account_id = uuid.uuid4()
    if events <= STAMP_ABOVE:
        account, new = history(account_id, events)
    else:
        account, first = history(account_id, 2)
        deposit = first[1]
        new = first + [
            NewEvent(account_id, v, deposit.topic, deposit.state) for v in range(3, events + 1)
        ]
        account.balance = Decimal("10.00") * (events - 1)
        account.version = events
    append_chunked(store, new)
    at = events // SNAPSHOT_EVERY * SNAPSHOT_EVERY
    if at == events:
        store.save_snapshot(codec.encode_snapshot(account))
    elif at:
        app = build_app(store, store.name, snapshot_every=None)
        store.save_snapshot(codec.encode_snapshot(app.load(Account, account_id, version=at)))
    return account_id, account


def write_peer(app: Any, events: int) -> tuple[UUID, PeerAccount]:
    account_id = uuid.uuid4()
    account = PeerAccount(id=account_id, owner="Ada Lovelace", email="ada@example.org")
    if events <= STAMP_ABOVE:
        for _ in range(events - 1):
            account.deposit(Decimal("10.00"))
        app.save(account)
    else:
        account.deposit(Decimal("10.00"))
        opened, deposit = (app.mapper.to_stored_event(e) for e in account.collect_events())
        stored = [opened, deposit] + [
            dataclasses.replace(deposit, originator_version=v) for v in range(3, events + 1)
        ]
        for start in range(0, len(stored), 1000):
            app.recorder.insert_events(stored[start : start + 1000])
        account.balance = Decimal("10.00") * (events - 1)
        account.version = events
    at = events // SNAPSHOT_EVERY * SNAPSHOT_EVERY
    if at == events:
        app.snapshots.put([LibrarySnapshot.take(account)])
    elif at:
        app.take_snapshot(account_id, version=at)
    return account_id, account


def repeats_for(ctx: Context, events: int) -> int:
    if events >= 100_000:
        return ctx.pick(1, 3, 2)
    if events >= 1000:
        return ctx.pick(3, 30, 60)
    return ctx.pick(5, 200, 500)


def run(ctx: Context) -> Section:
    section = Section("load", TITLE)
    lengths = ctx.pick((10, 100, 1000), (10, 1000, 100_000), (10, 1000, 100_000))
    name = ctx.name("load")
    path = ctx.path(name + ".db")
    store = open_store(f"sqlite:///{path}", name=name)
    snap = build_app(store, name, snapshot_every=SNAPSHOT_EVERY)
    nosnap = build_app(store, name, snapshot_every=None)
    peer_name = ctx.name("PeerLoad")
    peer_env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(path)}
    peer_snap = build_peer(peer_name, {**peer_env, "IS_SNAPSHOTTING_ENABLED": "y"})
    peer_nosnap = build_peer(peer_name, {**peer_env, "IS_SNAPSHOTTING_ENABLED": "n"})
    section.notes.append(
        f"SQLite store (one file, warm); history lengths {', '.join(map(str, lengths))}; "
        f"snapshots every {SNAPSHOT_EVERY} events (the newest one at the last multiple of "
        f"{SNAPSHOT_EVERY}, so 'with snapshots' loads it plus the events after it)"
    )
    smallest = lengths[0]
    nosnap_limit = ctx.pick(10**9, 10_000, 10**9)
    if nosnap_limit < max(lengths):
        section.notes.append(
            f"quick mode: loads without snapshots only up to {nosnap_limit:,} events (one load "
            "of 100,000 events takes seconds); the full mode measures them"
        )

    def add(figures: dict[str, dict[str, Any]], events: int, suffix: str) -> None:
        count = figures["keel_snap"]["events"]
        what = f"{count:,} events" + (" (snapshot + 99)" if suffix else "")
        section.add(
            Row(
                f"keel_snap_{events}{suffix}",
                f"keel load, {what}, with snapshots",
                figures["keel_snap"]["median_ms"],
                "ms",
                peer=f"keel_snap_{smallest}" if count != smallest else f"es_snap_{smallest}",
                higher_is_better=False,
                raw=figures["keel_snap"],
            )
        )
        section.add(
            Row(
                f"es_snap_{events}{suffix}",
                f"eventsourcing load, {what}, with snapshots (peer)",
                figures["es_snap"]["median_ms"],
                "ms",
                peer=f"es_snap_{smallest}" if count != smallest else None,
                higher_is_better=False,
                raw=figures["es_snap"],
            )
        )
        if "keel_nosnap" in figures:
            section.add(
                Row(
                    f"keel_nosnap_{events}",
                    f"keel load, {what}, no snapshots",
                    figures["keel_nosnap"]["median_ms"],
                    "ms",
                    peer=f"es_nosnap_{events}",
                    higher_is_better=False,
                    raw=figures["keel_nosnap"],
                )
            )
            section.add(
                Row(
                    f"es_nosnap_{events}",
                    f"eventsourcing load, {what}, no snapshots (peer)",
                    figures["es_nosnap"]["median_ms"],
                    "ms",
                    higher_is_better=False,
                    raw=figures["es_nosnap"],
                )
            )

    try:
        for events in lengths:
            ctx.log(f"  history of {events:,} events")
            ours, our_account = write_keel(store, events)
            theirs, their_account = write_peer(peer_snap, events)
            reps = repeats_for(ctx, events)
            # The two accounts are the same account.
            assert snap.load(Account, ours).balance == peer_snap.repository.get(theirs).balance
            measure = {
                "keel_snap": functools.partial(snap.load, Account, ours),
                "es_snap": functools.partial(peer_snap.repository.get, theirs),
            }
            if events <= nosnap_limit:
                measure["keel_nosnap"] = functools.partial(nosnap.load, Account, ours)
                measure["es_nosnap"] = functools.partial(peer_nosnap.repository.get, theirs)
            figures = {kind: {**timed(fn, reps), "events": events} for kind, fn in measure.items()}
            add(figures, events, "")
            if events % SNAPSHOT_EVERY == 0:
                # The worst case: the snapshot plus SNAPSHOT_EVERY - 1 events after it.
                tail = SNAPSHOT_EVERY - 1
                append_chunked(store, more_deposits(our_account, tail))
                for _ in range(tail):
                    their_account.deposit(Decimal("10.00"))
                peer_snap.save(their_account)
                figures = {
                    kind: {**timed(measure[kind], reps), "events": events + tail}
                    for kind in ("keel_snap", "es_snap")
                }
                add(figures, events, "_tail")
    finally:
        peer_snap.close()
        peer_nosnap.close()
        store.close()
    section.notes.append(
        "ratios: keel with snapshots against keel at the smallest history (the goal); keel "
        "without snapshots against the library without snapshots at the same length"
    )
    return section
