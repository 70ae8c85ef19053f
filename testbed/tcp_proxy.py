"""A TCP proxy on a free loopback port that can cut the link it carries: a network fault
between one client (a gateway) and its server (RabbitMQ) for tests and the fault suite.

Cut, it resets every connection it carries and resets each new one at once, as a link that
went down does to a client that keeps trying; healed, it forwards again. It runs its own event
loop in a thread, so synchronous callers (pytest, the fault suite) drive it directly."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any

from testbed.process import ServiceError

_CHUNK = 65536
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    writer.transport.abort()


class PausableProxy:
    """Forwards 127.0.0.1:`port` to `target_host`:`target_port` until `cut()`, again after
    `heal()`; `connections` counts those accepted, `refused` those reset while cut."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.connections = 0
        self.refused = 0
        self._cut = False
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def is_cut(self) -> bool:
        return self._cut

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def start(self) -> int:
        self._thread.start()
        try:
            self._call(self._start())
        except OSError as exc:
            raise ServiceError(f"proxy to {self.target} cannot listen: {exc}") from exc
        return self.port

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def cut(self) -> None:
        """Reset every carried connection now and every new one until `heal()`."""
        self._call(self._set_cut(True))

    def heal(self) -> None:
        self._call(self._set_cut(False))

    async def _set_cut(self, cut: bool) -> None:
        self._cut = cut
        if cut:
            for client, upstream in list(self._pairs):
                _reset(client)
                _reset(upstream)
            self._pairs.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            self.refused += 1
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(writer)
            return
        self.connections += 1
        pair = (writer, up_writer)
        self._pairs.add(pair)
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._pairs.discard(pair)
            for w in pair:
                w.transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(_CHUNK):
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass  # the other direction (or a cut) ends the pair
        finally:
            writer.transport.abort()

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _stop(self) -> None:
        await self._set_cut(True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def __enter__(self) -> PausableProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
