"""The history checkers (T18) on hand-made histories: a valid one has every count 0, and each
anomaly is counted where it is planted."""

from __future__ import annotations

import pytest

from tests.support.checkers import Append, Poll, Send, check_list_append, check_queue

ZERO_LIST = dict.fromkeys(
    ["lost", "duplicate", "aborted_read", "incompatible_order", "wrong_position", "cycles"], 0
)
ZERO_QUEUE = dict.fromkeys(
    [
        "inconsistent_offsets",
        "duplicate",
        "lost_write",
        "unseen",
        "poll_skip",
        "nonmonotonic_poll",
        "nonmonotonic_send",
        "aborted_read",
    ],
    0,
)


def valid_list_history() -> tuple[list[Append], dict[str, list[int]]]:
    history = [
        Append("ok", {"a": []}, {"a": [1]}),
        Append("fail", {"a": []}, {"a": [9]}),  # lost the race: never visible
        Append("ok", {"a": [1]}, {"a": [2, 3]}),
        Append("info", {"a": [1, 2, 3]}, {"a": [4]}),  # timed out, and did land
        Append("info", {"a": [1, 2, 3]}, {"a": [8]}),  # timed out, and did not land
        Append("ok", {"a": [1, 2, 3, 4], "b": []}, {"a": [5], "b": [1]}),
    ]
    return history, {"a": [1, 2, 3, 4, 5], "b": [1]}


def test_a_valid_list_append_history_has_no_anomaly() -> None:
    history, final = valid_list_history()
    assert check_list_append(history, final) == ZERO_LIST


@pytest.mark.parametrize(
    ("anomaly", "history", "final"),
    [
        ("lost", [Append("ok", {"a": []}, {"a": [1]})], {"a": []}),
        ("duplicate", [Append("info", {"a": []}, {"a": [1]})], {"a": [1, 1]}),
        ("aborted_read", [Append("fail", {"a": []}, {"a": [1]})], {"a": [1]}),
        (
            "aborted_read",
            [Append("fail", {"a": []}, {"a": [7]}), Append("ok", {"a": [7]}, {})],
            {"a": [7]},
        ),
        (
            "incompatible_order",
            [Append("ok", {"a": []}, {"a": [1, 2]}), Append("ok", {"a": [2]}, {})],
            {"a": [1, 2]},
        ),
        (
            "wrong_position",
            [Append("ok", {"a": []}, {"a": [1]}), Append("ok", {"a": []}, {"a": [2]})],
            {"a": [1, 2]},
        ),
    ],
)
def test_each_list_append_anomaly_is_counted(
    anomaly: str, history: list[Append], final: dict[str, list[int]]
) -> None:
    found = check_list_append(history, final)
    assert found[anomaly] >= 1
    assert {k: v for k, v in found.items() if k != anomaly and k != "cycles"} == {
        k: 0 for k in ZERO_LIST if k not in (anomaly, "cycles")
    }


def test_a_write_skew_between_two_aggregates_is_a_cycle() -> None:
    # T1 read a empty and b empty, appended to a; T2 read both empty, appended to b: each
    # missed the other's write (G2, as two process managers without a common check could).
    history = [
        Append("ok", {"a": [], "b": []}, {"a": [1]}),
        Append("ok", {"a": [], "b": []}, {"b": [1]}),
    ]
    found = check_list_append(history, {"a": [1], "b": [1]})
    assert found["cycles"] == 1


def valid_queue() -> tuple[list[Send], list[Poll]]:
    sends = [
        Send("v1", "ok", 0),
        Send("v2", "ok", 2),  # offset 1 is a commit marker: offsets are sparse
        Send("v3", "fail"),
        Send("v4", "info"),
        Send("v5", "ok", 5, producer="p2"),
    ]
    polls = [
        Poll("c1", [(0, "v1"), (2, "v2")]),
        Poll("c1", [(5, "v5")]),
        Poll("c2", [(0, "v1")], seek=True),
        Poll("c2", [(2, "v2"), (5, "v5")]),
    ]
    return sends, polls


def test_a_valid_queue_history_has_no_anomaly() -> None:
    assert check_queue(*valid_queue()) == ZERO_QUEUE


@pytest.mark.parametrize(
    ("anomaly", "sends", "polls"),
    [
        (
            "inconsistent_offsets",
            [Send("a", "ok", 0)],
            [Poll("c", [(0, "b")]), Poll("d", [(0, "a")])],
        ),
        ("duplicate", [Send("a", "ok", 0)], [Poll("c", [(0, "a"), (3, "a")])]),
        ("lost_write", [Send("a", "ok", 0), Send("b", "ok", 1)], [Poll("c", [(1, "b")])]),
        ("unseen", [Send("a", "ok", 0), Send("b", "ok", 1)], [Poll("c", [(0, "a")])]),
        (
            "poll_skip",
            [Send("a", "ok", 0), Send("b", "ok", 1), Send("c", "ok", 2)],
            [Poll("c", [(0, "a")]), Poll("c", [(2, "c")]), Poll("d", [(1, "b")])],
        ),
        (
            "nonmonotonic_poll",
            [Send("a", "ok", 0), Send("b", "ok", 1)],
            [Poll("c", [(0, "a"), (1, "b")]), Poll("c", [(0, "a")])],
        ),
        (
            "nonmonotonic_send",
            [Send("a", "ok", 5), Send("b", "ok", 3)],
            [Poll("c", [(3, "b"), (5, "a")])],
        ),
        ("aborted_read", [Send("a", "fail")], [Poll("c", [(0, "a")])]),
    ],
)
def test_each_queue_anomaly_is_counted(anomaly: str, sends: list[Send], polls: list[Poll]) -> None:
    found = check_queue(sends, polls)
    assert found[anomaly] >= 1, found
    others = {k: v for k, v in found.items() if k != anomaly}
    # A re-read of offset 0 is a duplicate poll, not a duplicate value.
    assert others == {k: 0 for k in ZERO_QUEUE if k != anomaly}, found
