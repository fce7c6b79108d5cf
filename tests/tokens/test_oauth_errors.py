"""The API's refusals speak OAuth as the RFCs say, over real HTTPS with a real token issuer.

Every 401 carries a `WWW-Authenticate` challenge (RFC 9110 §15.5.2): RFC 6750's Bearer
challenge with `invalid_token` for a refused token, `insufficient_scope` and the scope on
the 403 of a token without it, the bare challenge without credentials, and a challenge
naming the client certificate when proxyd trusts no token issuer. The token exchange
answers a bad subject token `invalid_request` (RFC 8693 §2.2.2) with the status and the
challenge the same token gets as a bearer, never cached; its form is described in the
OpenAPI document, field for field what it reads.
"""

from __future__ import annotations

import ast
import datetime as dt
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import proxyd.api.exchange
from proxyd.api.problems import Challenge, www_authenticate
from proxyd.devpki import DevPKI
from tests.security.test_minted_identities import MINTED
from tests.support.grid import load_identity
from tests.support.https import ApiClient, Reply
from tests.support.server import RunningServer, running_server
from tests.tokens import test_bearer, test_exchange
from tests.tokens.test_bearer import Setup as Bearer
from tests.tokens.test_exchange import FORM
from tests.tokens.test_exchange import Setup as Exchange
from voms_ext import Credential, write_credential_file

# The servers of those modules (a token issuer trusted, alice mapped), one more each here.
bearer = test_bearer.setup
exchange = test_exchange.setup
BARE = 'Bearer realm="proxyd"'
NOW = int(dt.datetime.now(dt.UTC).timestamp())


def _challenge(reply: Reply) -> str | None:
    return reply.headers.get("www-authenticate")


def _minted(dev_pki: DevPKI, directory: Path) -> Path:
    """bob's independent proxy: it passes the TLS handshake, proxyd refuses it (a 401)."""
    minted = MINTED["rfc-independent"](load_identity(dev_pki, "bob"))
    path = directory / "minted.pem"
    write_credential_file(path, Credential(minted.certificates, minted.key))
    return path


# --- bearer tokens on the API (RFC 6750 §3) ---------------------------------------------------


@pytest.mark.parametrize(
    ("over", "rule"),
    [
        ({"exp": NOW - 3600, "iat": NOW - 7200}, "token.expired"),
        ({"aud": "elsewhere"}, "token.audience"),
        ({"iss": "https://evil.example.org"}, "token.issuer"),
    ],
)
def test_a_refused_bearer_token_gets_a_401_with_an_invalid_token_challenge(
    bearer: Bearer, over: dict[str, Any], rule: str
) -> None:
    token = bearer.token(**over)
    reply = bearer.call("GET", "/v1/credentials?username=alice", token=token)
    assert (reply.status, reply.json["rule"]) == (401, rule), reply.body
    challenge = _challenge(reply)
    assert challenge is not None
    assert challenge.startswith(f'{BARE}, error="invalid_token", error_description="')
    assert "the token is not accepted" in challenge
    assert token not in challenge and token.split(".")[2] not in challenge


def test_a_malformed_bearer_token_gets_the_invalid_token_challenge(bearer: Bearer) -> None:
    for token in ("", "garbage", "a.b.c"):
        reply = bearer.call("GET", "/v1/tasks", token=token)
        assert reply.status == 401, reply.body
        assert 'error="invalid_token"' in (_challenge(reply) or ""), reply.headers


def test_the_error_description_is_quoted_string_safe_and_bounded(bearer: Bearer) -> None:
    # The audience is repeated in the refusal: quotes, backslashes, controls, non-ASCII.
    token = bearer.token(aud='x" , error="forged\\\r\nX-Injected: 1 \u00e9' + "a" * 500)
    reply = bearer.call("GET", "/v1/credentials?username=alice", token=token)
    assert reply.status == 401, reply.body
    challenge = _challenge(reply) or ""
    description = challenge.split('error_description="', 1)[1]
    assert description.endswith('"') and '"' not in description[:-1]
    assert "\\" not in description and all(" " <= c <= "~" for c in description)
    assert len(description) <= 201 and 'error="forged' not in challenge
    assert challenge.count('error="') == 1  # the forged one stays inside the quoted string
    assert "x-injected" not in reply.headers


def test_a_token_without_the_required_scope_is_a_403_insufficient_scope(bearer: Bearer) -> None:
    token = bearer.token(scope="storage.read:/")
    reply = bearer.call("GET", "/v1/credentials?username=alice", token=token)
    assert (reply.status, reply.json["rule"]) == (403, "token.scope"), reply.body
    challenge = _challenge(reply) or ""
    assert challenge.startswith(f'{BARE}, error="insufficient_scope", error_description="')
    assert challenge.endswith(', scope="proxyd.retrieve"'), challenge


def test_an_unmapped_subject_is_a_403_without_an_invalid_token_challenge(bearer: Bearer) -> None:
    reply = bearer.call("GET", "/v1/credentials?username=alice", token=bearer.token(sub="mallory"))
    assert (reply.status, reply.json["rule"]) == (403, "token.unmapped"), reply.body
    assert _challenge(reply) is None


def test_no_credentials_get_the_bare_challenge(bearer: Bearer) -> None:
    reply = bearer.call("GET", "/v1/credentials?username=alice", token=None)
    assert (reply.status, reply.json["rule"]) == (403, "anonymous.denied"), reply.body
    assert _challenge(reply) == BARE
    assert _challenge(bearer.call("GET", "/healthz", token=None)) is None  # nothing needed


def test_a_valid_token_and_a_policy_refusal_carry_no_challenge(bearer: Bearer) -> None:
    token = bearer.token()
    assert _challenge(bearer.call("GET", "/v1/credentials?username=alice", token=token)) is None
    reply = bearer.call("GET", "/v1/audit", token=token)
    assert reply.status == 403 and _challenge(reply) is None, reply.body


