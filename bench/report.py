"""Running the sections, judging the goals, showing the results (rich tables, JSON, Markdown)."""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import platform
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.harness import REPO, Context, Section, ServiceMissing, Services

__all__ = ["SECTIONS", "evaluate_goals", "machine", "markdown", "render", "run_all"]

SECTIONS: dict[str, str] = {
    "throughput": "bench.throughput",
    "writers": "bench.writers",
    "ceiling": "bench.ceiling",
    "projection": "bench.projection",
    "rebuild": "bench.rebuild",
    "load": "bench.loading",
    "latency": "bench.latency",
    "memory": "bench.memory",
    "streaming": "bench.streaming",
    "observability": "bench.observability",
}
"""Section name (for ``--only``) -> module with ``run(ctx) -> Section``, in running order."""


@dataclass(frozen=True)
class Goal:
    name: str
    text: str
    section: str
    row: str
    target: float
    at_most: bool = False
    """The goal is ``ratio <= target`` (else ``ratio >= target``)."""
    expects_peer: str | None = None
    """The goal only holds against this peer; another peer (a fallback) is reported, not
    judged."""
    absolute: str | None = None
    """For an absolute bar: the unit of ``target`` (the ratio is then value / target)."""


def _goals(smoke: bool, quick: bool = False) -> list[Goal]:
    largest = 1000 if smoke else 100_000
    latency_row = "sqlite_visible_p99" if smoke else "kafka_visible_p99"
    rebuild_n = 400 if smoke else 1_000_000
    return [
        Goal(
            "kafka_vs_eventsourcing_postgres",
            "Kafka store, 8 callers, >= eventsourcing's PostgreSQL Application, 8 callers",
            "throughput",
            "keel_kafka_8",
            1.0,
            expects_peer="es_postgres_8_",
        ),
        Goal(
            "senders_do_not_slow_each_other",
            "Kafka, 1 shard: total commands/s at the most sender processes >= 0.9x of 1 process",
            "writers",
            "keel_senders_2_vs_1" if quick else "keel_senders_8_vs_1",
            0.9,
        ),
        Goal(
            "two_shards_vs_one",
            "Kafka: 2 shards with 2 writer processes >= 1.5x of 1 shard",
            "writers",
            "keel_shards_2",
            1.5,
        ),
        Goal(
            "routed_vs_eventsourcing_postgres",
            "Kafka, routed from the most sender processes >= eventsourcing on PostgreSQL with "
            "the same processes",
            "writers",
            "keel_senders_2" if quick else "keel_senders_8",
            1.0,
        ),
        Goal(
            "first_command_independent_of_history",
            "a new sender's first command with the larger history within 1.25x of the smaller",
            "writers",
            "first_command_large",
            1.25,
            at_most=True,
        ),
        Goal(
            "store_vs_raw_transactional",
            "Kafka store append >= 50% of the bare transactional producer (same batching)",
            "ceiling",
            "keel_append_8",
            0.5,
        ),
        Goal(
            "projection_vs_bare_consumer",
            "projection into SQLite >= 50% of a bare consumer's events/s",
            "projection",
            "keel_sqlite",
            0.5,
        ),
        Goal(
            "projection_postgres_vs_bare_consumer",
            "projection into PostgreSQL >= 30% of a bare consumer's events/s",
            "projection",
            "keel_postgres",
            0.3,
        ),
        Goal(
            "two_workers_vs_one",
            "two worker processes of one projection (3 partitions) >= 1.6x one worker",
            "projection",
            "workers_2",
            1.6,
        ),
        Goal(
            "rebuild_vs_bare_consumer",
            f"rebuild over {rebuild_n:,} records >= 50% of a bare consumer's events/s",
            "rebuild",
            f"keel_rebuild_{rebuild_n}",
            0.5,
        ),
        Goal(
            "rebuild_1m_seconds",
            f"rebuild over {rebuild_n:,} records in under 60 s",
            "rebuild",
            f"keel_rebuild_{rebuild_n}_seconds",
            60.0,
            at_most=True,
            absolute="s",
        ),
        Goal(
            "windowed_vs_plain_projection",
            "Windowed(Tumbling) projection into SQLite >= 0.7x the plain per-event projection",
            "streaming",
            "windowed_sqlite",
            0.7,
        ),
        Goal(
            "observability_commands_sqlite",
            "commands per CPU-second with tracing + metrics on (SDK, every span exported) >= 0.9x "
            "off (SQLite)",
            "observability",
            "sqlite_commands_cpu_on",
            0.9,
        ),
        Goal(
            "observability_events_sqlite",
            "projection events per CPU-second, tracing + metrics on >= 0.9x off (SQLite store)",
            "observability",
            "sqlite_events_cpu_on",
            0.9,
        ),
        Goal(
            "observability_commands_kafka",
            "Kafka: commands per CPU-second, tracing + metrics on >= 0.9x off",
            "observability",
            "kafka_commands_cpu_on",
            0.9,
        ),
        Goal(
            "observability_events_kafka",
            "Kafka: projection events per CPU-second, tracing + metrics on >= 0.9x off",
            "observability",
            "kafka_events_cpu_on",
            0.9,
        ),
        Goal(
            "load_100k_vs_10",
            f"load at {largest:,} events within 2x of load at 10 (with snapshots)",
            "load",
            f"keel_snap_{largest}",
            2.0,
            at_most=True,
        ),
        Goal(
            "load_100k_worst_case_vs_10",
            f"(worst case) load at {largest:,} + 99 events, the snapshot plus 99, within 2x "
            "of load at 10",
            "load",
            f"keel_snap_{largest}_tail",
            2.0,
            at_most=True,
        ),
        Goal(
            "read_your_writes_p99",
            "read-your-writes p99 < 100 ms on loopback ("
            + ("SQLite store, smoke" if smoke else "Kafka store")
            + ")",
            "latency",
            latency_row,
            100.0,
            at_most=True,
            absolute="ms",
        ),
    ]


