"""The worker's command line and configuration: it refuses what would silently do nothing,
and its --help answers how to run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from framework.database import create_engine
from framework.persistence import open_store
from framework.settings import projection_settings
from framework.worker import ProjectionWorker, consumer_group, main
from tests.projection_domain import CartSummary

PROJECTION = "tests.projection_domain:CartSummary"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_store_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for key in ("KEEL_CARTS_EVENT_STORE", "KEEL_EVENT_STORE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_worker_with_no_store_configured_refuses_to_start(
    no_store_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["run", PROJECTION, "--app", "carts", "--database", "sqlite://"])
    err = capsys.readouterr().err
    assert code == 2
    assert "no event store is configured" in err and "--store" in err
    assert "KEEL_CARTS_EVENT_STORE" in err
    assert not (no_store_env / "var").exists()  # no empty store file was created


def test_a_worker_refuses_a_store_file_that_does_not_exist(
    no_store_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = no_store_env / "typo-events.db"
    code = main(["status", PROJECTION, "--app", "carts", "--store", f"sqlite:///{missing}"])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    assert not missing.exists()


def test_the_store_may_come_from_the_environment(
    no_store_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store_file = no_store_env / "carts-events.db"
    open_store(f"sqlite:///{store_file}", name="carts").close()
    monkeypatch.setenv("KEEL_CARTS_EVENT_STORE", f"sqlite:///{store_file}")
    db = f"sqlite:///{no_store_env}/read.db"
    code = main(["run", PROJECTION, "--app", "carts", "--database", db,
                 "--create-tables", "--until-caught-up"])  # fmt: skip
    assert code == 0
    assert main(["status", PROJECTION, "--app", "carts", "--database", db]) == 0
    assert "cart_summary v1 (tables v1): lag 0" in capsys.readouterr().out


def test_help_answers_how_to_run_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    needed = ["rebuild", "status", "dead-letters", "--create-tables", "--until-caught-up"]
    needed += ["--app", "--store", "--database", "--instance-id", "KEEL_EVENT_STORE"]
    assert [n for n in needed if n not in out] == []


def test_bad_settings_are_refused_with_the_reason(
    no_store_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store_file = no_store_env / "carts-events.db"
    open_store(f"sqlite:///{store_file}", name="carts").close()
    code = main(["run", PROJECTION, "--app", "carts", "--store", f"sqlite:///{store_file}",
                 "--database", "sqlite://", "--session-timeout", "1.5"])  # fmt: skip
    assert code == 1 and "heartbeat_interval" in capsys.readouterr().err


@pytest.fixture
def store_file(no_store_env: Path) -> Path:
    path = no_store_env / "carts-events.db"
    open_store(f"sqlite:///{path}", name="carts").close()
    return path


@pytest.mark.parametrize("command", ["status", "rebuild", "dead-letters"])
def test_an_unmigrated_read_model_database_is_reported_with_the_fix(
    store_file: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = store_file.parent / "empty.db"
    code = main([command, PROJECTION, "--app", "carts", "--store", f"sqlite:///{store_file}",
                 "--database", f"sqlite:///{empty}"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: cart_summary: the read-model database is not migrated: run "
                          "`alembic upgrade head`")  # fmt: skip
    assert "keel_dead_letters" in err


@pytest.mark.parametrize(
    ("option", "url", "shown"),
    [
        ("--store", "bogus://x", "unknown event store 'bogus://x'"),
        ("--database", "bogus://ann:secret@x/db", "read-model database 'bogus://ann:***@x/db'"),
        ("--database", "not a url", "read-model database 'not a url'"),
    ],
)
def test_a_bad_url_is_refused_as_a_bad_argument(
    store_file: Path, option: str, url: str, shown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    given = {"--store": f"sqlite:///{store_file}", "--database": "sqlite://", option: url}
    code = main(["status", PROJECTION, "--app", "carts", *(x for kv in given.items() for x in kv)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: {shown}") and "secret" not in err


@pytest.mark.parametrize(
    ("database", "code", "says"),
    [("empty.db", 1, "is not migrated"), ("bogus://x", 2, "Can't load plugin")],
)
def test_the_command_line_exits_with_the_code_not_a_traceback(
    store_file: Path, database: str, code: int, says: str
) -> None:
    url = database if "://" in database else f"sqlite:///{store_file.parent / database}"
    done = subprocess.run(
        [sys.executable, "-m", "framework.worker", "status", PROJECTION, "--app", "carts",
         "--store", f"sqlite:///{store_file}", "--database", url],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == code, done.stderr
    assert done.stderr.startswith("error: ") and says in done.stderr
    assert "Traceback" not in done.stderr


def test_dead_letters_says_when_there_are_none(
    store_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    read = f"sqlite:///{store_file.parent}/read.db"
    code = main(["dead-letters", PROJECTION, "--app", "carts", "--store", f"sqlite:///{store_file}",
                 "--database", read, "--create-tables"])  # fmt: skip
    assert code == 0 and capsys.readouterr().out == "no dead letters\n"


def test_the_consumer_group_is_named_after_the_application_too() -> None:
    store = open_store("memory://", name="shop")
    worker = ProjectionWorker(CartSummary(), store, _engine())
    assert worker.group == consumer_group("shop", "cart_summary") == "shop.cart_summary"
    other = ProjectionWorker(CartSummary(), open_store("memory://", name="billing"), _engine())
    assert other.group != worker.group


def test_consumer_settings_default_to_a_fast_failover() -> None:
    settings = projection_settings("orders", environ={})
    assert (settings.session_timeout, settings.heartbeat_interval) == (10.0, 2.0)
    assert settings.instance_id is None
    env = {"KEEL_PROJECTION_ORDERS_INSTANCE_ID": "orders-0", "KEEL_PROJECTION_SESSION_TIMEOUT": "6"}
    configured = projection_settings("orders", environ=env)
    assert (configured.instance_id, configured.session_timeout) == ("orders-0", 6.0)


def _engine() -> sa.Engine:
    return create_engine("sqlite://")


@pytest.mark.parametrize(
    "projection", ["projections.no_such_module:Customers", "projections.customers:NoSuchClass"]
)
def test_a_projection_that_cannot_be_imported_is_a_bad_argument(
    tmp_path: Path, projection: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "carts-events.db"
    open_store(f"sqlite:///{store}", name="carts").close()
    code = main(["status", projection, "--app", "carts", "--store", f"sqlite:///{store}"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and projection.split(":")[0] in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--batch-size", "0"], "argument --batch-size: must be a whole number of 1 or"),
        (["run", "--session-timeout", "-1"], "argument --session-timeout: must be a number above"),
        (["status", "--until-caught-up"], "--until-caught-up applies to run only, not to status"),
        (["status", "--batch-size", "10"], "--batch-size applies to run and rebuild only"),
        (["rebuild", "--instance-id", "w1"], "--instance-id applies to run only, not to rebuild"),
        (["run", "--redrive"], "--redrive applies to dead-letters only, not to run"),
    ],
)
def test_arguments_that_would_be_ignored_or_cannot_work_are_usage_errors(
    no_store_env: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    command, *options = argv
    with pytest.raises(SystemExit) as exited:
        main([command, PROJECTION, "--app", "carts", *options])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert message in err and "no event store is configured" not in err  # refused first
