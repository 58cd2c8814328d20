"""The query options of a store URL, typed, with a typo refused instead of ignored.

Every backend declares its options as ``name -> parser``; a parser turns the text into a value
or raises ``ValueError`` saying what it expected, and :func:`parse_options` turns that into a
``ConfigurationError`` naming the option, the value and the URL's store.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any
from urllib.parse import parse_qsl

from framework.errors import ConfigurationError

__all__ = ["Parser", "flag", "integer", "number", "parse_options", "positive_integer", "text"]

Parser = Callable[[str], Any]
"""Turns an option's text into its value; raises ``ValueError("must be ...")`` otherwise."""


def integer(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError("must be a whole number") from None


def positive_integer(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise ValueError("must be a positive whole number")
    return int(value)


def number(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError("must be a number") from None


def text(value: str) -> str:
    return value


_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


def flag(value: str) -> bool:
    if value.lower() not in _TRUE | _FALSE:
        raise ValueError("must be true or false")
    return value.lower() in _TRUE


def parse_options(
    query: str,
    known: Mapping[str, Parser],
    *,
    store: str,
    unlisted: Collection[str] = (),
    also: str = "",
) -> dict[str, Any]:
    """The options of ``query`` (a URL's query string) as ``known`` parses them; the last of a
    repeated option wins.

    An option ``known`` lacks is refused with the list of known ones (less ``unlisted``: options
    accepted only to be checked, which no one should set), followed by ``also`` when the backend
    takes more than it can list.
    """
    parsed: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        parse = known.get(key)
        if parse is None:
            listed = ", ".join(sorted(set(known) - set(unlisted)))
            raise ConfigurationError(
                f"unknown option {key!r} in the {store} store URL; known: {listed}{also}"
            )
        try:
            parsed[key] = parse(value)
        except ValueError as error:
            raise ConfigurationError(
                f"option {key}={value!r} in the {store} store URL {error}"
            ) from error
    return parsed
