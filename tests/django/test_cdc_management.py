"""``manage.py cdc``: the change feeds from the Django host."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.integration.cdc_support import Crm, make_crm


@pytest.fixture
def legacy(postgres_url: str) -> Iterator[Crm]:
    yield from make_crm(postgres_url)


def test_cdc_installs_runs_and_reports_status(
    legacy: Crm, postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEEL_CRM_TABLE", legacy.table)
    monkeypatch.setenv("KEEL_CRM_FEED", legacy.feed_name)
    monkeypatch.setenv("KEEL_SHOP_EVENT_STORE", f"sqlite:///{tmp_path}/shop.db")
    monkeypatch.setenv("DATABASE_URL", postgres_url)
    with legacy.engine.begin() as conn:
        legacy.insert(conn, 1)
        legacy.insert(conn, 2, email="nobody")
    call_command("cdc", "install", "sample_app.crm:feed", stdout=io.StringIO())
    call_command("cdc", "run", "sample_app.crm:feed", "--until-caught-up", stdout=io.StringIO())
    with pytest.raises(SystemExit) as exited:  # a dead letter: status exits 3
        call_command("cdc", "status", "sample_app.crm:feed", "--json")
    assert exited.value.code == 3


def test_cdc_user_errors_are_command_errors() -> None:
    with pytest.raises(CommandError, match="name a command"):
        call_command("cdc")
    with pytest.raises(CommandError, match="bad arguments"):
        call_command("cdc", "status", "no_such_module:feed")
