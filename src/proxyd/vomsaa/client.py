"""A blocking client of a VO's VOMS servers: REST first, the legacy XML protocol as fallback.

It runs in a worker thread (the core is synchronous; the edges reach it via
`asyncio.to_thread`), never on the event loop. Each exchange is one TLS
connection authenticated with a client certificate chain, the single `0`
byte record, the request, and the answer read until the server closes
(PROTOCOLS.md §4). Every step is bounded by the timeout: connect, handshake
and each read share one deadline per connection.

Fallback follows voms-proxy-init (`vomsdata::ContactRaw`): when the REST
exchange yields no usable answer (Debian 12's server closes without
answering; a status other than `HTTP/1.1 200`), the request is repeated in
the legacy protocol on a second connection, unless the REST answer already
says the user is unknown, suspended or not active. A server that cannot be
reached, times out or fails internally is followed by the VO's next server;
a refusal of the user (unknown, suspended, role not held, bad request) is
the VO's answer and ends the attempt.

Unlike voms-proxy-init, which runs once, proxyd asks the same servers all
day: a server whose REST answer was unusable while its legacy answer was
good is asked in the legacy protocol first for the next `REST_RETRY_AFTER`
seconds (one connection per AC instead of two: Debian 12's voms-server
answers REST with a close every time). Should the legacy exchange fail in
that time, REST is tried again at once and the memory forgotten.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from voms_ext import AttributeCertificate, VomsExtError, parse_attribute_certificate
from voms_ext.names import dn_to_slash, slash_to_name

from . import wire
from .vomses import VomsesEntry

Protocol = Literal["rest", "legacy"]
REST_RETRY_AFTER = 600.0  # seconds a server whose REST was unusable is asked legacy-first
# Phrases after which voms-proxy-init does not retry a REST refusal in the legacy protocol.
_FINAL_REST = ("User unknown to this VO", "suspended", "not active")
# When every server failed, the most telling failure names the refusal.
_SEVERITY = {
    wire.RULE_UNREACHABLE: 0,
    wire.RULE_TIMEOUT: 1,
    wire.RULE_BAD_AC: 2,
    wire.RULE_ERROR: 3,
}


class UpstreamRefusal(Exception):
    """No AC: `rule` is a `voms.upstream_*` rule, `message` what the server(s) said."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message


@dataclass(frozen=True)
class Fetched:
    """An AC as a VOMS server sent it (parsed, not yet verified), and how it was obtained."""

    ac: AttributeCertificate
    server: VomsesEntry
    protocol: Protocol
    fallback_reason: str | None = None  # why REST was not used, when it was not
    warnings: tuple[str, ...] = ()


