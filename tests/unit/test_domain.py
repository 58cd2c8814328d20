"""Stable event type names, and what happens when two aggregates claim one."""

from __future__ import annotations

from uuid import UUID

import pytest

from framework.domain import Aggregate, event, event_types
from framework.errors import ConfigurationError, UnknownEventTypeError
from tests.support.bank import Account


def test_events_are_named_after_their_aggregate_not_their_module() -> None:
    assert event_types.name_of(Account.Deposited) == "Account.Deposited"
    assert event_types.resolve("Account.Deposited") is Account.Deposited
    assert event_types.aggregate("Account") is Account


def test_an_unknown_name_says_what_to_do() -> None:
    with pytest.raises(UnknownEventTypeError, match="import the module"):
        event_types.resolve("Account.Exploded")


def test_two_aggregates_with_one_name_fail_only_where_the_name_is_used() -> None:
    def define() -> type[Aggregate]:
        class Clash(Aggregate):
            @event("Made")
            def __init__(self, id: UUID) -> None:
                pass

        return Clash

    first, second = define(), define()
    with pytest.raises(ConfigurationError, match="set a distinct type_name"):
        event_types.name_of(first.Made)
    # Unrelated aggregates are unaffected.
    assert event_types.name_of(Account.Opened) == "Account.Opened"

    class Renamed(second):  # type: ignore[misc, valid-type]
        type_name = "Renamed"

    assert Renamed.type_name == "Renamed"
    del first, second


def test_an_event_of_a_foreign_class_is_refused() -> None:
    from eventsourcing.domain import Aggregate as LibraryAggregate

    class Plain(LibraryAggregate):
        @event("Made")
        def __init__(self) -> None:
            pass

    with pytest.raises(ConfigurationError, match="derive your aggregate"):
        event_types.name_of(Plain.Made)
