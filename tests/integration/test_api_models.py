"""Request bodies pass one gate: the msgspec models, which are also the OpenAPI document.

- Every body route's schema in /v1/openapi.json is its model's generated schema, and every
  route the app's router serves is in the document.
- Each handler decodes the model its route declares (a mismatch is a bug: 500, logged).
- A body the model refuses is a 400 problem that says what, where (the JSON path) and why,
  never repeats the value and never carries a traceback; unknown fields are ignored and a
  null means the default, as before the models.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import test_utils

from proxyd.api import app as app_module
from proxyd.api.app import ROUTE_TABLE, make_app
from proxyd.api.models import Body, SiteMask
from proxyd.api.openapi import SCHEMA_REF
from proxyd.config import TaskQueueConfig, load_config
from proxyd.devpki import DevPKI, user_dn
from proxyd.repository import StoreOptions
from tests.support.grid import delegate, load_identity
from tests.support.https import ApiClient, Reply
from tests.support.server import RunningServer, running_server
from voms_ext import Credential, write_credential_file

ALICE, BOB = user_dn("alice"), user_dn("bob")
BODY_ROUTES = [r for r in ROUTE_TABLE if r.body is not None]
_sites = itertools.count(1)


@pytest.fixture(scope="module")
def server(dev_pki: DevPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    policy = dataclasses.replace(load_config(dev_pki.config).policy, admins=(BOB,))
    state = tmp_path_factory.mktemp("api-models") / "state"
    with running_server(dev_pki, state, policy=policy, taskqueue=TaskQueueConfig()) as srv:
        # The credential a task names by default: "default" under the owner's DN.
        delegate(srv.repo, load_identity(dev_pki, "alice"), StoreOptions(ALICE))
        yield srv


@pytest.fixture(scope="module")
def creds(dev_pki: DevPKI, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("api-models-creds")
    out.chmod(0o700)
    paths = {}
    for who in ("alice", "bob", "pilot"):
        ident = load_identity(dev_pki, who)
        paths[who] = out / f"{who}.pem"
        write_credential_file(paths[who], Credential(ident.certificates, ident.key))
    return paths


def call(
    server: RunningServer,
    creds: dict[str, Path],
    who: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
) -> Reply:
    client = ApiClient(server.api_port, server.pki.cert_dir, creds[who])
    return client.request(method, path, body, raw=raw)


def refused(reply: Reply) -> str:
    """The detail of a 400 problem, after checking its shape."""
    assert reply.status == 400, reply.body
    assert reply.headers["content-type"].startswith("application/problem+json")
    problem = reply.json
    assert problem["status"] == 400 and problem["title"] == "Bad Request"
    assert b"Traceback" not in reply.body
    detail: str = problem["detail"]
    return detail


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


# --- the document is generated from the models -------------------------------------------------


def test_every_body_schema_in_the_document_is_its_models_schema(
    server: RunningServer, creds: dict[str, Path]
) -> None:
    doc = call(server, creds, "alice", "GET", "/v1/openapi.json").json
    schemas = doc["components"]["schemas"]
    assert BODY_ROUTES, "no route takes a body"
    for route in ROUTE_TABLE:
        op = doc["paths"][route.path][route.method.lower()]
        if route.body is None:
            if route.form:  # a form route (the token exchange): described field by field
                content = op["requestBody"]["content"]
                assert list(content) == ["application/x-www-form-urlencoded"], route.path
            else:
                assert "requestBody" not in op, route.path
            continue
        assert isinstance(route.body, type) and issubclass(route.body, Body), route.path
        [ref], components = msgspec.json.schema_components([route.body], ref_template=SCHEMA_REF)
        request_body = op["requestBody"]
        assert request_body["content"]["application/json"]["schema"] == ref, route.path
        assert request_body["required"] is not route.body_optional, route.path
        for name, schema in components.items():
            assert schemas[name] == schema, (route.path, name)
    assert "Problem" in schemas


def test_the_schema_states_the_bounds_the_gate_enforces(
    server: RunningServer, creds: dict[str, Path]
) -> None:
    schemas = call(server, creds, "alice", "GET", "/v1/openapi.json").json["components"]["schemas"]
    task = schemas["TaskSubmission"]
    assert task["required"] == ["payload"]
    [wall, _] = task["properties"]["max_wall_s"]["anyOf"]
    assert (wall["minimum"], wall["maximum"]) == (1, 365 * 86400)
    [tail, _] = schemas["CompleteReport"]["properties"]["log_tail"]["anyOf"]
    assert tail["maxLength"] == 16 * 1024
    assert schemas["AcRequest"]["properties"]["voms"]["minItems"] == 1
    assert schemas["TaskPayload"]["required"] == ["command"]


def test_every_route_of_the_router_is_in_the_document(
    server: RunningServer, creds: dict[str, Path]
) -> None:
    doc = call(server, creds, "alice", "GET", "/v1/openapi.json").json
    described = {(m.upper(), path) for path, ops in doc["paths"].items() for m in ops}
    app = make_app(server.config, server.repo)
    served = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource}
    assert served == described


# --- each handler decodes its route's model -------------------------------------------------------


@pytest.mark.parametrize("route", BODY_ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_every_body_route_decodes_its_model(
    server: RunningServer, creds: dict[str, Path], route: Any
) -> None:
    """A JSON array is no body of any route: each answers with its model's refusal."""
    reply = call(server, creds, "alice", route.method, concrete(route.path), raw=b"[]")
    assert refused(reply) == "the request body: expected `object`, got `array`"


