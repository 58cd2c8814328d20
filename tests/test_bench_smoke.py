"""The benchmark suite runs end to end in its smallest configuration (embedded backends only,
tiny sizes, seconds) and its JSON has every section, every figure positive. No timing is
asserted: the numbers of a smoke run mean nothing."""

from __future__ import annotations

import importlib
import json
import math
from typing import Any

import pytest

from bench.__main__ import main
from bench.harness import Services
from bench.report import SECTIONS, markdown, run_all

EXPECTED_ROWS = {
    "throughput": {"keel_sqlite_1", "keel_sqlite_8"},
    "ceiling": {"raw_txn_2", "raw_txn_16", "keel_append_1", "keel_append_8"},
    "projection": {"bare_reader", "keel_sqlite"},
    "rebuild": {"bare_400", "keel_rebuild_400"},
    "load": {
        "keel_snap_10",
        "keel_nosnap_10",
        "es_snap_10",
        "es_nosnap_10",
        "keel_snap_1000",
        "keel_snap_1000_tail",
    },
    "latency": {
        "sqlite_execute_p50",
        "sqlite_visible_p50",
        "sqlite_execute_p99",
        "sqlite_visible_p99",
    },
    "memory": {"keel_writer", "bare_producer", "keel_worker", "bare_consumer"},
    "streaming": {"bare_reader", "plain_sqlite", "hand_sqlite", "windowed_sqlite", "ledger_sqlite"},
    "observability": {
        f"sqlite_{kind}_{clock}_{mode}"
        for kind in ("commands", "events")
        for clock in ("cpu", "wall")
        for mode in ("off", "on", "sampled")
    },
}


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    services = Services(kafka_reason="smoke", postgres_reason="smoke")
    return run_all(quick=True, smoke=True, services=services, log=lambda _line: None)


def test_every_section_ran_without_errors(result: dict[str, Any]) -> None:
    assert result["errors"] == {}
    assert list(result["sections"]) == list(SECTIONS)
    for name, section in result["sections"].items():
        if getattr(importlib.import_module(SECTIONS[name]), "NEEDS_KAFKA", False):
            # Embedded only: a Kafka-only section says why it has nothing.
            assert section["skipped"] and not section["rows"], name
            continue
        assert section["skipped"] == [], name
        assert section["rows"], name


def test_rows_have_positive_figures_and_ratios_against_their_peers(
    result: dict[str, Any],
) -> None:
    for name, expected in EXPECTED_ROWS.items():
        rows = result["sections"][name]["rows"]
        assert expected <= set(rows), (name, sorted(rows))
        for key, row in rows.items():
            assert row["value"] > 0 and math.isfinite(row["value"]), (name, key)
            assert row["unit"] and row["label"]
            if row["peer"] is not None:
                assert row["peer"] in rows, (name, key)
                assert row["ratio"] > 0, (name, key)


def test_goals_and_metadata_are_reported(result: dict[str, Any]) -> None:
    names = {g["name"] for g in result["goals"]}
    assert {
        "kafka_vs_eventsourcing_postgres",
        "store_vs_raw_transactional",
        "projection_vs_bare_consumer",
        "load_100k_vs_10",
        "read_your_writes_p99",
    } <= names
    for goal in result["goals"]:
        assert {"goal", "target", "ratio", "status", "note"} <= set(goal)
    assert result["meta"]["mode"] == "smoke"
    assert result["meta"]["machine"]["cores"] >= 1
    json.dumps(result)  # serialisable as is
    assert "### Goals" in markdown(result)


def test_the_command_line_writes_json(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "out.json"
    assert main(["--smoke", "--only", "load", "--json", str(target)]) == 0
    written = json.loads(target.read_text())
    assert list(written["sections"]) == ["load"]
    assert "Goals" in capsys.readouterr().out


def test_the_report_command_prints_a_saved_run_and_names_a_missing_one(tmp_path: Any) -> None:
    import subprocess
    import sys

    target = tmp_path / "out.json"
    assert main(["--smoke", "--only", "load", "--json", str(target)]) == 0
    report = [sys.executable, "-m", "bench.report"]
    printed = subprocess.run([*report, str(target)], capture_output=True, text=True)
    assert printed.returncode == 0 and "### Goals" in printed.stdout
    missing = subprocess.run([*report, str(tmp_path / "none.json")], capture_output=True, text=True)
    assert missing.returncode == 2 and "none.json" in missing.stderr
    assert "Traceback" not in missing.stderr
