"""proxyd as a VOMS server: the `[aa]` TLS edge that voms-proxy-init talks to.

One request per connection (PROTOCOLS.md §4): after the TLS handshake the
client sends a `0` byte record, then a REST `GET /generate-ac?...` head or a
legacy `<voms><command>...</voms>` request, and reads until the server
closes. The edge reads that within bounds of size and time, decodes it with
the sans-I/O codec (`wire`), turns the TLS peer into a Principal, and asks
the core for the ACs (`Repository.issue_acs`): membership and roles are
decided by policy and every decision is audited there, as for ACs issued
over HTTPS. Refusals go back in the protocol's own error shapes, with the
proxyd rule name in the message, and every request gets one access-log line.

Serves the VOs of the [[voms]] tables that carry an AA key; a request names
its VO through its FQANs. `fqans=all` (`--list`) and a REST request without
FQANs name none: they go to the only local VO, or to the only one the caller
is a member of.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import socket
import ssl
import time
from dataclasses import dataclass

from cryptography import x509

from voms_ext import AttributeCertificate, FqanError, VomsExtError, parse_fqan

from .. import names
from ..authfail import AuthFailure, Redactor, for_repository, presented_identity, reason_class
from ..connlimit import ConnectionGate, LimitedTLSServer
from ..issuer import AttributeAuthority, IssueError, VomsRequest
from ..metrics import REQUEST_SECONDS
from ..principal import Principal, anonymous
from ..repository import BadRequest, Repository, RepositoryError
from ..tlsctx import server_context
from ..tlspeer import verified_chain_der
from . import wire

log = logging.getLogger("proxyd.vomsaa")
access_log = logging.getLogger("proxyd.access")

HANDSHAKE_TIMEOUT = 15.0  # from accept to the end of the TLS handshake
REQUEST_TIMEOUT = 10.0  # from the handshake to a whole request: a real one takes milliseconds
SESSION_TIMEOUT = 30.0  # the whole connection, the answer included
CLOSE_TIMEOUT = 2.0
DEFAULT_LIFETIME = dt.timedelta(hours=12)  # voms-proxy-init always sends one; VOMS's default

# The refusals the core makes for AC requests, in the protocol's terms. `wire` names the
# outcomes as its client sees them (voms.upstream_*); the same codes go out here.
_UNKNOWN_USER = wire.RULE_UNKNOWN_USER
_SUSPENDED = wire.RULE_SUSPENDED_USER
_ROLE_NOT_HELD = wire.RULE_ROLE_NOT_HELD
_BAD_REQUEST = wire.RULE_BAD_REQUEST
_INTERNAL = wire.RULE_ERROR
_OUTCOME_FOR_RULE = {
    "voms.not_member": _UNKNOWN_USER,
    "voms.fqan_not_held": _ROLE_NOT_HELD,
    "voms.member_suspended": _SUSPENDED,  # proxyd admin vo suspend: 1004 / SuspendedUser
    "ban.peer": _SUSPENDED,
    "ban.owner": _SUSPENDED,
    "voms.unknown_vo": _BAD_REQUEST,
}


class _Refused(Exception):
    """An answer that carries no AC: what the client is told, and the outcome's wire meaning."""

    def __init__(
        self, outcome: str, message: str, rule: str | None = None, voms_text: str = ""
    ) -> None:
        super().__init__(message)
        self.outcome = outcome  # one of the wire.RULE_* names above
        self.message = message
        self.rule = rule  # the proxyd rule, when a decision or a check named one
        self.voms_text = voms_text  # what voms-server says in this case, put first


@dataclass
class _Exchange:
    """What one connection asked and got, for the access log."""

    address: str
    protocol: str = "none"  # "rest" or "legacy" once the request's first bytes are in
    actor: str | None = None
    outcome: str = "closed"
    rule: str | None = None
    fqans: tuple[str, ...] = ()