def test_a_refused_client_certificate_gets_the_bearer_challenge_when_tokens_are_trusted(
    bearer: Bearer, dev_pki: DevPKI, tmp_path: Path
) -> None:
    api = ApiClient(bearer.server.api_port, dev_pki.cert_dir, _minted(dev_pki, tmp_path))
    reply = api.request("GET", "/v1/credentials?username=bob")
    assert reply.status == 401, reply.body
    assert _challenge(reply) == BARE  # no token was presented: no error attribute


@pytest.fixture(scope="module")
def tokenless(dev_pki: DevPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    out = tmp_path_factory.mktemp("tokenless")
    out.chmod(0o700)
    with running_server(dev_pki, out / "state") as server:
        yield server


def test_without_trusted_issuers_the_challenge_names_the_client_certificate(
    tokenless: RunningServer, dev_pki: DevPKI, tmp_path: Path
) -> None:
    expected = 'ClientCertificate realm="proxyd"'
    minted = ApiClient(tokenless.api_port, dev_pki.cert_dir, _minted(dev_pki, tmp_path))
    reply = minted.request("GET", "/v1/credentials?username=bob")
    assert reply.status == 401 and _challenge(reply) == expected, (reply.headers, reply.body)
    nobody = ApiClient(tokenless.api_port, dev_pki.cert_dir)
    reply = nobody.request("GET", "/v1/credentials?username=bob")
    assert reply.status == 403 and _challenge(reply) == expected, reply.body
    reply = nobody.request("GET", "/v1/tasks", headers={"Authorization": "Bearer a.b.c"})
    assert reply.status == 401 and _challenge(reply) == expected, reply.body
    assert "Bearer" not in (_challenge(reply) or "")


def test_a_challenge_escapes_what_a_quoted_string_cannot_hold() -> None:
    value = www_authenticate(Challenge("invalid_token", 'a"b\\c\x00d\x7fe\u00e9'), bearer=True)
    assert value == f'{BARE}, error="invalid_token", error_description="a\'b?c?d?e?"'
    long = www_authenticate(Challenge("invalid_token", "x" * 1000), bearer=True)
    assert long.endswith('x..."') and len(long) < 300


# --- the token exchange (RFC 8693 §2.2.2, RFC 6749 §5.2) --------------------------------------


@pytest.mark.parametrize(
    ("over", "rule"),
    [
        ({"exp": NOW - 3600, "iat": NOW - 7200}, "token.expired"),
        ({"aud": "someone-else"}, "token.audience"),
        ({"scope": "storage.read:/"}, "token.scope"),
    ],
)
def test_an_unacceptable_subject_token_is_invalid_request_with_the_bearer_status_and_challenge(
    exchange: Exchange, over: dict[str, Any], rule: str
) -> None:
    reply = exchange.exchange(exchange.token(**over))
    status, error = (403, "insufficient_scope") if rule == "token.scope" else (401, "invalid_token")
    assert reply.status == status, reply.body
    assert (reply.json["error"], reply.json["rule"], reply.json["status"]) == (
        "invalid_request",
        rule,
        status,
    )
    challenge = _challenge(reply)
    assert challenge is not None and f'error="{error}"' in challenge, challenge
    assert reply.headers["cache-control"] == "no-store"
    reply = exchange.exchange("not-a-jwt")
    assert reply.status == 401 and reply.json["error"] == "invalid_request", reply.body
    reply = exchange.exchange("")  # no subject_token at all: a malformed request
    assert reply.status == 400 and reply.json["error"] == "invalid_request", reply.body


def test_exchange_errors_are_not_cached_and_a_repeated_field_is_refused(
    exchange: Exchange,
) -> None:
    body = urllib.parse.urlencode(
        [
            ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
            ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
        ]
    ).encode()
    reply = exchange.client.request("POST", "/v1/token-exchange", raw=body, headers=FORM)
    assert reply.status == 400 and reply.json["error"] == "invalid_request", reply.body
    assert reply.headers["cache-control"] == "no-store"
    reply = exchange.exchange(exchange.token(sub="mallory"))
    assert (reply.status, reply.json["rule"]) == (403, "token.unmapped"), reply.body
    assert reply.headers["cache-control"] == "no-store" and _challenge(reply) is None
    reply = exchange.exchange(exchange.token(), grant_type="password")
    assert reply.json["error"] == "unsupported_grant_type", reply.body


# --- the OpenAPI description of the form ------------------------------------------------------


def _fields_the_handler_reads() -> set[str]:
    """Every field name passed to `_field(form, NAME)` in the exchange module."""
    tree = ast.parse(Path(proxyd.api.exchange.__file__).read_text())
    return {
        node.args[1].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "_field"
        and len(node.args) >= 2
        and isinstance(node.args[1], ast.Constant)
        and isinstance(node.args[1].value, str)
    }


def test_the_openapi_form_is_what_the_handler_reads(exchange: Exchange) -> None:
    doc = exchange.client.request("GET", "/v1/openapi.json").json
    op = doc["paths"]["/v1/token-exchange"]["post"]
    schema = op["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
    read = _fields_the_handler_reads()
    assert {"grant_type", "subject_token", "csr", "lifetime"} <= read  # the walk finds them
    assert set(schema["properties"]) == read
    assert set(schema["required"]) == {"grant_type", "subject_token", "subject_token_type", "csr"}
    assert op["requestBody"]["required"] is True
    for status in ("400", "401", "403"):
        error = op["responses"][status]["content"]["application/json"]["schema"]
        assert {"error", "error_description", "rule"} <= set(error["properties"])
