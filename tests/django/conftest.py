"""Fixtures for the Django integration tests: a fresh shop per test.

``shop`` points the event store and the read-model database at files under ``tmp_path`` (the
Django ``readmodels`` alias too, so the admin and the query views read what the worker writes),
creates the read-model tables, and cleans up. ``worker`` runs every projection in a thread.
Tests are transactional (``transaction=True``): the admin and the worker use separate
connections, and a test wrapped in one long transaction would never see the worker's writes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connections
from django.test import Client

from framework.application import Application
from framework.contrib.django import conf
from framework.contrib.django.operations import DjangoProjectionWorker

# Every test module that uses ``shop`` sets:
#   pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "readmodels"])


@dataclass
class Shop:
    """The shop under test: its application, read-model engine and helpers."""

    app: Application
    tmp: Path
    workers: list[Any] = field(default_factory=list)

    @property
    def engine(self) -> Any:
        return conf.get_engine()

    def head(self) -> dict[int, int]:
        return self.app.store.head()

    def catch_up(self) -> None:
        """Apply every event written so far, without a background worker."""
        for projection in conf.get_projections().values():
            DjangoProjectionWorker(projection, self.app.store, self.engine, poll_timeout=0.05).run(
                until_caught_up=True
            )

    def rows(self, table: Any, **where: Any) -> list[dict[str, Any]]:
        import sqlalchemy as sa

        query = sa.select(table).where(*(table.c[k] == v for k, v in where.items()))
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]


PATIENT = {"worker", "live_server", "patient"}


@pytest.fixture
def patient() -> None:
    """Request it to make reads wait for the read models as long as with a worker (5 s)."""


@pytest.fixture
def shop(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    transactional_db: None,
) -> Iterator[Shop]:
    from framework.worker import setup_tables

    for name in ("KEEL_EVENT_STORE", "KEEL_SHOP_EVENT_STORE", "KEEL_READMODELS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KEEL_PROJECTION_POLL_TIMEOUT", "0.05")
    monkeypatch.setenv("KEEL_PROJECTION_RETRY_INITIAL", "0.01")
    monkeypatch.setenv("KEEL_PROJECTION_MAX_ATTEMPTS", "2")
    # The readmodels alias (and with it the SQLAlchemy engine) on a fresh file for this test.
    readmodels = connections.settings["readmodels"]
    previous = readmodels["NAME"]
    connections["readmodels"].close()
    readmodels["NAME"] = str(tmp_path / "read_models.db")
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast
    settings.KEEL = {
        **settings.KEEL,
        "EVENT_STORE": f"sqlite:///{tmp_path}/shop-events.db",
        # With a worker running, the admin waits for it; without one, it would only time out.
        "WAIT_TIMEOUT": 5.0 if PATIENT & set(request.fixturenames) else 0.2,
    }
    conf.reset()
    setup_tables(conf.get_engine(), *conf.get_projections().values())
    state = Shop(app=conf.get_application(), tmp=tmp_path)
    try:
        yield state
    finally:
        conf.reset()
        connections["readmodels"].close()
        readmodels["NAME"] = previous


@pytest.fixture
def worker(shop: Shop) -> Iterator[Callable[[], None]]:
    """Every projection running in a background thread for the test's duration; calling the
    fixture's value waits until they have caught up with the store's head."""
    from framework.worker import wait_until

    stop = threading.Event()
    errors: list[BaseException] = []
    workers = [
        DjangoProjectionWorker(p, shop.app.store, shop.engine, poll_timeout=0.05)
        for p in conf.get_projections().values()
    ]

    def run(w: DjangoProjectionWorker) -> None:
        try:
            w.run(stop)
        except BaseException as error:  # surfaced at teardown
            errors.append(error)

    threads = [threading.Thread(target=run, args=(w,), daemon=True) for w in workers]
    for thread in threads:
        thread.start()

    def caught_up() -> None:
        head = shop.head()
        for w in workers:
            wait_until(w.projection, shop.engine, head, timeout=10)

    try:
        yield caught_up
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        assert not errors, errors


def _make_user(username: str, *perms: str, superuser: bool = False) -> User:
    """A staff user with the given permissions (``"keel.execute_placeorder"``)."""
    if superuser:
        return User.objects.create_superuser(username, f"{username}@example.com", "pw-" + username)
    user = User.objects.create_user(username, f"{username}@example.com", "pw-" + username)
    user.is_staff = True
    user.save()
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return User.objects.get(pk=user.pk)  # a fresh instance: no stale permission cache


@pytest.fixture
def make_user(shop: Shop) -> Callable[..., User]:
    """``make_user("clerk", "keel.execute_placeorder")`` -> a staff user with those perms."""
    return _make_user


@pytest.fixture
def admin_client(shop: Shop) -> Client:
    client = Client()
    client.force_login(_make_user("root", superuser=True))
    return client
