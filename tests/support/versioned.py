"""A domain whose event classes evolved, for the schema-evolution tests (T9).

History of ``Member.Joined``:
- v1 ``{"name": "Ann Lee"}``
- v2 added ``email`` (old members get ``None``)
- v3 renamed ``name`` to ``full_name`` and added ``country`` (old members are in ``"GB"``)

``Member.Moved`` was called ``Relocated`` until v2 of the app: it keeps the old name as an alias.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from framework.domain import Aggregate, event


class Member(Aggregate):
    full_name: str
    email: str | None
    country: str

    class Joined(Aggregate.Created):
        class_version = 3
        full_name: str
        email: str | None
        country: str

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["email"] = None

        @staticmethod
        def upcast_v2_v3(state: dict[str, Any]) -> None:
            state["full_name"] = state.pop("name")
            state["country"] = "GB"

    @event(Joined)
    def __init__(self, id: UUID, full_name: str, email: str | None, country: str) -> None:
        self.full_name = full_name
        self.email = email
        self.country = country

    class Moved(Aggregate.Event):
        aliases = ("Relocated",)
        country: str

    @event(Moved)
    def move(self, country: str) -> None:
        self.country = country
