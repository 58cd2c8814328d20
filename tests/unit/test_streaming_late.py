"""Late events from the command line: listed, shown in the status, and re-driven through the
log by a real worker on the embedded SQLite store."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from framework.codec import codec
from framework.commands import Metadata
from framework.database import create_engine
from framework.persistence import open_store
from framework.streaming import late_events
from framework.streaming.__main__ import main
from framework.streaming.testing import Partitions
from framework.testing import ev
from framework.worker import ProjectionWorker, setup_tables
from tests.support.streaming_domain import Sale, SalesStreams

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
A, B = uuid.UUID(int=1), uuid.UUID(int=2)
TARGET = "tests.support.streaming_domain:SalesStreams"


def made(sid: uuid.UUID, minutes: float, amount: str):
    at = T0 + timedelta(minutes=minutes)
    return ev(Sale.Made, id=sid, at=at, amount=amount, country="CH", shopper="ann")


@pytest.fixture
def shop(tmp_path):
    """A store where sale B (10:05) comes after sale A (11:30): 75 minutes late."""
    url = f"sqlite:///{tmp_path}/events.db"
    database = f"sqlite:///{tmp_path}/read.db"
    with open_store(url, name="shop") as store:
        versions: dict[uuid.UUID, int] = {}
        for item in (made(A, 90, "3.00"), made(B, 5, "8.00")):
            for event in Partitions._events(item, 0, 1, versions):
                versions[event.originator_id] = event.originator_version
                store.append([codec.encode(event, Metadata())])
    engine = create_engine(database)
    setup_tables(engine, SalesStreams())
    return url, database, engine


def _work(url: str, engine: sa.Engine) -> None:
    with open_store(url, name="shop") as store:
        ProjectionWorker(SalesStreams(), store, engine).run(until_caught_up=True)


def _daily_sales(engine: sa.Engine) -> int:
    open_days = SalesStreams.daily.tables["open"]
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.sum(open_days.c.sales))).scalar() or 0)


def test_late_events_are_listed_shown_in_the_status_and_re_driven_once(shop, capsys):
    url, database, engine = shop
    _work(url, engine)
    assert _daily_sales(engine) == 1  # B was parked, not counted

    assert main(["late", TARGET, "--database", database, "--action", "dead_letter"]) == 0
    listed = capsys.readouterr().out
    assert "daily" in listed and "dead_letter" in listed and "4,500 s" in listed
    assert main(["status", TARGET, "--database", database, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["late_events"]["daily"] == {"dead_letter": 1}

    (parked,) = late_events(SalesStreams(), engine, action="dead_letter")
    position = f"{parked.partition}:{parked.offset}"
    args = ["redrive", TARGET, "--database", database, "--name", "shop", "--store", url]
    assert main([*args, "--at", position]) == 0
    assert "re-drive records appended: {0:" in capsys.readouterr().out
    _work(url, engine)
    assert _daily_sales(engine) == 2
    assert [e.action for e in late_events(SalesStreams(), engine, stream="daily")] == ["redriven"]

    # Nothing is parked now: naming the position again is refused, and nothing is appended.
    assert main([*args, "--at", position]) == 2
    assert "no late event of test_sales_streams is parked at" in capsys.readouterr().err
    _work(url, engine)
    assert _daily_sales(engine) == 2


def test_the_cli_refuses_a_malformed_position_and_a_projection_without_streams(shop, capsys):
    url, database, _engine = shop
    with pytest.raises(SystemExit):
        main(
            [
                "redrive",
                TARGET,
                "--database",
                database,
                "--name",
                "shop",
                "--store",
                url,
                "--at",
                "x1",
            ]
        )
    assert "give PARTITION:OFFSET" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["status", "tests.projection_domain:CartSummary", "--database", database])
    assert "without streaming tables" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["late", TARGET, "--limit", "-1"], "argument --limit: must be a whole number of 1 or"),
        (["late", TARGET, "--limit", "0"], "argument --limit: must be a whole number of 1 or"),
        (["tick", "--name", "shop", "--every", "0"], "argument --every: must be a number above 0"),
    ],
)
def test_the_cli_refuses_a_limit_or_interval_out_of_range(argv, message, capsys):
    # Unchecked, SQL's LIMIT -1 would list every late event and --every 0 would spin.
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
