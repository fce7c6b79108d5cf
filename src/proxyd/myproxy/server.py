"""The MyProxy v2 TLS edge: moves bytes between real myproxy-* clients and the Repository.

Each connection carries one request. The edge turns the TLS peer into a
Principal, moves bytes between the socket and the conversation's state
machine (conversation.py: framing, message order, the GSI flag byte, the
TLS 1.3 0x00 byte), and leaves every decision to the Repository (policy +
audit) and to proxyd.policy.challenge. TLS is proxyd.tlsstream (OpenSSL on
the non-blocking socket). A GET or INFO the core calls quick (SQLite, no
passphrase, no VO server to ask) runs on the loop's thread while few sessions
are in progress; all other core work (argon2, key generation, a remote
database, a VO server's answer) runs in asyncio's default thread pool so one
slow request does not stall the loop. Left here: TLS 1.3 with no session
tickets, the idle gap that ends a request sent without its NUL, TCP_NODELAY.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import logging
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from cryptography import x509

from voms_ext import AttributeCertificateError, ValidationResult, VomsExtError, validate_chain

from .. import names
from ..authfail import AuthFailure, Redactor, for_repository, presented_identity, reason_class
from ..config import Config
from ..connlimit import ConnectionGate, LimitedTLSServer
from ..issuer import IssueError, VomsRequest
from ..metrics import REQUEST_SECONDS
from ..policy import Operation
from ..principal import Principal, anonymous
from ..repository import (
    DEFAULT_NAME,
    ChallengeFirst,
    CredentialInfo,
    Repository,
    RepositoryError,
    StoreOptions,
)
from ..tlsctx import server_context
from ..tlspeer import verified_chain_der
from ..tlsstream import TlsStream
from . import protocol as p
from .conversation import (
    NEED_DATA,
    CertificateRequest,
    Chain,
    ChallengeReply,
    CredentialPem,
    Event,
    GsiFlag,
    MyProxyConversation,
    Role,
    ServerReady,
)
from .renewal import ChallengeError, make_challenges, parse_challenge_reply

log = logging.getLogger("proxyd.myproxy")
access_log = logging.getLogger("proxyd.access")
E = TypeVar("E", bound=Event)
P = ParamSpec("P")
R = TypeVar("R")

SESSION_TIMEOUT = 60.0  # a whole GET takes milliseconds; slowloris gets nothing
HANDSHAKE_TIMEOUT = 15.0  # the TLS handshake, from accept
# Sessions in progress up to which quick core calls run on the loop (measured: at 8 clients
# the loop is cheaper, at 32 group commit wins on latency; docs/performance.md, "Session 8").
INLINE_SESSIONS = 8
IDLE_REQUEST_GAP = 0.2  # a request without its NUL is complete once the client goes quiet
_TLS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


async def _run(quick: bool, call: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """A core call: on the event loop's thread when it is quick (no hand-off to a worker
    thread and back, no GIL contention), else on asyncio's worker threads so that argon2, a
    VO server's answer or a remote database never stalls the loop (Session._quick)."""
    if quick:
        return call(*args, **kwargs)
    return await asyncio.to_thread(call, *args, **kwargs)


class ClientGone(Exception):
    """The peer closed the connection mid-conversation."""


def myproxy_context(config: Config) -> ssl.SSLContext:
    return server_context(
        config.server,
        min_version=_TLS[config.myproxy.tls_min_version],
        max_version=_TLS[config.myproxy.tls_max_version],
    )


def _split_patterns(value: str | None) -> tuple[str, ...] | None:
    """A per-credential policy field: one regular expression, stored as given (myproxy-init
    -x sends `a|b`, and a DN may hold a comma), so never split."""
    if value is None or value == "":
        return None
    return (value,)


