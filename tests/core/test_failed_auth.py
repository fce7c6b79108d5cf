"""Issue 15, findings 5 and 6 on both edges, over real TLS.

- A chain whose DNs hold control characters is refused at authentication.
- Usernames, credential names, descriptions and ACL patterns with control
  characters, commas, or 5,000 characters are refused with a precise error.
- A failed authentication (here: a VOMS AC signed by an AA that is not in
  the vomsdir) is audited once, with a rule per reason class and the peer;
  a flood of them gives a bounded number of events and one summary; the
  answer never shows the server's paths.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from proxyd.audit import AuditEvent, AuditLog, StoredEvent
from proxyd.config import load_config
from proxyd.devpki import DevPKI, user_dn
from proxyd.myproxy import protocol as p
from proxyd.myproxy.client import ClientCredential, MyProxyClient, MyProxyClientError
from proxyd.store.db import make_engine
from tests.core.test_names import newline_proxy
from tests.support.grid import Identity, load_identity, make_proxy, spare_key
from tests.support.https import ApiClient
from tests.support.rows import stored_credentials
from tests.support.server import RunningServer, running_server
from voms_ext import AttributeCertificateBuilder, Credential, ProxyBuilder, write_credential_file

ALICE, BOB = user_dn("alice"), user_dn("bob")
PASS = "secret123"
ROGUE_AA = "/C=XX/O=proxyd dev/OU=Hosts/CN=rogue-aa.localhost"


def forged_ac_proxy(pki: DevPKI) -> Identity:
    """alice's proxy with a dteam AC signed by an AA the server's vomsdir does not list."""
    alice = load_identity(pki, "alice")
    key = spare_key(5)
    now = dt.datetime.now(dt.UTC)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "XX"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "proxyd dev"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Hosts"),
            x509.NameAttribute(NameOID.COMMON_NAME, "rogue-aa.localhost"),
        ]
    )
    rogue = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    ac = (
        AttributeCertificateBuilder()
        .vo("dteam")
        .uri("voms.localhost:15000")
        .fqans(["/dteam"])
        .holder(alice.cert)
        .validity(now - dt.timedelta(minutes=5), now + dt.timedelta(hours=6))
        .sign(rogue, key, [rogue])
    )
    proxy_key = spare_key(1)
    proxy = (
        ProxyBuilder(alice.cert, alice.chain)
        .public_key(proxy_key)
        .attribute_certificates([ac])
        .lifetime(dt.timedelta(hours=6))
        .sign(alice.key)
    )
    return Identity(proxy, proxy_key, alice.certificates)


def write(tmp: Path, ident: Identity, name: str) -> Path:
    path = tmp / name
    write_credential_file(path, Credential(ident.certificates, ident.key))
    return path


@pytest.fixture(scope="module")
def creds(dev_pki: DevPKI, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("fa-creds")
    out.chmod(0o700)
    return {
        "alice": write(out, make_proxy(load_identity(dev_pki, "alice")), "alice.pem"),
        "bob": write(out, load_identity(dev_pki, "bob"), "bob.pem"),
        "newline": write(out, newline_proxy(dev_pki), "newline.pem"),
        "forged": write(out, forged_ac_proxy(dev_pki), "forged.pem"),
    }


@pytest.fixture(scope="module")
def server(dev_pki: DevPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    policy = dataclasses.replace(load_config(dev_pki.config).policy, auditors=(BOB,))
    with running_server(dev_pki, tmp_path_factory.mktemp("fa") / "state", policy=policy) as srv:
        yield srv


def myproxy(server: RunningServer, cred: Path | None) -> MyProxyClient:
    return MyProxyClient(
        "localhost",
        server.myproxy_port,
        cert_dir=server.pki.cert_dir,
        credential=ClientCredential(str(cred)) if cred else None,
    )


def https(server: RunningServer, cred: Path | None) -> ApiClient:
    return ApiClient(server.api_port, server.pki.cert_dir, cred)


def auth_events(server: RunningServer, **filters: str) -> list[StoredEvent]:
    return server.repo.audit.query(operation="authenticate", limit=1000, **filters)  # type: ignore[arg-type]


def server_paths(server: RunningServer) -> list[str]:
    s = server.config.server
    paths = [s.cert_dir, s.voms_dir, s.state_dir, s.host_cert.parent, server.config.source.parent]
    return sorted({str(f) for x in paths if x is not None for f in (x, x.resolve())})


# --- finding 5: control characters in DNs ------------------------------------------------------


def test_a_proxy_with_a_newline_in_its_cn_is_refused_on_both_edges(
    server: RunningServer, creds: dict[str, Path]
) -> None:
    with pytest.raises(MyProxyClientError) as err:
        myproxy(server, creds["newline"]).info("alice")
    text = "\n".join(err.value.errors)
    assert "authentication failed" in text and "control or format characters" in text, text
    assert "\\x0a" in text

    reply = https(server, creds["newline"]).request("GET", "/v1/credentials")
    assert reply.status == 401, reply.body
    assert "control or format characters" in reply.json["detail"]
    assert reply.json["rule"] == "auth.bad_name"

    events = auth_events(server, rule="auth.bad_name")
    assert {e.event.detail.split(":")[0] for e in events} >= {
        "myproxy INFO",
        "https GET /v1/credentials",
    }  # type: ignore[union-attr]
    for e in events:
        assert e.event.decision == "deny" and e.event.peer == "127.0.0.1"
        assert e.event.actor_dn == ALICE  # the end-entity the refused chain speaks for
        assert "\n" not in (e.event.detail or "")


# --- finding 5: names on every edge ------------------------------------------------------------

# Values the MyProxy wire can carry (a NUL ends a request, a newline ends a line).
WIRE_NAMES = {
    "rtl-override": "abc\u202etxt.exe",
    "line-separator": "a\u2028b",
    "comma": "wms,default",
    "equals": "a=b",
    "1000-chars": "n" * 1000,
    "escape": "a\x1bb",
}
JSON_NAMES = {**WIRE_NAMES, "nul": "a\x00b", "newline": "a\nb", "5000-chars": "n" * 5000}


@pytest.mark.parametrize("name", WIRE_NAMES.values(), ids=WIRE_NAMES.keys())
def test_myproxy_refuses_bad_credential_names(
    server: RunningServer, creds: dict[str, Path], name: str
) -> None:
    local = make_proxy(load_identity(server.pki, "alice"))
    before = stored_credentials(server.repo)
    with pytest.raises(MyProxyClientError) as err:
        myproxy(server, creds["alice"]).put(
            "alice-names", PASS, (local.cert, local.key, local.chain), cred_name=name
        )
    [line] = err.value.errors
    assert line.startswith("CRED_NAME ") and "credential name is 1 to 64" in line, line
    assert len(line) < 400 and line.isprintable()
    assert stored_credentials(server.repo) == before


@pytest.mark.parametrize(
    "chunk",
    [b"CRED_NAME=a\x00b\n", b"CRED_NAME=a\nb\n", b"CRED_NAME=" + b"n" * 5000 + b"\n"],
    ids=["nul", "newline", "5000-chars"],
)
def test_myproxy_names_the_wire_cannot_carry_are_refused_too(
    server: RunningServer, creds: dict[str, Path], chunk: bytes
) -> None:
    before = stored_credentials(server.repo)
    request = (
        b"VERSION=MYPROXYv2\nCOMMAND=1\nUSERNAME=alice-raw\nPASSPHRASE=secret123\nLIFETIME=3600\n"
    )
    out = myproxy(server, creds["alice"]).raw([b"0", request + chunk + b"\0"], idle=1.0)
    assert b"ERROR=" in out
    assert stored_credentials(server.repo) == before


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("USERNAME=alice\u202eevil", "USERNAME"),
        ("CRED_DESC=desc\u2066x", "CRED_DESC"),
        ("RETRIEVER=/CN=ok,/CN=a\u202eb", "RETRIEVER"),
        ("RENEWER=*\x1b", "RENEWER"),
        ("RETRIEVER_TRUSTED=*/CN=w\u2028ms", "RETRIEVER_TRUSTED"),
    ],
)
def test_myproxy_refuses_bad_usernames_descriptions_and_patterns(
    server: RunningServer, creds: dict[str, Path], line: str, field: str
) -> None:
    lines = {"USERNAME": "alice-f", "PASSPHRASE": PASS, "LIFETIME": "3600"}
    key, _, value = line.partition("=")
    lines[key] = value
    request = "VERSION=MYPROXYv2\nCOMMAND=1\n" + "".join(f"{k}={v}\n" for k, v in lines.items())
    out = myproxy(server, creds["alice"]).raw([b"0", request.encode() + b"\0"], idle=1.0)
    response = p.parse_response(out[: out.index(b"\0") + 1])
    assert response.type is p.ResponseType.ERROR
    assert response.errors[0].startswith(f"{field} "), response.errors
    assert "refused" in response.errors[0]


@pytest.mark.parametrize("name", JSON_NAMES.values(), ids=JSON_NAMES.keys())
def test_https_refuses_bad_names(server: RunningServer, creds: dict[str, Path], name: str) -> None:
    alice = https(server, creds["alice"])
    before = stored_credentials(server.repo)
    unsafe = not name.isprintable()  # control and format characters
    bodies: list[tuple[dict[str, object], str]] = [
        ({"name": name}, "field 'name'"),
        ({"retrievers": ["/CN=ok", f"/CN={name}\n"]}, "field 'retrievers'"),
    ]
    if unsafe or len(name) > 255:
        bodies.append(({"username": name}, "field 'username'"))
    if unsafe or len(name) > 1024:
        bodies.append(({"description": name}, "field 'description'"))
    for body, field in bodies:
        reply = alice.request("POST", "/v1/delegations", body)
        assert reply.status == 400, (body, reply.body)
        detail = reply.json["detail"]
        assert detail.startswith(field) and "refused" in detail, detail
        assert len(detail) < 400 and detail.isprintable()
        assert reply.json["rule"].startswith("request.bad_")
    quoted = urllib.parse.quote(name, safe="")
    if len(quoted) < 4000:  # a longer request line is aiohttp's to refuse
        for method, path in (
            ("DELETE", f"/v1/credentials/{quoted}"),
            ("POST", f"/v1/credentials/{quoted}/proxy"),
        ):
            reply = alice.request(method, path, {"csr": "x"} if method == "POST" else None)
            assert reply.status == 400, (path, reply.body)
            assert "credential name" in reply.json["detail"]
    reply = alice.request("GET", f"/v1/credentials?username={urllib.parse.quote(name + chr(0))}")
    assert reply.status == 400 and "username" in reply.json["detail"]
    assert stored_credentials(server.repo) == before


def test_dashboard_escapes_what_events_hold(server: RunningServer, creds: dict[str, Path]) -> None:
    """ui.py writes every value through html.escape: markup in a refused DN stays text."""
    server.repo.audit.append(
        AuditEvent(
            actor_dn="/CN=<script>alert(1)</script>\n",
            actor_kind="user",
            peer="127.0.0.1",
            operation="retrieve",
            rule="retrieve.not_trusted",
            decision="deny",
            detail="<img src=x onerror=alert(1)>",
        )
    )
    reply = https(server, creds["bob"]).request("GET", "/ui/log")
    assert reply.status == 200, reply.body
    page = reply.body.decode()
    assert "<script>alert(1)" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)" in page


# --- finding 6: failed authentications are audited, bounded, without server paths ----------------


def test_a_forged_voms_ac_is_audited_once_per_edge_without_server_paths(
    dev_pki: DevPKI, tmp_path: Path, creds: dict[str, Path]
) -> None:
    tmp_path.chmod(0o700)
    with running_server(dev_pki, tmp_path / "state") as server:
        with pytest.raises(MyProxyClientError) as err:
            myproxy(server, creds["forged"]).info("alice")
        mp_text = "\n".join(err.value.errors)
        reply = https(server, creds["forged"]).request("GET", "/v1/credentials")
        assert reply.status == 401, reply.body
        api_text = reply.json["detail"]

        for text in (mp_text, api_text):
            assert "rogue-aa.localhost" in text  # the client learns why ...
            for path in server_paths(server):
                assert path not in text, (path, text)  # ... but not where the server keeps things
        assert "<X509_VOMS_DIR>" in mp_text and "<X509_VOMS_DIR>" in api_text

        events = auth_events(server)
        assert len(events) == 2, [e.event for e in events]
        by_edge = {(e.event.detail or "").split(":")[0]: e.event for e in events}
        assert set(by_edge) == {"myproxy INFO", "https GET /v1/credentials"}
        for event in by_edge.values():
            assert (event.decision, event.rule, event.peer) == (
                "deny",
                "auth.bad_voms_ac",
                "127.0.0.1",
            )
            assert event.actor_dn == ALICE and event.actor_kind == "unauthenticated"
            assert "rogue-aa.localhost" in (event.detail or "")
        assert reply.json["rule"] == "auth.bad_voms_ac"


def test_a_flood_of_failed_authentications_is_bounded_and_summarised(
    dev_pki: DevPKI, tmp_path: Path, creds: dict[str, Path]
) -> None:
    """500 forged-AC attempts over both edges: 5 events, then one summary counting the rest."""
    tmp_path.chmod(0o700)
    attempts, over_https = 500, 50
    with running_server(dev_pki, tmp_path / "state") as server:
        database = server.config.server.database

        def attempt(i: int) -> None:
            if i < over_https:
                assert (
                    https(server, creds["forged"]).request("GET", "/v1/credentials").status == 401
                )
            else:
                with pytest.raises(MyProxyClientError):
                    myproxy(server, creds["forged"]).info("alice")

        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(attempt, range(attempts)))
        elapsed = time.monotonic() - started
        during = auth_events(server)
    engine = make_engine(database)
    try:
        after = AuditLog(engine).query(operation="authenticate", limit=1000)
    finally:
        engine.dispose()
    if elapsed >= 55:
        pytest.skip(f"the flood took {elapsed:.0f} s, longer than one budget interval")
    assert len(during) == 5, [e.event.detail for e in during]
    summaries = [e.event for e in after if (e.event.detail or "").startswith("summary: ")]
    assert len(after) == 6 and len(summaries) == 1, [e.event.detail for e in after]
    [summary] = summaries
    assert (summary.rule, summary.decision, summary.peer) == (
        "auth.bad_voms_ac",
        "deny",
        "127.0.0.1",
    )
    assert summary.detail is not None and summary.detail.startswith(f"summary: {attempts - 5} more")


# --- the pieces, without a network -----------------------------------------------------------


def test_failure_budget_records_a_burst_then_summarises_per_key() -> None:
    from proxyd.authfail import AuthFailure, FailureBudget

    now = [0.0]
    budget = FailureBudget(3, 10.0, max_keys=2, clock=lambda: now[0])

    def fail(rule: str = "auth.bad_voms_ac", address: str = "192.0.2.7") -> AuthFailure:
        return AuthFailure(rule, address, ALICE, "why", "myproxy INFO")

    recorded = [budget.admit(fail())[0] for _ in range(10)]
    assert recorded == [True] * 3 + [False] * 7
    # Another reason class is another key, with a budget of its own.
    assert budget.admit(fail("auth.bad_name"))[0]
    assert budget.pending
    now[0] = 10.0
    wanted, due = budget.admit(fail())
    assert wanted and [(s.rule, s.group, s.count) for s in due] == [
        ("auth.bad_voms_ac", "192.0.2.7", 7)
    ]
    # An IPv6 /64 is one peer group; beyond max_keys windows, new groups share one per class.
    budget.admit(fail(address="2001:db8::1"))
    budget.admit(fail(address="2001:db8::2"))
    assert set(budget._windows) == {
        ("auth.bad_voms_ac", "192.0.2.7"),
        ("auth.bad_voms_ac", "2001:db8::/64"),
    }
    budget.admit(fail(address="198.51.100.1"))
    assert ("auth.bad_voms_ac", "*") in budget._windows and len(budget._windows) == 3
    assert [s.count for s in budget.due(everything=True)] == []  # nothing suppressed since


def test_reason_classes(dev_pki: DevPKI) -> None:
    from proxyd.authfail import reason_class
    from proxyd.names import UnsafeName
    from voms_ext import AttributeCertificateError, ChainError, ProxyError

    now = dt.datetime.now(dt.UTC)
    certs = list(load_identity(dev_pki, "alice").certificates)
    assert reason_class(UnsafeName("x"), certs, now) == "auth.bad_name"
    assert (
        reason_class(AttributeCertificateError("AA not trusted"), certs, now) == "auth.bad_voms_ac"
    )
    assert (
        reason_class(ChainError("certificate X has been revoked by Y"), certs, now)
        == "auth.revoked"
    )
    assert (
        reason_class(ChainError("X was issued by Y, not a trusted CA"), certs, now)
        == "auth.untrusted_chain"
    )
    assert reason_class(ProxyError("proxy X: bad"), certs, now) == "auth.bad_proxy"
    assert (
        reason_class(ProxyError("holds an independent proxy"), certs, now)
        == "auth.independent_proxy"
    )
    assert reason_class(ChainError("x"), certs, now + dt.timedelta(days=10000)) == "auth.expired"


def test_redactor_replaces_every_server_path(dev_pki: DevPKI) -> None:
    from proxyd.authfail import Redactor

    config = load_config(dev_pki.config)
    redact = Redactor.for_config(config)
    assert config.server.voms_dir is not None
    text = (
        f"no {config.server.voms_dir}/dteam/voms.localhost.lsc; see {config.server.cert_dir}/x.0 "
        f"and {config.server.state_dir}; issuer /C=XX/O=proxyd dev/CN=ca"
    )
    clean = redact(text)
    assert clean == (
        "no <X509_VOMS_DIR>/dteam/voms.localhost.lsc; see <X509_CERT_DIR>/x.0 and <state_dir>; "
        "issuer /C=XX/O=proxyd dev/CN=ca"
    )
