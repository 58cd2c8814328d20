"""What the command lines share (``python -m framework.*`` and the ``manage.py`` commands).

The ``type=`` functions refuse a value out of range as a usage error that says what is
allowed: unchecked, ``--limit -1`` lists everything (SQL's ``LIMIT -1``) and ``--grace -5``
counts deadlines overdue before they are due. A ``manage.py`` command gets the same refusal as
a ``CommandError`` (Django's parser raises one instead of exiting).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Collection, Mapping

__all__ = ["non_negative_float", "port", "positive_float", "positive_int", "refuse_ignored"]


def positive_int(text: str) -> int:
    """A count, a size or an id: a whole number of 1 or more."""
    value = _whole(text)
    if value < 1:
        raise _refused(text, "a whole number of 1 or more")
    return value


def port(text: str) -> int:
    """A TCP port to listen on: 1 to 65535 (0 would pick one no scraper knows)."""
    value = _whole(text)
    if not 1 <= value <= 65535:
        raise _refused(text, "a port from 1 to 65535")
    return value


def positive_float(text: str) -> float:
    """Seconds that must pass: a number above 0."""
    value = _number(text)
    if not value > 0:
        raise _refused(text, "a number above 0")
    return value


def non_negative_float(text: str) -> float:
    """Seconds that may be none: a number of 0 or more."""
    value = _number(text)
    if not value >= 0:
        raise _refused(text, "a number of 0 or more")
    return value


def _whole(text: str) -> int:
    """``text`` as a whole number, else 0 (which every range check here refuses)."""
    try:
        return int(text)
    except ValueError:
        return 0


def _number(text: str) -> float:
    """``text`` as a finite number, else NaN (which every range check refuses)."""
    try:
        value = float(text)
    except ValueError:
        return math.nan
    return value if math.isfinite(value) else math.nan


def _refused(text: str, allowed: str) -> argparse.ArgumentTypeError:
    # argparse shows it as "argument --limit: must be ..., not '-1'".
    return argparse.ArgumentTypeError(f"must be {allowed}, not {text!r}")


def refuse_ignored(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    command: str,
    applies: Mapping[str, Collection[str]],
) -> None:
    """Exit with a usage error (2) when an option ``command`` ignores was given.

    ``applies`` maps an option (``"--grace"``, or a positional's name) to the commands that
    read it; an option counts as given when its value is not its default, so give such
    options a default no one types (None, False)."""
    for option, commands in applies.items():
        dest = option.lstrip("-").replace("-", "_")
        if command not in commands and getattr(args, dest) != parser.get_default(dest):
            shown = option if option.startswith("-") else f"the {option} argument"
            parser.error(f"{shown} applies to {' and '.join(commands)} only, not to {command}")
