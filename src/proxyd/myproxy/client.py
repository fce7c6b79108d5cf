"""A small blocking MyProxy v2 client on the same state machine as the server.

Used by proxyd's tests and benchmarks, and usable against a real
myproxy-server. It follows the real clients' habits (PROTOCOLS.md §1): the
GSI flag byte in its own record, the request in the next, and under TLS 1.3
it waits for the server's single 0x00 byte after the handshake. The socket
is this module's; framing and message order are conversation.py's.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from voms_ext import ProxyBuilder

from . import protocol as p
from .conversation import (
    NEED_DATA,
    CertificateRequest,
    Chain,
    ChallengeReply,
    Event,
    GsiFlag,
    MyProxyConversation,
    Role,
    ServerReady,
    State,
)
from .renewal import Challenge, sign_challenge

E = TypeVar("E", bound=Event)

# What the real clients send where the protocol wants a passphrase but the
# server authenticates by certificate (INFO, DESTROY).
DUMMY_PASSPHRASE = "DUMMY-PASSPHRASE"  # noqa: S105


class MyProxyClientError(Exception):
    """The server said no (`errors` holds its ERROR= lines) or spoke nonsense."""

    def __init__(self, message: str, errors: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.errors = tuple(errors)


@dataclass(frozen=True)
class ClientCredential:
    """A PEM file holding the client's certificate (chain) and key, e.g. a proxy file."""

    path: str


class MyProxyClient:
    def __init__(
        self,
        host: str,
        port: int = 7512,
        *,
        cert_dir: str | os.PathLike[str],
        credential: ClientCredential | None = None,
        tls_version: ssl.TLSVersion | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(capath=str(cert_dir))
        ctx.verify_flags |= ssl.VERIFY_ALLOW_PROXY_CERTS
        if tls_version is not None:
            ctx.minimum_version = ctx.maximum_version = tls_version
        if credential is not None:
            ctx.load_cert_chain(credential.path)
        self.context = ctx

    # --- connection ---------------------------------------------------------------

    def _connect(self) -> _Conn:
        raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock = self.context.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise
        conn = _Conn(sock)
        try:
            if sock.version() == "TLSv1.3":
                conn.receive(ServerReady)
        except BaseException:
            conn.close()
            raise
        return conn

    def _start(self, request: p.Request) -> _Conn:
        conn = self._connect()
        try:
            conn.send(GsiFlag())
            conn.send(request)
        except BaseException:
            conn.close()
            raise
        return conn

    # --- commands -------------------------------------------------------------------

    def get(
        self,
        username: str,
        passphrase: str = "",
        *,
        key: rsa.RSAPrivateKey | None = None,
        lifetime: int = 43200,
        cred_name: str | None = None,
        vonames: Sequence[str] = (),
        renewal: tuple[rsa.RSAPrivateKey, Sequence[x509.Certificate]] | None = None,
        trusted_certs: bool = False,
    ) -> list[x509.Certificate]:
        """Retrieve a proxy for `key` (generated if not given); returns the chain, new proxy first."""
        key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
        request = p.Request(
            p.Command.GET,
            username=username,
            passphrase=passphrase,
            lifetime=lifetime,
            cred_name=cred_name,
            vonames=tuple(vonames),
            trusted_certs=trusted_certs,
        )
        with self._start(request) as conn:
            response = conn.response()
            if response.type is p.ResponseType.AUTHORIZATION:
                if renewal is None:
                    raise MyProxyClientError(
                        "the server asked for renewal authorization and no credential was given"
                    )
                conn.send(ChallengeReply(_answer(response, *renewal)))
                response = conn.response()
            _expect_ok(response)
            csr = (
                x509.CertificateSigningRequestBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "proxy")]))
                .sign(key, hashes.SHA256())
            )
            conn.send(CertificateRequest(csr))
            return list(conn.receive(Chain).certificates)

    def put(
        self,
        username: str,
        passphrase: str,
        issuer: tuple[x509.Certificate, rsa.RSAPrivateKey, Sequence[x509.Certificate]],
        *,
        lifetime: int = 43200,
        proxy_lifetime: int = 7 * 86400,
        cred_name: str | None = None,
        retriever: str | None = None,
        renewer: str | None = None,
        trusted_retrievers: str | None = None,
    ) -> None:
        """Delegate: sign the server's CSR with `issuer` (cert, key, chain) and send the chain."""
        cert, signing_key, chain = issuer
        request = p.Request(
            p.Command.PUT,
            username=username,
            passphrase=passphrase,
            lifetime=lifetime,
            cred_name=cred_name,
            retriever=retriever,
            renewer=renewer,
            trusted_retrievers=trusted_retrievers,
        )
        with self._start(request) as conn:
            _expect_ok(conn.response())
            csr = conn.receive(CertificateRequest).csr
            proxy = (
                ProxyBuilder(cert, chain)
                .from_csr(csr)
                .lifetime(dt.timedelta(seconds=proxy_lifetime))
                .sign(signing_key)
            )
            conn.send(Chain((proxy, cert, *chain)))
            _expect_ok(conn.response())

    def info(self, username: str, cred_name: str | None = None) -> p.Response:
        request = p.Request(
            p.Command.INFO, username=username, passphrase=DUMMY_PASSPHRASE, cred_name=cred_name
        )
        with self._start(request) as conn:
            response = conn.response()
        _expect_ok(response)
        return response

    def destroy(self, username: str, cred_name: str | None = None) -> None:
        request = p.Request(
            p.Command.DESTROY, username=username, passphrase=DUMMY_PASSPHRASE, cred_name=cred_name
        )
        with self._start(request) as conn:
            _expect_ok(conn.response())

    def change_passphrase(
        self, username: str, old: str, new: str, cred_name: str | None = None
    ) -> None:
        request = p.Request(
            p.Command.CHANGE_CRED_PASSPHRASE,
            username=username,
            passphrase=old,
            new_phrase=new,
            cred_name=cred_name,
        )
        with self._start(request) as conn:
            _expect_ok(conn.response())

    def raw(self, chunks: Sequence[bytes], *, read: bool = True, idle: float = 2.0) -> bytes:
        """Send arbitrary bytes after the handshake; return what comes back until the server
        closes or stays quiet for `idle` seconds (for hostile-input tests)."""
        conn = self._connect()
        with conn:
            for chunk in chunks:
                conn.sock.sendall(chunk)
            if not read:
                return b""
            conn.sock.settimeout(idle)
            # Past the conversation on purpose: what the server answers to anything at all.
            received = bytearray(conn.conversation.trailing_data)
            with contextlib.suppress(TimeoutError):
                while chunk := conn.recv():
                    received += chunk
            return bytes(received)


