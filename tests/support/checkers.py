"""History checkers for the fault tests (T18), after Jepsen's Elle list-append checker and the
queue checker of jepsen-io/redpanda. A fault test records what it did as operations, then asks
a checker for the count of every anomaly; a valid history has all counts 0.

Every operation ends ``ok``, ``fail`` or ``info`` (the outcome is unknown, e.g. a timeout): an
``info`` write may or may not have happened, so it may appear at most once and is never lost.

**List-append** (one aggregate stream is one list): a command read ``prefix`` of some keys'
lists and appended values to some keys. Given the final list of every key, it counts

- ``lost``: an ``ok`` append missing from the final list;
- ``duplicate``: a value more than once in a final list;
- ``aborted_read`` (G1a): a ``fail`` append seen in a final list or in any read;
- ``incompatible_order``: a read that is not a prefix of the key's final list;
- ``wrong_position``: an ``ok`` command whose first appended value does not sit right after
  the prefix it read ("one winner per version");
- ``cycles`` (G0/G1c/G2): cycles in the graph of write-write, write-read and read-write
  dependencies between committed commands, found with networkx.

**Queue** (one Kafka partition is one queue with sparse offsets): sends with their outcome and
acknowledged offset, and each consumer's polls in order. It counts ``inconsistent_offsets`` (an
offset holding two values), ``duplicate`` (a value at two offsets), ``lost_write`` (an
acknowledged value never polled although a poll read past its offset), ``unseen`` (an
acknowledged value no poll reached at all), ``poll_skip`` (a consumer's consecutive polls jump
over a known offset), ``nonmonotonic_poll``, ``nonmonotonic_send`` and ``aborted_read`` (G1a).
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import networkx as nx

__all__ = ["Append", "Poll", "Send", "check_list_append", "check_queue"]

Key = Hashable
Value = Hashable


@dataclass(frozen=True)
class Append:
    """One command: what it read (``reads``: key -> the prefix it saw) and what it appended
    (``appends``: key -> values, in order), with its outcome."""

    outcome: str
    reads: Mapping[Key, Sequence[Value]] = field(default_factory=dict)
    appends: Mapping[Key, Sequence[Value]] = field(default_factory=dict)


def check_list_append(
    history: Iterable[Append], final: Mapping[Key, Sequence[Value]]
) -> dict[str, int]:
    """Count each anomaly of ``history`` against each key's ``final`` list."""
    ops = list(history)
    found = Counter(
        lost=0,
        duplicate=0,
        aborted_read=0,
        incompatible_order=0,
        wrong_position=0,
        cycles=0,
    )
    where: dict[Key, dict[Value, int]] = {}
    for key, values in final.items():
        counts = Counter(values)
        found["duplicate"] += sum(n - 1 for n in counts.values() if n > 1)
        where[key] = {v: i for i, v in reversed(list(enumerate(values)))}
    failed = {
        (k, v) for op in ops if op.outcome == "fail" for k, vs in op.appends.items() for v in vs
    }
    for op in ops:
        for key, prefix in op.reads.items():
            if list(prefix) != list(final.get(key, ()))[: len(prefix)]:
                found["incompatible_order"] += 1
            found["aborted_read"] += sum((key, v) in failed for v in prefix)
        if op.outcome != "ok":
            continue
        for key, values in op.appends.items():
            positions = where.get(key, {})
            found["lost"] += sum(v not in positions for v in values)
            if values and values[0] in positions and key in op.reads:
                found["wrong_position"] += positions[values[0]] != len(op.reads[key])
    found["aborted_read"] += sum(v in where.get(k, {}) for k, v in failed)
    found["cycles"] = _cycles([op for op in ops if op.outcome != "fail"], final)
    return dict(found)


