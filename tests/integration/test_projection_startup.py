"""Workers of a new projection starting at the same moment: both record its version, neither
crashes (found by the two-worker benchmark: one died with a unique violation)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from framework.database import create_engine
from framework.positions import framework_metadata, projections_table, read_version, write_version
from tests.support.projection_support import pg_database


@pytest.mark.timeout(60)
def test_two_workers_recording_a_new_projection_s_version_at_once(postgres_url: str) -> None:
    with pg_database(postgres_url) as url:
        engine = create_engine(url)
        framework_metadata.create_all(engine)
        t = projections_table
        other = engine.connect()
        raced: list[bool] = []

        def second_worker_first(conn: sa.Connection, cursor, statement, *args) -> None:
            # Just before this worker inserts the version row, the other one commits it.
            if statement.startswith("INSERT INTO keel_projections") and not raced:
                raced.append(True)
                with other.begin():
                    write_version(other, "p", 1)

        with engine.connect() as first:
            sa.event.listen(first, "before_cursor_execute", second_worker_first)
            with first.begin():
                write_version(first, "p", 1)
        other.close()
        assert raced == [True]
        with engine.connect() as conn:
            assert read_version(conn, "p") == 1
            assert conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one() == 1
        engine.dispose()
