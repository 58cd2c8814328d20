"""Management commands (run_projections, rebuild_projection, projection_status, keel_check),
system checks and the Alembic revision of the shop's tables."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import sqlalchemy as sa
from django.core.management import call_command, load_command_class
from django.core.management.base import CommandError
from django.test import override_settings

from framework.contrib.django import checks, conf
from projections import customers, orders
from sample_app.shop.commands import ConfirmOrder, PlaceOrder, RegisterCustomer

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "readmodels"])

REPO = Path(__file__).resolve().parents[2]
COMMANDS = ["run_projections", "rebuild_projection", "projection_status", "keel_check"]
ADDRESS = {"street": "1 Main St", "city": "Berlin", "country": "DE"}


def run(name: str, *args: str) -> str:
    out = io.StringIO()
    call_command(name, *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def fill(shop: Any, customers_count: int = 3) -> list[Any]:
    ids = []
    for n in range(customers_count):
        customer = shop.app.execute(
            RegisterCustomer(name=f"C{n}", email=f"c{n}@example.com", address=ADDRESS)
        ).aggregate_id
        order = shop.app.execute(
            PlaceOrder(
                customer_id=customer,
                lines=[{"product": "Tea", "quantity": n + 1, "unit_price": "2.00"}],
            )
        ).aggregate_id
        shop.app.execute(ConfirmOrder(order_id=order))
        ids.append(order)
    return ids


def digest(shop: Any, table: sa.Table) -> str:
    key = [c for c in table.primary_key.columns]
    with shop.engine.connect() as conn:
        rows = conn.execute(sa.select(table).order_by(*key)).all()
    return hashlib.sha256(repr([tuple(r) for r in rows]).encode()).hexdigest()


def alembic_upgrade(shop: Any, revision: str = "head") -> None:
    """Replace the test's tables with an Alembic-migrated schema."""
    from alembic import command

    from framework.positions import framework_metadata

    with shop.engine.begin() as conn:
        for projection in conf.get_projections().values():
            projection.drop_tables(conn)
        framework_metadata.drop_all(conn)
    command.upgrade(alembic_config(shop), revision)


def alembic_config(shop: Any) -> Any:
    from alembic.config import Config

    config = Config(str(REPO / "alembic.ini"))
    config.cmd_opts = argparse.Namespace(x=[f"url={shop.engine.url.render_as_string(False)}"])
    return config


# -- help and user errors --------------------------------------------------------------------


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_helpful_help(name: str) -> None:
    command = load_command_class("framework.contrib.django", name)
    text = command.create_parser("manage.py", name).format_help()
    assert len(command.help) > 80
    assert command.help.split()[0] in text


def test_user_errors_are_command_errors(shop: Any) -> None:
    with pytest.raises(CommandError, match=r"unknown projection.*nope.*known: customers"):
        run("run_projections", "nope", "--until-caught-up")
    with pytest.raises(CommandError, match="no projection is named 'nope'"):
        run("rebuild_projection", "nope")
    with pytest.raises(CommandError, match=r"--from-position.*PARTITION:OFFSET"):
        run("rebuild_projection", "orders", "--from-position", "zero")
    with pytest.raises(CommandError, match="unknown projection"):
        run("projection_status", "nope")
    with pytest.raises(CommandError, match="linger must be 0 or more seconds"):
        run("run_writers", "--linger", "-1")
    with pytest.raises(CommandError, match="max_batch must be 1 or more"):
        run("run_writers", "--max-batch", "0")
    with pytest.raises(CommandError, match="named more than once: customers;"):
        run("run_projections", "customers", "orders", "customers", "--until-caught-up")
    with pytest.raises(CommandError, match="--batch-size: must be a whole number of 1 or more"):
        run("run_projections", "--batch-size", "0", "--until-caught-up")
    with pytest.raises(CommandError, match="--session-timeout: must be a number above 0"):
        run("run_projections", "--session-timeout", "0", "--until-caught-up")
    with pytest.raises(CommandError, match="--metrics-port: must be a port from 1 to 65535"):
        run("run_process_managers", "--metrics-port", "0")