class Session:
    """One MyProxy conversation over an established TLS connection."""

    def __init__(self, server: MyProxyServer, stream: TlsStream) -> None:
        self.server = server
        self.repo = server.repo
        self.stream = stream
        self.conversation = MyProxyConversation(Role.SERVER)
        self.command: str | None = None
        self.actor: str | None = None
        self.outcome = "closed"
        self.rule: str | None = None
        peer = stream.get_extra_info("peername")
        self.address = peer[0] if isinstance(peer, tuple) else str(peer or "")

    async def run(self) -> None:
        ssl_object = self.stream.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.version() == "TLSv1.3":
            # The Globus clients wait for application data before they send theirs.
            await self._send(ServerReady())
        try:
            request = await self._receive(p.Request)
        except p.ProtocolError as exc:
            self.outcome = "bad_request"
            await self._refuse(str(exc))
            return
        self.command = request.command.name
        try:
            principal = self._principal(ssl_object)
            self.actor = principal.identity
        except VomsExtError as exc:
            self.outcome = "bad_credential"
            self.rule = await self._audit_failed_authentication(ssl_object, exc)
            await self._refuse(f"authentication failed: {exc}")
            return
        handler = _COMMANDS.get(request.command)
        if handler is None:
            await self._refuse(p.ERR_COMMAND)
            return
        try:
            p.check_names(request)
            await handler(self, request, principal)
            self.outcome = "ok"
        except RepositoryError as exc:
            self.outcome, self.rule = exc.code, exc.rule
            await self._refuse(*_error_lines(exc))
        except p.ProtocolError as exc:
            self.outcome = "bad_request"
            await self._refuse(str(exc))
        except IssueError as exc:
            self.outcome = "error"
            await self._refuse(str(exc))

    def _quick(self) -> bool:
        """Whether the loop may run this session's short core calls itself: while few sessions
        are in progress. Under more, they go to worker threads, where concurrent audit
        appends share one commit (group commit) and the loop goes on with other handshakes
        during its fsync; on the loop each append would commit alone, the loop waiting."""
        return self.server.sessions <= INLINE_SESSIONS

    # --- I/O helpers -------------------------------------------------------------------

    async def _refuse(self, *messages: str) -> None:
        """An error answer: the server's paths replaced (authfail.Redactor), and in each line
        every control or format character escaped (proxyd.names.escape)."""
        await self._send_error(
            *(
                "\n".join(names.escape(line) for line in self.server.redact(m).split("\n"))
                for m in messages
            )
        )

    async def _send_error(self, *messages: str) -> None:
        if self.conversation.finished:
            # The answer is out; a later failure is only logged (by handle()).
            return
        await self._send(p.error_response(*messages))

    async def _send(self, *events: Event) -> None:
        """Each event in a TLS record of its own (the Globus clients read one message per
        record), sent together."""
        for event in events:
            self.stream.write(self.conversation.send(event))
        await self.stream.drain()

    async def _receive(self, kind: type[E]) -> E:
        """The client's next message, which the conversation's state makes a `kind` (or, before
        the request, the GSI flag byte, which carries nothing for us)."""
        while True:
            event = self.conversation.next_event()
            if event is NEED_DATA:
                await self._fill()
            elif isinstance(event, kind):
                return event
            elif not isinstance(event, GsiFlag):
                raise p.ProtocolError(f"unexpected {type(event).__name__}")

    async def _fill(self) -> None:
        if self.conversation.incomplete_text:
            try:
                chunk = await asyncio.wait_for(self._read(), IDLE_REQUEST_GAP)
            except TimeoutError:
                self.conversation.peer_paused()
                return
        else:
            chunk = await self._read()
        self.conversation.receive_data(chunk)

    async def _read(self) -> bytes:
        chunk = await self.stream.read(65536)
        if not chunk:
            raise ClientGone("connection closed by the client")
        return chunk

    # --- identity ---------------------------------------------------------------------

    def _principal(self, ssl_object: ssl.SSLObject | None) -> Principal:
        chain = verified_chain_der(ssl_object)
        if not chain:
            return anonymous(self.address)
        # validate_chain + classify, memoised per chain while it stays valid (PeerCache).
        return self.repo.peers.principal(chain, self.repo.trust, self.address)

    async def _audit_failed_authentication(
        self, ssl_object: ssl.SSLObject | None, exc: VomsExtError
    ) -> str:
        """Audit (bounded, authfail) a chain that passed TLS but not proxyd's checks; its rule."""
        try:
            certs = [x509.load_der_x509_certificate(d) for d in verified_chain_der(ssl_object)]
        except ValueError:
            certs = []
        failure = AuthFailure(
            rule=reason_class(exc, certs, dt.datetime.now(dt.UTC)),
            address=self.address,
            identity=presented_identity(certs),
            reason=str(exc),
            where=f"myproxy {self.command}",
        )
        await asyncio.to_thread(self.server.auth_failures.record, failure)
        self.server.auth_failures.schedule_flush(asyncio.get_running_loop())
        return failure.rule

    # --- commands ---------------------------------------------------------------------

    async def get(self, request: p.Request, principal: Principal) -> None:
        voms = [VomsRequest.parse(v) for v in request.vonames]
        lifetime = dt.timedelta(seconds=request.lifetime) if request.lifetime > 0 else None
        name = request.cred_name or DEFAULT_NAME
        passphrase = request.passphrase or None
        quick = self._quick() and self.repo.retrieval_is_quick(
            passphrase=passphrase, voms=voms, any_name=not request.cred_name
        )
        try:
            # One lookup of the credential answers both: challenge first, or the retrieval.
            opened = await _run(
                quick,
                self.repo.open_retrieval,
                principal,
                request.username,
                name=name,
                passphrase=passphrase,
                lifetime=lifetime,
                voms=voms,
                any_name=not request.cred_name,
                vomses=request.vomses,
            )
            if isinstance(opened, ChallengeFirst):
                proof = await self._renewal_proof_audited(principal, request.username, name)
                retrieval = await asyncio.to_thread(
                    self.repo.authorize_retrieval,
                    principal,
                    request.username,
                    name=name,
                    lifetime=lifetime,
                    voms=voms,
                    renewal_proof=proof,
                    any_name=not request.cred_name,
                    vomses=request.vomses,
                )
            else:
                retrieval = opened
        except RepositoryError as exc:
            if exc.rule == "anonymous.denied" and passphrase is None:
                # Decided and audited by policy; said the way myproxy-server says it.
                raise p.ProtocolError("no passphrase\nauthentication failed") from None
            raise
        try:
            # Trust roots travel in the first OK, before the certificate request.
            await self._send(
                p.ok_response(self.server.trustroot_fields() if request.trusted_certs else ())
            )
            csr = (await self._receive(CertificateRequest)).csr
            issued = await _run(quick, self.repo.complete_retrieval, retrieval, csr)
        except (ClientGone, p.ProtocolError, ConnectionError) as exc:
            await asyncio.to_thread(self.repo.abandon_retrieval, retrieval, str(exc))
            raise
        # The real clients close after the chain; the last OK is for everyone else.
        await self._send(Chain(tuple(issued.certificates)), p.ok_response())

    async def _renewal_proof_audited(
        self, principal: Principal, username: str, name: str
    ) -> ValidationResult:
        """The renewal proof; a challenge left unanswered or answered wrongly is audited."""
        try:
            return await self._renewal_proof()
        except (p.ProtocolError, ClientGone) as exc:
            rule = (
                "renew.challenge_unanswered"
                if isinstance(exc, ClientGone)
                else "renew.challenge_failed"
            )
            await asyncio.to_thread(
                self.repo.record_failure, principal, Operation.RENEW, username, name, rule, str(exc)
            )
            raise

    async def _renewal_proof(self) -> ValidationResult:
        """Challenge the client to sign with the credential it wants renewed."""
        challenges = make_challenges()
        await self._send(
            p.Response(
                p.ResponseType.AUTHORIZATION,
                authorization=tuple((c.method, c.hex) for c in challenges),
            )
        )
        reply = await self._receive(ChallengeReply)
        try:
            chain = parse_challenge_reply(reply.data, challenges)
        except ChallengeError as exc:
            raise p.ProtocolError(f"{exc}\nauthentication failed") from None
        try:
            names.check_chain_names(chain)
            return validate_chain(chain, self.repo.trust)
        except VomsExtError as exc:
            raise p.ProtocolError(
                f"the renewal credential does not validate: {exc}\nauthentication failed"
            ) from None

    async def put(self, request: p.Request, principal: Principal) -> None:
        options = self._store_options(request)
        pending = await asyncio.to_thread(self.repo.begin_store, principal, options)
        await self._send(p.ok_response())
        await self._send(CertificateRequest(pending.csr))
        chain = list((await self._receive(Chain)).certificates)
        await asyncio.to_thread(self.repo.finish_store, pending, chain)
        await self._send(p.ok_response())

    async def store(self, request: p.Request, principal: Principal) -> None:
        options = self._store_options(request)
        await self._send(p.ok_response())
        pem = (await self._receive(CredentialPem)).data
        await asyncio.to_thread(self.repo.store_pem, principal, options, pem)
        await self._send(p.ok_response())

    def _store_options(self, request: p.Request) -> StoreOptions:
        if not request.username:
            raise p.ProtocolError("a USERNAME is required")
        return StoreOptions(
            username=request.username,
            name=request.cred_name or DEFAULT_NAME,
            passphrase=request.passphrase or None,
            lifetime=dt.timedelta(seconds=request.lifetime) if request.lifetime > 0 else None,
            description=request.cred_desc or None,
            retrievers=_split_patterns(request.retriever),
            renewers=_split_patterns(request.renewer),
            trusted_retrievers=_split_patterns(request.trusted_retrievers),
            key_retrievers=_split_patterns(request.keyretrievers),
        )

    async def info(self, request: p.Request, principal: Principal) -> None:
        creds = await _run(
            self._quick() and self.repo.database_in_process,
            self.repo.info,
            principal,
            request.username,
        )
        wanted = request.cred_name
        if wanted:
            creds = [c for c in creds if c.name == wanted]
            if not creds:
                raise p.ProtocolError(
                    f"No credentials exist for username {names.shown(request.username, 100)} "
                    f"named {names.shown(wanted, 100)}."
                )
        await self._send(p.ok_response(_info_fields(creds)))

    async def destroy(self, request: p.Request, principal: Principal) -> None:
        await asyncio.to_thread(
            self.repo.destroy, principal, request.username, request.cred_name or DEFAULT_NAME
        )
        await self._send(p.ok_response())

    async def change_passphrase(self, request: p.Request, principal: Principal) -> None:
        await asyncio.to_thread(
            self.repo.change_passphrase,
            principal,
            request.username,
            request.cred_name or DEFAULT_NAME,
            request.passphrase,
            request.new_phrase or "",
        )
        await self._send(p.ok_response())

    async def retrieve_key(self, request: p.Request, principal: Principal) -> None:
        """MyProxy RETRIEVE: the stored credential itself (nobody is authorized by default)."""
        pem = await asyncio.to_thread(
            self.repo.retrieve_key,
            principal,
            request.username,
            request.cred_name or DEFAULT_NAME,
            request.passphrase or None,
        )
        await self._send(p.ok_response())
        await self._send(CredentialPem(pem))
        await self._send(p.ok_response())

    async def get_trustroots(self, request: p.Request, principal: Principal) -> None:
        await self._send(p.ok_response(self.server.trustroot_fields()))


