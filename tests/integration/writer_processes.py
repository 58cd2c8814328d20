"""Writer and sender processes for the Kafka command-path tests (imported by spawn)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from framework.application import Application, CommandResult
from framework.errors import FrameworkError, OutcomeUnknownError, StoreUnavailableError
from framework.writer import writer_status
from tests.support.bank import Deposit, InsufficientFunds, Withdraw, build

REPO = Path(__file__).resolve().parents[2]


def result_dict(result: CommandResult) -> dict[str, Any]:
    return {
        "versions": {str(k): v for k, v in result.versions.items()},
        "positions": dict(result.positions),
        "replayed": result.replayed,
    }


@dataclass
class WriterProcess:
    """``python -m framework.writer run tests.support.bank:from_env`` in a child process."""

    url: str
    name: str
    instance_id: str | None = None
    max_batch: int | None = None
    process: subprocess.Popen[str] | None = field(default=None, init=False)

    def start(self) -> WriterProcess:
        command = [sys.executable, "-m", "framework.writer", "run", "tests.support.bank:from_env"]
        if self.instance_id:
            command += ["--instance-id", self.instance_id]
        if self.max_batch:
            command += ["--max-batch", str(self.max_batch)]
        env = {
            **os.environ,
            "BANK_STORE": self.url,
            "BANK_NAME": self.name,
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
        }
        self.process = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode


def owner_of(app: Application, shard: int = 0) -> str | None:
    """The instance id of the member that owns ``shard`` now (None while nobody does)."""
    try:
        report = writer_status(app)
    except Exception:  # the group may be rebalancing; ask again
        return None
    for member in report["members"]:
        if shard in member["shards"]:
            return str(member["instance_id"])
    return None


def sender_loop(url: str, name: str, conn: Connection) -> None:
    """A long-lived sender: executes each (command type, JSON) it is sent, answers the outcome."""
    app = build(url, name=name)
    try:
        conn.send("ready")
        while True:
            request = conn.recv()
            if request is None:
                return
            kind, data = request
            try:
                result = app.execute(app.command_types[kind].parse(data), timeout=60)
                conn.send(("ok", result_dict(result)))
            except FrameworkError as error:
                conn.send(("error", type(error).__name__, str(error)))
    finally:
        app.close()


def withdraw_many(url: str, name: str, account: str, count: int) -> list[tuple[Any, ...]]:
    """``count`` withdrawals of 1.00 from ``account``: (kind, command json, result or error)."""
    app = build(url, name=name)
    outcomes: list[tuple[Any, ...]] = []
    try:
        for _ in range(count):
            command = Withdraw(account_id=uuid.UUID(account), amount=Decimal("1.00"))
            try:
                result = app.execute(command, timeout=60)
                outcomes.append(("ok", command.model_dump_json(), result_dict(result)))
            except InsufficientFunds as error:
                outcomes.append(("refused", command.model_dump_json(), str(error)))
            except FrameworkError as error:
                outcomes.append((type(error).__name__, command.model_dump_json(), str(error)))
        return outcomes
    finally:
        app.close()


def deposit_until(
    url: str, name: str, account: str, stop: Any, acked: Any
) -> list[tuple[Any, ...]]:
    """Deposit 1.00 into ``account`` until ``stop`` is set; count acknowledgements in ``acked``.
    Returns (kind, command json, version or None): kind is ok or info (outcome unknown)."""
    app = build(url, name=name)
    outcomes: list[tuple[Any, ...]] = []
    target = uuid.UUID(account)
    try:
        while not stop.is_set():
            command = Deposit(account_id=target, amount=Decimal("1.00"))
            try:
                result = app.execute(command, timeout=20)
            except (OutcomeUnknownError, StoreUnavailableError) as error:
                outcomes.append(("info", command.model_dump_json(), repr(error)))
                time.sleep(0.2)
                continue
            outcomes.append(("ok", command.model_dump_json(), result.versions[target]))
            acked.append(time.monotonic())
        return outcomes
    finally:
        app.close()


def hammer(url: str, name: str, account: str, threads: int, count: int) -> dict[str, int]:
    """``threads`` callers x ``count`` deposits of 1.00 into one account; outcome counts."""
    from concurrent.futures import ThreadPoolExecutor

    app = build(url, name=name)
    target = uuid.UUID(account)

    def one(_: int) -> str:
        try:
            app.execute(Deposit(account_id=target, amount=Decimal("1.00")), timeout=60)
            return "ok"
        except FrameworkError as error:
            return type(error).__name__

    try:
        with ThreadPoolExecutor(threads) as pool:
            outcomes = list(pool.map(one, range(threads * count)))
    finally:
        app.close()
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts
