"""The command lines' shared ``type=`` functions: a value out of range is refused with what is
allowed, never turned into something else (``--limit -1`` into "no limit")."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import pytest

from framework.arguments import non_negative_float, port, positive_float, positive_int


@pytest.mark.parametrize(
    ("check", "text", "value"),
    [
        (positive_int, "1", 1),
        (positive_int, "250", 250),
        (positive_float, "0.25", 0.25),
        (non_negative_float, "0", 0.0),
        (non_negative_float, "60", 60.0),
        (port, "65535", 65535),
    ],
)
def test_values_in_range_are_taken(check: Callable[[str], float], text: str, value: float) -> None:
    assert check(text) == value


@pytest.mark.parametrize(
    ("check", "text", "allowed"),
    [
        (positive_int, "0", "a whole number of 1 or more"),
        (positive_int, "-1", "a whole number of 1 or more"),
        (positive_int, "1.5", "a whole number of 1 or more"),
        (positive_float, "0", "a number above 0"),
        (positive_float, "inf", "a number above 0"),
        (non_negative_float, "-5", "a number of 0 or more"),
        (non_negative_float, "nan", "a number of 0 or more"),
        (non_negative_float, "soon", "a number of 0 or more"),
        (port, "0", "a port from 1 to 65535"),
        (port, "65536", "a port from 1 to 65535"),
    ],
)
def test_values_out_of_range_say_what_is_allowed(
    check: Callable[[str], float], text: str, allowed: str
) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as refused:
        check(text)
    assert str(refused.value) == f"must be {allowed}, not {text!r}"