_COMMANDS: dict[p.Command, Callable[[Session, p.Request, Principal], Any]] = {
    p.Command.GET: Session.get,
    p.Command.PUT: Session.put,
    p.Command.INFO: Session.info,
    p.Command.DESTROY: Session.destroy,
    p.Command.CHANGE_CRED_PASSPHRASE: Session.change_passphrase,
    p.Command.STORE: Session.store,
    p.Command.RETRIEVE: Session.retrieve_key,
    p.Command.GET_TRUSTROOTS: Session.get_trustroots,
}


def _error_lines(exc: RepositoryError) -> tuple[str, ...]:
    """The message the real server would send, plus the proxyd policy rule when one said no."""
    if exc.rule == "auth.bad_passphrase":
        return ("Bad password", exc.message)
    if exc.rule and exc.rule != "credential.not_found":
        return (exc.message, f"(proxyd policy rule: {exc.rule})")
    return (exc.message,)


def _unix(t: dt.datetime) -> str:
    return str(int(t.timestamp()))


def _info_fields(creds: list[CredentialInfo]) -> list[tuple[str, str]]:
    """myproxy-server's order: the default (or first) credential unprefixed, others as CRED_<name>_*."""
    ordered = sorted(creds, key=lambda c: (c.name != DEFAULT_NAME, c.name))
    if not ordered:
        return []
    first, others = ordered[0], ordered[1:]
    fields = _cred_fields("CRED_", first)
    if first.name != DEFAULT_NAME:
        fields.insert(0, ("CRED_NAME", _wire_name(first.name)))
    for c in others:
        fields += _cred_fields(f"CRED_{_wire_name(c.name)}_", c)
    if others:
        fields.append(("ADDL_CREDS", ",".join(_wire_name(c.name) for c in others)))
    # Owners, descriptions and ACL patterns as stored: shown with control characters escaped.
    return [(names.escape(k), names.escape(v)) for k, v in fields]


