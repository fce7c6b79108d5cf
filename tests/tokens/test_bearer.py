"""Bearer tokens on the API (issue 19 item 3): a trusted issuer's token authenticates its
mapped owner, who may read its credentials and tasks and submit and cancel tasks, and
nothing that a certificate is for; a bad token is a 401 (unmapped, scope: 403) with the rule,
audited; a client certificate, when shown, is who the peer is."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from proxyd.config import Config
from proxyd.devpki import DevPKI, user_dn
from proxyd.principal import local_operator
from proxyd.repository import StoreOptions
from proxyd.tokens.profile import TrustedIssuer
from proxyd.tokens.settings import TokensConfig
from tests.support.grid import csr_for, delegate, load_identity, spare_key
from tests.support.https import ApiClient, Reply
from tests.support.server import RunningServer, running_server
from tests.tokens.support import LocalIssuer, local_issuer
from voms_ext import Credential, write_credential_file

ALICE, BOB = user_dn("alice"), user_dn("bob")
RESTRICTED = "token.bearer_restricted"


@dataclasses.dataclass
class Setup:
    server: RunningServer
    issuer: LocalIssuer
    bob_pem: Path

    def token(self, sub: str = "alice", **over: Any) -> str:
        now = int(dt.datetime.now(dt.UTC).timestamp())
        claims: dict[str, Any] = {
            "iss": self.issuer.url,
            "sub": sub,
            "aud": "proxyd",
            "wlcg.ver": "1.0",
            "exp": now + 3600,
            "iat": now,
            "scope": "proxyd.retrieve",
            "jti": str(uuid.uuid4()),
            **over,
        }
        return self.issuer.mint(**{k: v for k, v in claims.items() if v is not None})

    def call(
        self, method: str, path: str, body: Any = None, *, token: str | None, cert: bool = False
    ) -> Reply:
        client = ApiClient(
            self.server.api_port, self.server.pki.cert_dir, self.bob_pem if cert else None
        )
        headers = {"Authorization": f"Bearer {token}"} if token is not None else None
        return client.request(method, path, body, headers=headers)

    def events(self, **filters: Any) -> list[Any]:
        return [e.event for e in self.server.repo.audit.query(limit=10_000, **filters)]


@pytest.fixture(scope="module")
def setup(dev_pki: DevPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    out = tmp_path_factory.mktemp("bearer")
    out.chmod(0o700)
    with local_issuer(dev_pki, out / "issuer-keys") as issuer:
        trusted = TrustedIssuer(issuer.url, ("proxyd",), "proxyd.retrieve", "dteam")

        def configure(config: Config) -> Config:
            return dataclasses.replace(config, tokens=TokensConfig(issuers=(trusted,)))

        with running_server(dev_pki, out / "state", configure=configure) as server:
            repo = server.repo
            delegate(repo, load_identity(dev_pki, "alice"), StoreOptions("alice"))
            repo.add_token_mapping(local_operator(), issuer.url, "alice", ALICE)
            bob = load_identity(dev_pki, "bob")
            bob_pem = out / "bob.pem"
            write_credential_file(bob_pem, Credential(bob.certificates, bob.key))
            yield Setup(server, issuer, bob_pem)


def test_a_bearer_reads_its_credentials_and_submits_and_cancels_tasks(setup: Setup) -> None:
    token = setup.token()
    reply = setup.call("GET", "/v1/credentials?username=alice", token=token)
    assert reply.status == 200, reply.body
    assert [(c["username"], c["name"]) for c in reply.json] == [("alice", "default")]
    task = {
        "vo": "dteam",
        "group": "/dteam",
        "credential": {"username": "alice"},
        "payload": {"command": "/bin/true"},
        "max_wall_s": 600,
    }
    reply = setup.call("POST", "/v1/tasks", task, token=token)
    assert reply.status == 201, reply.body
    task_id = reply.json["id"]
    reply = setup.call("GET", f"/v1/tasks/{task_id}", token=token)
    assert reply.status == 200 and reply.json["owner"] == ALICE, reply.body
    assert setup.call("DELETE", f"/v1/tasks/{task_id}", token=token).status in (200, 204)
    [submit] = setup.events(operation="task_submit", decision="allow")
    assert submit.actor_dn == ALICE and submit.owner_dn == ALICE


@pytest.mark.parametrize(
    ("method", "path", "body", "operation", "rule"),
    [
        ("POST", "/v1/credentials/default/proxy?username=alice", "csr", "retrieve", RESTRICTED),
        ("DELETE", "/v1/credentials/default?username=alice", None, "destroy", RESTRICTED),
        ("POST", "/v1/delegations", {"username": "alice-2"}, "store", RESTRICTED),
        ("GET", "/v1/audit", None, "audit_read", RESTRICTED),
        # An AC is bound to the caller's certificate: a bearer has none to bind it to.
        ("POST", "/v1/voms/ac", {"voms": ["dteam"]}, "issue_ac", "voms.not_member"),
    ],
)
def test_a_bearer_obtains_and_changes_nothing_a_certificate_is_for(
    setup: Setup, method: str, path: str, body: Any, operation: str, rule: str
) -> None:
    if body == "csr":
        body = {"csr": csr_for(spare_key(3)).public_bytes(serialization.Encoding.PEM).decode()}
    before = len(setup.events(operation=operation, rule=rule))
    reply = setup.call(method, path, body, token=setup.token())
    assert reply.status == 403, reply.body
    assert reply.json["rule"] == rule
    after = setup.events(operation=operation, rule=rule)
    assert len(after) == before + 1 and after[0].actor_dn == ALICE
    assert setup.server.repo.stored_facts("alice", "default") is not None  # not destroyed


@pytest.mark.parametrize(
    ("over", "status", "rule"),
    [
        ({"exp": int(dt.datetime.now(dt.UTC).timestamp()) - 3600}, 401, "token.expired"),
        ({"aud": "elsewhere"}, 401, "token.audience"),
        # RFC 6750 §3.1: a token without the needed scope is a 403 insufficient_scope.
        ({"scope": "storage.read:/"}, 403, "token.scope"),
        ({"sub": "mallory"}, 403, "token.unmapped"),
    ],
)
def test_a_bad_bearer_token_is_refused_with_the_rule_and_audited(
    setup: Setup, over: dict[str, Any], status: int, rule: str
) -> None:
    token = setup.token(**over)
    reply = setup.call("GET", "/v1/credentials?username=alice", token=token)
    assert (reply.status, reply.json["rule"]) == (status, rule), reply.body
    [event] = setup.events(operation="authenticate", rule=rule)[:1]
    assert event.decision == "deny" and event.actor_kind == "unauthenticated"
    assert token not in (event.detail or "") and token not in event.actor_dn
    assert (event.detail or "").startswith("https GET /v1/credentials")
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    assert f"jti={jti}" in event.actor_dn  # who the token claimed to be, unverified


def test_garbage_and_empty_bearer_tokens_are_401(setup: Setup) -> None:
    for token in ("", "garbage", "a.b.c"):
        reply = setup.call("GET", "/v1/tasks", token=token)
        assert (reply.status, reply.json["rule"]) == (401, "token.malformed"), reply.body


def test_a_certificate_wins_over_a_bearer_token_and_open_routes_ignore_tokens(
    setup: Setup,
) -> None:
    # bob's certificate with alice's token: the peer is bob, who may not read alice's.
    reply = setup.call("GET", "/v1/credentials?username=alice", token=setup.token(), cert=True)
    assert (reply.status, reply.json["rule"]) == (403, "owner.only"), reply.body
    assert setup.call("GET", "/healthz", token="garbage").status == 200
    anonymous = setup.call("GET", "/v1/credentials?username=alice", token=None)
    assert anonymous.status == 403 and anonymous.json["rule"] == "anonymous.denied"
