"""The HTTPS API over real TLS: delegation, issuance, ACs, audit, problem details, OpenAPI."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxyd.api.app import ROUTE_TABLE
from proxyd.config import load_config
from proxyd.devpki import DevPKI, host_dn, user_dn
from tests.support.grid import Identity, csr_for, load_identity, make_proxy, spare_key
from tests.support.https import ApiClient
from tests.support.server import RunningServer, running_server
from voms_ext import (
    Credential,
    ProxyBuilder,
    parse_attribute_certificate,
    validate_chain,
    write_credential_file,
)

ALICE, BOB, WMS = user_dn("alice"), user_dn("bob"), host_dn("wms.localhost")


@pytest.fixture(scope="module")
def server(dev_pki: DevPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    policy = dataclasses.replace(load_config(dev_pki.config).policy, auditors=(BOB,))
    with running_server(dev_pki, tmp_path_factory.mktemp("api") / "state", policy=policy) as srv:
        yield srv


@pytest.fixture(scope="module")
def files(dev_pki: DevPKI, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("creds")
    out.chmod(0o700)
    paths = {}
    for name in ("alice", "bob", "wms", "pilot"):
        ident = load_identity(dev_pki, name)
        paths[name] = out / f"{name}.pem"
        write_credential_file(paths[name], Credential(ident.certificates, ident.key))
    limited = make_proxy(load_identity(dev_pki, "alice"), limited=True)
    paths["alice-limited"] = out / "alice-limited.pem"
    write_credential_file(paths["alice-limited"], Credential(limited.certificates, limited.key))
    return paths


def api(server: RunningServer, files: dict[str, Path], who: str | None) -> ApiClient:
    return ApiClient(server.api_port, server.pki.cert_dir, files[who] if who else None)


def delegate(client: ApiClient, ident: Identity, **options: object) -> dict[str, object]:
    started = client.request("POST", "/v1/delegations", options)
    assert started.status == 201, started.body
    csr = x509.load_pem_x509_csr(started.json["csr"].encode())
    proxy = (
        ProxyBuilder(ident.cert, ident.chain)
        .from_csr(csr)
        .lifetime(dt.timedelta(days=2))
        .sign(ident.key)
    )
    chain = b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in (proxy, *ident.certificates)
    )
    done = client.request("PUT", f"/v1/delegations/{started.json['id']}", {"chain": chain.decode()})
    assert done.status == 201, done.body
    return done.json  # type: ignore[no-any-return]


def csr_pem(index: int = 3) -> str:
    return csr_for(spare_key(index)).public_bytes(serialization.Encoding.PEM).decode()


def test_open_routes(server: RunningServer, files: dict[str, Path]) -> None:
    anon = api(server, files, None)
    assert anon.request("GET", "/healthz").json["status"] == "ok"
    doc = anon.request("GET", "/v1/openapi.json").json
    assert doc["openapi"].startswith("3.")


def test_readyz_says_when_the_audit_chain_cannot_be_appended(
    dev_pki: DevPKI, tmp_path: Path
) -> None:
    """/readyz is 503 while no request could be audited (here: the chain head row is gone)."""
    import sqlite3

    tmp_path.chmod(0o700)
    with running_server(dev_pki, tmp_path / "state") as server:
        anon = ApiClient(server.api_port, dev_pki.cert_dir)
        ready = anon.request("GET", "/readyz")
        assert ready.status == 200 and ready.json["status"] == "ok"
        db = tmp_path / "state" / "proxyd.db"
        with sqlite3.connect(db) as conn:
            head = conn.execute("SELECT id, last_seq, last_hash FROM audit_head").fetchone()
            conn.execute("DELETE FROM audit_head")
        down = anon.request("GET", "/readyz")
        assert down.status == 503 and down.json["status"] == "unavailable"
        assert b"audit_head" not in down.body  # the reason is logged, not shown
        assert anon.request("GET", "/healthz").status == 200  # still alive
        with sqlite3.connect(db) as conn:
            conn.execute("INSERT INTO audit_head VALUES (?, ?, ?)", head)
        assert anon.request("GET", "/readyz").status == 200


def test_every_route_is_described_and_every_described_route_exists(
    server: RunningServer, files: dict[str, Path]
) -> None:
    doc = api(server, files, None).request("GET", "/v1/openapi.json").json
    described = {(m.upper(), path) for path, ops in doc["paths"].items() for m in ops}
    registered = {(r.method, r.path) for r in ROUTE_TABLE}
    assert described == registered
    for method, path in described:
        concrete = re.sub(r"\{[^}]+\}", "1", path)
        reply = api(server, files, "alice").request(
            method, concrete, {} if method in ("POST", "PUT") else None
        )
        # The router knows the route: never its own 404 ("Not Found") or 405 answer.
        assert reply.status != 405, (method, path)
        assert not (reply.status == 404 and reply.json.get("detail") == "Not Found"), (method, path)


def test_store_and_issue_end_to_end(
    server: RunningServer, files: dict[str, Path], dev_pki: DevPKI
) -> None:
    alice = load_identity(dev_pki, "alice")
    cred = delegate(
        api(server, files, "alice"),
        alice,
        name="wms-use",
        trusted_retrievers=["*/CN=wms.localhost"],
    )
    assert cred["owner"] == ALICE and cred["has_passphrase"] is False
    listed = api(server, files, "alice").request("GET", "/v1/credentials").json
    assert [c["name"] for c in listed] == ["wms-use"]

    path = f"/v1/credentials/wms-use/proxy?username={urllib.parse.quote(ALICE)}"
    reply = api(server, files, "wms").request(
        "POST", path, {"csr": csr_pem(), "voms": ["dteam"], "lifetime": 3600}
    )
    assert reply.status == 200, reply.body
    assert reply.json["limited"] is True
    chain = [
        x509.load_pem_x509_certificate(m.encode())
        for m in re.findall(
            r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", reply.json["chain"], re.S
        )
    ]
    result = validate_chain(chain, server.repo.trust)
    assert result.identity == ALICE and result.is_limited
    assert result.fqans == (
        "/dteam/Role=NULL/Capability=NULL",
        "/dteam/analysis/Role=NULL/Capability=NULL",
    )
    assert str(chain[0].serial_number) == reply.json["serial"]

    denied = api(server, files, "bob").request("POST", path, {"csr": csr_pem()})
    assert denied.status == 403
    assert denied.headers["content-type"].startswith("application/problem+json")
    assert denied.json["rule"] == "retrieve.not_trusted" and denied.json["title"] == "Forbidden"

    limited = api(server, files, "alice-limited").request("POST", "/v1/delegations", {"name": "x"})
    assert (limited.status, limited.json["rule"]) == (403, "limited.peer")

    gone = api(server, files, "alice").request("DELETE", "/v1/credentials/wms-use")
    assert gone.status == 204
    again = api(server, files, "wms").request("POST", path, {"csr": csr_pem()})
    assert (again.status, again.json["rule"]) == (404, "credential.not_found")


def test_voms_acs_for_proxy_init(
    server: RunningServer, files: dict[str, Path], dev_pki: DevPKI
) -> None:
    reply = api(server, files, "alice").request(
        "POST", "/v1/voms/ac", {"voms": ["dteam:/dteam/Role=production"]}
    )
    assert reply.status == 200, reply.body
    [der] = [base64.b64decode(a) for a in reply.json["acs"]]
    ac = parse_attribute_certificate(der)
    assert ac.fqans[0] == "/dteam/Role=production/Capability=NULL"
    assert ac.holder_serial == load_identity(dev_pki, "alice").cert.serial_number
    refused = api(server, files, "alice").request(
        "POST", "/v1/voms/ac", {"voms": ["dteam:/dteam/Role=admin"]}
    )
    assert (refused.status, refused.json["rule"]) == (403, "voms.fqan_not_held")
    assert "/dteam/Role=admin" in refused.json["detail"]
    pilot = api(server, files, "pilot").request("POST", "/v1/voms/ac", {"voms": ["dteam"]})
    assert (pilot.status, pilot.json["rule"]) == (403, "pilot.restricted")


def test_audit_is_for_auditors(server: RunningServer, files: dict[str, Path]) -> None:
    refused = api(server, files, "alice").request("GET", "/v1/audit")
    assert (refused.status, refused.json["rule"]) == (403, "audit_read.auditors")
    events = api(server, files, "bob").request(
        "GET", f"/v1/audit?owner={urllib.parse.quote(ALICE)}&limit=5"
    )
    assert events.status == 200 and events.json["events"]
    assert all(e["owner_dn"] == ALICE for e in events.json["events"])
    verify = api(server, files, "bob").request("GET", "/v1/audit/verify").json
    assert verify["ok"] is True and verify["checked"] > 0


@pytest.mark.parametrize(
    ("method", "path", "raw", "status"),
    [
        ("POST", "/v1/delegations", b"{not json", 400),
        ("POST", "/v1/delegations", b"[1, 2]", 400),
        ("POST", "/v1/delegations", b'{"lifetime": "forever"}', 400),
        ("POST", "/v1/credentials/default/proxy", b'{"csr": "not a csr"}', 400),
        ("POST", "/v1/credentials/default/proxy", b"{}", 400),
        ("PUT", "/v1/delegations/nope", b'{"chain": "x"}', 400),  # input checked first
        ("GET", "/v1/nothing-here", b"", 404),
        ("PATCH", "/healthz", b"", 405),
        ("POST", "/v1/voms/ac", b'{"voms": ["atlas"]}', 400),
        ("POST", "/v1/delegations", b"x" * 70000, 413),
    ],
)
def test_bad_requests_get_problem_details(
    server: RunningServer, files: dict[str, Path], method: str, path: str, raw: bytes, status: int
) -> None:
    reply = api(server, files, "alice").request(method, path, raw=raw or None)
    assert reply.status == status, reply.body
    assert reply.headers["content-type"].startswith("application/problem+json")
    assert reply.json["status"] == status and reply.json["detail"]
    assert b"Traceback" not in reply.body


def test_a_route_without_a_policy_decision_is_refused(
    dev_pki: DevPKI, tmp_path: Path, files: dict[str, Path]
) -> None:
    from aiohttp import web

    from proxyd.api import app as app_module
    from proxyd.api.openapi import ApiRoute

    async def sneaky(request: web.Request) -> web.Response:
        return web.json_response({"secret": "no policy asked"})

    table = [*app_module.ROUTE_TABLE, ApiRoute("GET", "/v1/sneaky", sneaky, "a bug")]
    original = app_module.ROUTE_TABLE
    app_module.ROUTE_TABLE = table
    try:
        with running_server(dev_pki, tmp_path / "state") as srv:
            reply = ApiClient(srv.api_port, dev_pki.cert_dir, files["alice"]).request(
                "GET", "/v1/sneaky"
            )
    finally:
        app_module.ROUTE_TABLE = original
    assert reply.status == 500
    assert reply.json["detail"] == "internal error: the route made no policy decision"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(
    [
        "csr",
        "voms",
        "lifetime",
        "passphrase",
        "full",
        "name",
        "username",
        "chain",
        "retrievers",
        "renewers",
        "trusted_retrievers",
        "description",
    ]
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    route=st.sampled_from([r for r in ROUTE_TABLE if not r.open]),
    body=st.dictionaries(field_names, json_values, max_size=6),
    query=st.dictionaries(
        st.sampled_from(["username", "limit", "after", "since", "decision", "owner"]),
        st.text(max_size=20),
        max_size=3,
    ),
    who=st.sampled_from([None, "alice", "wms", "bob", "alice-limited"]),
)
def test_no_input_makes_the_api_fail_with_5xx(
    server: RunningServer,
    files: dict[str, Path],
    route: object,
    body: dict[str, object],
    query: dict[str, str],
    who: str | None,
) -> None:
    path = re.sub(r"\{[^}]+\}", "default", route.path)  # type: ignore[attr-defined]
    if query:
        path += "?" + urllib.parse.urlencode(query)
    reply = api(server, files, who).request(
        route.method, path, body if route.method in ("POST", "PUT") else None
    )  # type: ignore[attr-defined]
    assert reply.status < 500, (route, body, query, reply.body)


def test_delegation_tokens_are_single_use_and_personal(
    server: RunningServer, files: dict[str, Path], dev_pki: DevPKI
) -> None:
    alice = load_identity(dev_pki, "alice")
    started = api(server, files, "alice").request("POST", "/v1/delegations", {"name": "once"})
    token = started.json["id"]
    csr = x509.load_pem_x509_csr(started.json["csr"].encode())
    proxy = ProxyBuilder(alice.cert).from_csr(csr).lifetime(dt.timedelta(days=1)).sign(alice.key)
    chain = b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in (proxy, alice.cert)
    ).decode()
    stolen = api(server, files, "bob").request("PUT", f"/v1/delegations/{token}", {"chain": chain})
    assert stolen.status == 404  # another client cannot finish (or even see) it
    done = api(server, files, "alice").request("PUT", f"/v1/delegations/{token}", {"chain": chain})
    assert done.status == 201, done.body
    again = api(server, files, "alice").request("PUT", f"/v1/delegations/{token}", {"chain": chain})
    assert again.status == 404