def _wire_name(name: str) -> str:
    """A credential name as INFO may show it: as it is if it follows proxyd.names' rule; a name
    stored before that rule existed is escaped, and its ',' and '=' too (ADDL_CREDS is a
    comma-separated list; names are part of KEY=VALUE keys)."""
    try:
        return names.check(names.CREDENTIAL_NAME, name, "name")
    except names.InvalidField:
        return names.escape(name).replace(",", "\\x2c").replace("=", "\\x3d")


def _cred_fields(prefix: str, c: CredentialInfo) -> list[tuple[str, str]]:
    out = []
    if c.description:
        out.append((f"{prefix}DESC", c.description))  # escaped by _info_fields
    out += [
        (f"{prefix}START_TIME", _unix(c.not_before)),
        (f"{prefix}END_TIME", _unix(c.not_after)),
        (f"{prefix}OWNER", c.owner),
    ]
    if c.retrievers:
        out.append((f"{prefix}RETRIEVER", ",".join(c.retrievers)))
    if c.trusted_retrievers:
        out.append((f"{prefix}RETRIEVER_TRUSTED", ",".join(c.trusted_retrievers)))
    if c.renewers:
        out.append((f"{prefix}RENEWER", ",".join(c.renewers)))
    return out


class MyProxyServer:
    """Accepts MyProxy connections and runs one Session per connection."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.config = repo.config
        self._trustroots: list[tuple[str, str]] | None = None
        self.auth_failures = for_repository(repo)
        self.redact = Redactor.for_config(repo.config)
        self.sessions = 0  # in progress on this process's loop

    def trustroot_fields(self) -> list[tuple[str, str]]:
        """TRUSTED_CERTS=<files> and FILEDATA_<file>=<base64>, for `myproxy-logon -T`."""
        if self._trustroots is None:
            cert_dir = Path(self.config.server.cert_dir)
            names, fields = [], []
            for path in sorted(cert_dir.iterdir()):
                if not path.is_file() or path.name.startswith("."):
                    continue
                data = path.read_bytes()
                names.append(path.name)
                fields.append((f"FILEDATA_{path.name}", base64.b64encode(data).decode()))
            self._trustroots = [("TRUSTED_CERTS", ",".join(names)), *fields]
        return self._trustroots

    async def handle(self, stream: TlsStream) -> None:
        stream.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session = Session(self, stream)
        started = time.perf_counter()
        self.sessions += 1
        try:
            async with asyncio.timeout(SESSION_TIMEOUT):
                await session.run()
        except (ClientGone, ConnectionError, TimeoutError, ssl.SSLError) as exc:
            log.debug(
                "myproxy connection from %s ended: %s", session.address, exc.__class__.__name__
            )
        except p.ProtocolError as exc:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await session._refuse(str(exc))
        except AttributeCertificateError as exc:
            log.info("myproxy peer %s refused: %s", session.address, exc)
        except Exception:
            log.exception("internal error in a MyProxy session from %s", session.address)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await session._send_error("internal server error; the event is logged")
        finally:
            self.sessions -= 1
            elapsed = time.perf_counter() - started
            REQUEST_SECONDS.labels("myproxy", session.command or "none").observe(elapsed)
            access_log.info(
                "myproxy %s %s",
                session.command,
                session.outcome,
                extra={
                    "fields": {
                        "interface": "myproxy",
                        "command": session.command,
                        "outcome": session.outcome,
                        "ms": round(elapsed * 1000, 2),
                        "actor": session.actor,
                        "peer": session.address,
                        "rule": session.rule,
                    }
                },
            )
            stream.close()

    async def start(
        self, host: str, port: int, *, reuse_port: bool = False
    ) -> asyncio.AbstractServer:
        """Listen with the connection limits of [myproxy]: over them, closed before TLS."""
        limits = self.config.myproxy
        gate = ConnectionGate(
            "myproxy",
            limits.max_connections,
            min(limits.max_connections_per_peer, limits.max_connections),
        )
        server = LimitedTLSServer(
            None,
            myproxy_context(self.config),
            gate,
            handshake_timeout=HANDSHAKE_TIMEOUT,
            backlog=512,
            on_close=self.auth_failures.close,
            stream_handler=self.handle,
        )
        return await server.start(host, port, reuse_port=reuse_port)
