"""A change source over a Debezium change topic (Kafka Connect with the Debezium PostgreSQL
connector, ``JsonConverter`` with ``schemas.enable=false``).

Debezium writes, per table, a topic ``<topic.prefix>.<schema>.<table>`` of envelopes
``{"before", "after", "op": c|u|d|r, "source": {"lsn", "txId", "ts_ms", ...}}`` keyed by the
row's key, in commit order, snapshot (``r``) first and then the stream, with no gap between
them (``snapshot.mode=initial``). Kafka Connect delivers at least once: after a crash of the
worker a change may be written twice, at two offsets. The position that names a change is
therefore its ``source.lsn`` (with the row key in the command id), never the Kafka offset, so
the copy collapses by command id. The cursor is ``{partition: next offset}``, stored by the
feed; this source only seeks to it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from framework.backends.kafka_client import KafkaConsumer, TopicPartition
from framework.cdc._changes import Lag, Op, RowChange
from framework.errors import ConfigurationError, StoreUnavailableError

__all__ = ["DebeziumTopicSource"]

_OPS: dict[str, Op] = {"c": "insert", "u": "update", "d": "delete", "r": "read"}


class DebeziumTopicSource:
    """Changes of one table from its Debezium topic ``topic`` on ``bootstrap_servers``.
    ``key`` names the key columns (as in the record key)."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        key: tuple[str, ...] | list[str],
        *,
        poll_timeout: float = 1.0,
    ) -> None:
        if not key:
            raise ConfigurationError(f"name the key column(s) of the rows in {topic}")
        self.name = topic
        self.topic = topic
        self.key = tuple(key)
        self.poll_timeout = poll_timeout
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            group_id=None,
            consumer_timeout_ms=int(poll_timeout * 1000),
        )
        self._assigned: dict[int, int] | None = None  # partition -> offset we are at

    def _partitions(self) -> list[TopicPartition]:
        parts = self._consumer.partitions_for_topic(self.topic)
        if not parts:
            raise StoreUnavailableError(
                f"Debezium topic {self.topic} does not exist yet (is the connector running?)"
            )
        return [TopicPartition(self.topic, p) for p in sorted(parts)]

    def _seek(self, cursor: Mapping[int, int]) -> None:
        tps = self._partitions()
        self._consumer.assign(tps)
        for tp in tps:
            self._consumer.seek(tp, cursor.get(tp.partition, 0))
        self._assigned = {tp.partition: cursor.get(tp.partition, 0) for tp in tps}

    def read(self, cursor: str | None, limit: int) -> list[RowChange]:
        at = {int(p): o for p, o in json.loads(cursor).items()} if cursor else {}
        if self._assigned is None or any(o != at.get(p, 0) for p, o in self._assigned.items()):
            self._seek(at)
        assert self._assigned is not None
        changes: list[RowChange] = []
        position = dict(self._assigned)
        while not changes:
            batch = self._consumer.poll(timeout_ms=int(self.poll_timeout * 1000), max_records=limit)
            records = sorted(
                (r for rs in batch.values() for r in rs), key=lambda r: (r.partition, r.offset)
            )
            if not records:
                break
            for record in records:
                position[record.partition] = record.offset + 1
                change = self._change(record, position)
                if change is not None:
                    changes.append(change)
            # (A batch of only tombstones moves on to the next one.)
        self._assigned = position
        return changes

    def _change(self, record: Any, position: Mapping[int, int]) -> RowChange | None:
        if record.value is None:
            return None  # the tombstone after a delete (for compaction)
        envelope = json.loads(record.value)
        payload = envelope.get("payload", envelope)  # with or without the schema wrapper
        op = _OPS.get(payload.get("op", ""))
        if op is None:
            return None  # "t" (truncate) and "m" (message) are not row changes
        source = payload.get("source") or {}
        before, after = payload.get("before"), payload.get("after")
        image = after if after is not None else (before or {})
        key_json = json.loads(record.key) if record.key else {}
        key_json = key_json.get("payload", key_json) if isinstance(key_json, dict) else {}
        ts = source.get("ts_ms")
        return RowChange(
            table=f"{source.get('schema', '')}.{source.get('table', '')}".strip("."),
            op=op,
            key={k: key_json.get(k, image.get(k)) for k in self.key},
            before=before,
            after=after,
            position=f"lsn:{source.get('lsn')}",
            partition=record.partition,
            offset=record.offset,
            committed_at=None if ts is None else datetime.fromtimestamp(ts / 1000, UTC),
            cursor=json.dumps({str(p): o for p, o in sorted(position.items())}),
        )

    def lag(self, cursor: str | None) -> Lag:
        at = {int(p): o for p, o in json.loads(cursor).items()} if cursor else {}
        tps = self._partitions()
        ends = self._consumer.end_offsets(tps)
        behind = sum(max(0, ends[tp] - at.get(tp.partition, 0)) for tp in tps)
        return Lag(changes=behind, seconds=0.0)

    def close(self) -> None:
        self._consumer.close()
