"""The aiohttp application: thin handlers over the Repository, one policy decision per route.

Middlewares, outermost first: one JSON log line per request and problem
details for every error; the principal of the TLS peer; and the check that
a successful answer on a non-open route was preceded by a policy decision.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import time

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from voms_ext import VomsExtError, classify, parse_credential_pem

from .. import __version__, names
from ..authfail import (
    AuthFailure,
    AuthFailureLog,
    Redactor,
    for_repository,
    presented_identity,
    reason_class,
)
from ..config import Config
from ..issuer import IssueError
from ..metrics import REQUEST_SECONDS, exposition
from ..policy import DecisionTally, current_tally
from ..principal import anonymous
from ..repository import (
    DEFAULT_NAME,
    NotFound,
    Repository,
    RepositoryError,
    StoreOptions,
)
from ..tlspeer import verified_chain_der
from .contact import CONTACT_ROUTES
from .exchange import EXCHANGE_ROUTES, bearer_token, token_identity
from .members import MEMBER_ROUTES
from .models import AC_LIFETIME_S, AcRequest, DelegationChain, DelegationRequest, ProxyRequest
from .openapi import BODY_MODELS, ApiRoute, Handler, build_openapi
from .problems import Problem, add_challenge, from_repository_error, problem_response
from .tasks import TASK_ROUTES
from .tokens import TOKEN_ROUTES
from .ui import UI_ROUTES, setup_ui
from .util import (
    PRINCIPAL,
    checked,
    checked_list,
    credential_json,
    iso,
    load_csr,
    pem_chain,
    principal_of,
    read_body,
    seconds,
    voms_requests,
)

log = logging.getLogger("proxyd.api")
access_log = logging.getLogger("proxyd.access")

CONFIG = web.AppKey("config", Config)
REPO = web.AppKey("repo", Repository)
OPEN = web.AppKey("open_handlers", set)
OPENAPI = web.AppKey("openapi", str)  # the document, built once per app
AUTH_FAILURES = web.AppKey("auth_failures", AuthFailureLog)
REDACT = web.AppKey("redact", Redactor)
MAX_BODY = 64 * 1024

# --- open routes ---------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    """Liveness for load balancers; says nothing about credentials."""
    return web.json_response({"status": "ok", "version": __version__})


READY_TIMEOUT = 5.0  # seconds the database may take to answer before the instance counts as down


async def readyz(request: web.Request) -> web.Response:
    """Readiness: the database answers and the audit chain can be appended to.

    Every request writes an audit event (I6), so an instance whose database
    is gone or whose chain head is missing can only refuse: a load balancer
    should send its clients elsewhere. The reason is logged, not shown.
    """
    try:
        problem = await asyncio.wait_for(
            asyncio.to_thread(request.app[REPO].readiness), READY_TIMEOUT
        )
    except TimeoutError:
        problem = f"the database did not answer within {READY_TIMEOUT:.0f} s"
    if problem is None:
        return web.json_response({"status": "ok", "version": __version__})
    log.warning("not ready: %s", problem)
    return web.json_response({"status": "unavailable", "version": __version__}, status=503)


async def metrics(request: web.Request) -> web.Response:
    # Decided (metrics_readers, admins, auditors) and audited like any read; for routine
    # scraping without an audit event per scrape, see [metrics] listen.
    await asyncio.to_thread(request.app[REPO].authorize_metrics, principal_of(request))
    body, content_type = exposition()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(text=request.app[OPENAPI])


# --- delegation ----------------------------------------------------------------------------


async def create_delegation(request: web.Request) -> web.Response:
    body = await read_body(request, DelegationRequest)
    principal = principal_of(request)
    options = StoreOptions(
        username=checked(names.USERNAME, body.username or principal.identity, "field 'username'"),
        name=checked(names.CREDENTIAL_NAME, body.name or DEFAULT_NAME, "field 'name'"),
        passphrase=body.passphrase or None,
        lifetime=seconds(body.lifetime),
        description=checked(names.DESCRIPTION, body.description, "field 'description'"),
        retrievers=checked_list(body.retrievers, "retrievers"),
        renewers=checked_list(body.renewers, "renewers"),
        trusted_retrievers=checked_list(body.trusted_retrievers, "trusted_retrievers"),
    )
    repo = request.app[REPO]
    pending = await asyncio.to_thread(repo.begin_store, principal, options)
    # Kept in the database, sealed: the second request may reach another worker or instance.
    token = await asyncio.to_thread(repo.save_pending, pending)
    csr = pending.csr.public_bytes(serialization.Encoding.PEM).decode()
    return web.json_response({"id": token, "csr": csr}, status=201)


async def finish_delegation(request: web.Request) -> web.Response:
    body = await read_body(request, DelegationChain)
    principal = principal_of(request)
    # PEM is ASCII: a lone surrogate (JSON lets one through) becomes a character PEM refuses.
    pem = body.chain.encode("utf-8", "replace")
    try:
        chain = parse_credential_pem(pem, source="field 'chain'").certificates
    except VomsExtError as exc:
        raise Problem(400, str(exc)) from None
    repo = request.app[REPO]
    pending = await asyncio.to_thread(repo.take_pending, request.match_info["id"], principal)
    if pending is None:
        raise Problem(404, "no such delegation in progress (it may have expired after 5 minutes)")
    info = await asyncio.to_thread(repo.finish_store, pending, chain)
    return web.json_response(credential_json(info), status=201)


# --- credentials and proxies -----------------------------------------------------------------


def _username(request: web.Request) -> str:
    """The `username` query parameter (default: the caller's DN), checked (proxyd.names)."""
    value = request.query.get("username") or principal_of(request).identity
    return checked(names.USERNAME, value, "query parameter 'username'")


def _name(request: web.Request) -> str:
    """The credential name of the path, checked (proxyd.names)."""
    return checked(
        names.CREDENTIAL_NAME, request.match_info["name"], "the credential name of the path"
    )


async def list_credentials(request: web.Request) -> web.Response:
    principal = principal_of(request)
    username = _username(request)
    try:
        creds = await asyncio.to_thread(request.app[REPO].info, principal, username)
    except NotFound:
        creds = []
    return web.json_response([credential_json(c) for c in creds])


async def delete_credential(request: web.Request) -> web.Response:
    principal = principal_of(request)
    await asyncio.to_thread(
        request.app[REPO].destroy, principal, _username(request), _name(request)
    )
    return web.Response(status=204)


async def issue_proxy(request: web.Request) -> web.Response:
    body = await read_body(request, ProxyRequest)
    principal = principal_of(request)
    username = _username(request)
    name = _name(request)
    csr = load_csr(body.csr)
    issued = await asyncio.to_thread(
        request.app[REPO].retrieve,
        principal,
        username,
        csr,
        name=name,
        passphrase=body.passphrase or None,
        lifetime=seconds(body.lifetime),
        voms=voms_requests(body.voms),
        want_full=bool(body.full),
    )
    proxy = issued.proxy
    return web.json_response(
        {
            "chain": pem_chain(issued.certificates),
            "serial": str(proxy.serial_number),
            "limited": classify(proxy).type.is_limited,
            "not_after": iso(proxy.not_valid_after_utc),
        }
    )


async def issue_ac(request: web.Request) -> web.Response:
    body = await read_body(request, AcRequest)
    requests = voms_requests(body.voms)
    lifetime = dt.timedelta(seconds=body.lifetime or AC_LIFETIME_S)
    acs = await asyncio.to_thread(
        request.app[REPO].issue_acs, principal_of(request), requests, lifetime
    )
    return web.json_response({"acs": [base64.b64encode(ac.der).decode() for ac in acs]})


# --- audit -------------------------------------------------------------------------------------


def _time_param(request: web.Request, name: str) -> dt.datetime | None:
    value = request.query.get(name)
    if not value:
        return None
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Problem(400, f"query parameter {name!r} must be an ISO 8601 time") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


async def audit_events(request: web.Request) -> web.Response:
    q = request.query
    try:
        limit = min(int(q.get("limit", "100")), 1000)
        after = int(q["after"]) if q.get("after") else None
        task = int(q["task"]) if q.get("task") else None
    except ValueError:
        raise Problem(400, "'limit', 'after' and 'task' must be integers") from None
    if task is not None and task < 1:
        raise Problem(400, "'task' must be a task id (a positive integer)")
    decision = q.get("decision")
    if decision not in (None, "allow", "deny"):
        raise Problem(400, "'decision' must be allow or deny")
    events = await asyncio.to_thread(
        request.app[REPO].audit_events,
        principal_of(request),
        actor=q.get("actor"),
        owner=q.get("owner"),
        serial=q.get("serial"),
        decision=decision,
        rule=q.get("rule"),
        operation=q.get("operation"),
        since=_time_param(request, "since"),
        until=_time_param(request, "until"),
        limit=limit,
        after_seq=after,
        task=task,
    )
    return web.json_response(
        {
            "events": [e.to_dict() for e in events],
            "next": events[-1].seq if len(events) == limit else None,
        },
        dumps=lambda o: json.dumps(o, default=str),
    )


async def audit_verify(request: web.Request) -> web.Response:
    report = await asyncio.to_thread(request.app[REPO].audit_verify, principal_of(request))
    return web.json_response(
        {
            "ok": report.ok,
            "checked": report.checked,
            "first_bad_seq": report.first_bad_seq,
            "reason": report.reason,
        }
    )


# --- the route table ----------------------------------------------------------------------------

_CREDENTIAL = {
    "type": "object",
    "properties": {
        "username": {"type": "string"},
        "name": {"type": "string"},
        "owner": {"type": "string"},
    },
}
_STRINGS = {"type": "array", "items": {"type": "string"}}

ROUTE_TABLE: list[ApiRoute] = [
    ApiRoute("GET", "/healthz", healthz, "Liveness", open=True),
    ApiRoute("GET", "/readyz", readyz, "Readiness: the database and the audit chain", open=True),
    ApiRoute(
        "GET",
        "/metrics",
        metrics,
        "Prometheus metrics (metrics_readers, admins and auditors; see [metrics] listen)",
        content_type="text/plain",
    ),
    ApiRoute("GET", "/v1/openapi.json", openapi, "This document", open=True),
    ApiRoute(
        "POST",
        "/v1/delegations",
        create_delegation,
        "Start a delegation: the server makes a key and returns its CSR",
        body=DelegationRequest,
        response={
            "type": "object",
            "properties": {"id": {"type": "string"}, "csr": {"type": "string"}},
        },
        status=201,
    ),
    ApiRoute(
        "PUT",
        "/v1/delegations/{id}",
        finish_delegation,
        "Finish a delegation with the signed proxy chain",
        body=DelegationChain,
        response=_CREDENTIAL,
        status=201,
    ),
    ApiRoute(
        "GET",
        "/v1/credentials",
        list_credentials,
        "The caller's credentials",
        response={"type": "array", "items": _CREDENTIAL},
        query=(("username", "default: the caller's DN"),),
    ),
    ApiRoute(
        "DELETE",
        "/v1/credentials/{name}",
        delete_credential,
        "Destroy a credential",
        status=204,
        query=(("username", "default: the caller's DN"),),
    ),
    ApiRoute(
        "POST",
        "/v1/credentials/{name}/proxy",
        issue_proxy,
        "Issue a proxy of a stored credential for a CSR",
        body=ProxyRequest,
        response={
            "type": "object",
            "properties": {
                "chain": {"type": "string"},
                "serial": {"type": "string"},
                "limited": {"type": "boolean"},
                "not_after": {"type": "string"},
            },
        },
        query=(("username", "default: the caller's DN"),),
    ),
    ApiRoute(
        "POST",
        "/v1/voms/ac",
        issue_ac,
        "VOMS attribute certificates for the caller's own proxy",
        body=AcRequest,
        response={"type": "object", "properties": {"acs": _STRINGS}},
    ),
    ApiRoute(
        "GET",
        "/v1/audit",
        audit_events,
        "Query the issuance log (auditors)",
        query=tuple(
            (n, "filter")
            for n in (
                "actor",
                "owner",
                "serial",
                "decision",
                "rule",
                "operation",
                "since",
                "until",
                "limit",
                "after",
                "task",
            )
        ),
    ),
    ApiRoute("GET", "/v1/audit/verify", audit_verify, "Verify the audit hash chain (auditors)"),
    *TASK_ROUTES,
    *MEMBER_ROUTES,
    *CONTACT_ROUTES,
    *TOKEN_ROUTES,
    *EXCHANGE_ROUTES,
    *UI_ROUTES,
]

# --- middlewares -------------------------------------------------------------------------------


@web.middleware
async def log_and_problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    rule: str | None = None
    redact = request.app[REDACT]  # no server paths in what clients read
    try:
        response = await handler(request)
    except Problem as exc:
        rule = exc.rule
        response = problem_response(exc.status, redact(exc.detail), exc.rule, exc.challenge)
    except RepositoryError as exc:
        rule = exc.rule
        response = from_repository_error(exc, redact)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = problem_response(exc.status, exc.reason)
    except (IssueError, VomsExtError) as exc:
        response = problem_response(400, redact(str(exc)))
    except Exception:
        log.exception("internal error answering %s %s", request.method, request.path)
        response = problem_response(500, "internal server error; the event is logged")
    add_challenge(response, bearer=bool(request.app[CONFIG].tokens.issuers))
    elapsed = time.perf_counter() - started
    route = (
        request.match_info.route.resource.canonical
        if request.match_info.route.resource
        else "unmatched"
    )
    REQUEST_SECONDS.labels("https", route).observe(elapsed)
    principal = request.get(PRINCIPAL)
    access_log.info(
        "%s %s %s",
        request.method,
        route,
        response.status,
        extra={
            "fields": {
                "interface": "https",
                "method": request.method,
                "route": route,
                "status": response.status,
                "ms": round(elapsed * 1000, 2),
                "actor": principal.identity if principal else None,
                "peer": request.remote,
                "rule": rule,
            }
        },
    )
    return response


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    repo = request.app[REPO]
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    chain = verified_chain_der(ssl_object)
    if chain:
        # A keep-alive client shows the same chain on every request: the memo answers at
        # once, without a thread; a new or expired chain is validated in a thread.
        principal = repo.peers.cached(chain, repo.trust, request.remote)
        if principal is None:
            try:
                principal = await asyncio.to_thread(
                    repo.peers.principal, chain, repo.trust, request.remote
                )
            except VomsExtError as exc:
                rule = await _audit_failed_authentication(request, chain, exc)
                raise Problem(
                    401, f"the client certificate chain is not acceptable: {exc}", rule
                ) from None
        request[PRINCIPAL] = principal
    elif (bearer := _bearer(request)) is not None:
        # No certificate: a token of a trusted issuer authenticates its mapped owner, marked
        # `bearer` (policy lets it read and submit, not obtain: token.bearer_restricted).
        where = f"{request.method} {request.path[:200]}"
        request[PRINCIPAL] = (await token_identity(request, bearer, where)).principal
    else:
        request[PRINCIPAL] = anonymous(request.remote)
    tally = DecisionTally()
    token = current_tally.set(tally)
    try:
        response = await handler(request)
    finally:
        current_tally.reset(token)
    is_open = request.match_info.handler in request.app[OPEN]
    if response.status < 400 and not is_open and tally.count == 0:
        log.error("route %s answered without a policy decision; refused", request.path)
        raise Problem(500, "internal error: the route made no policy decision")
    return response


def _bearer(request: web.Request) -> str | None:
    """A bearer token to authenticate with: not on open routes (they need nobody), nor on
    the exchange (its token is in the form)."""
    handler = request.match_info.handler
    if handler in request.app[OPEN] or request.path == "/v1/token-exchange":
        return None
    return bearer_token(request)


async def _audit_failed_authentication(
    request: web.Request, chain: list[bytes], exc: VomsExtError
) -> str:
    """Audit (bounded, authfail) a chain that passed TLS but not proxyd's checks; its rule."""
    try:
        certs = [x509.load_der_x509_certificate(der) for der in chain]
    except ValueError:
        certs = []
    failure = AuthFailure(
        rule=reason_class(exc, certs, dt.datetime.now(dt.UTC)),
        address=request.remote or "",
        identity=presented_identity(certs),
        reason=str(exc),
        where=f"https {request.method} {request.path[:200]}",
    )
    failures = request.app[AUTH_FAILURES]
    await asyncio.to_thread(failures.record, failure)
    failures.schedule_flush(asyncio.get_running_loop())
    return failure.rule


async def _close_auth_failures(app: web.Application) -> None:
    app[AUTH_FAILURES].close()  # pending summaries written at shutdown


def make_app(config: Config, repo: Repository) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[log_and_problems, authenticate])
    app[CONFIG] = config
    app[REPO] = repo
    app[OPEN] = {r.handler for r in ROUTE_TABLE if r.open}
    app[BODY_MODELS] = {r.handler: r.body for r in ROUTE_TABLE if r.body is not None}
    app[OPENAPI] = json.dumps(build_openapi(ROUTE_TABLE))
    app[AUTH_FAILURES] = for_repository(repo)
    app[REDACT] = Redactor.for_config(config)
    app.on_cleanup.append(_close_auth_failures)
    setup_ui(app)  # the dashboard's templates: before the app starts
    for r in ROUTE_TABLE:
        app.router.add_route(r.method, r.path, r.handler)
    return app
