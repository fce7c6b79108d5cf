"""Connection limits for the two network edges, applied before any TLS work.

asyncio's `create_server(ssl=...)` gives every accepted connection a TLS
state machine and its buffers (about 256 KiB) before a byte is read, and it
has no hook between accept() and that. So both edges listen through
`LimitedTLSServer`: its own accept loop (a reader on the listening socket,
as asyncio's) asks a `ConnectionGate` about each new socket. Over a limit,
the socket is closed at once: no transport, no protocol, no TLS context.
Under it, the socket is handed to `loop.connect_accepted_socket` with the
edge's TLS context and protocol factory (a MyProxy stream handler, or
aiohttp's request handler through `LimitedTCPSite`), and the gate counts it
as open until its transport is gone, the TLS handshake included.

Limits are per edge and per process: with `proxyd serve --workers N` each
worker has its own gates, so an edge admits up to N times the limit.
Refusals are counted in `proxyd_connections_refused_total`, open
connections in `proxyd_connections_open`, and logged as JSON lines, at most
one line per edge every `REFUSAL_LOG_INTERVAL` seconds whatever the rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .metrics import CONNECTIONS_OPEN, CONNECTIONS_REFUSED
from .peers import peer_group
from .tlsstream import TlsStream

log = logging.getLogger("proxyd.connections")

REFUSAL_LOG_INTERVAL = 10.0  # seconds; at most one refusal line per edge in this time
ACCEPT_RETRY_DELAY = 1.0  # after EMFILE/ENFILE, as asyncio does
PER_PEER = "max_connections_per_peer"
TOTAL = "max_connections"


def peer_key(address: Any) -> str:
    """What a per-peer limit counts by: the IPv4 address, or the IPv6 /64 (`peer_group`)."""
    host = address[0] if isinstance(address, tuple) and address else str(address)
    return peer_group(host)


class ConnectionGate:
    """Open connections of one edge in one process, in total and per peer address.

    `admit` either counts a new connection in (returns None) or says which
    limit it would break (the metric's `reason`, named after the config
    key) after counting and logging the refusal. Memory is bounded by
    `max_connections`: only addresses with an open connection are kept.
    """

    def __init__(
        self,
        interface: str,
        max_connections: int,
        max_per_peer: int,
        *,
        log_interval: float = REFUSAL_LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= max_per_peer <= max_connections:
            raise ValueError("need 1 <= max_per_peer <= max_connections")
        self.interface = interface
        self.max_connections = max_connections
        self.max_per_peer = max_per_peer
        self.open = 0
        self.by_peer: dict[str, int] = {}
        self.log_interval = log_interval
        self._clock = clock
        self._quiet_until = float("-inf")  # a refusal before this time is only counted
        self._pending: Counter[str] = Counter()  # refusals not yet in a log line
        self._pending_peer = ""
        self._flush: asyncio.TimerHandle | None = None
        self._gauge = CONNECTIONS_OPEN.labels(interface)  # exported (as 0) from the start
        self._refused = {r: CONNECTIONS_REFUSED.labels(interface, r) for r in (TOTAL, PER_PEER)}

    def admit(self, peer: str) -> str | None:
        held = self.by_peer.get(peer, 0)
        if held >= self.max_per_peer:
            reason, limit = PER_PEER, self.max_per_peer
        elif self.open >= self.max_connections:
            reason, limit = TOTAL, self.max_connections
        else:
            self.by_peer[peer] = held + 1
            self.open += 1
            self._gauge.inc()
            return None
        self._refuse(peer, reason, limit)
        return reason

    def release(self, peer: str) -> None:
        held = self.by_peer.get(peer, 0)
        if held <= 1:
            self.by_peer.pop(peer, None)
        else:
            self.by_peer[peer] = held - 1
        self.open -= 1
        self._gauge.dec()

    # --- refusals: counted always, logged at a bounded rate ---------------------------------

    def _refuse(self, peer: str, reason: str, limit: int) -> None:
        self._refused[reason].inc()
        now = self._clock()
        if now < self._quiet_until:
            self._pending[reason] += 1
            self._pending_peer = peer
            return
        self._quiet_until = now + self.log_interval
        log.warning(
            "%s: refused a connection from %s: %s (%d) reached; further refusals are "
            "summarised every %.0f s",
            self.interface,
            peer,
            reason,
            limit,
            self.log_interval,
            extra={
                "fields": {
                    "interface": self.interface,
                    "event": "connection_refused",
                    "peer": peer,
                    "reason": reason,
                    "limit": limit,
                    "open": self.open,
                    "peer_open": self.by_peer.get(peer, 0),
                }
            },
        )
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        with contextlib.suppress(RuntimeError):  # no running loop (unit tests): flush() by hand
            loop = asyncio.get_running_loop()
            self._flush = loop.call_later(self.log_interval, self.flush)

    def flush(self, *, again: bool = True) -> None:
        """One summary line for the refusals since the last line, if there were any."""
        self._flush = None
        if not self._pending:
            self._quiet_until = float("-inf")  # quiet again: the next refusal is logged at once
            return
        total = sum(self._pending.values())
        log.warning(
            "%s: refused %d more connection(s) in the last %.0f s (%s); the last from %s",
            self.interface,
            total,
            self.log_interval,
            ", ".join(f"{r}: {n}" for r, n in sorted(self._pending.items())),
            self._pending_peer,
            extra={
                "fields": {
                    "interface": self.interface,
                    "event": "connections_refused",
                    "refused": total,
                    "by_reason": dict(self._pending),
                    "last_peer": self._pending_peer,
                    "seconds": self.log_interval,
                    "open": self.open,
                }
            },
        )
        self._pending.clear()
        self._quiet_until = self._clock() + self.log_interval
        if again:
            self._schedule_flush()

    def close(self) -> None:
        """Log what is still pending; no more timers."""
        if self._flush is not None:
            self._flush.cancel()
        self.flush(again=False)


class _Slot:
    """One admitted connection; released exactly once."""

    __slots__ = ("gate", "held", "peer")

    def __init__(self, gate: ConnectionGate, peer: str) -> None:
        self.gate, self.peer, self.held = gate, peer, True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.gate.release(self.peer)


class _Counted(asyncio.Protocol):
    """Forwards to the edge's protocol; gives the slot back when the connection is lost."""

    __slots__ = ("inner", "slot")

    def __init__(self, inner: asyncio.Protocol, slot: _Slot) -> None:
        if not isinstance(inner, asyncio.Protocol):  # e.g. a BufferedProtocol: not forwarded
            raise TypeError(f"{type(inner).__name__} is not an asyncio.Protocol")
        self.inner, self.slot = inner, slot

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.slot.release()
        self.inner.connection_lost(exc)