def test_a_handler_decoding_another_model_than_its_route_declares_is_a_500(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = [
        dataclasses.replace(r, body=SiteMask) if r.path == "/v1/pilot/match" else r
        for r in ROUTE_TABLE
    ]
    monkeypatch.setattr(app_module, "ROUTE_TABLE", table)
    app = make_app(server.config, server.repo)

    async def post() -> tuple[int, Any]:
        async with test_utils.TestClient(test_utils.TestServer(app)) as client:
            resp = await client.post("/v1/pilot/match", json={"site": "x"})
            return resp.status, await resp.json(content_type=None)

    status, problem = asyncio.run(post())
    assert status == 500 and problem["detail"] == "internal server error; the event is logged"


# --- refusals say what, where and why ---------------------------------------------------------------

TASK = {"vo": "dteam", "group": "/dteam", "payload": {"command": "/bin/true"}}


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"vo": "dteam"}, "field `$.payload` is required"),
        ({**TASK, "payload": {}}, "field `$.payload.command` is required"),
        ({**TASK, "priority": "high"}, "field `$.priority`: expected `int | null`, got `str`"),
        ({**TASK, "priority": True}, "field `$.priority`: expected `int | null`, got `bool`"),
        ({**TASK, "max_wall_s": 0}, "field `$.max_wall_s`: expected `int` >= 1"),
        (
            {**TASK, "payload": {"command": "/bin/true", "args": ["a", 2]}},
            "field `$.payload.args[1]`: expected `str`, got `int`",
        ),
        (
            {**TASK, "requirements": {"tags": ["t"] * 257}},
            "field `$.requirements.tags`: expected `array` of length <= 256",
        ),
        ({**TASK, "credential": "alice"}, "field `$.credential`: expected `object | null`"),
    ],
)
def test_a_refused_task_names_the_path_and_the_reason(
    server: RunningServer, creds: dict[str, Path], body: dict[str, Any], detail: str
) -> None:
    reply = call(server, creds, "alice", "POST", "/v1/tasks", body)
    assert refused(reply).startswith(detail), reply.json


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (b"", "the request body is empty: a JSON object is expected"),
        (b"{not json", "the request body is not valid JSON: "),
        (b'{"name": "x"', "the request body is not valid JSON: "),
        (b'{"name": "\xff"}', "the request body is not valid JSON: "),
        (b'{"x": ' + b"[" * 5000 + b"]" * 5000 + b"}", "the request body is nested too deeply"),
        (b'"a string"', "the request body: expected `object`, got `str`"),
        (b'{"lifetime": 0}', "field `$.lifetime`: expected `int` >= 1"),
        (
            b'{"retrievers": ["/CN=a", ""]}',
            "field `$.retrievers[1]`: expected `str` of length >= 1",
        ),
    ],
)
def test_malformed_and_wrongly_typed_bodies_are_400s(
    server: RunningServer, creds: dict[str, Path], raw: bytes, detail: str
) -> None:
    reply = call(server, creds, "alice", "POST", "/v1/delegations", raw=raw)
    assert refused(reply).startswith(detail), reply.json


