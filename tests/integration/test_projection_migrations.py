"""Alembic migrates the read-model databases: ``upgrade head`` and ``check`` on SQLite and on
PostgreSQL; autogenerate never proposes dropping tables it does not own; a rebuild's swap
leaves the tables exactly as the models say (index and constraint names included)."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory

from framework.database import create_engine
from framework.persistence import open_store
from framework.rebuild import rebuild
from framework.worker import ProjectionWorker
from tests.projection_domain import AddItem, CartSummary, OpenCart, cart_app
from tests.support.projection_support import REPO, pg_database

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/read.db"
        return
    with pg_database(request.getfixturevalue("postgres_url")) as url:
        yield url


def alembic(url: str, *args: str, projections: str = "") -> subprocess.CompletedProcess[str]:
    extra = ["-x", f"projections={projections}"] if projections else []
    return subprocess.run(
        [str(REPO / ".venv" / "bin" / "alembic"), "-x", f"url={url}", *extra, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_upgrade_head_check_and_ownership(db_url: str) -> None:
    head = ScriptDirectory.from_config(Config(str(REPO / "alembic.ini"))).get_current_head()
    assert alembic(db_url, "upgrade", "head").returncode == 0
    current = alembic(db_url, "current")
    assert f"{head} (head)" in current.stdout, current.stderr
    checked = alembic(db_url, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr

    engine = create_engine(db_url)
    with engine.begin() as conn:  # a table Django (or anyone else) owns in the same database
        conn.exec_driver_sql("CREATE TABLE django_session (session_key varchar(40) PRIMARY KEY)")
    assert alembic(db_url, "check").returncode == 0

    module = "tests.projection_domain"
    missing = alembic(db_url, "check", projections=module)
    assert missing.returncode != 0 and "add_table" in missing.stdout + missing.stderr
    assert "remove_table" not in missing.stdout + missing.stderr

    projection = CartSummary()
    with engine.begin() as conn:
        projection.create_tables(conn)
    assert alembic(db_url, "check", projections=module).returncode == 0

    store = open_store("memory://", name="carts")
    app = cart_app(store)
    cart = uuid.uuid4()
    app.execute(OpenCart(cart_id=cart, customer="m"))
    app.execute(AddItem(cart_id=cart, sku="k"))
    ProjectionWorker(projection, store, engine).run(until_caught_up=True)
    rebuild(projection, store, engine, progress=lambda _p: None)
    rebuild(projection, store, engine, progress=lambda _p: None)  # and again: names reusable
    after = alembic(db_url, "check", projections=module)
    assert after.returncode == 0, after.stdout + after.stderr
    names = {i["name"] for i in sa.inspect(engine).get_indexes("cart_summary_lines")}
    assert names == {"ix_cart_summary_lines_sku"}
    assert not [t for t in sa.inspect(engine).get_table_names() if t.endswith("__rebuild")]
    engine.dispose()
