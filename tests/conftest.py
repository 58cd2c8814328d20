"""Session fixtures for the real services the tests use.

- ``kafka_bootstrap``: the single broker from ``scripts/kafka start`` (found through
  ``KEEL_KAFKA_BOOTSTRAP_SERVERS``; ``make test`` starts it and sets it).
- ``kafka_cluster``: the three-broker cluster; started on first use, stopped at session end.
- ``postgres_url``: a SQLAlchemy URL from ``DATABASE_URL`` (``scripts/postgres start`` / ``url``).
- ``unique_name``: ``unique_name("orders")`` -> a fresh, topic-safe name per call.

A service that is not there fails the test under ``CI=true`` and skips it otherwise.
Tests that use these fixtures get the ``kafka`` / ``kafka_cluster`` / ``postgres`` marks.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
KAFKA_SCRIPT = REPO / "scripts" / "kafka"

_FIXTURE_MARKS = {
    "kafka_bootstrap": "kafka",
    "kafka_cluster": "kafka_cluster",
    "postgres_url": "postgres",
}


def _unavailable(message: str) -> None:
    """Fail under CI (a missing service is a broken run there), skip elsewhere."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _reachable(bootstrap: str, timeout: float = 3.0) -> bool:
    """True when every host:port of a bootstrap list accepts a TCP connection."""
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout):
                pass
        except (OSError, ValueError):
            return False
    return True


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, mark in _FIXTURE_MARKS.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(mark)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    bootstrap = os.environ.get("KEEL_KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if not bootstrap:
        _unavailable(
            "KEEL_KAFKA_BOOTSTRAP_SERVERS is not set: start the broker with scripts/kafka start, "
            'then eval "$(scripts/kafka env)" (make test does both)'
        )
    if not _reachable(bootstrap):
        _unavailable(f"no Kafka broker at {bootstrap}: start it with scripts/kafka start")
    return bootstrap


@dataclass(frozen=True)
class KafkaCluster:
    """The three-broker cluster of ``scripts/kafka start --cluster`` (node ids 1-3)."""

    bootstrap: str

    def kill(self, node: int, sig: int | str = "KILL") -> None:
        """Stop one node (default SIGKILL, a crash; or "TERM") and wait until it is gone."""
        name = signal.Signals(sig).name if isinstance(sig, int) else str(sig)
        _run_kafka("kill-node", str(node), "--signal", name.removeprefix("SIG"))

    def start(self, node: int) -> None:
        """Restart one node with its existing data; returns once the cluster sees it again."""
        _run_kafka("start-node", str(node))


def _run_kafka(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(KAFKA_SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"scripts/kafka {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
        )
    return proc


@pytest.fixture(scope="session")
def kafka_cluster() -> Iterator[KafkaCluster]:
    running = subprocess.run(
        [str(KAFKA_SCRIPT), "status", "--cluster"],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    was_running = running.returncode == 0
    try:
        _run_kafka("start", "--cluster")
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        _unavailable(f"could not start the three-broker Kafka cluster: {exc}")
    env = _run_kafka("env", "--cluster").stdout
    match = re.search(r"KEEL_KAFKA_CLUSTER_BOOTSTRAP_SERVERS=(\S+)", env)
    assert match, f"unexpected output of scripts/kafka env --cluster: {env!r}"
    try:
        yield KafkaCluster(bootstrap=match.group(1))
    finally:
        if not was_running:  # leave a cluster that someone else started alone
            _run_kafka("stop", "--cluster")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    url = os.environ.get("DATABASE_URL", "").strip()
    if not url.startswith("postgresql"):
        _unavailable(
            "DATABASE_URL is not a PostgreSQL URL: run scripts/postgres start, then "
            'export DATABASE_URL="$(scripts/postgres url)"'
        )
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def make_unique_name(prefix: str) -> str:
    """A name no other test or run uses: ``<prefix>-<12 hex>`` (valid as a Kafka topic)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "-", prefix)[:200]
    return f"{safe}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """``unique_name("orders")`` -> ``orders-3f9a0c1b2d4e``; call it as often as needed."""
    return make_unique_name


# -- figure lines -----------------------------------------------------------------------------
# Fault tests print one closing line of figures (``T3: kills=20 ... digest_equal=True``); pytest
# captures it, so the session's summary repeats every such line where CI logs show it.

_FIGURE_LINE = re.compile(r"^\s*([A-Z][\w-]*(\[[^\]]*\])?( \w+)?): (\S+=\S+ ?){2,}")
_figures: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call":
        _figures.extend(
            line.strip() for line in report.capstdout.splitlines() if _FIGURE_LINE.match(line)
        )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _figures:
        terminalreporter.section("figures reported by the fault tests")
        for line in _figures:
            terminalreporter.write_line(line)