def _cycles(ops: Sequence[Append], final: Mapping[Key, Sequence[Value]]) -> int:
    """Dependency cycles among committed commands (Adya's G0, G1c and G2)."""
    writer: dict[tuple[Key, Value], int] = {}
    for i, op in enumerate(ops):
        for key, values in op.appends.items():
            for v in values:
                writer[(key, v)] = i
    graph = nx.DiGraph()
    graph.add_nodes_from(range(len(ops)))
    for key, values in final.items():
        # ww: the writer of each element precedes the writer of the next.
        chain = [writer[(key, v)] for v in values if (key, v) in writer]
        graph.add_edges_from((a, b) for a, b in itertools.pairwise(chain) if a != b)
    for i, op in enumerate(ops):
        for key, prefix in op.reads.items():
            values = list(final.get(key, ()))
            if prefix and (key, prefix[-1]) in writer and writer[(key, prefix[-1])] != i:
                graph.add_edge(writer[(key, prefix[-1])], i)  # wr: read what it wrote
            if len(prefix) < len(values) and (key, values[len(prefix)]) in writer:
                nxt = writer[(key, values[len(prefix)])]
                if nxt != i:
                    graph.add_edge(i, nxt)  # rw: read before the next append
    return sum(1 for component in nx.strongly_connected_components(graph) if len(component) > 1)


@dataclass(frozen=True)
class Send:
    """One produced value: its outcome and, when acknowledged, its offset; ``producer`` names
    the session that sent it (acknowledged offsets of one producer must grow)."""

    value: Value
    outcome: str
    offset: int | None = None
    producer: Hashable = 0


@dataclass(frozen=True)
class Poll:
    """One consumer's read of ``(offset, value)`` pairs, in the order returned; ``seek=True``
    marks a poll after the consumer was repositioned (a restart or rebalance)."""

    consumer: Hashable
    records: Sequence[tuple[int, Value]]
    seek: bool = False


def check_queue(sends: Iterable[Send], polls: Iterable[Poll]) -> dict[str, int]:
    """Count each anomaly of one partition's history."""
    sends = list(sends)
    polls = list(polls)
    found = Counter(
        inconsistent_offsets=0,
        duplicate=0,
        lost_write=0,
        unseen=0,
        poll_skip=0,
        nonmonotonic_poll=0,
        nonmonotonic_send=0,
        aborted_read=0,
    )
    values_at: dict[int, set[Value]] = defaultdict(set)
    offsets_of: dict[Value, set[int]] = defaultdict(set)
    for s in sends:
        if s.outcome == "ok" and s.offset is not None:
            values_at[s.offset].add(s.value)
            offsets_of[s.value].add(s.offset)
    polled: set[Value] = set()
    for p in polls:
        for offset, value in p.records:
            values_at[offset].add(value)
            offsets_of[value].add(offset)
            polled.add(value)
    found["inconsistent_offsets"] = sum(1 for vs in values_at.values() if len(vs) > 1)
    found["duplicate"] = sum(1 for offs in offsets_of.values() if len(offs) > 1)
    known = sorted(values_at)
    highest_polled = max((o for p in polls for o, _ in p.records), default=-1)
    for s in sends:
        if s.outcome == "fail" and s.value in polled:
            found["aborted_read"] += 1
        if s.outcome == "ok" and s.value not in polled:
            reached = s.offset is not None and s.offset < highest_polled
            found["lost_write" if reached else "unseen"] += 1
    last_sent: dict[Hashable, int] = {}
    for s in sends:
        if s.outcome == "ok" and s.offset is not None:
            if s.offset <= last_sent.get(s.producer, -1):
                found["nonmonotonic_send"] += 1
            last_sent[s.producer] = s.offset
    last_polled: dict[Hashable, int] = {}
    rank = {offset: i for i, offset in enumerate(known)}
    for p in polls:
        previous = None if p.seek else last_polled.get(p.consumer)
        for offset, _ in p.records:
            if previous is not None:
                if offset <= previous:
                    found["nonmonotonic_poll"] += 1
                elif rank[offset] - rank[previous] > 1:
                    found["poll_skip"] += 1
            previous = offset
        if previous is not None:
            last_polled[p.consumer] = previous
    return dict(found)