@pytest.mark.parametrize(
    ("position", "fragment"),
    [
        ("7:0", r"partition 7 does not exist \(the store's partitions: 0\)"),
        ("0:999999", "past the end of partition 0"),
    ],
)
def test_rebuild_refuses_positions_the_store_does_not_have(
    shop: Any, position: str, fragment: str
) -> None:
    fill(shop)
    run("run_projections", "orders", "--until-caught-up")
    before = digest(shop, orders.orders)
    with pytest.raises(CommandError, match=f"--from-position: .*{fragment}"):
        run("rebuild_projection", "orders", "--from-position", position)
    assert digest(shop, orders.orders) == before  # nothing rebuilt


# -- running, status, rebuild -----------------------------------------------------------------


def test_run_status_and_rebuild(shop: Any) -> None:
    ids = fill(shop)
    status = json.loads(run("projection_status", "--json"))
    head = shop.head()[0]  # lag counts offsets from 0: events and command records alike
    assert {s["name"]: s["lag"] for s in status} == dict.fromkeys(conf.get_projections(), head)

    out = run("run_projections", "customers", "orders", "--until-caught-up")
    assert "running projections: customers, orders (until caught up)" in out
    assert len(shop.rows(orders.orders)) == 3 and len(shop.rows(customers.customers)) == 3
    table = run("projection_status")
    lines = {line.split()[0]: line.split() for line in table.splitlines()[1:]}
    assert lines["orders"][4] == "0" and lines["sales_per_hour"][4] == str(head)
    # Streaming projections add a line: watermark, open windows, late events.
    assert (
        "stream orders: no watermark yet (no window closes); open windows 0; late events: none"
        in table
    )

    run("run_projections", "--until-caught-up")
    status = json.loads(run("projection_status", "--json"))
    assert all(s["lag"] == 0 and s["dead_letters"] == 0 for s in status)
    sales = next(s for s in status if s["name"] == "sales_per_hour")
    assert sales["stream"]["late_events"] == {} and sales["stream"]["open_windows"]["hourly"] >= 1
    # The workers just ran: their heartbeats say so (the admin's projections page shows it).
    assert all(s["worker_alive"] and s["last_applied_at"] for s in status)
    assert "running (" in run("projection_status")
    assert status[0]["positions"] == {"0": shop.head()[0]}

    before = digest(shop, orders.orders)
    out = run("rebuild_projection", "orders")
    assert "rebuilding orders from the beginning" in out and "rebuilt orders: events=" in out
    assert digest(shop, orders.orders) == before
    assert {r["order_id"] for r in shop.rows(orders.orders)} == set(ids)

    # From a later position only the later events are replayed.
    run("rebuild_projection", "orders", "--from-position", f"0:{shop.head()[0] - 1}")
    assert [r["status"] for r in shop.rows(orders.orders)] == []  # only a Confirmed: no rows