class LimitedTLSServer(asyncio.AbstractServer):
    """TLS listening sockets whose accept loop consults a ConnectionGate before TLS."""

    def __init__(
        self,
        protocol_factory: Callable[[], asyncio.Protocol] | None,
        ssl_context: ssl.SSLContext,
        gate: ConnectionGate,
        *,
        handshake_timeout: float,
        backlog: int = 128,
        on_close: Callable[[], None] | None = None,
        stream_handler: Callable[[TlsStream], Awaitable[None]] | None = None,
    ) -> None:
        """Each connection goes to `protocol_factory`'s protocol over asyncio's TLS, or, with
        `stream_handler`, to that coroutine as a TlsStream (OpenSSL on the socket itself)."""
        if (protocol_factory is None) == (stream_handler is None):
            raise ValueError("one of protocol_factory and stream_handler")
        self.protocol_factory = protocol_factory
        self.stream_handler = stream_handler
        # Called once when the listener closes (an edge writes its pending failed-login
        # summaries then).
        self.on_close = on_close
        self.ssl_context = ssl_context
        self.gate = gate
        self.handshake_timeout = handshake_timeout
        self.backlog = backlog
        self.sockets: list[socket.socket] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handshakes: set[asyncio.Task[None]] = set()
        self._sessions: set[asyncio.Task[None]] = set()  # stream mode, after the handshake
        self._serving = False

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> LimitedTLSServer:
        """Bind and listen like asyncio.create_server (same options, same bind error text)."""
        self._loop = loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        sockets: list[socket.socket] = []
        try:
            for family, kind, proto, _name, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    sock.bind(address)
                except OSError as err:
                    raise OSError(
                        err.errno,
                        f"error while attempting to bind on address {address!r}: "
                        f"{(err.strerror or '').lower()}",
                    ) from None
                sock.listen(self.backlog)
                sock.setblocking(False)
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        self.sockets = sockets
        for sock in sockets:
            loop.add_reader(sock.fileno(), self._accept, sock)
        self._serving = True
        return self

    def _accept(self, sock: socket.socket) -> None:
        assert self._loop is not None
        for _ in range(self.backlog):
            try:
                conn, address = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise  # the loop logs it; the listener stays
                log.error(
                    "%s: accept() failed (%s); accepting again in %.0f s",
                    self.gate.interface,
                    exc.strerror,
                    ACCEPT_RETRY_DELAY,
                )
                self._loop.remove_reader(sock.fileno())
                self._loop.call_later(ACCEPT_RETRY_DELAY, self._resume, sock)
                return
            peer = peer_key(address)
            if self.gate.admit(peer) is not None:
                conn.close()  # before any TLS state exists
                continue
            task = self._loop.create_task(self._handshake(conn, _Slot(self.gate, peer)))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    def _resume(self, sock: socket.socket) -> None:
        if self._serving and self._loop is not None:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    async def _handshake(self, conn: socket.socket, slot: _Slot) -> None:
        assert self._loop is not None
        if self.stream_handler is not None:
            await self._serve_stream(conn, slot, self.stream_handler)
            return
        assert self.protocol_factory is not None
        factory = self.protocol_factory
        try:
            await self._loop.connect_accepted_socket(
                lambda: _Counted(factory(), slot),
                conn,
                ssl=self.ssl_context,
                ssl_handshake_timeout=self.handshake_timeout,
            )
        except (OSError, asyncio.CancelledError) as exc:  # SSLError, TimeoutError are OSErrors
            # asyncio closed the transport; the edge's protocol never saw the connection.
            slot.release()
            log.debug(
                "%s: TLS handshake with %s failed: %s",
                self.gate.interface,
                slot.peer,
                exc.__class__.__name__,
            )
        except BaseException:
            slot.release()
            conn.close()
            raise

    async def _serve_stream(
        self,
        conn: socket.socket,
        slot: _Slot,
        handler: Callable[[TlsStream], Awaitable[None]],
    ) -> None:
        try:
            try:
                stream = await TlsStream.accept(conn, self.ssl_context, self.handshake_timeout)
            except (OSError, asyncio.CancelledError) as exc:  # SSLError, TimeoutError too
                log.debug(
                    "%s: TLS handshake with %s failed: %s",
                    self.gate.interface,
                    slot.peer,
                    exc.__class__.__name__,
                )
                return
            # Established: no longer a handshake that close() drops.
            task = asyncio.current_task()
            if task is not None:
                self._handshakes.discard(task)
                self._sessions.add(task)
                task.add_done_callback(self._sessions.discard)
            try:
                await handler(stream)
            finally:
                stream.close()
        finally:
            slot.release()

    # --- asyncio.AbstractServer -------------------------------------------------------------

    def close(self) -> None:
        """Stop listening and drop handshakes in progress; established sessions go on."""
        if not self._serving:
            return
        self._serving = False
        assert self._loop is not None
        for sock in self.sockets:
            self._loop.remove_reader(sock.fileno())
            sock.close()
        for task in self._handshakes:
            task.cancel()
        self.gate.close()
        callback, self.on_close = self.on_close, None
        if callback is not None:
            callback()

    async def wait_closed(self) -> None:
        if self._handshakes:
            await asyncio.gather(*self._handshakes, return_exceptions=True)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        pass  # serving from start()

    async def serve_forever(self) -> None:
        while self._serving:
            await asyncio.sleep(3600)


class LimitedTCPSite(web.BaseSite):
    """An aiohttp site (like web.TCPSite with TLS) that listens through a LimitedTLSServer."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext,
        gate: ConnectionGate,
        handshake_timeout: float,
        backlog: int = 128,
        reuse_port: bool = False,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host, self._port, self._reuse_port = host, port, reuse_port
        self._gate, self._handshake_timeout = gate, handshake_timeout

    @property
    def name(self) -> str:
        return f"https://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        factory = self._runner.server
        assert factory is not None and self._ssl_context is not None
        server = LimitedTLSServer(
            factory,  # aiohttp's web.Server: each call makes a RequestHandler
            self._ssl_context,
            self._gate,
            handshake_timeout=self._handshake_timeout,
            backlog=self._backlog,
        )
        await server.start(self._host, self._port, reuse_port=self._reuse_port)
        self._server = server
