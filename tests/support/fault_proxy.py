"""A loopback TCP proxy with toxics, for the network fault tests (T13, T16), in the spirit of
toxiproxy: every byte between the clients and a server goes through it, and a test can add
latency, blackhole the traffic (accepted and dropped, so the peer sees silence, not an error)
or reset every open connection mid-request (RST).

It runs an asyncio loop in a daemon thread; the toxics are plain attributes read per chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading

__all__ = ["FaultProxy"]


class FaultProxy:
    """Listens on 127.0.0.1:``port`` and forwards each connection to 127.0.0.1:``target``."""

    def __init__(self, port: int, target: int) -> None:
        self.port = port
        self.target = target
        self.latency = 0.0
        """Seconds each chunk waits before it is forwarded (both directions)."""
        self.response_delay = 0.0
        """Extra seconds each chunk from the server waits (a slow answer to a sent request)."""
        self.delay_api: dict[int, float] = {}
        """Kafka API key -> seconds its responses are held (26 = EndTxn: a slow commit)."""
        self.delayed = 0
        self.blackhole = False
        """While True, bytes are read and dropped (a partition: no error, no answer)."""
        self.refuse = False
        """While True, new connections are closed at once (the server seems down)."""
        self.connections = 0
        self.resets = 0
        self._open: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None

    def start(self) -> FaultProxy:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        future.result(10)
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            _abort(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            _abort(writer)
            return
        self.connections += 1
        pair = (writer, up_writer)
        self._open.add(pair)
        try:
            asked: dict[int, float] = {}  # correlation id -> hold, for this connection
            await asyncio.gather(
                self._pump(reader, up_writer, answers=False, asked=asked),
                self._pump(up_reader, writer, answers=True, asked=asked),
            )
        finally:
            self._open.discard(pair)
            for w in pair:
                with contextlib.suppress(Exception):
                    w.close()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        answers: bool,
        asked: dict[int, float],
    ) -> None:
        buffer = b""
        framed = True  # until a blackhole drops bytes mid-frame; then bytes pass as they are
        try:
            while chunk := await reader.read(65536):
                delay = self.latency + (self.response_delay if answers else 0.0)
                if delay:
                    await asyncio.sleep(delay)
                if self.blackhole:
                    buffer, framed = b"", False
                    continue
                if not framed:
                    writer.write(chunk)
                    await writer.drain()
                    continue
                # Kafka frames: a 4-byte size, then (request) api key, version, correlation id
                # or (response) correlation id. Hold the responses to the chosen APIs.
                buffer += chunk
                while len(buffer) >= 4 and len(buffer) >= 4 + int.from_bytes(buffer[:4], "big"):
                    size = 4 + int.from_bytes(buffer[:4], "big")
                    frame, buffer = buffer[:size], buffer[size:]
                    if answers and len(frame) >= 8:
                        hold = asked.pop(int.from_bytes(frame[4:8], "big"), 0.0)
                        if hold:
                            self.delayed += 1
                            await asyncio.sleep(hold)
                    elif not answers and len(frame) >= 12:
                        api = int.from_bytes(frame[4:6], "big")
                        if api in self.delay_api:
                            asked[int.from_bytes(frame[8:12], "big")] = self.delay_api[api]
                    writer.write(frame)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def reset_all(self) -> int:
        """Reset every open connection now (RST to both peers); return how many."""

        async def reset() -> int:
            pairs = list(self._open)
            for pair in pairs:
                for w in pair:
                    _abort(w)
            return len(pairs)

        count = asyncio.run_coroutine_threadsafe(reset(), self._loop).result(10)
        self.resets += count
        return count

    def heal(self) -> None:
        """Remove every toxic."""
        self.latency = 0.0
        self.response_delay = 0.0
        self.delay_api = {}
        self.blackhole = False
        self.refuse = False

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for pair in list(self._open):
                for w in pair:
                    _abort(w)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (linger 0), as a crashed peer or a middlebox would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
