"""A loopback TLS stand-in for a VOMS server, and test ACs (tests/vomsaa)."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from proxyd.devpki import AA_HOST, DevPKI, host_dn, user_dn
from proxyd.vomsaa import wire
from proxyd.vomsaa.vomses import VomsesEntry
from voms_ext import AttributeCertificateBuilder, load_credential_file

ALICE = user_dn("alice")
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
Handler = Callable[[bytes], bytes | None]  # the request -> the answer; None: close silently
Alice = tuple[tuple[x509.Certificate, ...], rsa.RSAPrivateKey]  # her chain and key
HANG = b"hang"  # a handler's answer: say nothing and keep the connection open


@dataclass
class StandIn:
    """A loopback TLS server: one handler per connection, in order; it records what came."""

    pki: DevPKI
    handlers: list[Handler]
    requests: list[bytes] = field(default_factory=list)
    peers: list[x509.Certificate] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert, key = self.pki.host()
        ctx.load_cert_chain(str(cert), str(key))
        ctx.load_verify_locations(capath=str(self.pki.cert_dir))
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.verify_flags |= ssl.VERIFY_ALLOW_PROXY_CERTS
        self.ctx = ctx
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def entry(self, dn: str | None = None) -> VomsesEntry:
        return VomsesEntry("dteam", "127.0.0.1", self.port, dn or host_dn("localhost"), "dteam")

    def _serve(self) -> None:
        for handler in self.handlers:
            try:
                raw, _ = self.listener.accept()
            except OSError:  # closed by the test before every handler was used
                return
            try:
                with self.ctx.wrap_socket(raw, server_side=True) as sock:
                    sock.settimeout(10)
                    der = sock.getpeercert(binary_form=True)
                    assert der is not None
                    self.peers.append(x509.load_der_x509_certificate(der))
                    data = b""
                    while not (data[:1] == b"0" and wire.request_complete(data[1:])):
                        chunk = sock.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    self.requests.append(data[1:])
                    answer = handler(data[1:])
                    if answer == HANG:
                        self.stop.wait(10)
                    elif answer is not None:
                        sock.sendall(answer)
            except (OSError, AssertionError):
                pass
        self.listener.close()

    def close(self) -> None:
        self.stop.set()
        self.listener.close()


def make_ac(
    pki: DevPKI,
    holder: x509.Certificate,
    fqans: tuple[str, ...] = ("/dteam",),
    *,
    hours: int = 2,
    signer: str = "aa",
) -> bytes:
    """An AC as dteam's AA (the dev PKI's, trusted by its vomsdir) or as someone else."""
    cert_path, key_path = pki.host(signer)
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    key = serialization.load_pem_private_key(Path(key_path).read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return (
        AttributeCertificateBuilder()
        .vo("dteam")
        .uri(f"{AA_HOST}:15000")
        .fqans(fqans)
        .holder(holder)
        .validity(NOW - dt.timedelta(minutes=5), NOW + dt.timedelta(hours=hours))
        .sign(cert, key)
        .der
    )


def rest_ok(der: bytes) -> Handler:
    return lambda request: wire.encode_rest_answer(der)


def legacy_ok(der: bytes) -> Handler:
    return lambda request: wire.encode_legacy_answer(der)


def silent(request: bytes) -> bytes | None:
    return None


def context_for(pki: DevPKI) -> ssl.SSLContext:
    """A client context as a user (the client module's own context is tested via obtain)."""
    from proxyd.vomsaa.client import client_context

    cert, key = pki.user("alice")
    cred = load_credential_file(cert)
    pkey = serialization.load_pem_private_key(Path(key).read_bytes(), None)
    return client_context(pki.cert_dir, cred.certificates, pkey)
