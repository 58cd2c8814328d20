"""``python -m bench [--quick] [--json FILE] [--only NAME ...] [--markdown FILE]``

Runs the benchmark sections (see bench/README.md), prints rich tables with every figure next to
its peer and the ratio, then the goals, and writes the whole result as JSON (default
``var/bench/results-<mode>.json``). A section whose service (Kafka, PostgreSQL) is missing is
skipped with a note; under ``CI=true`` a missing Kafka is an error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from bench.harness import REPO, Services
from bench.report import SECTIONS, markdown, render, run_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run the benchmark sections: every figure beside its peer, the ratio, and "
        "the goals (bench/README.md says what each section measures).",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: under 2 minutes (the CI smoke run)"
    )
    parser.add_argument(
        "--json",
        metavar="FILE",
        help="where to write the JSON results (default: var/bench/results-<mode>.json)",
    )
    parser.add_argument("--markdown", metavar="FILE", help="also write the tables as Markdown")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        choices=list(SECTIONS),
        help=f"run only these sections ({', '.join(SECTIONS)})",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="the tiny embedded-only configuration the pytest smoke test runs",
    )
    args = parser.parse_args(argv)

    from rich.console import Console

    # Wide enough for the tables when the output is a file or a pipe.
    out = Console(width=None if sys.stdout.isatty() else 150)
    progress = Console(stderr=True, highlight=False)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # The development broker has one replica; the store says so on every topic it creates.
    logging.getLogger("framework.backends.kafka_topic").setLevel(logging.ERROR)
    # kafka-python warns about its own event loop and group metadata while the machine is busy.
    logging.getLogger("kafka").setLevel(logging.ERROR)

    if args.smoke:
        services = Services()
        services.kafka_reason = services.postgres_reason = "not used in the smoke configuration"
    else:
        services = Services.detect()
    if services.kafka is None and not args.smoke:
        if os.environ.get("CI", "").lower() == "true":
            progress.print(f"[red]error: {services.kafka_reason} (CI=true needs Kafka)[/red]")
            return 2
        progress.print(
            f"[yellow]Kafka missing, its sections are skipped: {services.kafka_reason}[/yellow]"
        )
    if services.postgres is None and not args.smoke:
        progress.print(
            f"[yellow]PostgreSQL missing, its rows are skipped: {services.postgres_reason}[/yellow]"
        )

    result = run_all(
        quick=args.quick or args.smoke,
        only=args.only or (),
        services=services,
        smoke=args.smoke,
        log=lambda line: progress.print(line, markup=False),
    )
    render(result, out)
    mode = result["meta"]["mode"]
    target = Path(args.json) if args.json else REPO / "var" / "bench" / f"results-{mode}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=2, default=str) + "\n")
    progress.print(f"JSON written to {target}")
    if args.markdown:
        Path(args.markdown).write_text(markdown(result))
        progress.print(f"Markdown written to {args.markdown}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