def evaluate_goals(
    sections: dict[str, Section], smoke: bool = False, quick: bool = False
) -> list[dict[str, Any]]:
    """Each goal's ratio and whether it is met (None: not measured in this run)."""
    out = []
    for goal in _goals(smoke, quick):
        entry: dict[str, Any] = {
            "name": goal.name,
            "goal": goal.text,
            "target": f"{'<=' if goal.at_most else '>='} {goal.target:g}"
            + (f" {goal.absolute}" if goal.absolute else ""),
            "ratio": None,
            "value": None,
            "peer_value": None,
            "status": "not measured",
            "note": "",
        }
        section = sections.get(goal.section)
        row = section.row(goal.row) if section else None
        if section is None or row is None:
            reason = "section not run" if section is None else "; ".join(section.skipped)
            entry["note"] = reason or "not measured"
            out.append(entry)
            continue
        entry["value"] = row.value
        ratio: float | None
        if goal.absolute:
            ratio = row.value / goal.target
            entry["ratio"] = ratio
            entry["peer_value"] = goal.target
            met = ratio <= 1.0
        else:
            ratio = section.ratio(goal.row)
            entry["ratio"] = ratio
            peer = section.row(row.peer) if row.peer else None
            entry["peer_value"] = peer.value if peer else None
            met = ratio is not None and (
                ratio <= goal.target if goal.at_most else ratio >= goal.target
            )
            if goal.expects_peer and not (row.peer or "").startswith(goal.expects_peer):
                entry["status"] = "not measured"
                entry["note"] = f"compared with {row.peer} instead: {row.note}"
                out.append(entry)
                continue
        entry["status"] = "met" if met else "missed"
        entry["note"] = f"{row.label}: {_fmt(row.value, row.unit)} {row.unit}"
        if smoke:
            entry["status"] = "not judged"
            entry["note"] = "smoke configuration (embedded analogue, tiny sizes): " + entry["note"]
        out.append(entry)
    return out


# -- running --------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import psutil

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as info:
            found = re.search(r"^model name\s*:\s*(.+)$", info.read(), re.M)
            if found:
                cpu = found.group(1).strip()
    except OSError:
        pass
    kafka_version = None
    script = REPO / "scripts" / "kafka"
    if script.exists():
        found = re.search(r"^KAFKA_VERSION=(\S+)", script.read_text(), re.M)
        kafka_version = found.group(1) if found else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "kafka": kafka_version,
    }


def _postgres_version(url: str | None) -> str | None:
    if not url:
        return None
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=3) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            return str(row[0]) if row else None
    except Exception:  # the version is informative only
        return None


WORKER_SECTIONS = ("projection", "rebuild", "streaming")
"""Sections that run workers in this process, as their own process would: with the garbage
collector tuned as ``python -m framework.worker`` and ``run_projections`` tune it."""


def _worker_gc_note() -> str:
    from framework.runtime import gc_threshold

    threshold = gc_threshold()
    how = (
        f"start-up frozen, young generation collected every {threshold:,} allocations"
        if threshold
        else "KEEL_GC_THRESHOLD=0: Python's defaults"
    )
    return (
        "run with the garbage-collector settings of a worker process (framework.runtime: "
        f"{how}), keel and its peer alike"
    )


@contextlib.contextmanager
def _as_in_a_worker_process(name: str) -> Iterator[None]:
    if name not in WORKER_SECTIONS:
        yield
        return
    from framework.runtime import tune_garbage_collector

    before = gc.get_threshold()
    tuned = tune_garbage_collector()
    try:
        yield
    finally:
        if tuned:
            gc.unfreeze()
            gc.set_threshold(*before)


