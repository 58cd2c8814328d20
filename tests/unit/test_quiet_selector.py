"""The selector keel's Kafka clients use: the standard one, minus the ``repr(socket)`` that a
miss in ``get_key`` costs (kafka-python misses on every request)."""

from __future__ import annotations

import selectors
import socket
from collections.abc import Iterator

import pytest

from framework.backends.kafka_client import QuietSelector


class Watched:
    """A file object that counts how often it is formatted."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.formatted = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def __repr__(self) -> str:
        self.formatted += 1
        return "<watched>"


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_a_miss_raises_key_error_without_formatting_the_socket(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    watched = Watched(pair[0])
    standard, quiet = selectors.DefaultSelector(), QuietSelector()
    for selector in (standard, quiet):
        try:
            selector.get_key(watched)
        except KeyError:
            pass
        else:
            pytest.fail(f"{selector} found a socket never registered")
        if selector is standard:  # what the standard selector costs on every miss
            assert watched.formatted >= 1
            before = watched.formatted
    assert watched.formatted == before
    standard.close()
    quiet.close()


def test_it_selects_as_the_standard_selector_does(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    quiet = QuietSelector()
    quiet.register(a, selectors.EVENT_READ, "reader")
    assert quiet.get_key(a).data == "reader"
    quiet.modify(a, selectors.EVENT_READ | selectors.EVENT_WRITE, "both")
    assert quiet.get_key(a).events == selectors.EVENT_READ | selectors.EVENT_WRITE
    b.send(b"x")
    ready = quiet.select(timeout=1)
    assert [(key.data, bool(mask & selectors.EVENT_READ)) for key, mask in ready] == [
        ("both", True)
    ]
    quiet.unregister(a)
    with pytest.raises(KeyError):
        quiet.get_key(a)
    quiet.close()
    with pytest.raises(RuntimeError, match="closed"):  # as the standard selector says
        quiet.get_key(a)