def test_a_refusal_never_repeats_the_value(server: RunningServer, creds: dict[str, Path]) -> None:
    reply = call(server, creds, "alice", "POST", "/v1/delegations", {"passphrase": ["hunter2"]})
    assert refused(reply) == "field `$.passphrase`: expected `str | null`, got `array`"
    reply = call(server, creds, "pilot", "POST", "/v1/tasks/1/start", {"assignment_secret": 7})
    assert "assignment_secret" in refused(reply) and "7" not in reply.json["detail"]


def test_an_oversize_body_is_a_413_problem(server: RunningServer, creds: dict[str, Path]) -> None:
    reply = call(server, creds, "alice", "POST", "/v1/tasks", raw=b" " * (64 * 1024 + 1))
    assert reply.status == 413 and reply.json["status"] == 413
    assert reply.headers["content-type"].startswith("application/problem+json")


# --- what the API accepted before the models, it still accepts -------------------------------------


def test_unknown_fields_are_ignored_and_null_means_the_default(
    server: RunningServer, creds: dict[str, Path]
) -> None:
    site = f"M-SITE-{next(_sites)}"
    body = {
        **TASK,
        "requirements": {"sites_allowed": [site], "tags": None},
        "priority": None,
        "fqans": None,
        "credential": None,
        "max_wall_s": None,
        "a_field_of_a_newer_client": {"nested": [1, 2]},
    }
    reply = call(server, creds, "alice", "POST", "/v1/tasks", body)
    assert reply.status == 201, reply.body
    task = reply.json
    assert (task["priority"], task["fqans"], task["max_wall_s"]) == (0, ["/dteam"], 12 * 3600)
    assert task["credential"] == {"username": ALICE, "name": "default"}
    offer = {"site": site, "pilot_id": None, "extra": True}
    matched = call(server, creds, "pilot", "POST", "/v1/pilot/match", offer)
    assert matched.status == 200 and matched.json["id"] == task["id"], matched.body
    secret = matched.json["assignment_secret"]
    # No body at all: start and heartbeat take the secret-less model (refused by policy).
    bare = call(server, creds, "pilot", "POST", f"/v1/tasks/{task['id']}/start")
    assert (bare.status, bare.json["rule"]) == (403, "payload.wrong_instance")
    started = call(
        server,
        creds,
        "pilot",
        "POST",
        f"/v1/tasks/{task['id']}/start",
        {"assignment_secret": secret},
    )
    assert started.status == 200, started.body
    failed = call(
        server,
        creds,
        "pilot",
        "POST",
        f"/v1/tasks/{task['id']}/fail",
        {"assignment_secret": secret, "reason": None, "exit_code": None, "wall_s": 2},
    )
    assert failed.status == 200, failed.body
    # The default reason, "failed"; the task has attempts left (max_attempts 3): queued again.
    assert failed.json["reason"] == "attempt 1 of 3 failed: failed; queued again"
    assert failed.json["state"] == "rescheduled"


def test_a_body_in_the_charset_its_content_type_names_is_read(
    server: RunningServer, creds: dict[str, Path]
) -> None:
    client = ApiClient(server.api_port, server.pki.cert_dir, creds["alice"])
    conn = http.client.HTTPSConnection("localhost", server.api_port, context=client.ctx)
    try:
        body = '{"name": "latin", "description": "caf\u00e9"}'.encode("latin-1")
        conn.request(
            "POST",
            "/v1/delegations",
            body=body,
            headers={"Content-Type": "application/json; charset=iso-8859-1"},
        )
        assert conn.getresponse().status == 201
    finally:
        conn.close()
