"""Helpers for the read-side tests: databases (SQLite files, PostgreSQL databases of their own,
private PostgreSQL servers), traffic, and the digest checks."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from framework.application import Application
from framework.database import create_engine
from framework.persistence import EventStore
from framework.projection_testing import digest
from framework.worker import ProjectionWorker, setup_tables
from tests.projection_domain import (
    AddItem,
    CartSummary,
    CheckOut,
    OpenCart,
    dup_and_missing,
    event_log,
    store_events,
)

REPO = Path(__file__).resolve().parents[2]
PYTHON = str(REPO / ".venv" / "bin" / "python")


@contextmanager
def pg_database(admin_url: str) -> Iterator[str]:
    """A fresh database on the server of ``admin_url``, dropped afterwards."""
    name = f"keel_proj_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        yield admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PrivatePostgres:
    """A PostgreSQL server of the test's own (never the shared one), so it may be stopped."""

    state: Path
    port: int
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/keel_test"

    def _script(self, *args: str) -> str:
        proc = subprocess.run(
            [str(REPO / "scripts" / "postgres"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"scripts/postgres {args} failed: {proc.stdout}{proc.stderr}")
        return proc.stdout

    def start(self) -> None:
        self._script("start")

    def data_dir(self) -> Path:
        return self.state / "postgres" / "data"

    def crash(self) -> None:
        """``pg_ctl stop -m immediate``: the server dies without a clean shutdown."""
        bin_dir = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]
        command = [str(bin_dir / "pg_ctl"), "-D", str(self.data_dir()), "-m", "immediate", "stop"]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, capture_output=True, timeout=60, check=True)

    def stop(self) -> None:
        self._script("stop")


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    state = Path(tempfile.mkdtemp(prefix="keel-pg-private-"))
    state.chmod(0o755)  # the 'postgres' user runs the server and must reach its data dir
    port = free_port()
    env = {**os.environ, "KEEL_STATE_DIR": str(state), "KEEL_PG_PORT": str(port)}
    server = PrivatePostgres(state, port, env)
    try:
        server.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        raise RuntimeError(f"could not start a private PostgreSQL: {error}") from error
    try:
        yield server
    finally:
        try:
            server.stop()
        finally:
            subprocess.run(["rm", "-rf", str(state)], check=False)


def ready_engine(url: str) -> Engine:
    """An engine on ``url`` with the framework's and CartSummary's tables."""
    engine = create_engine(url)
    setup_tables(engine, CartSummary())
    return engine


class Traffic:
    """Commands on carts: ``opens`` new carts, items, check-outs, from a seeded random."""

    def __init__(self, app: Application, seed: int = 1) -> None:
        self.app = app
        self.rng = random.Random(seed)
        self.carts: list[uuid.UUID] = []
        self.open: list[uuid.UUID] = []
        self.positions: dict[int, int] = {}
        self.commands = 0

    def step(self) -> None:
        r = self.rng.random()
        if not self.open or r < 0.2:
            cart = uuid.UUID(int=self.rng.getrandbits(128))
            self.carts.append(cart)
            self.open.append(cart)
            result = self.app.execute(OpenCart(cart_id=cart, customer=f"c{len(self.carts)}"))
        elif r < 0.9:
            cart = self.rng.choice(self.open)
            sku = f"sku{self.rng.randint(1, 5)}"
            result = self.app.execute(
                AddItem(cart_id=cart, sku=sku, quantity=self.rng.randint(1, 3))
            )
        else:
            cart = self.open.pop(self.rng.randrange(len(self.open)))
            result = self.app.execute(CheckOut(cart_id=cart))
        self.commands += 1
        for p, o in result.positions.items():
            self.positions[p] = max(o, self.positions.get(p, 0))

    def run(self, n: int) -> None:
        for _ in range(n):
            self.step()

    def in_thread(self, stop: threading.Event, pause: float = 0.005) -> threading.Thread:
        def loop() -> None:
            while not stop.is_set() and self.commands < 100_000:
                self.step()
                stop.wait(pause)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        return thread


def clean_digest(store: EventStore, url: str) -> str:
    """The digest of a clean, single-delivery run of CartSummary over ``store``."""
    engine = ready_engine(url)
    try:
        ProjectionWorker(
            CartSummary(), store, engine, group=f"clean-{uuid.uuid4().hex[:8]}", batch_size=200
        ).run(until_caught_up=True)
        return digest(engine, CartSummary().tables)
    finally:
        engine.dispose()


def check_counts(engine: Engine, store: EventStore) -> tuple[int, int, int]:
    """(events in the store, duplicate applications, missing events)."""
    expected = store_events(store)
    with engine.connect() as conn:
        applied = event_log(conn)
    dup, missing = dup_and_missing(applied, expected)
    return len(expected), dup, missing
