"""``manage.py cdc``: the change feeds from the Django host."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from tests.integration.cdc_support import Crm, make_crm, unreachable_url


@pytest.fixture
def legacy(postgres_url: str) -> Iterator[Crm]:
    yield from make_crm(postgres_url)


def crm_env(
    monkeypatch: pytest.MonkeyPatch,
    legacy: Crm,
    *,
    store: str,
    database: str,
    source: str | None = None,
) -> None:
    """The sample CRM feed's settings: its legacy table and name, the shop's event ``store``,
    the feed's own ``database`` and, when given, the CRM ``source`` database."""
    monkeypatch.setenv("KEEL_CRM_TABLE", legacy.table)
    monkeypatch.setenv("KEEL_CRM_FEED", legacy.feed_name)
    if source is not None:
        monkeypatch.setenv("KEEL_CRM_DATABASE_URL", source)
    monkeypatch.setenv("KEEL_SHOP_EVENT_STORE", store)
    monkeypatch.setenv("DATABASE_URL", database)


def test_cdc_installs_runs_and_reports_status(
    legacy: Crm, postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    crm_env(monkeypatch, legacy, store=f"sqlite:///{tmp_path}/shop.db", database=postgres_url)
    with legacy.engine.begin() as conn:
        legacy.insert(conn, 1)
        legacy.insert(conn, 2, email="nobody")
    call_command("cdc", "install", "sample_app.crm:feed", stdout=io.StringIO())
    call_command("cdc", "run", "sample_app.crm:feed", "--until-caught-up", stdout=io.StringIO())
    with pytest.raises(SystemExit) as exited:  # a dead letter: status exits 3
        call_command("cdc", "status", "sample_app.crm:feed", "--json")
    assert exited.value.code == 3
    with pytest.raises(CommandError, match=r"not parked: row id\(s\) 99; nothing was re-driven"):
        call_command("cdc", "redrive", "sample_app.crm:feed", "--row", "99")


def test_cdc_user_errors_are_command_errors() -> None:
    with pytest.raises(CommandError, match="name a command"):
        call_command("cdc")
    with pytest.raises(CommandError, match="bad arguments"):  # argparse said which
        call_command("cdc", "status")
    with pytest.raises(CommandError, match="no_such_module") as unloadable:
        call_command("cdc", "status", "no_such_module:feed")
    assert "bad arguments" not in str(unloadable.value)


def test_a_feed_that_cannot_be_configured_says_why_and_what_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The demo set-up: no CRM database named, so the feed falls back to a SQLite one.
    for name in ("KEEL_CRM_DATABASE_URL", "KEEL_DATABASE_URL", "KEEL_CRM_DEBEZIUM_TOPIC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/read_models.db")
    monkeypatch.setenv("KEEL_SHOP_EVENT_STORE", "memory://")
    with pytest.raises(CommandError) as refused:
        call_command("cdc", "status", "sample_app.crm:feed")
    message = str(refused.value)
    assert "bad arguments" not in message
    assert f"sqlite:///{tmp_path}/read_models.db is sqlite" in message
    assert "KEEL_CRM_DATABASE_URL selects the CRM database" in message


def test_status_of_an_unreachable_source_exits_3(
    legacy: Crm, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    crm_env(monkeypatch, legacy, store="memory://", database=postgres_url, source=unreachable_url())
    with pytest.raises(SystemExit) as exited:
        call_command("cdc", "status", "sample_app.crm:feed", "--json")
    assert exited.value.code == 3


def test_an_unreachable_feed_database_is_a_command_error_naming_it(
    legacy: Crm, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = unreachable_url()
    # The source answers; the feed's own database (its cursor and dead letters) does not.
    crm_env(monkeypatch, legacy, store="memory://", database=url, source=postgres_url)
    with pytest.raises(CommandError) as refused:
        call_command("cdc", "status", "sample_app.crm:feed")
    message = str(refused.value)
    assert f"cannot reach its database {url.replace(':secret', ':***')}" in message
    assert "secret" not in message and "bad arguments" not in message


def test_the_admin_shows_lag_and_dead_letters_and_redrives(
    legacy: Crm,
    postgres_url: str,
    shop: Any,
    settings: Any,
    make_user: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from framework.contrib.django import conf

    crm_env(monkeypatch, legacy, store=f"sqlite:///{shop.tmp}/crm-shop.db", database=postgres_url)
    settings.KEEL = {**settings.KEEL, "CDC_FEEDS": ["sample_app.crm:feed", "no_such:feed"]}
    conf.reset()
    with legacy.engine.begin() as conn:
        legacy.insert(conn, 1)
        legacy.insert(conn, 2, country="XX")  # parked
    feed = conf.get_cdc_feeds()["sample_app.crm:feed"]
    feed.source.install()
    feed.run(until_caught_up=True)
    legacy.sql("UPDATE CRM SET city = 'Bonn' WHERE id = 1")  # not yet read: lag 1

    viewer = Client()
    viewer.force_login(make_user("ops", "keel.view_changefeed"))
    page = viewer.get("/admin/keel/changefeed/")
    html = page.content.decode()
    assert page.status_code == 200
    assert legacy.feed_name in html and "ConfigurationError" in html  # the broken one shows
    assert re.search(r'class="keel-lag">1 change<', html)
    assert re.search(r'class="keel-dead-letter-count">1<', html) and "{&#x27;id&#x27;: 2}" in html
    letter = feed.dead_letters()[0]
    refused = viewer.post("/admin/keel/changefeed/0/redrive/", {"dead_letter": [letter.id]})
    assert refused.status_code == 403

    operator = Client(enforce_csrf_checks=False)
    operator.force_login(make_user("lead", "keel.view_changefeed", "keel.redrive_cdc"))
    done = operator.post(
        "/admin/keel/changefeed/0/redrive/", {"dead_letter": [letter.id]}, follow=True
    )
    assert "1 row(s) still failing" in done.content.decode()  # the country is still wrong
    gone = operator.post(
        "/admin/keel/changefeed/0/redrive/",
        {"dead_letter": [letter.id], "action": "discard"},
        follow=True,
    )
    assert "discarded 1" in gone.content.decode() and feed.status().dead_letters == 0


def test_the_admin_shows_an_unreachable_source_without_a_lag(
    legacy: Crm,
    postgres_url: str,
    shop: Any,
    settings: Any,
    make_user: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from framework.contrib.django import conf

    crm_env(
        monkeypatch,
        legacy,
        store=f"sqlite:///{shop.tmp}/crm-shop.db",
        database=postgres_url,
        source=unreachable_url(),
    )
    settings.KEEL = {**settings.KEEL, "CDC_FEEDS": ["sample_app.crm:feed"]}
    conf.reset()
    viewer = Client()
    viewer.force_login(make_user("ops", "keel.view_changefeed"))
    page = viewer.get("/admin/keel/changefeed/")
    html = page.content.decode()
    assert page.status_code == 200
    assert 'class="keel-lag">unknown<' in html  # not "0 changes": an unknown lag is not zero
    assert re.search(r'keel-source-error">StoreUnavailableError: [^<]*cannot reach', html)
    assert "secret" not in html