def _answer(
    response: p.Response, key: rsa.RSAPrivateKey, chain: Sequence[x509.Certificate]
) -> bytes:
    offered = dict(response.authorization)
    for method_id, name in ((4, "X509_certificate_SHA256"), (2, "X509_certificate")):
        if name in offered:
            return sign_challenge(Challenge(method_id, offered[name]), key, list(chain))
    raise MyProxyClientError(f"no supported authorization method offered: {sorted(offered)}")


def _expect_ok(response: p.Response) -> None:
    if response.type is not p.ResponseType.OK:
        raise MyProxyClientError("; ".join(response.errors) or "server refused", response.errors)


class _Conn:
    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.conversation = MyProxyConversation(Role.CLIENT)

    def __enter__(self) -> _Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def send(self, event: Event) -> None:
        self.sock.sendall(self.conversation.send(event))

    def recv(self) -> bytes:
        """What arrived, or b"" once the server has closed (real servers skip close_notify)."""
        try:
            return self.sock.recv(65536)
        except (ssl.SSLEOFError, ConnectionResetError):
            return b""

    def receive(self, kind: type[E]) -> E:
        """The server's next message, a `kind`; a refusal in its place raises
        MyProxyClientError with the server's ERROR lines."""
        while True:
            event = self.conversation.next_event()
            if event is not NEED_DATA:
                break
            chunk = self.recv()
            if not chunk:
                raise MyProxyClientError(
                    "server closed the connection after the handshake"
                    if self.conversation.state is State.START
                    else "connection closed before the message was complete"
                )
            self.conversation.receive_data(chunk)
        if isinstance(event, kind):
            return event
        if isinstance(event, p.Response):
            _expect_ok(event)
        raise MyProxyClientError(f"unexpected {type(event).__name__} from the server")

    def response(self) -> p.Response:
        return self.receive(p.Response)
