"""A server-side TLS connection on the event loop, with OpenSSL doing the socket I/O.

asyncio's own TLS (sslproto) drives OpenSSL through memory BIOs and moves every
record through Python objects, buffers and callbacks. Here the ssl module's
non-blocking socket reads and writes the file descriptor itself (the handshake
and every record in C) and the loop is consulted only when OpenSSL would block.
For the MyProxy edge, whose connections carry one short conversation each, that
is the cheaper way (docs/performance.md, "A TLS edge without sslproto").

The interface is the part of asyncio's StreamReader/StreamWriter pair the edge
uses: `read`, `write` + `drain`, `get_extra_info`, `close` + `wait_closed`.
Each `write` is one TLS record (the Globus clients read one message per
record); `drain` sends what was written since the last one.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class TlsStream:
    """One accepted TLS connection; not thread-safe (the loop's thread only)."""

    def __init__(self, tls: ssl.SSLSocket, peer: Any) -> None:
        self._tls = tls
        self._peer = peer
        self._loop = asyncio.get_running_loop()
        self._fd = tls.fileno()
        self._pending: list[bytes] = []
        self._closed = False

    @classmethod
    async def accept(
        cls, conn: socket.socket, context: ssl.SSLContext, timeout: float
    ) -> TlsStream:
        """The server side of the TLS handshake on an accepted socket, within `timeout` s.

        On failure (an SSLError, TimeoutError, a reset) the socket is closed and the error
        raised.
        """
        try:
            peer = conn.getpeername()
            conn.setblocking(False)
            tls = context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        except BaseException:
            conn.close()
            raise
        stream = cls(tls, peer)
        try:
            async with asyncio.timeout(timeout):
                await stream._retry(tls.do_handshake)
        except BaseException:
            stream._abort()
            raise
        return stream

    # --- the StreamReader / StreamWriter subset ----------------------------------------------

    async def read(self, n: int) -> bytes:
        """Up to `n` bytes of application data; b"" once the peer has closed."""
        return await self._retry(self._tls.recv, n)

    def write(self, data: bytes) -> None:
        if self._closed:
            raise ConnectionResetError("the connection is closed")
        self._pending.append(data)

    async def drain(self) -> None:
        """Send what was written: one record per write, in one TCP segment where they fit
        (TCP_CORK: loopback delivery and the peer's wake-up cost more than the records)."""
        pending, self._pending = self._pending, []
        corked = len(pending) > 1
        if corked:
            self._tls.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        try:
            for record in pending:
                view = memoryview(record)
                while view:
                    sent = await self._retry(self._tls.send, view)
                    view = view[sent:]
        finally:
            if corked and not self._closed:
                self._tls.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._tls
        if name == "peername":
            return self._peer
        if name == "socket":
            return self._tls
        return default

    def close(self) -> None:
        """Send TLS close_notify if the socket takes it at once, then close; never waits."""
        if self._closed:
            return
        with contextlib.suppress(OSError, ValueError):
            # SSL_shutdown sends close_notify, then wants the peer's: not waited for (the
            # MyProxy clients close first or right after), as with a TLS server that forks.
            self._tls.unwrap()
        self._abort()

    async def wait_closed(self) -> None:
        self.close()

    # --- the loop ------------------------------------------------------------------------

    def _abort(self) -> None:
        self._closed = True
        self._pending.clear()
        self._tls.close()

    async def _retry(self, call: Callable[..., T], *args: Any) -> T:
        """`call` until OpenSSL stops wanting to read or write; the loop waits in between."""
        while True:
            try:
                return call(*args)
            except ssl.SSLWantReadError:
                await self._ready(write=False)
            except ssl.SSLWantWriteError:
                await self._ready(write=True)

    async def _ready(self, *, write: bool) -> None:
        if self._closed:
            raise ConnectionResetError("the connection is closed")
        waiter = self._loop.create_future()

        def wake() -> None:
            if not waiter.done():
                waiter.set_result(None)

        if write:
            self._loop.add_writer(self._fd, wake)
        else:
            self._loop.add_reader(self._fd, wake)
        try:
            await waiter
        finally:
            if write:
                self._loop.remove_writer(self._fd)
            else:
                self._loop.remove_reader(self._fd)
