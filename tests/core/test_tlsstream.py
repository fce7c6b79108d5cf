"""proxyd.tlsstream: the MyProxy edge's TLS connection, OpenSSL on the non-blocking socket."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable

import pytest

from proxyd.config import load_config
from proxyd.devpki import DevPKI
from proxyd.myproxy.server import myproxy_context
from proxyd.tlsstream import TlsStream

APPLICATION_DATA = 23


def _client_context(dev_pki: DevPKI) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(capath=str(dev_pki.cert_dir))
    ctx.check_hostname = False
    return ctx


async def _serve_one(
    dev_pki: DevPKI,
    serve: Callable[[TlsStream], Awaitable[None]],
    talk: Callable[[socket.socket], object],
    *,
    timeout: float = 5.0,
) -> object:
    """Accept one connection on loopback, hand it to `serve` as a TlsStream, while `talk`
    runs the client side (blocking, on a thread) on a plain TCP socket."""
    server_ctx = myproxy_context(load_config(dev_pki.config))
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    loop = asyncio.get_running_loop()

    async def accept() -> None:
        conn, _ = await loop.sock_accept(listener)
        stream = await TlsStream.accept(conn, server_ctx, timeout)
        try:
            await serve(stream)
        finally:
            stream.close()

    def client() -> object:
        with socket.create_connection(listener.getsockname()) as sock:
            return talk(sock)

    try:
        served = asyncio.ensure_future(accept())
        talked = await asyncio.to_thread(client)
        await served
        return talked
    finally:
        listener.close()


def _records(raw: bytes) -> list[tuple[int, int]]:
    """(content type, length) of each TLS record in `raw`."""
    out, i = [], 0
    while i + 5 <= len(raw):
        kind, _version, length = struct.unpack("!BHH", raw[i : i + 5])
        out.append((kind, length))
        i += 5 + length
    return out


def test_each_write_is_one_record_and_one_drain_sends_them(dev_pki: DevPKI) -> None:
    """The Globus clients read one MyProxy message per TLS record: two writes before a drain
    must stay two records, not one."""

    async def serve(stream: TlsStream) -> None:
        assert await stream.read(100) == b"go"
        stream.write(b"first message")
        stream.write(b"second message")
        await stream.drain()

    def talk(sock: socket.socket) -> object:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = _client_context(dev_pki).wrap_bio(incoming, outgoing)
        tls.maximum_version = ssl.TLSVersion.TLSv1_2  # no post-handshake records to tell apart
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        tls.write(b"go")
        sock.sendall(outgoing.read())
        raw = b""
        while len(_records(raw)) < 2 or sum(5 + n for _, n in _records(raw)) > len(raw):
            chunk = sock.recv(65536)
            assert chunk, "the server closed before both records"
            raw += chunk
        incoming.write(raw)
        return _records(raw), tls.read(100), tls.read(100)

    records, first, second = asyncio.run(_serve_one(dev_pki, serve, talk))  # type: ignore[misc]
    assert [kind for kind, _ in records[:2]] == [APPLICATION_DATA, APPLICATION_DATA]
    assert (first, second) == (b"first message", b"second message")


def test_the_peer_closing_reads_as_end_of_stream(dev_pki: DevPKI) -> None:
    async def serve(stream: TlsStream) -> None:
        assert await stream.read(100) == b"hello"
        assert await stream.read(100) == b""

    def talk(sock: socket.socket) -> object:
        with _client_context(dev_pki).wrap_socket(sock) as tls:
            tls.sendall(b"hello")
        return None

    asyncio.run(_serve_one(dev_pki, serve, talk))


def test_a_silent_peer_is_dropped_at_the_handshake_timeout(dev_pki: DevPKI) -> None:
    """A peer that connects and sends nothing holds a TLS state only until the timeout; the
    socket is closed (the client sees the end of the stream)."""

    async def serve(stream: TlsStream) -> None:
        raise AssertionError("no handshake, no stream")

    def talk(sock: socket.socket) -> object:
        sock.settimeout(10)
        return sock.recv(100)

    async def run() -> object:
        return await _serve_one(dev_pki, serve, talk, timeout=0.2)

    with pytest.raises(TimeoutError):
        asyncio.run(run())


def test_a_handshake_with_garbage_fails_and_closes(dev_pki: DevPKI) -> None:
    async def serve(stream: TlsStream) -> None:
        raise AssertionError("no handshake, no stream")

    def talk(sock: socket.socket) -> object:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        sock.settimeout(10)
        try:
            while sock.recv(100):  # an alert, perhaps, then the end
                pass
        except ConnectionResetError:  # closed with our bytes unread
            pass
        return None

    with pytest.raises(ssl.SSLError):
        asyncio.run(_serve_one(dev_pki, serve, talk))


def test_writing_after_close_is_refused(dev_pki: DevPKI) -> None:
    async def serve(stream: TlsStream) -> None:
        stream.close()
        with pytest.raises(ConnectionResetError):
            stream.write(b"late")
        assert stream.get_extra_info("peername")[0] == "127.0.0.1"

    def talk(sock: socket.socket) -> object:
        with _client_context(dev_pki).wrap_socket(sock) as tls:
            return tls.recv(100)

    asyncio.run(_serve_one(dev_pki, serve, talk))