class AaServer:
    """Accepts VOMS AA connections ([aa] listen) and answers one request per connection."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.config = repo.config
        self.auth_failures = for_repository(repo)
        self.redact = Redactor.for_config(repo.config)

    # --- the local VOs ------------------------------------------------------------------------

    def _local(self) -> dict[str, AttributeAuthority]:
        """The VOs proxyd signs ACs for itself (an upstream VO's ACs come from its own AA)."""
        return {
            vo: aa for vo, aa in self.repo.authorities.items() if isinstance(aa, AttributeAuthority)
        }

    def voms_request(self, request: wire.AcRequest, principal: Principal) -> VomsRequest:
        """The core's request for `request`: one VO, FQANs normalised and in `order`'s order."""
        local = self._local()
        if request.fqans == wire.ALL or not request.fqans:
            vo = self._implied_vo(local, principal)
            aa = local[vo]
            wanted = aa.held_fqans(principal.identity) if request.fqans == wire.ALL else ()
        else:
            wanted = tuple(_normalised(f, "fqans") for f in request.fqans)
            vos = sorted({f.split("/")[1] for f in wanted})
            if len(vos) > 1:
                raise _Refused(
                    _BAD_REQUEST,
                    f"FQANs of several VOs ({', '.join(vos)}) in one request; an AC is for one VO",
                )
            vo = vos[0]
            if vo not in local:
                served = ", ".join(sorted(local)) or "none"
                raise _Refused(
                    _BAD_REQUEST,
                    f"this attribute authority does not serve VO {names.shown(vo, 64)} "
                    f"(it serves: {served})",
                    "voms.unknown_vo",
                )
            aa = local[vo]
        if request.order:
            order = [_normalised(f, "order") for f in request.order]
            # The AC's FQANs as VOMS grants them (those asked for, then the groups held), with
            # those named in `order` first; names the AC would not carry are ignored, as VOMS does.
            granted = list(aa.default_fqans(principal.identity, wanted or (f"/{vo}",)))
            first = [f for f in dict.fromkeys(order) if f in granted]
            wanted = (*first, *(f for f in granted if f not in first))
        return VomsRequest(vo, tuple(wanted))

    def _implied_vo(self, local: dict[str, AttributeAuthority], principal: Principal) -> str:
        if not local:
            raise _Refused(_INTERNAL, "this attribute authority serves no VO")
        if len(local) == 1:
            return next(iter(local))
        # A suspended member holds nothing but is one: it is told it is suspended.
        who = principal.identity
        member_of = [
            vo for vo, aa in local.items() if aa.held_fqans(who) or aa.suspension(who) is not None
        ]
        if len(member_of) == 1:
            return member_of[0]
        example = sorted(member_of or local)[0]
        raise _Refused(
            _BAD_REQUEST,
            f"this attribute authority serves several VOs ({', '.join(sorted(local))}) and the "
            f"request names none: ask for an FQAN, e.g. --voms {example}:/{example}",
        )

    # --- one request --------------------------------------------------------------------------

    async def answer(
        self, request: wire.AcRequest, principal: Principal, exchange: _Exchange
    ) -> bytes:
        """The DER of the AC the core issues for `request`, or _Refused."""
        if request.targets:
            # The core's AC issuance takes no targets (yet). An AC without the targeting
            # extension is valid at every service, more than the client asked for: refuse
            # rather than widen it.
            raise _Refused(
                _BAD_REQUEST,
                "targeted ACs (-target) are not supported by this attribute authority; "
                "ask without a target",
            )
        lifetime = dt.timedelta(seconds=request.lifetime) if request.lifetime else DEFAULT_LIFETIME
        acs = await asyncio.to_thread(self._issue, request, principal, lifetime)
        if len(acs) != 1:  # one VO asked for, one AC back: anything else is a bug in the core
            raise _Refused(_INTERNAL, f"expected one AC, the core issued {len(acs)}")
        exchange.fqans = tuple(acs[0].fqans)
        return acs[0].der

    def _issue(
        self, request: wire.AcRequest, principal: Principal, lifetime: dt.timedelta
    ) -> list[AttributeCertificate]:
        """In a worker thread: membership may be a database read, signing is RSA."""
        voms = self.voms_request(request, principal)
        try:
            return self.repo.issue_acs(principal, [voms], lifetime)
        except RepositoryError as exc:
            outcome = _OUTCOME_FOR_RULE.get(exc.rule or "", _UNKNOWN_USER)
            if isinstance(exc, BadRequest) and exc.rule not in _OUTCOME_FOR_RULE:
                outcome = _BAD_REQUEST
            raise _Refused(outcome, exc.message, exc.rule, _voms_text(outcome, voms)) from None
        except IssueError as exc:
            raise _Refused(
                _INTERNAL, f"the AC could not be signed: {exc}", "issue.failed"
            ) from None

    def _principal(self, ssl_object: ssl.SSLObject | None, address: str) -> Principal:
        chain = verified_chain_der(ssl_object)
        if not chain:
            return anonymous(address)  # issue_acs refuses it, audited (voms.not_member)
        return self.repo.peers.principal(chain, self.repo.trust, address)

    async def _audit_failed_authentication(
        self, ssl_object: ssl.SSLObject | None, exc: VomsExtError, exchange: _Exchange
    ) -> str:
        try:
            certs = [x509.load_der_x509_certificate(d) for d in verified_chain_der(ssl_object)]
        except ValueError:
            certs = []
        failure = AuthFailure(
            rule=reason_class(exc, certs, dt.datetime.now(dt.UTC)),
            address=exchange.address,
            identity=presented_identity(certs),
            reason=str(exc),
            where=f"aa {exchange.protocol}",
        )
        await asyncio.to_thread(self.auth_failures.record, failure)
        self.auth_failures.schedule_flush(asyncio.get_running_loop())
        return failure.rule

    async def serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, exchange: _Exchange
    ) -> None:
        """Read, decide, answer; every way out of here sends exactly one answer."""
        ssl_object = writer.get_extra_info("ssl_object")
        data = bytearray()  # filled as it comes: an error answer for a partial request needs it
        try:
            await _read_request(reader, data)
            exchange.protocol = "rest" if wire.is_rest(bytes(data)) else "legacy"
            parse = (
                wire.parse_rest_request
                if exchange.protocol == "rest"
                else wire.parse_legacy_request
            )
            request = parse(bytes(data))
        except wire.WireError as exc:
            exchange.protocol = "rest" if wire.is_rest(bytes(data)) else "legacy"
            exchange.outcome = "bad_request"
            await _send(writer, exchange, _Refused(_BAD_REQUEST, f"malformed request: {exc}"))
            return
        try:
            principal = self._principal(ssl_object, exchange.address)
        except VomsExtError as exc:
            exchange.outcome = "bad_credential"
            exchange.rule = await self._audit_failed_authentication(ssl_object, exc, exchange)
            await _send(writer, exchange, _Refused(_UNKNOWN_USER, f"authentication failed: {exc}"))
            return
        exchange.actor = principal.identity
        try:
            der = await self.answer(request, principal, exchange)
        except _Refused as refused:
            exchange.outcome = "denied" if refused.outcome != _BAD_REQUEST else "bad_request"
            exchange.rule = refused.rule
            refused.message = self.redact(refused.message)
            await _send(writer, exchange, refused)
            return
        exchange.outcome = "ok"
        await _send(writer, exchange, der)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = writer.get_extra_info("peername")
        exchange = _Exchange(peer[0] if isinstance(peer, tuple) else str(peer or ""))
        started = time.perf_counter()
        try:
            async with asyncio.timeout(SESSION_TIMEOUT):
                await self.serve(reader, writer, exchange)
        except (ConnectionError, TimeoutError, ssl.SSLError) as exc:
            log.debug("aa connection from %s ended: %s", exchange.address, type(exc).__name__)
        except Exception:
            log.exception("internal error in a VOMS AA request from %s", exchange.address)
            exchange.outcome = "error"
            with contextlib.suppress(ConnectionError, RuntimeError, ssl.SSLError, OSError):
                await _send(
                    writer,
                    exchange,
                    _Refused(_INTERNAL, "internal server error; the event is logged"),
                )
        finally:
            elapsed = time.perf_counter() - started
            REQUEST_SECONDS.labels("aa", exchange.protocol).observe(elapsed)
            access_log.info(
                "aa %s %s",
                exchange.protocol,
                exchange.outcome,
                extra={
                    "fields": {
                        "interface": "aa",
                        "command": exchange.protocol,
                        "outcome": exchange.outcome,
                        "ms": round(elapsed * 1000, 2),
                        "actor": exchange.actor,
                        "peer": exchange.address,
                        "rule": exchange.rule,
                        "fqans": list(exchange.fqans),
                    }
                },
            )
            writer.close()
            with contextlib.suppress(TimeoutError, ConnectionError, ssl.SSLError, OSError):
                await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT)

    async def start(
        self, host: str, port: int, *, reuse_port: bool = False
    ) -> asyncio.AbstractServer:
        """Listen with the connection limits of [aa]: over them, closed before TLS."""
        loop = asyncio.get_running_loop()

        def stream_protocol() -> asyncio.Protocol:
            reader = asyncio.StreamReader(limit=wire.MAX_REQUEST_BYTES * 2, loop=loop)
            return asyncio.StreamReaderProtocol(reader, self.handle, loop=loop)

        limits = self.config.aa
        gate = ConnectionGate(
            "aa",
            limits.max_connections,
            min(limits.max_connections_per_peer, limits.max_connections),
        )
        # The MyProxy edge's context: client proxy chains verified against the grid trust dir.
        server = LimitedTLSServer(
            stream_protocol,
            server_context(self.config.server),
            gate,
            handshake_timeout=HANDSHAKE_TIMEOUT,
            backlog=512,
            on_close=self.auth_failures.close,
        )
        return await server.start(host, port, reuse_port=reuse_port)


