"""The process-manager command line:
``python -m framework.process {run,status,timeline,dead-letters}``."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from typing import Any

from framework.arguments import non_negative_float, positive_int, refuse_ignored
from framework.database import reaching
from framework.errors import FrameworkError
from framework.loading import load_object
from framework.process.deadlines import DEADLINE_PARTITION
from framework.process.runner import ProcessWorker, redrive_parked, status
from framework.process.store import timeline
from framework.runtime import tune_garbage_collector

__all__ = ["load_worker", "main"]

log = logging.getLogger(__name__)

_GRACE = 60.0
"""status: seconds a deadline may be late before it counts as overdue."""

_APPLIES = {
    "instance": ["timeline"],
    "--instance-id": ["run"],
    "--start-from": ["run"],
    "--grace": ["status"],
    "--json": ["status"],
    "--redrive": ["dead-letters"],
    "--id": ["dead-letters"],
}
"""The options only some commands read (the others would ignore them: refused)."""

_DESCRIPTION = """\
Run or inspect one process manager.

  run           handle its input events, fire due deadlines and send its commands until
                SIGTERM/SIGINT; several may run at once (they share the input partitions)
  status        active and completed instances, overdue and parked deadlines, the oldest
                open instance, unsent commands, dead letters and the counters (exit 1 when a
                deadline is overdue by more than --grace seconds, 3 when something is parked)
  timeline      the facts of one instance, oldest first
  dead-letters  the parked inputs and deadlines (handlers that failed every attempt); with
                --redrive, handle them again first (all, or those given with --id; an id
                not parked is an error, exit 1, and nothing is re-driven): a parked deadline
                fires once, or is dropped as a no-op when its instance has moved on

An option another command reads (--grace with run, say) is refused, exit 2.

TARGET is package.module:factory, a function taking keyword options (instance_id, start_from)
and returning a framework.process.ProcessWorker wired to its sources, targets and database,
e.g. sample_app.payments.service:payment_process_worker.
"""

_EPILOG = """\
examples:
  python -m framework.process run sample_app.payments.service:payment_process_worker \\
      --instance-id pm-1
  python -m framework.process run sample_app.payments.service:payment_process_worker \\
      --start-from now          # a manager that never ran skips the sources' history
  python -m framework.process status sample_app.payments.service:payment_process_worker
  python -m framework.process timeline sample_app.payments.service:payment_process_worker \\
      3f0c...-order-id
  python -m framework.process dead-letters sample_app.payments.service:payment_process_worker \\
      --redrive --id 12       # after fixing what made the handler fail
"""


def load_worker(target: str, **options: Any) -> ProcessWorker:
    """``package.module:factory`` -> the :class:`ProcessWorker` it builds (a factory is called
    with ``options``; a ProcessWorker itself is taken as it is)."""

    def make(found: Any) -> object:
        if isinstance(found, ProcessWorker) or not callable(found):
            return found
        return found(**options)

    return load_object(
        target,
        ProcessWorker,
        what="process-manager factory",
        example="sample_app.payments.service:payment_process_worker",
        form="package.module:factory",
        make=make,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m framework.process",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["run", "status", "timeline", "dead-letters"])
    parser.add_argument("target", help="package.module:factory returning a ProcessWorker")
    parser.add_argument("instance", nargs="?", help="timeline: the instance id")
    parser.add_argument(
        "--instance-id", metavar="ID", help="run: a stable identity (Kafka static membership)"
    )
    parser.add_argument(
        "--start-from",
        choices=["beginning", "now"],
        default=None,
        help="run: where a manager that never ran starts reading its sources",
    )
    parser.add_argument(
        "--create-tables",
        action="store_true",
        help="create missing framework tables first (tests, the embedded "
        "default; migrate production databases with `alembic upgrade head`)",
    )
    parser.add_argument(
        "--grace",
        type=non_negative_float,
        metavar="SECONDS",
        help="status: how late a deadline may be before it counts as overdue (0 or more; "
        f"default {_GRACE:g})",
    )
    parser.add_argument("--json", action="store_true", help="status: print JSON")
    parser.add_argument(
        "--redrive",
        action="store_true",
        help="dead-letters: handle the parked inputs and deadlines again (after a fix)",
    )
    parser.add_argument(
        "--id",
        type=positive_int,
        action="append",
        metavar="N",
        help="dead-letters --redrive: only dead letter N (repeatable; default: all)",
    )
    args = parser.parse_args(argv)
    refuse_ignored(parser, args, args.command, _APPLIES)
    if args.id and not args.redrive:
        parser.error("--id names the dead letters to re-drive: give --redrive too")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    options = {
        k: v
        for k, v in {"instance_id": args.instance_id, "start_from": args.start_from}.items()
        if v
    }
    try:
        worker = load_worker(args.target, **options)
    # (ImportError and the like from the factory's own body, once the import succeeded)
    except (FrameworkError, ImportError, AttributeError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        if args.create_tables:
            worker.setup()
        if args.command == "run":
            tune_garbage_collector()  # a process of its own: see framework.runtime
            stop = threading.Event()
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: stop.set())
            worker.run(stop)
            return 0
        if args.command == "timeline":
            if not args.instance:
                print("error: timeline needs the instance id", file=sys.stderr)
                return 2
            with reaching(worker.engine, worker.pm.name), worker.engine.connect() as conn:
                facts = timeline(conn, worker.pm.name, args.instance)
            if not facts:
                print(f"{worker.pm.name} has no instance {args.instance!r}")
                return 1
            for f in facts:
                print(
                    f"v{f['version']:<3} {f['recorded_at']:%Y-%m-%d %H:%M:%S} {f['kind']:<18} "
                    f"{json.dumps(f['data'], default=str)[:160]}"
                )
            return 0
        if args.command == "dead-letters":
            return _dead_letters(worker, redrive=args.redrive, ids=args.id)
        grace = _GRACE if args.grace is None else args.grace
        s = status(worker.pm, worker.engine, worker.clock, grace_seconds=grace)
        if args.json:
            print(json.dumps(s.as_json()))
        else:
            print("\n".join(s.lines()))
        if s.overdue:
            return 1
        return 3 if s.dead_letters else 0
    except FrameworkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        worker.engine.dispose()


def _dead_letters(worker: ProcessWorker, *, redrive: bool, ids: list[int] | None) -> int:
    if redrive:
        done = redrive_parked([worker], ids)[worker.pm.name]
        failing = "; ".join(f"{k}: {v}" for k, v in list(done.failed.items())[:5]) or "none"
        print(f"re-drove {done.applied}; still failing: {failing}; {done.remaining} left")
    letters = worker.dead_letters()
    for d in letters:
        if d.partition == DEADLINE_PARTITION:
            instance = json.loads(d.payload)["instance_id"]
            where = f"deadline {d.event_type.removeprefix('deadline:')} of {instance}"
        else:
            where = f"{d.projection} p{d.partition}@{d.offset} {d.event_type} v{d.version}"
            where += f" of {d.aggregate_id}"
        print(
            f"#{d.id} {where} [{d.reason}, {d.attempts} attempt(s)] "
            f"{d.error_type}: {d.error_message}"
        )
    if not letters:
        print(f"{worker.pm.name} has no dead letters")
    return 3 if letters else 0
