"""T13: network faults on loopback. A broker of its own advertises a fault proxy's port, so every
client connection (and the broker's own, to itself) goes through the proxy; writers race
read-then-append commands while the proxy adds latency, blackholes the traffic, resets every
connection mid-request and refuses new ones. A live feed polls throughout. The history goes
through the list-append checker (per aggregate) and the queue checker (per partition)."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from framework.backends.kafka import KafkaEventStore, open_store, writer_stats
from framework.errors import (
    ConcurrencyError,
    FrameworkError,
    OutcomeUnknownError,
    StoreUnavailableError,
)
from framework.persistence import NewEvent, RecordedEvent
from framework.writer import writer as run_writer
from tests.support.bank import Deposit, OpenAccount, Owner, build
from tests.support.checkers import Append, Poll, Send, check_list_append, check_queue
from tests.support.fault_proxy import FaultProxy

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]
# Below Linux's ephemeral range (32768-60999): a client's outgoing connection can never hold them.
# KEEL_PROXIED_KAFKA_PORT moves the three (broker, controller, proxy) for a parallel run.
_BASE = int(os.environ.get("KEEL_PROXIED_KAFKA_PORT", "18092"))
BROKER_PORT, CONTROLLER_PORT, PROXY_PORT = _BASE, _BASE + 1, _BASE + 2


@pytest.fixture(scope="module")
def proxied_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FaultProxy, str]]:
    """A private single broker whose advertised listener is the proxy's port."""
    state = tmp_path_factory.mktemp("proxied-kafka")
    env = {
        **os.environ,
        "KEEL_KAFKA_PORT": str(BROKER_PORT),
        "KEEL_KAFKA_CONTROLLER_PORT": str(CONTROLLER_PORT),
        "KEEL_KAFKA_ADVERTISED_PORT": str(PROXY_PORT),
        "KEEL_STATE_DIR": str(state),
    }
    proxy = FaultProxy(PROXY_PORT, BROKER_PORT).start()  # first: the broker probes through it
    try:
        started = subprocess.run(
            [str(REPO / "scripts" / "kafka"), "start"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if started.returncode != 0:
            message = f"cannot start the proxied broker: {started.stdout}{started.stderr}"
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(message)
        yield proxy, f"127.0.0.1:{PROXY_PORT}"
    finally:
        proxy.heal()
        subprocess.run(
            [str(REPO / "scripts" / "kafka"), "stop"], env=env, capture_output=True, timeout=120
        )
        proxy.stop()
        shutil.rmtree(state, ignore_errors=True)


class History:
    """Every command as (thread, aggregate, read prefix, value, outcome, offset, seconds)."""

    def __init__(self) -> None:
        self.ops: list[tuple[int, str, list[str], str, str, int | None, float]] = []
        self.raw_errors: list[str] = []
        self.lock = threading.Lock()

    def record(self, *op: object) -> None:
        with self.lock:
            self.ops.append(op)  # type: ignore[arg-type]


def writer(
    store: KafkaEventStore, aggregates: list[uuid.UUID], me: int, stop: threading.Event, h: History
) -> None:
    for i in range(10_000):
        if stop.is_set():
            return
        aggregate = aggregates[(me + i) % len(aggregates)]
        value = f"w{me}-{i}"
        started = time.monotonic()
        read: list[str] = []
        try:
            read = [e.state.decode() for e in store.read(aggregate)]
            positions = store.append(
                [NewEvent(aggregate, len(read) + 1, "T.Appended", value.encode())]
            )
            ((_, end),) = positions.items()
            outcome, offset = "ok", end - 1
        except ConcurrencyError:
            outcome, offset = "fail", None
        except StoreUnavailableError:
            outcome, offset = "unavailable", None  # documented: nothing was written
        except (OutcomeUnknownError, FrameworkError):
            outcome, offset = "info", None
        except Exception as error:  # counted: no raw error may escape
            h.raw_errors.append(f"{type(error).__name__}: {error}")
            outcome, offset = "info", None
        h.record(me, str(aggregate), read, value, outcome, offset, time.monotonic() - started)
        if outcome != "ok":
            stop.wait(0.2)


def poller(store: KafkaEventStore, stop: threading.Event, polls: list[Poll]) -> None:
    last: dict[int, int] = {}
    reader = store.feed(
        f"t13-{uuid.uuid4().hex[:8]}",
        on_assign=lambda parts: {p: last.get(p, -1) + 1 for p in parts},
    )
    try:
        while not stop.is_set():
            try:
                events = reader.poll(max_records=500, timeout=0.5)
            except FrameworkError:
                stop.wait(0.5)
                continue
            by_part: dict[int, list[tuple[int, str]]] = {}
            for e in events:
                by_part.setdefault(e.partition, []).append((e.offset, e.state.decode()))
                last[e.partition] = e.offset
            for part, records in by_part.items():
                polls.append(Poll(("live", part), records))
    finally:
        reader.close()


def exercise(
    proxy: FaultProxy, bootstrap: str, tmp_path: Path, script: Callable[[], list[str]], **opts: str
) -> tuple[dict[str, Any], KafkaEventStore]:
    """Run writers and a live feed while ``script`` plays the faults; check the history."""
    options = {"append_timeout": "8", "commit_timeout": "4", "read_timeout": "8", **opts}
    url = f"kafka://{bootstrap}?partitions=3&topic=net-{uuid.uuid4().hex[:8]}&" + "&".join(
        f"{k}={v}" for k, v in options.items()
    )
    store = open_store(f"{url}&index={tmp_path}/w.sqlite", name="net")
    aggregates = [uuid.uuid4() for _ in range(6)]
    history = History()
    polls: list[Poll] = []
    stop = threading.Event()
    threads = [
        threading.Thread(target=writer, args=(store, aggregates, me, stop, history), daemon=True)
        for me in range(4)
    ] + [threading.Thread(target=poller, args=(store, stop, polls), daemon=True)]
    for t in threads:
        t.start()
    try:
        faults = script()
    finally:
        proxy.heal()
        stop.set()
        for t in threads:
            t.join(60)
    store.close()

    # The final state, read by a new process's store (its own, fresh index).
    with open_store(f"{url}&index={tmp_path}/r.sqlite", name="net") as fresh:
        final = {str(a): [e.state.decode() for e in fresh.read(a)] for a in aggregates}
        logged: dict[int, list[RecordedEvent]] = {
            p: fresh.read_partition(p, start=0, limit=100_000) for p in range(fresh.partitions)
        }
    ops = history.ops
    appends = [
        Append("info" if outcome == "unavailable" else outcome, {agg: read}, {agg: [value]})
        for _, agg, read, value, outcome, _, _ in ops
    ]
    written = {v for values in final.values() for v in values}
    placed = {str(a): store.partition_for(a) for a in aggregates}
    queue: Counter[str] = Counter()
    for p, records in logged.items():
        sends = [
            Send(value, "ok" if outcome == "ok" else "info", offset, producer=me)
            for me, agg, _, value, outcome, offset, _ in ops
            if placed[agg] == p and outcome != "fail"
        ]
        sends += [Send(value, "fail") for _, agg, _, value, o, _, _ in ops if o == "fail"]
        seen = [poll for poll in polls if poll.consumer == ("live", p)]
        final_poll = Poll(("final", p), [(e.offset, e.state.decode()) for e in records])
        queue.update(check_queue(sends, [*seen, final_poll]))
    seconds = sorted(op[6] for op in ops) or [0.0]
    figures: dict[str, Any] = {
        "faults": "+".join(faults),
        "ops": len(ops),
        **{k: sum(op[4] == k for op in ops) for k in ("ok", "fail", "info", "unavailable")},
        "unavailable_landed": sum(op[4] == "unavailable" and op[3] in written for op in ops),
        "p50": f"{statistics.median(seconds):.2f}s",
        "p99": f"{seconds[int(len(seconds) * 0.99)]:.2f}s",
        "hung": sum(t.is_alive() for t in threads),
        "raw_errors": len(history.raw_errors),
        **check_list_append(appends, final),
        **{f"queue_{k}": v for k, v in queue.items()},
    }
    return figures, store


def check(figures: dict[str, Any]) -> None:
    anomalies = {
        k: v
        for k, v in figures.items()
        if k in ANOMALIES or k.startswith("queue_") or k in ("hung", "raw_errors")
    }
    assert figures["ok"] > 0 and figures["unavailable_landed"] == 0
    assert set(anomalies.values()) == {0}, anomalies


ANOMALIES = ("lost", "duplicate", "aborted_read", "incompatible_order", "wrong_position", "cycles")


def line(name: str, figures: dict[str, Any]) -> str:
    return f"\n{name}: " + " ".join(f"{k}={v}" for k, v in figures.items())


@pytest.mark.timeout(300)
def test_network_faults_through_a_loopback_proxy(
    proxied_kafka: tuple[FaultProxy, str], tmp_path: Path
) -> None:
    proxy, bootstrap = proxied_kafka

    def script() -> list[str]:
        time.sleep(3)
        proxy.latency = 0.05
        time.sleep(5)
        proxy.heal()
        proxy.blackhole = True
        time.sleep(6)
        proxy.heal()
        time.sleep(3)
        for _ in range(8):
            proxy.reset_all()
            time.sleep(0.5)
        proxy.refuse = True
        proxy.reset_all()
        time.sleep(3)
        proxy.heal()
        time.sleep(8)  # settle: every writer gets through again
        return ["latency", "blackhole", "reset", "refuse"]

    figures, _ = exercise(proxy, bootstrap, tmp_path, script)
    figures["resets"] = proxy.resets
    print(line("T13[kafka]", figures))
    check(figures)


@pytest.mark.timeout(300)
def test_producer_timeouts_recreate_the_producer_and_lose_nothing(
    proxied_kafka: tuple[FaultProxy, str], tmp_path: Path
) -> None:
    proxy, bootstrap = proxied_kafka

    def script() -> list[str]:
        time.sleep(2)
        # The commit's answer (EndTxn) comes after commit_timeout: an indefinite outcome, as
        # the transaction may have committed. Then every answer comes late for a while.
        proxy.delay_api = {26: 2.5}
        time.sleep(8)
        proxy.heal()
        time.sleep(2)
        for i in range(20):
            proxy.response_delay = 2.5 if i % 3 else 0.0
            time.sleep(0.4)
        proxy.heal()
        time.sleep(8)
        return ["slow_commit", "flapping_response_delay"]

    figures, store = exercise(proxy, bootstrap, tmp_path, script, commit_timeout="1.5")
    stats = Counter[str]()
    for counters in writer_stats(store).values():
        stats.update(counters)
    figures.update(
        delayed_commits=proxy.delayed,
        indefinite=stats["unknown"],
        inits=stats["inits"],
        transactions=stats["transactions"],
    )
    print(line("T16[kafka]", figures))
    check(figures)
    # Every indefinite outcome dropped the producer; the next append initialised a new one.
    assert figures["indefinite"] > 0
    assert figures["inits"] >= figures["indefinite"] + 1


# -- item 5: every call honours its deadline through a long partition ----------------------------

OWNER = Owner(name="Ann", email="ann@example.com")
# KEEL_SOAK=1 runs the partition the issue measured (150 s); CI runs a shorter one.
PARTITION_SECONDS = 150.0 if os.environ.get("KEEL_SOAK") == "1" else 15.0
# A call may outlast its deadline by the documented slack: 1 s for a writer about to finish
# (kafka_writer.DEADLINE_SLACK) or for asking whether writers run (DIAGNOSIS_TIMEOUT), plus
# what the machine's scheduler adds (measured: a shared 2-core CI machine can be very busy).
SLACK = 1.0


class SchedulerLag:
    """A thread that sleeps 0.1 s at a time and records how late it wakes: how long a ready
    thread of this process may wait for a CPU now."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            asked = time.monotonic()
            self._stop.wait(0.1)
            self.worst = max(self.worst, time.monotonic() - asked - 0.1)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(5)
        return self.worst


class Calls:
    """Every call as (kind, deadline seconds, seconds taken, outcome, monotonic end)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, float, str, float]] = []
        self.raw_errors: list[str] = []
        self.lock = threading.Lock()

    def timed(self, kind: str, deadline: float, call: Callable[[], object]) -> str:
        started = time.monotonic()
        try:
            call()
            outcome = "ok"
        except StoreUnavailableError:
            outcome = "unavailable"
        except OutcomeUnknownError:
            outcome = "unknown"
        except FrameworkError as error:
            outcome = type(error).__name__
        except Exception as error:  # counted: no raw error may escape
            self.raw_errors.append(f"{kind}: {type(error).__name__}: {error}")
            outcome = "raw"
        ended = time.monotonic()
        with self.lock:
            self.calls.append((kind, deadline, ended - started, outcome, ended))
        return outcome


@pytest.mark.timeout(600 if PARTITION_SECONDS > 60 else 240)
def test_every_call_honours_its_deadline_through_a_long_partition(
    proxied_kafka: tuple[FaultProxy, str], tmp_path: Path
) -> None:
    """Warm callers (connected before the partition) and cold ones (their store opened before
    it, their first connection made during it: the producer's eager bootstrap, the command
    router's results reader and producer, the index's consumer) call through a blackhole. No
    call may outlast its deadline (append_timeout, command_timeout, execute(timeout=),
    read_timeout) by more than the slack, and every kind of call succeeds again once the
    partition heals."""
    proxy, bootstrap = proxied_kafka
    name = f"dl_{uuid.uuid4().hex[:8]}"
    append_timeout, command_timeout, read_timeout, short = 6.0, 6.0, 6.0, 3.0
    url = (
        f"kafka://{bootstrap}?partitions=3&append_timeout={append_timeout}&commit_timeout=4"
        f"&read_timeout={read_timeout}&command_timeout={command_timeout}"
    )
    raw_topic = f"dl-raw-{uuid.uuid4().hex[:8]}"
    writer_app = build(url, name=name)
    opened: list[Any] = [writer_app]
    calls = Calls()
    stop = threading.Event()
    lag = SchedulerLag()
    try:
        with run_writer(writer_app):
            account = uuid.uuid4()
            writer_app.execute(OpenAccount(account_id=account, owner=OWNER))
            warm_sender = build(url, name=name)
            opened.append(warm_sender)
            warm_sender.execute(Deposit(account_id=account, amount=Decimal("1.00")))
            warm_store = open_store(f"{url}&topic={raw_topic}", name=name + "_raw")
            opened.append(warm_store)
            warm_store.append([NewEvent(uuid.uuid4(), 1, "T.Appended", b"warm")])
            # Cold callers: opened now (opening needs the cluster), first used in the partition.
            cold_senders = [build(url, name=name) for _ in range(3)]
            cold_stores = [
                open_store(f"{url}&topic={raw_topic}", name=f"{name}_raw{k}") for k in range(3)
            ]
            cold_readers = [
                open_store(f"{url}&topic={raw_topic}", name=f"{name}_raw{k}") for k in range(3)
            ]
            opened += cold_senders + cold_stores + cold_readers

            def deposit(app: Any, timeout: float | None) -> Callable[[], object]:
                command = Deposit(account_id=account, amount=Decimal("1.00"))
                return lambda: app.execute(command, timeout=timeout)

            def append(store: KafkaEventStore) -> Callable[[], object]:
                event = NewEvent(uuid.uuid4(), 1, "T.Appended", b"x")
                return lambda: store.append([event])

            def read(store: KafkaEventStore) -> Callable[[], object]:
                return lambda: store.read(uuid.uuid4())

            def loop(kind: str, make: Callable[[int], tuple[float, Callable[[], object]]]) -> None:
                for i in range(100_000):
                    if stop.is_set():
                        return
                    deadline, call = make(i)
                    calls.timed(kind, deadline, call)
                    stop.wait(0.2)

            loops = {
                "append": lambda i: (append_timeout, append(warm_store)),
                "execute": lambda i: (
                    (short, deposit(warm_sender, short))
                    if i % 2
                    else (command_timeout, deposit(warm_sender, None))
                ),
                "execute_local": lambda i: (short, deposit(writer_app, short)),
                "read": lambda i: (read_timeout, read(warm_store)),
            }
            threads = [
                threading.Thread(target=loop, args=(kind, make), daemon=True)
                for kind, make in loops.items()
            ]
            for t in threads:
                t.start()
            time.sleep(2)
            proxy.blackhole = True
            partition_started = time.monotonic()
            cold: list[threading.Thread] = []
            # A cold sender and a cold store make their first call at the start, the middle and
            # near the end of the partition.
            for k, at in enumerate((1.0, PARTITION_SECONDS / 2, PARTITION_SECONDS - 4)):
                while time.monotonic() < partition_started + at:
                    time.sleep(0.1)
                for kind, deadline, call in (
                    ("cold_execute", command_timeout, deposit(cold_senders[k], None)),
                    ("cold_append", append_timeout, append(cold_stores[k])),
                    ("cold_read", read_timeout, read(cold_readers[k])),
                ):
                    cold.append(
                        threading.Thread(
                            target=calls.timed, args=(kind, deadline, call), daemon=True
                        )
                    )
                    cold[-1].start()
            while time.monotonic() < partition_started + PARTITION_SECONDS:
                time.sleep(0.2)
            proxy.heal()
            healed = time.monotonic()
            # Every kind of call gets through again (the cold clients included: a results
            # reader that could not connect is replaced).
            kinds = {*loops, "cold_execute", "cold_append", "cold_read"}
            recovered: set[str] = set()
            while time.monotonic() < healed + 60 and recovered != kinds:
                for k in range(3):
                    calls.timed("cold_execute", command_timeout, deposit(cold_senders[k], None))
                    calls.timed("cold_append", append_timeout, append(cold_stores[k]))
                    calls.timed("cold_read", read_timeout, read(cold_readers[k]))
                with calls.lock:
                    recovered = {c[0] for c in calls.calls if c[3] == "ok" and c[4] > healed}
                time.sleep(0.5)
            stop.set()
            for t in threads + cold:
                t.join(30)
    finally:
        proxy.heal()
        stop.set()
        for thing in reversed(opened):
            thing.close()

    scheduler_lag = lag.stop()
    during = [c for c in calls.calls if partition_started < c[4] < healed + 1]
    overs = [(c[2] - c[1], c[0]) for c in calls.calls]
    max_over, worst = max(overs)
    outcomes = Counter(c[3] for c in during)
    figures: dict[str, Any] = {
        "partition": f"{PARTITION_SECONDS:g}s",
        "calls": len(calls.calls),
        "during": len(during),
        **{k: outcomes[k] for k in ("ok", "unavailable", "unknown")},
        "other": sum(v for k, v in outcomes.items() if k not in ("ok", "unavailable", "unknown")),
        "max_over": f"{max_over:.2f}s",
        "worst": worst,
        "over_slack": sum(over > SLACK for over, _ in overs),
        "scheduler_lag": f"{scheduler_lag:.2f}s",
        **{
            f"max_{kind}": f"{max(c[2] for c in calls.calls if c[0] == kind):.1f}s"
            for kind in sorted({c[0] for c in calls.calls})
        },
        "recovered": recovered == kinds,
        "raw_errors": len(calls.raw_errors),
        "hung": sum(t.is_alive() for t in threads + cold),
    }
    print(line("DEADLINE[kafka]", figures))
    assert not calls.raw_errors, calls.raw_errors[:5]
    assert figures["hung"] == 0
    assert len(during) >= 10 and outcomes["ok"] < len(during)  # the partition did bite
    # Past the slack only by what the scheduler kept this process waiting (and 0.5 s more).
    assert max_over <= SLACK + scheduler_lag + 0.5, sorted(overs)[-5:]
    assert recovered == kinds, kinds - recovered