def run_all(
    *,
    quick: bool,
    only: Sequence[str] = (),
    services: Services,
    smoke: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the chosen sections; return the whole result (what ``--json`` writes)."""
    names = [n for n in SECTIONS if not only or n in only]
    started = time.perf_counter()
    results: dict[str, Section] = {}
    errors: dict[str, str] = {}
    with Context.open(quick=quick, services=services, smoke=smoke, log=log) as ctx:
        for name in names:
            log(f"[{name}]")
            begun = time.perf_counter()
            try:
                with _as_in_a_worker_process(name):
                    section = importlib.import_module(SECTIONS[name]).run(ctx)
                if name in WORKER_SECTIONS:
                    section.notes.append(_worker_gc_note())
            except ServiceMissing as missing:
                section = Section(name, name)
                section.skipped.append(f"whole section: {missing}")
            except Exception as error:  # report the failure, run the other sections
                log(traceback.format_exc())
                section = Section(name, name)
                section.skipped.append(f"FAILED: {error!r}")
                errors[name] = repr(error)
            section.seconds = time.perf_counter() - begun
            results[name] = section
            ctx.results[name] = section
    mode = "smoke" if smoke else "quick" if quick else "full"
    return {
        "meta": {
            "mode": mode,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - started, 1),
            "machine": machine(),
            "services": {
                "kafka": services.kafka,
                "kafka_note": services.kafka_reason,
                "postgres": _redact(services.postgres),
                "postgres_version": _postgres_version(services.postgres),
                "postgres_note": services.postgres_reason,
            },
        },
        "sections": {name: section.as_json() for name, section in results.items()},
        "goals": evaluate_goals(results, smoke, quick),
        "errors": errors,
    }


def _redact(url: str | None) -> str | None:
    return re.sub(r"://([^:@/]+):[^@/]*@", r"://\1:***@", url) if url else None


# -- showing --------------------------------------------------------------------------------------


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit in {"commands/s", "events/s"}:
        return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"
    if unit == "MiB":
        return f"{value:,.1f}"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:,.2f}" if value >= 1 else f"{value:.3f}"


def _ratio(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x" if ratio < 100 else f"{ratio:,.0f}x"


def _rows(section: dict[str, Any]) -> list[list[str]]:
    rows = []
    table = section["rows"]
    for data in table.values():
        peer = table.get(data["peer"]) if data["peer"] else None
        rows.append(
            [
                data["label"],
                f"{_fmt(data['value'], data['unit'])} {data['unit']}",
                _ratio(data["ratio"]),
                f"{_fmt(peer['value'], peer['unit'])}" if peer else "",
                data["note"],
            ]
        )
    return rows


HEADERS = ["Measure", "Value", "Ratio to peer", "Peer value", "Note"]


def render(result: dict[str, Any], console: Any = None) -> None:
    """Print every section and the goals as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    meta = result["meta"]
    m = meta["machine"]
    console.print(
        f"[bold]keel-cqrs benchmarks[/bold] ({meta['mode']} mode, {meta['seconds']} s) on "
        f"{m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB, Python {m['python']}"
    )
    for section in result["sections"].values():
        table = Table(title=section["title"], title_justify="left", expand=False)
        for header in HEADERS:
            table.add_column(
                header,
                overflow="fold",
                justify="right" if header in {"Value", "Ratio to peer", "Peer value"} else "left",
            )
        for row in _rows(section):
            table.add_row(*row)
        for skipped in section["skipped"]:
            table.add_row(f"[yellow]skipped: {skipped}[/yellow]", "", "", "", "")
        if section["notes"]:
            table.caption = " | ".join(section["notes"])
            table.caption_justify = "left"
        console.print(table)
    goals = Table(title="Goals", title_justify="left")
    for header in ("Goal", "Target", "Ratio", "Status", "Measured"):
        goals.add_column(header, overflow="fold")
    colour = {"met": "green", "missed": "red"}
    for goal in result["goals"]:
        status = goal["status"]
        goals.add_row(
            goal["goal"],
            goal["target"],
            _ratio(goal["ratio"]),
            f"[{colour.get(status, 'yellow')}]{status}[/]",
            goal["note"],
        )
    console.print(goals)
    if result["errors"]:
        console.print(f"[red]sections that failed: {', '.join(result['errors'])}[/red]")


def markdown(result: dict[str, Any]) -> str:
    """The same tables in Markdown (for bench/RESULTS.md and the README)."""

    def esc(text: str) -> str:
        return str(text).replace("|", "\\|")

    meta = result["meta"]
    m = meta["machine"]
    services = meta["services"]
    kafka = (
        f"Kafka {m['kafka'] or '?'} single broker on loopback ({services['kafka']})"
        if services.get("kafka")
        else f"no Kafka ({services.get('kafka_note')})"
    )
    postgres = (
        f"PostgreSQL {services.get('postgres_version') or '?'} on loopback"
        if services.get("postgres")
        else f"no PostgreSQL ({services.get('postgres_note')})"
    )
    lines = [
        f"{meta['mode'].capitalize()} run of {meta['date']}, {meta['seconds']:.0f} s: "
        f"{m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, Python {m['python']}, "
        f"{kafka}, {postgres}; all on the same machine.",
        "",
    ]
    for section in result["sections"].values():
        lines += [f"### {section['title']}", ""]
        lines.append("| " + " | ".join(HEADERS) + " |")
        lines.append("|" + "|".join(["---", "--:", "--:", "--:", "---"]) + "|")
        for row in _rows(section):
            lines.append("| " + " | ".join(esc(c) for c in row) + " |")
        for skipped in section["skipped"]:
            lines.append(f"| skipped: {esc(skipped)} | | | | |")
        lines.append("")
        for note in section["notes"]:
            lines.append(f"- {esc(note)}")
        lines.append("")
    lines += [
        "### Goals",
        "",
        "| Goal | Target | Ratio | Status | Measured |",
        "|---|---|--:|---|---|",
    ]
    for goal in result["goals"]:
        lines.append(
            f"| {esc(goal['goal'])} | {esc(goal['target'])} | {_ratio(goal['ratio'])} | "
            f"**{goal['status']}** | {esc(goal['note'])} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(
        prog="python -m bench.report",
        description="Print the Markdown tables of a saved run (what `python -m bench` wrote).",
    )
    parser.add_argument(
        "results", type=Path, help="a results JSON, e.g. var/bench/results-full.json"
    )
    args = parser.parse_args()
    try:
        saved = json.loads(args.results.read_text())
    except (OSError, ValueError) as error:
        parser.exit(2, f"python -m bench.report: {args.results}: {error}\n")
    sys.stdout.write(markdown(saved))
