"""The MyProxy edge with our own client over real TLS: limited peers, renewal, hostile sessions."""

from __future__ import annotations

import dataclasses
import os
import random
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from proxyd.config import load_config
from proxyd.devpki import DevPKI, user_dn
from proxyd.myproxy import protocol as p
from proxyd.myproxy.client import ClientCredential, MyProxyClient, MyProxyClientError
from tests.support.grid import Identity, load_identity, make_proxy, spare_key
from tests.support.server import RunningServer, running_server
from voms_ext import Credential, validate_chain, write_credential_file

ALICE = user_dn("alice")
PASS = "secret123"


@pytest.fixture(scope="module")
def server(dev_pki: DevPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    # Hostile sessions send thousands of garbage passphrases from 127.0.0.1, the same
    # address as the well-behaved client: lift the brute-force lock-out for this server.
    policy = dataclasses.replace(load_config(dev_pki.config).policy, passphrase_attempts=1_000_000)
    with running_server(dev_pki, tmp_path_factory.mktemp("mp") / "state", policy=policy) as srv:
        yield srv


def credential_file(tmp_path: Path, ident: Identity, name: str) -> ClientCredential:
    path = tmp_path / name
    write_credential_file(path, Credential(ident.certificates, ident.key))
    return ClientCredential(str(path))


def client(
    server: RunningServer, cred: ClientCredential | None = None, **kw: object
) -> MyProxyClient:
    return MyProxyClient(
        "localhost", server.myproxy_port, cert_dir=server.pki.cert_dir, credential=cred, **kw
    )  # type: ignore[arg-type]


def store_alice(
    server: RunningServer, tmp_path: Path, username: str, passphrase: str = PASS, **kw: object
) -> Identity:
    alice = load_identity(server.pki, "alice")
    local = make_proxy(alice)
    c = client(server, credential_file(tmp_path, local, f"{username}-local.pem"))
    c.put(username, passphrase, (local.cert, local.key, local.chain), **kw)  # type: ignore[arg-type]
    return local


@pytest.mark.parametrize(
    "tls", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"]
)
def test_put_info_get_with_our_client(
    server: RunningServer, tmp_path: Path, tls: ssl.TLSVersion
) -> None:
    store_alice(server, tmp_path, f"alice-{tls.name}")
    alice_cred = credential_file(tmp_path, make_proxy(load_identity(server.pki, "alice")), "a.pem")
    info = client(server, alice_cred, tls_version=tls).info(f"alice-{tls.name}")
    assert info.get("CRED_OWNER") == ALICE
    chain = client(server, tls_version=tls).get(f"alice-{tls.name}", PASS, key=spare_key(3))
    assert validate_chain(chain, server.repo.trust).identity == ALICE


def test_I1_limited_peer_cannot_store_or_renew(server: RunningServer, tmp_path: Path) -> None:
    store_alice(server, tmp_path, "alice-i1", "", renewer="*")
    limited = make_proxy(load_identity(server.pki, "alice"), limited=True)
    cred = credential_file(tmp_path, limited, "limited.pem")
    with pytest.raises(MyProxyClientError) as err:
        client(server, cred).put("alice-i1b", PASS, (limited.cert, limited.key, limited.chain))
    assert any("limited.peer" in e for e in err.value.errors)
    # renewal with the limited proxy as proof, presented by someone allowed to renew
    # (not a trusted retriever, so the server challenges)
    bob = make_proxy(load_identity(server.pki, "bob"))
    with pytest.raises(MyProxyClientError) as err:
        client(server, credential_file(tmp_path, bob, "bob.pem")).get(
            "alice-i1", renewal=(limited.key, list(limited.certificates)), key=spare_key(3)
        )
    assert any("limited.peer" in e for e in err.value.errors)
    denials = server.repo.audit.query(owner=ALICE, decision="deny", rule="limited.peer")
    assert len(denials) >= 2


def test_host_renews_with_owner_proof_and_gets_limited(
    server: RunningServer, tmp_path: Path
) -> None:
    local = store_alice(server, tmp_path, "alice-renew", "", renewer="*")
    # a host that may renew but is not a trusted retriever: the server challenges it
    wms = load_identity(server.pki, "host")
    chain = client(server, credential_file(tmp_path, wms, "wms2.pem")).get(
        "alice-renew", renewal=(local.key, list(local.certificates)), key=spare_key(3)
    )
    result = validate_chain(chain, server.repo.trust)
    assert result.identity == ALICE and result.is_limited
    [event] = server.repo.audit.query(owner=ALICE, operation="renew", decision="allow")
    assert event.event.rule == "renew.authorized"
    wrong = make_proxy(load_identity(server.pki, "bob"))
    with pytest.raises(MyProxyClientError) as err:
        client(server, credential_file(tmp_path, wms, "wms3.pem")).get(
            "alice-renew", renewal=(wrong.key, list(wrong.certificates)), key=spare_key(3)
        )
    assert any("renew.proof_mismatch" in e for e in err.value.errors)


def test_pem_csr_is_refused_with_a_clear_error(server: RunningServer, tmp_path: Path) -> None:
    store_alice(server, tmp_path, "alice-pem")
    req = p.encode_request(
        p.Request(p.Command.GET, username="alice-pem", passphrase=PASS, lifetime=3600)
    )
    from tests.support.grid import csr_for

    pem_csr = csr_for(spare_key(3)).public_bytes(serialization.Encoding.PEM)
    out = client(server).raw([b"0", req, pem_csr])
    assert b"ERROR=expected a DER SEQUENCE (raw DER, not PEM)" in out


HOSTILE = [
    b"",
    b"0",
    b"0VERSION=MYPROXYv1\nCOMMAND=0\n\0",
    b"0VERSION=MYPROXYv2\nCOMMAND=99\nUSERNAME=a\nPASSPHRASE=b\nLIFETIME=1\n\0",
    b"0VERSION=MYPROXYv2\r\nCOMMAND=0\r\n\0",
    b"0VERSION=MYPROXYv2\nCOMMAND=0\nUSERNAME=" + b"u" * 5000 + b"\nPASSPHRASE=x\nLIFETIME=1\n\0",
    b"0" + b"A" * 20000,
    b"0\xff\xfe\xfd\0",
    b"0VERSION=MYPROXYv2\nCOMMAND=0\nUSERNAME=nobody\nPASSPHRASE=whatever1\nLIFETIME=-5\n\0",
]


def test_hostile_sessions_leave_the_server_answering(server: RunningServer, tmp_path: Path) -> None:
    """1,000 malformed sessions: none is accepted, the server keeps serving the next valid request."""
    store_alice(server, tmp_path, "alice-fuzz")
    rng = random.Random(20261125)
    c = client(server)
    good_request = p.encode_request(
        p.Request(p.Command.GET, username="alice-fuzz", passphrase=PASS, lifetime=3600)
    )
    for i in range(1000):
        if i < len(HOSTILE):
            chunks = [HOSTILE[i]]
        elif i % 4 == 0:  # truncated valid request (NUL-terminated, or not in a few cases)
            cut = good_request[: rng.randrange(1, len(good_request) - 1)]
            chunks = [b"0", cut if i % 100 == 4 else cut + b"\0"]
        elif i % 4 == 1:  # valid request, then a complete but bogus DER "CSR"
            body = os.urandom(rng.randrange(130, 400))
            chunks = [b"0", good_request, b"\x30\x82" + len(body).to_bytes(2, "big") + body]
        elif i % 4 == 2:  # random bytes, NUL-terminated
            chunks = [os.urandom(rng.randrange(1, 300)) + b"\0"]
        else:  # a mutated request
            data = bytearray(good_request)
            for _ in range(rng.randrange(1, 5)):
                data[rng.randrange(len(data) - 1)] = rng.randrange(256)
            chunks = [b"0", bytes(data)]
        out = c.raw(chunks)
        assert b"RESPONSE=0\n" not in out.split(b"\0")[-1] or b"CERTIFICATE" not in out
        assert not (out[:1] and out[0] in range(1, 10) and len(out) > 500), (
            "a certificate chain was sent"
        )
        if i % 250 == 0:
            chain = c.get("alice-fuzz", PASS, key=spare_key(3))
            assert validate_chain(chain, server.repo.trust).identity == ALICE
    chain = c.get("alice-fuzz", PASS, key=spare_key(3))
    assert validate_chain(chain, server.repo.trust).identity == ALICE


def test_unknown_ca_client_is_refused(server: RunningServer, tmp_path: Path) -> None:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = spare_key(5)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rogue")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "rogue.pem"
    write_credential_file(path, Credential((cert,), key))
    with pytest.raises((ssl.SSLError, ConnectionError, MyProxyClientError)):
        client(server, ClientCredential(str(path))).info("alice")
    assert client(server).raw([b"0"], read=False) == b""  # and the server still accepts connections


def test_trusted_retrieval_reads_the_credential_once(
    server: RunningServer, dev_pki: DevPKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trusted retriever's GET reads the credential once, whether or not it may also renew
    it (`authorized_renewers` "*", as in the module's server): myproxy-server's challenge
    rule needs the credential's own lists (policy.challenge), and open_retrieval chooses
    from the same read that authorizes the retrieval. (Session 7's renewal-challenge fix
    read it twice for a peer that may renew, with a thread hop more per GET.)"""
    from proxyd.repository import Repository

    reads: list[str] = []
    lookup, find = Repository._lookup, Repository._find

    def counted_lookup(self: Repository, username: str, name: str) -> object:
        reads.append(username)
        return lookup(self, username, name)

    def counted_find(self: Repository, username: str, name: str) -> object:
        reads.append(username)
        return find(self, username, name)

    wms = credential_file(tmp_path, load_identity(dev_pki, "wms"), "wms-trusted.pem")
    policy = dataclasses.replace(
        load_config(dev_pki.config).policy, authorized_renewers=("*/CN=bob",)
    )
    with running_server(dev_pki, tmp_path / "no-renewing", policy=policy) as no_renewing:
        for each in (no_renewing, server):
            store_alice(
                each, tmp_path, "alice-trusted", "", trusted_retrievers="*/CN=wms.localhost"
            )
            monkeypatch.setattr(Repository, "_lookup", counted_lookup)
            monkeypatch.setattr(Repository, "_find", counted_find)
            for _ in range(2):  # the second time from the peer and key memos
                chain = client(each, wms).get("alice-trusted", "", key=spare_key(3))
                result = validate_chain(chain, each.repo.trust)
                assert result.identity == ALICE and result.is_limited
            monkeypatch.undo()
            assert reads == ["alice-trusted", "alice-trusted"], (each is server, reads)
            reads.clear()


def test_an_anonymous_get_without_passphrase_is_refused_by_policy_and_audited(
    server: RunningServer, tmp_path: Path
) -> None:
    """The edge used to refuse this itself, with no audit event; now policy decides."""
    store_alice(server, tmp_path, "alice-anon", "")
    before = len(server.repo.audit.query(rule="anonymous.denied", limit=1000))
    with pytest.raises(MyProxyClientError) as err:
        client(server).get("alice-anon", "", key=spare_key(3))
    assert any("authentication failed" in e for e in err.value.errors), err.value.errors
    denials = server.repo.audit.query(rule="anonymous.denied", limit=1000)
    assert len(denials) == before + 1
    assert (denials[0].event.operation, denials[0].event.owner_dn) == ("retrieve", ALICE)