def _voms_text(outcome: str, voms: VomsRequest) -> str:
    """voms-server's words for a refusal: VOMS clients (voms-proxy-init, proxyd's own upstream
    client) tell an unknown or suspended user, final, from a role not held by them."""
    if outcome == _UNKNOWN_USER:
        return f"{voms.vo}: User unknown to this VO."
    if outcome == _SUSPENDED:
        return f"{voms.vo}: User is currently suspended!"
    if outcome == _ROLE_NOT_HELD:
        return f"{voms.vo}: Unable to satisfy {','.join(voms.fqans)} request!"
    return ""


def _normalised(fqan: str, where: str) -> str:
    try:
        return str(parse_fqan(fqan))
    except FqanError as exc:  # wire checked it already; kept for the type checker's sake
        raise _Refused(_BAD_REQUEST, f"{where}: {exc}") from None


async def _read_request(reader: asyncio.StreamReader, data: bytearray) -> None:
    """Read the request into `data`, without the leading `0` record, until it is complete,
    within REQUEST_TIMEOUT and MAX_REQUEST_BYTES (a client that stops early: WireError)."""
    first = True
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            while True:
                chunk = await reader.read(4096)
                data += chunk
                if first and data:
                    first = False
                    if data.startswith(wire.GSI_NO_DELEGATION):
                        del data[:1]  # the GSI "no delegation" byte, its own TLS record
                body = bytes(data).lstrip()
                if body and wire.request_complete(body):
                    return
                if len(data) > wire.MAX_REQUEST_BYTES:
                    raise wire.WireError(
                        f"request: more than {wire.MAX_REQUEST_BYTES} bytes without its end"
                    )
                if not chunk:
                    if not data:
                        raise ConnectionResetError("the client closed without a request")
                    raise wire.WireError(
                        f"request: the client stopped after {len(data)} bytes, before its end "
                        "(a blank line after GET, or </voms>)"
                    )
    except TimeoutError:
        raise wire.WireError(
            f"request: incomplete after {REQUEST_TIMEOUT:g} s ({len(data)} bytes)"
        ) from None


async def _send(
    writer: asyncio.StreamWriter, exchange: _Exchange, result: bytes | _Refused
) -> None:
    """The answer in the request's protocol; the caller closes the connection after it."""
    if isinstance(result, _Refused):
        text = names.escape(result.message)
        if result.rule:
            text = f"{text} (proxyd policy rule: {result.rule})"
        if result.voms_text:
            text = f"{result.voms_text} {text}"
        make = wire.rest_error if exchange.protocol == "rest" else wire.legacy_error
        payload = (
            wire.encode_rest_answer(make(result.outcome, text))
            if exchange.protocol == "rest"
            else wire.encode_legacy_answer(make(result.outcome, text))
        )
    else:
        payload = (
            wire.encode_rest_answer(result)
            if exchange.protocol == "rest"
            else wire.encode_legacy_answer(result)
        )
    writer.write(payload)
    await writer.drain()