@contextlib.contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    """A path to `data` that never touches a disk (a memfd), for ssl's file-only loaders."""
    fd = os.memfd_create("proxyd-voms-auth", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def client_context(
    cert_dir: Path, chain: Sequence[x509.Certificate], key: PrivateKeyTypes
) -> ssl.SSLContext:
    """A TLS client context presenting `chain` (leaf first, the whole chain is sent) with `key`,
    verifying servers against the CA directory `cert_dir`.

    Host names are not checked (VOMS servers are named by their DN in vomses;
    `VomsAaClient` checks that DN instead).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(capath=str(cert_dir))
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
    pem += key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with _memory_file(pem) as path:
        ctx.load_cert_chain(path)
    return ctx


class _Failed(Exception):
    """One server could not give an answer; the next one is tried."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message


class VomsAaClient:
    """Fetches ACs from a VO's VOMS servers (blocking; call it from a worker thread)."""

    def __init__(
        self, timeout: float = 10.0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.timeout = timeout
        self._clock = clock
        # (host, port) -> (until when it is asked legacy-first, why its REST was unusable)
        self._legacy_first: dict[tuple[str, int], tuple[float, str]] = {}
        self._lock = threading.Lock()

    def fetch(
        self,
        servers: Sequence[VomsesEntry],
        context: ssl.SSLContext,
        request: wire.AcRequest,
    ) -> Fetched:
        """The AC from the first of `servers` that answers; UpstreamRefusal otherwise."""
        failures: list[_Failed] = []
        for server in servers:
            try:
                answer, protocol, why = self._ask(server, context, request)
            except _Failed as exc:
                failures.append(_Failed(exc.rule, f"{server}: {exc.message}"))
                continue
            if answer.ok:
                assert answer.ac is not None
                try:
                    ac = parse_attribute_certificate(answer.ac)
                except (VomsExtError, ValueError) as exc:
                    failures.append(_Failed(wire.RULE_BAD_AC, f"{server}: unreadable AC: {exc}"))
                    continue
                return Fetched(ac, server, protocol, why, answer.warnings)
            rule = answer.rule or wire.RULE_ERROR
            message = answer.message or f"no AC and no error (HTTP {answer.status})"
            if rule == wire.RULE_ERROR:
                failures.append(_Failed(rule, f"{server}: {message}"))
                continue
            raise UpstreamRefusal(rule, f"VOMS server {server}: {message}")
        if not failures:
            raise UpstreamRefusal(wire.RULE_UNREACHABLE, "no VOMS server is configured")
        worst = max(failures, key=lambda f: _SEVERITY.get(f.rule, 0))
        raise UpstreamRefusal(worst.rule, "; ".join(f.message for f in failures))

    def _ask(
        self, server: VomsesEntry, context: ssl.SSLContext, request: wire.AcRequest
    ) -> tuple[wire.AaAnswer, Protocol, str | None]:
        key = (server.host, server.port)
        with self._lock:
            remembered = self._legacy_first.get(key)
        if remembered is not None and self._clock() < remembered[0]:
            try:
                answer = self._legacy(server, context, request)
            except _Failed:
                with self._lock:
                    self._legacy_first.pop(key, None)  # something changed there: REST again
            else:
                return answer, "legacy", f"{remembered[1]} (remembered for this server)"
        answer, protocol, why = self._rest_then_legacy(server, context, request)
        if protocol == "legacy" and why is not None:
            with self._lock:
                self._legacy_first[key] = (self._clock() + REST_RETRY_AFTER, why)
        return answer, protocol, why

    def _legacy(
        self, server: VomsesEntry, context: ssl.SSLContext, request: wire.AcRequest
    ) -> wire.AaAnswer:
        payload = wire.encode_legacy_request(request)
        try:
            return wire.parse_legacy_answer(self._exchange(server, context, payload))
        except wire.WireError as exc:
            raise _Failed(wire.RULE_ERROR, str(exc)) from None

    def _rest_then_legacy(
        self, server: VomsesEntry, context: ssl.SSLContext, request: wire.AcRequest
    ) -> tuple[wire.AaAnswer, Protocol, str | None]:
        payload = wire.encode_rest_request(request, server.host, server.port)
        try:
            rest = wire.parse_rest_answer(self._exchange(server, context, payload))
        except wire.WireError as exc:
            why = str(exc)
        else:
            if rest.ok and rest.status == 200 and rest.http_version == "1.1":
                return rest, "rest", None
            if rest.errors and any(p in rest.message for p in _FINAL_REST):
                return rest, "rest", None
            why = f"REST answer HTTP/{rest.http_version} {rest.status}"
            if rest.message:
                why += f": {rest.message}"
        return self._legacy(server, context, request), "legacy", why

    def _exchange(self, server: VomsesEntry, context: ssl.SSLContext, payload: bytes) -> bytes:
        """One connection: handshake, server DN check, `0` record, request, answer until close."""
        deadline = time.monotonic() + self.timeout
        try:
            raw = socket.create_connection((server.host, server.port), timeout=self.timeout)
        except TimeoutError:
            raise _Failed(wire.RULE_TIMEOUT, f"no connection within {self.timeout:g} s") from None
        except OSError as exc:
            raise _Failed(wire.RULE_UNREACHABLE, f"cannot connect: {exc.strerror or exc}") from None
        with raw:
            try:
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                _remaining(raw, deadline, self.timeout)
                with context.wrap_socket(raw, server_hostname=server.host) as sock:
                    self._check_server(sock, server)
                    sock.sendall(wire.GSI_NO_DELEGATION)
                    sock.sendall(payload)
                    return _read_to_close(sock, deadline, self.timeout)
            except TimeoutError:
                raise _Failed(
                    wire.RULE_TIMEOUT, f"no complete answer within {self.timeout:g} s"
                ) from None
            except ssl.SSLError as exc:
                raise _Failed(wire.RULE_UNREACHABLE, f"TLS failed: {exc.reason or exc}") from None
            except OSError as exc:
                raise _Failed(
                    wire.RULE_UNREACHABLE, f"connection failed: {exc.strerror or exc}"
                ) from None

    @staticmethod
    def _check_server(sock: ssl.SSLSocket, server: VomsesEntry) -> None:
        der = sock.getpeercert(binary_form=True)
        if der is None:  # pragma: no cover - CERT_REQUIRED makes the handshake fail first
            raise _Failed(wire.RULE_UNREACHABLE, "the server sent no certificate")
        subject = dn_to_slash(x509.load_der_x509_certificate(der).subject)
        try:
            expected = dn_to_slash(slash_to_name(server.dn))
        except (VomsExtError, ValueError):
            expected = server.dn
        if subject != expected:
            raise _Failed(
                wire.RULE_UNREACHABLE,
                f"the server's certificate is {subject!r}, not {server.dn!r} as vomses says",
            )


def _remaining(sock: socket.socket, deadline: float, timeout: float) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"deadline of {timeout:g} s passed")
    sock.settimeout(left)


def _read_to_close(sock: ssl.SSLSocket, deadline: float, timeout: float) -> bytes:
    """Everything the server sends until it closes (its answer has no length)."""
    data = bytearray()
    while True:
        _remaining(sock, deadline, timeout)
        try:
            chunk = sock.recv(65536)
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError, ConnectionResetError):
            break  # a close without close_notify still ends the answer
        if not chunk:
            break
        data += chunk
        if len(data) > wire.MAX_ANSWER_BYTES:
            raise _Failed(
                wire.RULE_ERROR, f"answer longer than {wire.MAX_ANSWER_BYTES} bytes, not read"
            )
    return bytes(data)
