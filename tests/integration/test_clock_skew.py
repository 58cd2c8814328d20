"""T22: the wall clock runs backwards (freezegun) while commands run, so every event carries an
earlier timestamp than the one before it. No ordering decision may change: aggregates load in
version order, the feed serves in offset order, no command is refused, and the read model
equals a clean rebuild."""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from freezegun import freeze_time

from framework.codec import codec
from framework.persistence import EventStore, open_store
from framework.projection_testing import digest, table_rows
from framework.worker import ProjectionWorker
from tests.projection_domain import AddItem, CartSummary, CheckOut, OpenCart, cart_app
from tests.support.checkers import Append, check_list_append
from tests.support.projection_support import clean_digest, ready_engine

COMMANDS = 40


def skewed_commands(store: EventStore, name: str) -> tuple[list[uuid.UUID], list[str], int]:
    """Run commands, each with the clock set further back; (carts, ordered ops, refused)."""
    app = cart_app(store, name=name)
    rng = random.Random(22)
    carts = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(4)]
    # Warm the codec's per-class models with the real clock (freezegun swaps the datetime
    # class, and a model first built under it would expect its fake datetimes forever).
    warm = uuid.uuid4()
    app.execute(OpenCart(cart_id=warm, customer="warm-up"))
    app.execute(AddItem(cart_id=warm, sku="w"))
    app.execute(CheckOut(cart_id=warm))
    for recorded in store.read(warm):
        codec.decode(recorded)
    start = datetime(2030, 1, 1, tzinfo=UTC)
    done: list[str] = []
    refused = 0
    for i in range(COMMANDS):
        # Minutes back, and now and then a jump of a day back: NTP steps, a VM restore.
        now = start - timedelta(minutes=7 * i, days=(i // 10))
        cart = carts[i % len(carts)] if i >= len(carts) else carts[i]
        with freeze_time(now):
            try:
                if i < len(carts):
                    app.execute(OpenCart(cart_id=cart, customer=f"c{i}"))
                elif i < COMMANDS - len(carts):
                    app.execute(AddItem(cart_id=cart, sku=f"s{i}", quantity=1))
                else:
                    app.execute(CheckOut(cart_id=cart))
                done.append(f"{cart}:{i}")
            except Exception:
                refused += 1
    return carts, done, refused


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "backend", ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_timestamps_going_backwards_change_no_ordering_decision(
    backend: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    unique_name: Callable[[str], str],
) -> None:
    url = {
        "memory": "memory://",
        "sqlite": f"sqlite:///{tmp_path}/events.db",
        "postgres": request.getfixturevalue("postgres_url") if backend == "postgres" else "",
    }[backend]
    name = unique_name("skew").replace("-", "_")
    store = open_store(url, name=name)
    carts, done, refused = skewed_commands(store, name)
    everything = store.read_partition(0, start=0, limit=10_000)
    offsets_ordered = all(a.offset < b.offset for a, b in itertools.pairwise(everything))
    feed = [e for e in everything if e.topic.startswith("Cart.") and e.aggregate_id in carts]
    stamps = [codec.decode(e).event.timestamp for e in feed]
    backwards = sum(b < a for a, b in itertools.pairwise(stamps))
    # Each aggregate's stream, as list-append: the store hands versions 1..n in order.
    streams = {str(c): [e.version for e in store.read(c)] for c in carts}
    history = [Append("ok", {}, {key: versions}) for key, versions in streams.items()]
    checked = check_list_append(
        history, {k: list(range(1, len(v) + 1)) for k, v in streams.items()}
    )
    engine = ready_engine(f"sqlite:///{tmp_path}/read.db")
    ProjectionWorker(CartSummary(), store, engine, group="skew", batch_size=7).run(
        until_caught_up=True
    )
    equal = digest(engine, CartSummary().tables) == clean_digest(
        store, f"sqlite:///{tmp_path}/clean.db"
    )
    rows = {row["id"]: row for row in table_rows(engine, CartSummary.carts)}
    versions_match = all(rows[c]["version"] == len(streams[str(c)]) for c in carts)
    print(
        f"\nT22[{backend}]: commands={COMMANDS} refused={refused} events={len(feed)} "
        f"timestamps_backwards={backwards} offsets_ordered={offsets_ordered} "
        f"order_anomalies={sum(checked.values())} versions_match={versions_match} "
        f"digest_equal={equal}"
    )
    assert backwards >= len(feed) - len(carts) - 1  # the skew is real
    assert refused == 0 and len(done) == COMMANDS
    assert offsets_ordered and sum(checked.values()) == 0
    assert versions_match and equal
    store.close()
    engine.dispose()
