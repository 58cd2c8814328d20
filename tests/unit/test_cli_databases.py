"""The operator commands (process managers, streams, projections) on a database they cannot
use: one nothing listens for (a closed port), or a URL naming no dialect. Each says
``error: ...`` with the database, password hidden, and exits with its documented code (1 an
outage, 2 a bad argument), never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from framework.persistence import open_store
from tests.support.projection_support import free_port

REPO = Path(__file__).resolve().parents[2]
PROCESS = "sample_app.payments.service:payment_process_worker"
STREAMS = "tests.support.streaming_domain:SalesStreams"


def _closed() -> str:
    return f"postgresql+psycopg://nobody:secret@127.0.0.1:{free_port()}/keel"


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if "DATABASE_URL" not in k}
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        env={**clean, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=90,
    )


def _refused(done: subprocess.CompletedProcess[str], code: int, says: str) -> None:
    assert done.returncode == code, done.stderr
    assert done.stderr.startswith("error: ") and says in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "secret" not in done.stderr


@pytest.mark.parametrize(
    "args", [["status"], ["timeline", "an-order"], ["dead-letters"]], ids=lambda a: a[0]
)
@pytest.mark.parametrize(
    ("database", "code", "says"),
    [
        (None, 1, "payment_process"),  # None: a closed port
        ("bogus://ann:secret@x/db", 2, "database 'bogus://ann:***@x/db': Can't load plugin"),
    ],
    ids=["unreachable", "no-dialect"],
)
def test_the_process_commands_report_a_database_they_cannot_use(
    args: list[str], database: str | None, code: int, says: str
) -> None:
    url = database or _closed()
    done = _run(
        "framework.process", args[0], PROCESS, *args[1:],
        env={"KEEL_SHOP_EVENT_STORE": "memory://", "KEEL_PAYMENTS_EVENT_STORE": "memory://",
             "KEEL_PROJECTION_PAYMENT_PROCESS_DATABASE_URL": url},
    )  # fmt: skip
    _refused(done, code, says)
    if database is None:
        assert f"cannot reach its database {url.replace(':secret', ':***')}" in done.stderr


@pytest.mark.parametrize("command", ["status", "late", "redrive"])
@pytest.mark.parametrize(
    ("database", "code", "says"),
    [(None, 1, "test_sales_streams: cannot reach its database"), ("not a url", 2, "'not a url'")],
    ids=["unreachable", "unparsable"],
)
def test_the_stream_commands_report_a_database_they_cannot_use(
    tmp_path: Path, command: str, database: str | None, code: int, says: str
) -> None:
    store = f"sqlite:///{tmp_path}/shop-events.db"
    open_store(store, name="shop").close()
    extra = ["--name", "shop", "--store", store] if command == "redrive" else []
    done = _run("framework.streaming", command, STREAMS, "--database", database or _closed(),
                *extra)  # fmt: skip
    _refused(done, code, says)


def test_a_tick_to_an_unreachable_postgres_store_is_an_outage() -> None:
    # The store's recorders connect as they are made: that was outside the error translation.
    url = f"postgresql://nobody:secret@127.0.0.1:{free_port()}/keel"
    done = _run("framework.streaming", "tick", "--name", "shop", "--store", url)
    _refused(done, 1, "the event database is unavailable")


def test_the_worker_status_of_an_unreachable_read_model_database_is_an_error(
    tmp_path: Path,
) -> None:
    store = f"sqlite:///{tmp_path}/carts-events.db"
    open_store(store, name="carts").close()
    done = _run("framework.worker", "status", "tests.projection_domain:CartSummary", "--app",
                "carts", "--store", store, "--database", _closed())  # fmt: skip
    _refused(done, 1, "cart_summary: cannot reach its database postgresql+psycopg://nobody:***@")
