"""Change data capture: a legacy table's changes, translated into commands.

A :class:`ChangeFeed` reads a :class:`ChangeSource` from a cursor it stores, translates each
:class:`RowChange` into commands (the anti-corruption layer) and executes them through the
application's command path, with ids made from the change's source position, so a change read
twice runs once. Sources: :class:`PostgresTriggerSource` (the default, no Java: a trigger
changelog read below the ``xid8`` fence), :class:`DebeziumTopicSource` (Kafka Connect with
Debezium) and :class:`HighWaterMarkSource` (append-only tables only). See the README's
"Legacy systems through CDC" section and ``python -m framework.cdc --help``.
"""

from framework.cdc._changes import ChangeSource, Lag, Op, RowChange, change_command_id
from framework.cdc._debezium import DebeziumTopicSource
from framework.cdc._feed import (
    ChangeFeed,
    FeedStatus,
    PollResult,
    RedriveResult,
    feeds_table,
    row_id,
)
from framework.cdc._trigger import HighWaterMarkSource, PostgresTriggerSource

__all__ = [
    "ChangeFeed",
    "ChangeSource",
    "DebeziumTopicSource",
    "FeedStatus",
    "HighWaterMarkSource",
    "Lag",
    "Op",
    "PollResult",
    "PostgresTriggerSource",
    "RedriveResult",
    "RowChange",
    "change_command_id",
    "feeds_table",
    "row_id",
]