def test_run_projections_stops_cleanly_on_sigterm(shop: Any, tmp_path: Path) -> None:
    fill(shop, 2)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "sample_app.settings",
        "DJANGO_DEBUG": "1",
        "KEEL_VAR_DIR": str(tmp_path),
        "KEEL_EVENT_STORE": conf.get_settings().event_store or "",
        "KEEL_READMODELS_DB": str(shop.engine.url.database),
        "DJANGO_DB": str(tmp_path / "django.db"),
        "KEEL_PROJECTION_POLL_TIMEOUT": "0.05",
        "PYTHONUNBUFFERED": "1",
    }
    process = subprocess.Popen(
        [sys.executable, str(REPO / "manage.py"), "run_projections"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while len(shop.rows(orders.orders)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(shop.rows(orders.orders)) == 2
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "SIGTERM: stopping after the current batch" in out
    assert "stopped after" in out
    assert "keel.W001" in err and "DEBUG" in err  # a worker with DEBUG on is warned


def test_an_unmigrated_read_model_database_is_reported_by_every_command(tmp_path: Path) -> None:
    # A fresh KEEL_VAR_DIR, as a new user has it before `alembic upgrade head`.
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_") and k != "DATABASE_URL"}
    env.update(DJANGO_SETTINGS_MODULE="sample_app.settings", KEEL_VAR_DIR=str(tmp_path))
    commands = {
        "rebuild_projection customers": "CommandError: rebuild of customers failed: customers:",
        "process_status": "CommandError: payment_process:",
        "projection_status": "CommandError: cannot read the status of customers, orders",
        "keel_health workers": "FAIL customers: cannot read its lag: customers:",
    }
    running = {
        command: subprocess.Popen(
            [sys.executable, str(REPO / "manage.py"), *command.split()],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command in commands
    }
    for command, process in running.items():
        out, err = process.communicate(timeout=60)
        assert process.returncode == 1, (command, out, err)
        assert commands[command] in out + err, (command, out, err)
        assert "the read-model database is not migrated: run `alembic upgrade head`" in out + err
        assert "Traceback" not in err and "OperationalError" not in out + err, (command, err)


# -- keel_check, system checks and Alembic ----------------------------------------------------


def test_keel_check_and_the_alembic_revision(shop: Any) -> None:
    with pytest.raises(CommandError, match="problem"):
        run("keel_check")  # tables made without Alembic: no revision recorded
    alembic_upgrade(shop)
    out = run("keel_check")
    assert "event store: RecorderEventStore 'shop', 1 partition(s)" in out
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config(shop)).get_current_head()
    assert f"alembic: at head {head}" in out and "all checks passed" in out
    assert checks.check_alembic_head(databases=["readmodels"]) == []
    assert checks.check_alembic_head(databases=None) == []  # only when asked

    # The revision creates exactly the tables the projections declare (alembic check).
    from alembic import command

    command.check(alembic_config(shop))
    # The shop runs on the migrated schema.
    fill(shop, 1)
    run("run_projections", "--until-caught-up")
    assert len(shop.rows(orders.orders)) == 1

    command.downgrade(alembic_config(shop), "0001")
    warnings = checks.check_alembic_head(databases=["readmodels"])
    assert [w.id for w in warnings] == ["keel.W002"]
    assert "['0001']" in warnings[0].msg and "alembic upgrade head" in warnings[0].hint


def test_system_checks(shop: Any, settings: Any) -> None:
    assert checks.check_settings() == []
    with override_settings(KEEL=None):
        assert [m.id for m in checks.check_settings()] == ["keel.E001"]
    with override_settings(KEEL={"APPLICATION": "nodots", "WAIT_TIMEOUT": 0}):
        found = checks.check_settings()
        assert [m.id for m in found] == ["keel.E002"]
        assert "APPLICATION" in found[0].msg and "WAIT_TIMEOUT" in found[0].msg
    with override_settings(KEEL={**settings.KEEL, "PROJECTIONS": ["projections.nope:Nope"]}):
        assert [m.id for m in checks.check_settings()] == ["keel.E003"]
    with override_settings(DATABASE_ROUTERS=[]):
        assert [m.id for m in checks.check_settings()] == ["keel.W003"]
    without = [m for m in settings.MIDDLEWARE if m != checks.API_ERRORS]
    with override_settings(MIDDLEWARE=without):
        assert [m.id for m in checks.check_settings()] == ["keel.W004"]
    with override_settings(MIDDLEWARE=without, KEEL={**settings.KEEL, "API_PREFIX": ""}):
        assert checks.check_settings() == []
    with override_settings(KEEL={**settings.KEEL, "READMODELS_DATABASE": "elsewhere"}):
        assert "keel.E004" in [m.id for m in checks.check_settings()]
    assert checks.check_worker_debug() == []
    checks.running_worker = True
    try:
        with override_settings(DEBUG=True):
            assert [m.id for m in checks.check_worker_debug()] == ["keel.W001"]
        with override_settings(DEBUG=False):
            assert checks.check_worker_debug() == []
    finally:
        checks.running_worker = False
    conf.reset()


def test_settings_come_from_the_dict_and_the_environment(
    shop: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert conf.get_settings().event_store.endswith("shop-events.db")  # type: ignore[union-attr]
    monkeypatch.setenv("KEEL_EVENT_STORE", "memory://")
    monkeypatch.setenv("KEEL_WAIT_TIMEOUT", "1.5")
    conf.reset()
    try:
        assert conf.get_settings().event_store == "memory://"
        assert conf.get_settings().wait_timeout == 1.5
        assert conf.get_application().store.head() == {0: 1}
    finally:
        monkeypatch.undo()
        conf.reset()


def test_the_application_is_built_lazily_once(shop: Any) -> None:
    app = conf.get_application()
    assert conf.get_application() is app
    assert set(conf.command_classes()) == set(app.command_types)
    assert app.execute(
        RegisterCustomer(customer_id=uuid4(), name="X", email="x@example.com", address=ADDRESS)
    ).versions
