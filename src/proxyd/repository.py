"""The credential repository: every operation the edges offer, in one object.

The MyProxy edge, the HTTPS API and the CLIs all call this. Each operation
builds a policy request, asks `policy.decide`, writes one audit event for
the decision (allow or deny; a failed audit write fails the operation, I6),
and only then touches keys. Private keys are generated here for delegation,
so they never travel; they are sealed before they reach the database.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import math
import re
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import NameOID
from sqlalchemy import Dialect, Select, bindparam, delete, func, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from voms_ext import (
    AttributeCertificate,
    TrustStore,
    ValidationResult,
    VomsExtError,
    parse_credential_pem,
    validate_chain,
)
from voms_ext.cache import BoundedCache
from voms_ext.files import private_key_to_pem
from voms_ext.keys import retired_key_problem
from voms_ext.names import dn_to_slash

from . import policy
from .audit import AuditEvent, AuditLog, StoredEvent, VerifyReport
from .config import Config
from .issuer import (
    AttributeAuthority,
    IssuedProxy,
    IssueError,
    VomsRequest,
    authorities_for,
    end_entity,
    issue_proxy,
    load_authorities,
    merge_voms_requests,
)
from .keyfiles import check_key_files
from .metrics import DECISIONS, ISSUED, LOCKOUTS
from .peers import peer_group
from .policy import AuthMethod, Bans, CredentialFacts, Decision, Operation
from .principal import (
    IdentityRefused,
    PeerCache,
    Principal,
    PrincipalKind,
    identity_of,
    is_pilot_identity,
    validity_window,
)
from .principal import classify as classify_principal
from .ratelimit import FailureLimiter
from .sealing import (
    MasterKeyring,
    SealedKey,
    SealingError,
    UnsealedKeyCache,
    WrongPassphrase,
    dummy_unseal_cost,
    rewrap,
    seal,
    unseal,
)
from .sealing import change_passphrase as rewrap_passphrase
from .store.db import make_engine, migrate, session_factory, write_transaction
from .store.models import BanRow, CredentialRow, PendingDelegationRow

if TYPE_CHECKING:
    from .taskqueue.base import TaskQueue

log = logging.getLogger("proxyd.repository")

DEFAULT_NAME = "default"
MIN_PASSPHRASE = 6  # what myproxy-server enforces
MIN_RSA_BITS = 2048
MAX_PENDING_PER_ACTOR = 100
MAX_LOCK_MESSAGE = 512
_KEY_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.*?-----END \1PRIVATE KEY-----\n?", re.DOTALL
)
_CRED = CredentialRow.__table__.c
_BAN = BanRow.__table__.c


class RepositoryError(Exception):
    """An operation that did not happen. `message` is safe to show the client."""

    code = "error"

    def __init__(self, message: str, rule: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.rule = rule


class Denied(RepositoryError):
    code = "denied"


class NotFound(RepositoryError):
    code = "not_found"


class BadPassphrase(RepositoryError):
    code = "bad_passphrase"


class BadRequest(RepositoryError):
    code = "bad_request"


@dataclass(frozen=True)
class CredentialInfo:
    """What INFO shows: never the key."""

    username: str
    name: str
    owner: str
    description: str | None
    not_before: dt.datetime
    not_after: dt.datetime
    max_lifetime: dt.timedelta
    has_passphrase: bool
    retrievers: tuple[str, ...] | None
    renewers: tuple[str, ...] | None
    trusted_retrievers: tuple[str, ...] | None
    locked: str | None = None  # the operator's lock message (proxyd admin lock)


@dataclass(frozen=True)
class StoreOptions:
    username: str
    name: str = DEFAULT_NAME
    passphrase: str | None = None
    lifetime: dt.timedelta | None = None  # maximum lifetime of proxies issued from it
    description: str | None = None
    retrievers: tuple[str, ...] | None = None
    renewers: tuple[str, ...] | None = None
    trusted_retrievers: tuple[str, ...] | None = None
    key_retrievers: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Retrieval:
    """An authorized GET waiting for the client's certificate request. Holds the unsealed key."""

    principal: Principal
    op: Operation
    decision: Decision
    owner: str
    name: str
    chain: tuple[x509.Certificate, ...]
    key: PrivateKeyTypes
    ac_plan: tuple[tuple[AttributeAuthority, tuple[str, ...], tuple[str, ...]], ...]
    detail: str | None = None  # the audit detail of the issuance (default: limited/full)

    def __repr__(self) -> str:
        return f"Retrieval(owner={self.owner!r}, name={self.name!r}, rule={self.decision.rule!r})"


@dataclass(frozen=True)
class PendingStore:
    """A delegation in progress: the server's fresh key, sealed already, and the CSR to sign.

    `key` is the key itself while the delegation stays in this process
    (MyProxy PUT); a delegation saved for another request (HTTPS) carries
    only `sealed`.
    """

    principal: Principal
    options: StoreOptions
    key: rsa.RSAPrivateKey | None
    csr: x509.CertificateSigningRequest
    sealed: SealedKey

    def __repr__(self) -> str:
        return f"PendingStore(username={self.options.username!r}, name={self.options.name!r})"


@dataclass(frozen=True, repr=False)
class StoredCredential:
    """A credential row as the request paths read it (SQLAlchemy Core, no ORM session)."""

    id: int
    username: str
    owner_dn: str
    name: str
    description: str | None
    chain_pem: str
    sealed_key: bytes
    master_key_id: str | None
    has_passphrase: bool
    retrievers: list[str] | None
    renewers: list[str] | None
    trusted_retrievers: list[str] | None
    key_retrievers: list[str] | None
    max_lifetime_s: int
    not_before: dt.datetime
    not_after: dt.datetime
    lock_message: str | None

    def __repr__(self) -> str:
        # Never the sealed key or the chain (I7), as CredentialRow.
        return f"StoredCredential(id={self.id!r}, owner_dn={self.owner_dn!r}, name={self.name!r})"


_STORED_COLUMNS = tuple(_CRED[f.name] for f in dataclasses.fields(StoredCredential))
_FIND = select(*_STORED_COLUMNS).where(
    _CRED.username == bindparam("username"), _CRED.name == bindparam("name")
)
_FIND_ALL = (
    select(*_STORED_COLUMNS).where(_CRED.username == bindparam("username")).order_by(_CRED.name)
)
_BANS = select(_BAN.kind, _BAN.pattern)


class _DriverQuery:
    """A Core SELECT compiled once per dialect and run on the driver's cursor.

    The request paths read one credential and the bans per request; SQLAlchemy's
    per-statement machinery (events, execution context, result objects) cost
    several times what SQLite or PostgreSQL spend on these primary-key and
    tiny-table reads. The SQL, parameter style and the bind and result
    conversions (UTC datetimes, JSON lists, booleans) are SQLAlchemy's own,
    resolved once for the dialect.
    """

    def __init__(self, stmt: Select[Any], dialect: Dialect) -> None:
        compiled = stmt.compile(dialect=dialect)
        self.sql = compiled.string
        self._positional = bool(dialect.positional)
        self._order = tuple(compiled.positiontup or ())
        self._bind = {
            name: proc
            for name, param in compiled.binds.items()
            if (proc := param.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        }
        self._convert = [
            col.type.dialect_impl(dialect).result_processor(dialect, None)
            for col in stmt.selected_columns
        ]

    def run(self, cursor: Any, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        values = dict(params or {})
        for name, to_db in self._bind.items():
            if name in values:
                values[name] = to_db(values[name])
        cursor.execute(self.sql, [values[n] for n in self._order] if self._positional else values)
        convert = self._convert
        return [
            tuple(f(v) if f is not None else v for f, v in zip(convert, row, strict=True))
            for row in cursor.fetchall()
        ]


class _Reads:
    """The request-path reads of one engine, compiled for its dialect."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        dialect = engine.dialect
        self.find = _DriverQuery(_FIND, dialect)
        self.find_all = _DriverQuery(_FIND_ALL, dialect)
        self.bans = _DriverQuery(_BANS, dialect)

    @contextmanager
    def cursor(self) -> Iterator[Any]:
        """A driver cursor on a pooled connection; the pool rolls it back when it returns."""
        fairy = self.engine.raw_connection()
        try:
            cursor = fairy.cursor()
            try:
                yield cursor
            finally:
                cursor.close()
        finally:
            fairy.close()


def _bans_of(rows: Sequence[Any]) -> Bans:
    return Bans(
        users=tuple(p for k, p in rows if k == "user"),
        hosts=tuple(p for k, p in rows if k == "host"),
    )


def _row_facts(row: CredentialRow | StoredCredential, config: Config) -> CredentialFacts:
    return CredentialFacts(
        owner=row.owner_dn,
        name=row.name,
        has_passphrase=row.has_passphrase,
        not_after=row.not_after,
        max_lifetime=dt.timedelta(seconds=row.max_lifetime_s),
        owner_is_pilot=is_pilot_identity(row.owner_dn, (), config.policy),
        retrievers=tuple(row.retrievers) if row.retrievers is not None else None,
        renewers=tuple(row.renewers) if row.renewers is not None else None,
        trusted_retrievers=tuple(row.trusted_retrievers)
        if row.trusted_retrievers is not None
        else None,
        key_retrievers=tuple(row.key_retrievers) if row.key_retrievers is not None else None,
        lock_message=row.lock_message,
    )


def _info(row: CredentialRow | StoredCredential) -> CredentialInfo:
    return CredentialInfo(
        username=row.username,
        name=row.name,
        owner=row.owner_dn,
        description=row.description,
        not_before=row.not_before,
        not_after=row.not_after,
        max_lifetime=dt.timedelta(seconds=row.max_lifetime_s),
        has_passphrase=row.has_passphrase,
        retrievers=tuple(row.retrievers) if row.retrievers is not None else None,
        renewers=tuple(row.renewers) if row.renewers is not None else None,
        trusted_retrievers=tuple(row.trusted_retrievers)
        if row.trusted_retrievers is not None
        else None,
        locked=row.lock_message,
    )


def check_lock_message(message: str) -> str:
    """An operator's lock message: 1-512 printable characters (no control or format
    characters: it is shown in MyProxy ERROR lines, problem details and listings)."""
    if not message.strip():
        raise BadRequest("the lock message is empty")
    if len(message) > MAX_LOCK_MESSAGE:
        raise BadRequest(f"the lock message is longer than {MAX_LOCK_MESSAGE} characters")
    if not message.isprintable():
        raise BadRequest("the lock message may hold printable characters only, no control ones")
    return message


@dataclass(frozen=True)
class _Verified:
    """A stored chain that validated against `trust`; the verdict holds from `start` to `end`."""

    trust: TrustStore
    start: dt.datetime
    end: dt.datetime


def _dn(name: x509.Name) -> str:
    try:
        return dn_to_slash(name)
    except (ValueError, TypeError):
        return "<unreadable name>"


def _signed_by(crl: x509.CertificateRevocationList, cert: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(cert.public_key())  # type: ignore[arg-type]
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False


def _revoked_certificate(
    chain: Sequence[x509.Certificate], trust: TrustStore
) -> tuple[x509.Certificate, x509.Name] | None:
    """The first certificate of `chain`, or of the CA path above it in `trust`, that a CRL
    of `trust` revokes (a CRL whose signature verifies with its issuer's key), and that issuer."""
    if not trust.crls or not chain:
        return None
    path = list(chain)
    current = chain[-1]
    for _ in range(16):  # up the CA path, by name (validation has failed: no path to trust)
        issuer = next((a for a in trust.anchors if a.subject == current.issuer), None)
        if issuer is None or issuer.subject == issuer.issuer:
            break
        path.append(issuer)
        current = issuer
    signers = (*chain, *trust.anchors)
    for cert in path:
        for crl in trust.crls:
            if (
                crl.issuer == cert.issuer
                and crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
                and any(c.subject == crl.issuer and _signed_by(crl, c) for c in signers)
            ):
                return cert, crl.issuer
    return None


def _chain_refusal(
    chain: Sequence[x509.Certificate], trust: TrustStore, now: dt.datetime, problem: str
) -> tuple[str, str]:
    """Why a stored chain no longer validates: ("revoked" | "expired" | "untrusted", reason).

    The reason is shown to the client, which may not have authenticated yet (a passphrase
    GET is decided before the passphrase is tried): it names no owner and no server path.
    """
    revoked = _revoked_certificate(chain, trust)
    if revoked is not None:
        cert, issuer = revoked
        return "revoked", (
            f"the stored credential has been revoked: certificate serial {cert.serial_number} "
            f"was revoked by {_dn(issuer)}"
        )
    ended = [c.not_valid_after_utc for c in chain if c.not_valid_after_utc < now]
    if ended:
        return "expired", f"the stored credential expired at {min(ended):%Y-%m-%d %H:%M:%SZ}"
    for subject in sorted({_dn(c.subject) for c in chain}, key=len, reverse=True):
        problem = problem.replace(subject, "<stored certificate>")
    if trust.cert_dir is not None:
        problem = problem.replace(f" {trust.cert_dir}", "")
    return "untrusted", (
        f"the stored credential no longer validates against this server's trust store: {problem}"
    )


def check_public_key(csr: x509.CertificateSigningRequest) -> None:
    """A CSR whose signature verifies and whose key is strong enough to carry a credential."""
    retired = retired_key_problem(csr)
    if retired is not None:
        raise BadRequest(f"certificate request: {retired}")
    try:
        if not csr.is_signature_valid:
            raise BadRequest("certificate request: its signature does not verify")
        key = csr.public_key()
    except (UnsupportedAlgorithm, ValueError, TypeError) as exc:
        raise BadRequest(f"certificate request: its public key cannot be used: {exc}") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise BadRequest(
                f"certificate request: RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} needed"
            )
    elif not isinstance(key, ec.EllipticCurvePublicKey):
        raise BadRequest("certificate request: only RSA and EC keys are accepted")


class Repository:
    def __init__(
        self,
        config: Config,
        engine: Engine,
        keyring: MasterKeyring,
        trust: TrustStore,
        authorities: dict[str, AttributeAuthority] | None = None,
    ) -> None:
        self.config = config
        self.engine = engine
        self.keyring = keyring
        self.trust = trust
        self.authorities = authorities if authorities is not None else load_authorities(config.voms)
        self.audit = AuditLog(engine)
        self.limiter = FailureLimiter(
            free_failures=config.policy.passphrase_attempts,
            base=config.policy.lockout_base.total_seconds(),
            cap=config.policy.lockout_max.total_seconds(),
        )
        self._session = session_factory(engine)
        # Per-process memos of the request paths (see each class for when an entry is used).
        self.peers = PeerCache(config.policy)
        self._keys = UnsealedKeyCache()
        self._chains: BoundedCache[str, tuple[x509.Certificate, ...]] = BoundedCache(1024)
        # Stored chains that validated against the trust store (see _chain_verdict).
        self._verdicts: BoundedCache[tuple[int, str], _Verified] = BoundedCache(1024)
        self._verdicts_trust: TrustStore | None = None
        self._reads = _Reads(engine)
        self._argon = {
            "time_cost": config.sealing.argon2_time_cost,
            "memory_kib": config.sealing.argon2_memory_kib,
            "parallelism": config.sealing.argon2_parallelism,
        }

    @classmethod
    def open(cls, config: Config) -> Repository:
        """Open (and migrate) the database, load the master key, trust dirs and AAs."""
        check_key_files(config)
        config.server.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        engine = make_engine(config.server.database)
        migrate(engine)
        keyring = MasterKeyring.load_or_create(config.server.master_key_file)
        trust = TrustStore.from_dirs(config.server.cert_dir, config.server.voms_dir)
        return cls(config, engine, keyring, trust)

    @contextmanager
    def _writing(self) -> Iterator[Session]:
        """A session in a write transaction that holds the write lock from the start.

        On SQLite a read-then-write transaction begun DEFERRED fails at once
        with "database is locked" when another writer got in between; BEGIN
        IMMEDIATE (store.db.write_transaction) waits its turn instead.
        """
        with (
            write_transaction(self.engine) as conn,
            Session(bind=conn, expire_on_commit=False) as session,
        ):
            yield session
            session.flush()

    # --- helpers --------------------------------------------------------------------

    def _bans(self) -> Bans:
        """The runtime bans, read anew for every request: a ban works at once, everywhere."""
        with self._reads.cursor() as cursor:
            return _bans_of(self._reads.bans.run(cursor))

    def _find(self, username: str, name: str) -> StoredCredential | None:
        with self._reads.cursor() as cursor:
            rows = self._reads.find.run(cursor, {"username": username, "name": name})
        return StoredCredential(*rows[0]) if rows else None

    def _lookup(self, username: str, name: str) -> tuple[StoredCredential | None, Bans]:
        """The credential and the bans, read in one go (one connection, two statements)."""
        with self._reads.cursor() as cursor:
            rows = self._reads.find.run(cursor, {"username": username, "name": name})
            bans = _bans_of(self._reads.bans.run(cursor))
        return (StoredCredential(*rows[0]) if rows else None), bans

    def _stored_chain(self, chain_pem: str) -> tuple[x509.Certificate, ...]:
        """A stored chain, parsed (memoised by its text: it is the same on every GET)."""
        chain = self._chains.get(chain_pem)
        if chain is None:
            chain = parse_credential_pem(chain_pem.encode(), source="stored chain").certificates
            self._chains.put(chain_pem, chain)
        return chain

    def _chain_verdict(
        self, row: StoredCredential, chain: tuple[x509.Certificate, ...]
    ) -> tuple[str, str] | None:
        """None while the stored chain validates against the current trust store and CRLs;
        else ("revoked" | "expired" | "untrusted", the reason for the client).

        myproxy-server checks the stored credential on every GET; so does every use here.
        A success is remembered per (row id, chain text), for the very trust-store object
        it was checked against (a reload swaps `self.trust` and so starts afresh) and only
        inside the window in which every time-dependent check it passed still passes
        (`principal.validity_window`): the answer validation would give. Refusals are
        decided anew every time.
        """
        trust = self.trust  # read once: a reload may swap it meanwhile
        now = dt.datetime.now(dt.UTC)
        key = (row.id, row.chain_pem)
        hit = self._verdicts.get(key)
        if hit is not None and hit.trust is trust and hit.start <= now <= hit.end:
            return None
        try:
            result = validate_chain(chain, trust, now, check_voms=False)
        except VomsExtError as exc:
            self._verdicts.pop(key)
            return _chain_refusal(chain, trust, now, str(exc))
        if trust is not self._verdicts_trust:  # entries for an older store are of no use
            self._verdicts.clear()
            self._verdicts_trust = trust
        start, end = validity_window(result, trust)
        self._verdicts.put(key, _Verified(trust, start, end))
        return None

    def _facts_in_use(
        self, row: StoredCredential
    ) -> tuple[CredentialFacts, tuple[x509.Certificate, ...]]:
        """The policy facts of a credential about to be used (issued from, its key handed
        out): its lock and the verdict on its chain now. Its parsed chain too."""
        chain = self._stored_chain(row.chain_pem)
        facts = _row_facts(row, self.config)
        verdict = self._chain_verdict(row, chain)
        if verdict is not None:
            facts = dataclasses.replace(facts, chain_verdict=verdict[0], chain_problem=verdict[1])
        return facts, chain

    def _record(
        self,
        principal: Principal,
        op: Operation,
        decision: Decision,
        *,
        owner: str | None,
        name: str | None,
        serial: int | None = None,
        lifetime: dt.timedelta | None = None,
        fqans: Sequence[str] = (),
        detail: str | None = None,
        conn: Connection | None = None,
    ) -> None:
        """I6: one audit event per decision; raises AuditWriteError, failing the request.

        `conn`: the write transaction of the action decided, so that the
        action and its event commit together or not at all.
        """
        outcome = "allow" if decision.allowed else "deny"
        DECISIONS.labels(op.value, outcome, decision.rule).inc()
        if serial is not None:
            ISSUED.labels(op.value, "limited" if detail and "limited" in detail else "full").inc()
        self.audit.append(
            AuditEvent(
                actor_dn=principal.identity,
                actor_kind=principal.kind.value,
                peer=principal.address or "",
                operation=op.value,
                rule=decision.rule,
                decision="allow" if decision.allowed else "deny",
                owner_dn=owner,
                credential_name=name,
                serial=str(serial) if serial is not None else None,
                lifetime_s=int(lifetime.total_seconds()) if lifetime is not None else None,
                fqans=tuple(fqans),
                detail=detail or (None if decision.allowed else decision.reason),
            ),
            conn=conn,
        )

    def _decide(
        self,
        principal: Principal,
        request: policy.Request,
        facts: CredentialFacts | None,
        *,
        name: str | None,
        record_allow: bool = True,
        detail: str | None = None,
        bans: Bans | None = None,
    ) -> Decision:
        if bans is None:
            bans = self._bans()
        decision = policy.decide(request, principal, facts, self.config.policy, bans)
        owner = facts.owner if facts is not None else request.owner
        if not decision.allowed or record_allow:
            self._record(
                principal,
                request.operation,
                decision,
                owner=owner,
                name=name,
                fqans=request.fqans,
                detail=_with_reason(detail, decision),
            )
        if not decision.allowed:
            cls = NotFound if decision.rule == "credential.not_found" else Denied
            raise cls(decision.reason, decision.rule)
        return decision

    def authorize(
        self,
        principal: Principal,
        request: policy.Request,
        facts: CredentialFacts | None = None,
        *,
        name: str | None = None,
    ) -> Decision:
        """Decide and audit (allow and deny); raise Denied/NotFound when refused."""
        return self._decide(principal, request, facts, name=name)

    def credential_owner(self, username: str, name: str) -> str | None:
        row = self._find(username, name)
        return row.owner_dn if row is not None else None

    def _auth_failure(
        self,
        principal: Principal,
        op: Operation,
        owner: str | None,
        name: str,
        rule: str,
        message: str,
    ) -> BadPassphrase:
        self._record(principal, op, Decision(False, rule, message), owner=owner, name=name)
        return BadPassphrase(message, rule)

    # --- brute-force limits on passphrases ---------------------------------------------------

    @staticmethod
    def _lock_keys(principal: Principal, username: str, name: str) -> tuple[tuple[str, ...], ...]:
        return (("credential", username, name), ("peer", peer_group(principal.address or "")))

    def _refuse_if_locked(
        self,
        principal: Principal,
        op: Operation,
        username: str,
        name: str,
        owner: str | None = None,
    ) -> None:
        wait = self.limiter.locked(self._lock_keys(principal, username, name))
        if wait > 0:
            message = f"too many failed passphrase attempts; try again in {math.ceil(wait)} s"
            self._record(
                principal, op, Decision(False, "auth.locked_out", message), owner=owner, name=name
            )
            raise Denied(message, "auth.locked_out")

    def _count_failure(self, principal: Principal, username: str, name: str) -> None:
        if self.limiter.failure(self._lock_keys(principal, username, name)):
            LOCKOUTS.inc()

    # --- delegation in (MyProxy PUT, API delegation) ------------------------------------

    def begin_store(self, principal: Principal, options: StoreOptions) -> PendingStore:
        """Check the store is allowed, then make the key pair and a CSR for the client to sign."""
        self._check_store_names(options)
        if options.passphrase is not None and len(options.passphrase) < MIN_PASSPHRASE:
            raise BadRequest(
                f"Pass phrase too short.  Must be at least {MIN_PASSPHRASE} characters long."
            )
        self._decide_store(principal, options, owner=principal.identity)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "proxy")]))
            .sign(key, hashes.SHA256())
        )
        sealed = self._seal(private_key_to_pem(key), options)
        return PendingStore(principal, options, key, csr, sealed)

    def _seal(self, key_pem: bytes, options: StoreOptions) -> SealedKey:
        """Under the passphrase when there is one (then only it opens the key), else the master key."""
        return seal(
            key_pem,
            passphrase=options.passphrase,
            keyring=None if options.passphrase else self.keyring,
            aad=_aad(options.username, options.name),
            **self._argon,
        )

    def save_pending(
        self, pending: PendingStore, ttl: dt.timedelta = dt.timedelta(minutes=5)
    ) -> str:
        """Keep a delegation for its second request, on any worker or instance; returns its token."""
        token = secrets.token_urlsafe(24)
        now = dt.datetime.now(dt.UTC)
        options = dataclasses.asdict(dataclasses.replace(pending.options, passphrase=None))
        options["lifetime"] = (
            int(pending.options.lifetime.total_seconds()) if pending.options.lifetime else None
        )
        with self._writing() as session:
            session.execute(
                delete(PendingDelegationRow).where(PendingDelegationRow.expires_at < now)
            )
            waiting = session.scalar(
                select(func.count())
                .select_from(PendingDelegationRow)
                .where(PendingDelegationRow.actor_dn == pending.principal.identity)
            )
            if (waiting or 0) >= MAX_PENDING_PER_ACTOR:
                raise BadRequest(
                    f"{waiting} delegations of yours are already in progress; finish or let them expire"
                )
            session.add(
                PendingDelegationRow(
                    token_hash=_token_hash(token),
                    actor_dn=pending.principal.identity,
                    options=options,
                    sealed_key=pending.sealed.to_bytes(),
                    csr_pem=pending.csr.public_bytes(serialization.Encoding.PEM).decode(),
                    expires_at=now + ttl,
                )
            )
        return token

    def take_pending(self, token: str, principal: Principal) -> PendingStore | None:
        """The saved delegation for `token`, if it is the caller's and not expired (single use)."""
        now = dt.datetime.now(dt.UTC)
        with self._writing() as session:
            row = session.get(PendingDelegationRow, _token_hash(token))
            if row is None or row.actor_dn != principal.identity:
                return None
            session.delete(row)
            if row.expires_at < now:
                return None
            o = dict(row.options)
            lifetime = dt.timedelta(seconds=o.pop("lifetime")) if o.get("lifetime") else None
            for key in ("retrievers", "renewers", "trusted_retrievers", "key_retrievers"):
                if o.get(key) is not None:
                    o[key] = tuple(o[key])
            options = StoreOptions(**{**o, "lifetime": lifetime})
            csr = x509.load_pem_x509_csr(row.csr_pem.encode())
            return PendingStore(principal, options, None, csr, SealedKey.from_bytes(row.sealed_key))

    def finish_store(
        self, pending: PendingStore, chain: Sequence[x509.Certificate]
    ) -> CredentialInfo:
        """Store the proxy chain the client signed for our key (its leaf first)."""
        principal, options = pending.principal, pending.options
        self._check_store_names(options, chain=chain)
        if not chain:
            raise BadRequest("no certificates received")
        ours = _spki(pending.csr.public_key())
        if _spki(chain[0].public_key()) != ours:
            raise BadRequest("the delegated certificate is not for the key this server generated")
        return self._store_chain(principal, options, tuple(chain), None, sealed=pending.sealed)

    def _decide_store(self, principal: Principal, options: StoreOptions, *, owner: str) -> Decision:
        """The policy on storing `owner`'s credential at (username, name), given what is there now."""
        existing = self._find(options.username, options.name)
        request = policy.Request(
            Operation.STORE,
            owner=owner,
            name=options.name,
            username=options.username,
            lifetime=options.lifetime,
        )
        facts = _row_facts(existing, self.config) if existing is not None else None
        return self._decide(principal, request, facts, name=options.name, record_allow=False)

    def store_pem(self, principal: Principal, options: StoreOptions, pem: bytes) -> CredentialInfo:
        """MyProxy STORE: certificate, key and chain as PEM text, the key possibly encrypted.

        An encrypted key stays encrypted (we never see its passphrase); it
        is sealed under the master key and opens only with the passphrase.
        """
        self._check_store_names(options, pem=pem)
        key_blocks = [m.group(0) for m in _KEY_BLOCK.finditer(pem)]
        if len(key_blocks) != 1:
            raise BadRequest(
                f"stored credential: expected one private key, found {len(key_blocks)}"
            )
        key_pem = key_blocks[0]
        certs_only = _KEY_BLOCK.sub(b"", pem)
        try:
            chain = parse_credential_pem(certs_only, source="stored credential").certificates
        except VomsExtError as exc:
            raise BadRequest(str(exc)) from None
        encrypted = b"ENCRYPTED" in key_pem
        if not encrypted:
            try:
                key = serialization.load_pem_private_key(key_pem, password=None)
            except (ValueError, TypeError) as exc:
                raise BadRequest(
                    f"stored credential: the private key cannot be read: {exc}"
                ) from None
            key_pem = private_key_to_pem(key)
        if principal.kind is not PrincipalKind.OPERATOR:  # the operator was decided by import_pem
            self._decide_store(principal, options, owner=principal.identity)
        if encrypted:
            options = dataclasses.replace(options, passphrase=None)
        return self._store_chain(principal, options, chain, key_pem, pem_encrypted=encrypted)

    def _store_chain(
        self,
        principal: Principal,
        options: StoreOptions,
        chain: tuple[x509.Certificate, ...],
        key_pem: bytes | None,
        *,
        pem_encrypted: bool = False,
        sealed: SealedKey | None = None,
    ) -> CredentialInfo:
        """Validate and store a chain with its key (given as PEM, or sealed already)."""
        now = dt.datetime.now(dt.UTC)
        try:
            result = validate_chain(chain, self.trust, now, check_voms=False)
            owner = identity_of(result)
        except VomsExtError as exc:
            raise BadRequest(f"the delegated chain does not validate: {exc}") from None
        if principal.kind is PrincipalKind.OPERATOR:
            # An import by the local operator (proxyd admin import-myproxy): an admin decision.
            decision = self._decide(
                principal,
                policy.Request(Operation.ADMIN),
                None,
                name=options.name,
                record_allow=False,
            )
        else:
            decision = self._decide_store(principal, options, owner=owner)
        ceiling = self.config.policy.max_stored_lifetime
        max_lifetime = min(options.lifetime or ceiling, ceiling)
        if sealed is None:
            assert key_pem is not None
            sealed = self._seal(key_pem, options)
        chain_pem = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in chain)
        try:
            with self._writing() as session:
                row = session.scalars(
                    select(CredentialRow).where(
                        CredentialRow.username == options.username,
                        CredentialRow.name == options.name,
                    )
                ).one_or_none()
                if row is not None and row.owner_dn != owner:
                    raise Denied(
                        f'credentials for username "{options.username}" belong to another owner',
                        "store.not_owner",
                    )
                if row is None:
                    row = CredentialRow(username=options.username, name=options.name)
                    session.add(row)
                row.owner_dn = owner
                row.description = options.description
                row.chain_pem = chain_pem
                row.sealed_key = sealed.to_bytes()
                row.master_key_id = sealed.master_key_id
                row.has_passphrase = sealed.has_passphrase or pem_encrypted
                row.retrievers = (
                    list(options.retrievers) if options.retrievers is not None else None
                )
                row.renewers = list(options.renewers) if options.renewers is not None else None
                row.trusted_retrievers = (
                    list(options.trusted_retrievers)
                    if options.trusted_retrievers is not None
                    else None
                )
                row.key_retrievers = (
                    list(options.key_retrievers) if options.key_retrievers is not None else None
                )
                row.max_lifetime_s = int(max_lifetime.total_seconds())
                row.not_before = max(c.not_valid_before_utc for c in result.chain)
                # The stored credential is usable for at most max_stored_lifetime, however long
                # the delegated chain itself is valid (myproxy-server's max_cred_lifetime).
                row.not_after = min(result.not_after, now + self.config.policy.max_stored_lifetime)
                try:
                    session.flush()
                except IntegrityError:
                    raise Denied(
                        f'credentials for username "{options.username}" were stored concurrently',
                        "store.conflict",
                    ) from None
                info = _info(row)
                # In the same transaction: a store whose event cannot be written is not stored.
                self._record(
                    principal,
                    Operation.STORE,
                    decision,
                    owner=owner,
                    name=options.name,
                    lifetime=max_lifetime,
                    conn=session.connection(),
                )
        except Denied as exc:
            # Lost a race after the policy decision (a concurrent store): audit the refusal (I6).
            refusal = Decision(False, exc.rule or "store.conflict", exc.message)
            self._record(principal, Operation.STORE, refusal, owner=owner, name=options.name)
            raise
        return info

    # --- owner operations ---------------------------------------------------------------------

    def info(self, principal: Principal, username: str) -> list[CredentialInfo]:
        """All credentials stored under `username` (default first), if the caller owns them."""
        with self._reads.cursor() as cursor:
            found = self._reads.find_all.run(cursor, {"username": username})
            bans = _bans_of(self._reads.bans.run(cursor))
        if not found:
            raise self._not_found(principal, Operation.INFO, username, None, bans=bans)
        rows = sorted(
            (StoredCredential(*r) for r in found), key=lambda r: (r.name != DEFAULT_NAME, r.name)
        )
        self._decide(
            principal,
            policy.Request(Operation.INFO, owner=rows[0].owner_dn),
            _row_facts(rows[0], self.config),
            name=None,
            bans=bans,
        )
        return [_info(r) for r in rows]

    def destroy(self, principal: Principal, username: str, name: str = DEFAULT_NAME) -> None:
        row = self._require(principal, Operation.DESTROY, username, name)
        self._decide(
            principal,
            policy.Request(Operation.DESTROY, owner=row.owner_dn, name=name),
            _row_facts(row, self.config),
            name=name,
        )
        with self._writing() as session:
            session.execute(delete(CredentialRow).where(CredentialRow.id == row.id))
        self._keys.discard(username, name)

    def change_passphrase(
        self, principal: Principal, username: str, name: str, old: str, new: str
    ) -> None:
        if len(new) < MIN_PASSPHRASE:
            raise BadRequest(
                f"Pass phrase too short.  Must be at least {MIN_PASSPHRASE} characters long."
            )
        row = self._require(principal, Operation.CHANGE_PASSPHRASE, username, name)
        decision = self._decide(
            principal,
            policy.Request(Operation.CHANGE_PASSPHRASE, owner=row.owner_dn, name=name),
            _row_facts(row, self.config),
            name=name,
            record_allow=False,  # recorded once the old passphrase has been proven
        )
        self._refuse_if_locked(principal, Operation.CHANGE_PASSPHRASE, username, name, row.owner_dn)
        sealed = _sealed(row)
        if not row.has_passphrase:
            raise BadRequest(
                "this credential has no passphrase (it is stored for trusted retrieval)"
            )
        try:
            updated = rewrap_passphrase(sealed, old, new, aad=_aad(username, name), **self._argon)
        except WrongPassphrase:
            self._count_failure(principal, username, name)
            raise self._auth_failure(
                principal,
                Operation.CHANGE_PASSPHRASE,
                row.owner_dn,
                name,
                "auth.bad_passphrase",
                "invalid credential passphrase",
            ) from None
        with self._writing() as session:
            stored = session.get(CredentialRow, row.id)
            if stored is None:
                raise NotFound(
                    f'No credentials exist for username "{username}".', "credential.not_found"
                )
            stored.sealed_key = updated.to_bytes()
        self._record(
            principal, Operation.CHANGE_PASSPHRASE, decision, owner=row.owner_dn, name=name
        )

    def _not_found(
        self,
        principal: Principal,
        op: Operation,
        username: str,
        name: str | None,
        auth: AuthMethod = AuthMethod.NONE,
        *,
        bans: Bans | None = None,
    ) -> RepositoryError:
        """A missing credential, decided by the policy (bans and I1/I2 still come first) and audited."""
        decision = policy.decide(
            policy.Request(op, owner=None, name=name, auth=auth),
            principal,
            None,
            self.config.policy,
            bans if bans is not None else self._bans(),
        )
        self._record(
            principal, op, decision, owner=None, name=name, detail=f"username {username[:100]!r}"
        )
        if decision.rule != "credential.not_found":
            return Denied(decision.reason, decision.rule)
        # Say it the way myproxy-server does, without echoing much input.
        return NotFound(
            f'No credentials exist for username "{username[:100]}".', "credential.not_found"
        )

    def _require(
        self, principal: Principal, op: Operation, username: str, name: str
    ) -> StoredCredential:
        row = self._find(username, name)
        if row is None:
            raise self._not_found(principal, op, username, name)
        return row

    def _open_key(
        self, principal: Principal, op: Operation, row: StoredCredential, passphrase: str | None
    ) -> PrivateKeyTypes:
        """Unseal a stored key. Wrong or missing passphrases are audited and refused.

        Two kinds of passphrase credential exist: keys sealed under an
        argon2id key of the passphrase (delegated with myproxy-init or the
        API), and keys that arrived PEM-encrypted by the client
        (myproxy-store), kept encrypted under the master key. Neither opens
        without the passphrase, and neither is ever kept in `self._keys`:
        only keys the server opens on its own are (for seconds, bound to the
        sealed bytes they came from).
        """
        if passphrase:
            self._refuse_if_locked(principal, op, row.username, row.name, row.owner_dn)
        cached = self._keys.get(row.username, row.name, row.sealed_key)
        if cached is not None:
            if passphrase:
                self.limiter.success([("credential", row.username, row.name)])
            return cached  # type: ignore[return-value]
        sealed = _sealed(row)
        try:
            key_pem = unseal(
                sealed,
                passphrase=passphrase if sealed.has_passphrase else None,
                keyring=self.keyring,
                aad=_aad(row.username, row.name),
            )
            if b"ENCRYPTED" in key_pem.split(b"\n-----END", 1)[0]:
                if not passphrase:
                    raise WrongPassphrase("a passphrase is needed")
                try:
                    key = serialization.load_pem_private_key(key_pem, password=passphrase.encode())
                except ValueError:
                    raise WrongPassphrase("wrong passphrase") from None
            else:
                # Validated when it was stored and sealed under AES-GCM since, so it cannot have
                # changed: OpenSSL's RSA consistency check (~40 ms) would only repeat that work.
                key = serialization.load_pem_private_key(
                    key_pem, password=None, unsafe_skip_rsa_key_validation=True
                )
                if not sealed.has_passphrase:
                    self._keys.put(row.username, row.name, row.sealed_key, key)
        except WrongPassphrase:
            if passphrase:
                self._count_failure(principal, row.username, row.name)
            raise self._auth_failure(
                principal,
                op,
                row.owner_dn,
                row.name,
                "auth.bad_passphrase",
                "invalid credential passphrase",
            ) from None
        except SealingError:
            raise self._auth_failure(
                principal,
                op,
                row.owner_dn,
                row.name,
                "auth.cannot_unseal",
                "Unable to delegate credentials.",
            ) from None
        if passphrase:
            self.limiter.success([("credential", row.username, row.name)])
        return key

    def record_failure(
        self, principal: Principal, op: Operation, username: str, name: str, rule: str, reason: str
    ) -> None:
        """Audit an authentication the edge itself refused (e.g. a failed renewal challenge)."""
        row = self._find(username, name)
        self._record(
            principal,
            op,
            Decision(False, rule, reason),
            owner=row.owner_dn if row is not None else None,
            name=name,
            detail=reason[:500],
        )

    def has_passphrase(self, username: str, name: str = DEFAULT_NAME) -> bool | None:
        """Whether the credential is passphrase-sealed (None: no such credential). No secrets."""
        row = self._find(username, name)
        return None if row is None else row.has_passphrase

    def retrieve_key(
        self, principal: Principal, username: str, name: str, passphrase: str | None
    ) -> bytes:
        """MyProxy RETRIEVE: the stored chain and key, the key encrypted with its passphrase."""
        row = self._require(principal, Operation.RETRIEVE_KEY, username, name)
        facts, _ = self._facts_in_use(row)
        auth = AuthMethod.PASSPHRASE if passphrase else AuthMethod.NONE
        request = policy.Request(Operation.RETRIEVE_KEY, owner=row.owner_dn, name=name, auth=auth)
        decision = self._decide(principal, request, facts, name=name, record_allow=False)
        assert passphrase is not None  # the policy requires it
        key = self._open_key(principal, Operation.RETRIEVE_KEY, row, passphrase)
        encrypted = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase.encode()),
        )
        certs = row.chain_pem.encode()
        first_end = certs.index(b"-----END CERTIFICATE-----") + len(b"-----END CERTIFICATE-----\n")
        self._record(principal, Operation.RETRIEVE_KEY, decision, owner=row.owner_dn, name=name)
        return certs[:first_end] + encrypted + certs[first_end:]

    # --- issuing ----------------------------------------------------------------------------------

    def retrieve(
        self,
        principal: Principal,
        username: str,
        csr: x509.CertificateSigningRequest,
        *,
        name: str = DEFAULT_NAME,
        passphrase: str | None = None,
        lifetime: dt.timedelta | None = None,
        voms: Sequence[VomsRequest] = (),
        want_full: bool = False,
        renewal_proof: ValidationResult | None = None,
    ) -> IssuedProxy:
        """GET in one call: authorize, then issue a proxy for the CSR's key."""
        check_public_key(csr)
        retrieval = self.authorize_retrieval(
            principal,
            username,
            name=name,
            passphrase=passphrase,
            lifetime=lifetime,
            voms=voms,
            want_full=want_full,
            renewal_proof=renewal_proof,
        )
        return self.complete_retrieval(retrieval, csr, csr_checked=True)

    def authorize_retrieval(
        self,
        principal: Principal,
        username: str,
        *,
        name: str = DEFAULT_NAME,
        passphrase: str | None = None,
        lifetime: dt.timedelta | None = None,
        voms: Sequence[VomsRequest] = (),
        want_full: bool = False,
        renewal_proof: ValidationResult | None = None,
    ) -> Retrieval:
        """The first half of GET: policy, authentication, unsealing. Denials are audited here.

        Authentication is the passphrase, or the peer's certificate (trusted
        retrieval), or a renewal proof (a chain of the owner that signed the
        server's challenge). MyProxy answers this before the client sends
        its certificate request, hence the two halves.
        """
        row, bans = self._lookup(username, name)
        if renewal_proof is not None:
            op, auth = Operation.RENEW, AuthMethod.NONE
        elif passphrase:
            op, auth = Operation.RETRIEVE, AuthMethod.PASSPHRASE
        else:
            op, auth = Operation.RETRIEVE, AuthMethod.CERTIFICATE
        if auth is AuthMethod.PASSPHRASE:
            self._refuse_if_locked(principal, op, username, name, row.owner_dn if row else None)
        if row is None:
            if auth is AuthMethod.PASSPHRASE:
                # Spend what a wrong passphrase costs, so timing does not reveal existence;
                # and count it, so guessing usernames is slowed like guessing passphrases.
                dummy_unseal_cost(**self._argon)
                self._count_failure(principal, username, name)
            raise self._not_found(principal, op, username, name, auth, bans=bans)
        facts, chain = self._facts_in_use(row)
        ac_plan = self._plan_acs(row.owner_dn, voms)
        proof = None
        if renewal_proof is not None:
            try:
                proof = classify_principal(renewal_proof, self.config.policy, principal.address)
            except IdentityRefused as exc:
                refusal = Decision(False, "auth.independent_proxy", f"the renewal proof: {exc}")
                self._record(principal, op, refusal, owner=row.owner_dn, name=name)
                raise Denied(refusal.reason, refusal.rule) from None
        request = policy.Request(
            op,
            owner=row.owner_dn,
            name=name,
            auth=auth,
            lifetime=lifetime,
            want_full=want_full,
            fqans=tuple(f for _, explicit, _ in ac_plan for f in explicit),
            held_fqans=tuple(f for _, _, held in ac_plan for f in held),
            proof=proof,
        )
        decision = self._decide(principal, request, facts, name=name, record_allow=False, bans=bans)
        key = self._open_key(
            principal, op, row, passphrase if auth is AuthMethod.PASSPHRASE else None
        )
        return Retrieval(principal, op, decision, row.owner_dn, name, chain, key, tuple(ac_plan))

    def complete_retrieval(
        self,
        retrieval: Retrieval,
        csr: x509.CertificateSigningRequest,
        *,
        csr_checked: bool = False,
    ) -> IssuedProxy:
        """The second half of GET: sign a proxy (and ACs) for the CSR's key, and audit it with its serial.

        `csr_checked`: `check_public_key(csr)` passed already (`retrieve` checks before deciding).
        """
        r = retrieval
        try:
            if not csr_checked:
                check_public_key(csr)
        except BadRequest as exc:
            self._record(
                r.principal,
                r.op,
                Decision(False, "issue.bad_request", exc.message),
                owner=r.owner,
                name=r.name,
            )
            raise
        decision = r.decision
        assert decision.lifetime is not None
        now = dt.datetime.now(dt.UTC)
        try:
            holder = end_entity(r.chain)
            acs = [
                aa.issue(holder, aa.default_fqans(r.owner, explicit), now + decision.lifetime, now)
                for aa, explicit, _ in r.ac_plan
            ]
            issued = issue_proxy(
                r.chain,
                # Stored keys are RSA or EC (checked when stored), as are CSR keys
                # (check_public_key).
                cast(CertificateIssuerPrivateKeyTypes, r.key),
                cast(CertificateIssuerPublicKeyTypes, csr.public_key()),
                limited=decision.limited,
                lifetime=decision.lifetime,
                acs=acs,
                now=now,
            )
        except IssueError as exc:
            self._record(
                r.principal,
                r.op,
                Decision(False, "issue.failed", str(exc)),
                owner=r.owner,
                name=r.name,
            )
            raise BadRequest(str(exc), "issue.failed") from None
        proxy = issued.proxy
        self._record(
            r.principal,
            r.op,
            decision,
            owner=r.owner,
            name=r.name,
            serial=proxy.serial_number,
            lifetime=proxy.not_valid_after_utc - now,
            fqans=tuple(f for ac in issued.acs for f in ac.fqans),
            detail=r.detail or ("limited" if decision.limited else "full"),
        )
        return issued

    def abandon_retrieval(self, retrieval: Retrieval, reason: str) -> None:
        """Audit an authorized GET that ended before anything was issued (client went away)."""
        r = retrieval
        self._record(
            r.principal,
            r.op,
            r.decision,
            owner=r.owner,
            name=r.name,
            detail=f"nothing issued: {reason}"[:500],
        )

    def _plan_acs(
        self, owner: str, voms: Sequence[VomsRequest]
    ) -> list[tuple[AttributeAuthority, tuple[str, ...], tuple[str, ...]]]:
        """(authority, explicitly requested FQANs, FQANs the owner holds) per requested VO."""
        plan = []
        for request in merge_voms_requests(voms):
            try:
                aa = authorities_for(self.authorities, request.vo)
            except IssueError as exc:
                raise BadRequest(str(exc), "voms.unknown_vo") from None
            held = aa.held_fqans(owner)
            explicit = request.fqans or ((f"/{request.vo}",) if not held else ())
            plan.append((aa, explicit, held))
        return plan

    # --- attribute certificates for the client's own proxy (proxy-init --voms) ---------------

    def issue_acs(
        self, principal: Principal, voms: Sequence[VomsRequest], lifetime: dt.timedelta
    ) -> list[AttributeCertificate]:
        """ACs bound to the caller's own end-entity certificate, for FQANs it holds."""
        holder = principal.end_entity
        if holder is None or principal.is_anonymous:
            raise Denied("attribute certificates need a client certificate", "voms.not_member")
        acs = []
        now = dt.datetime.now(dt.UTC)
        for aa, explicit, held in self._plan_acs(principal.identity, voms):
            request = policy.Request(
                Operation.ISSUE_AC,
                owner=principal.identity,
                fqans=explicit or aa.default_fqans(principal.identity),
                held_fqans=held,
                lifetime=lifetime,
            )
            decision = self._decide(principal, request, None, name=None, record_allow=False)
            fqans = aa.default_fqans(principal.identity, explicit)
            ac = aa.issue(holder, fqans, now + min(lifetime, aa.config.max_lifetime), now)
            self._record(
                principal,
                Operation.ISSUE_AC,
                decision,
                owner=principal.identity,
                name=None,
                lifetime=ac.not_after - now,
                fqans=ac.fqans,
                detail=f"AC serial {ac.serial_number}",
            )
            acs.append(ac)
        return acs

    # --- the audit log, for auditors ---------------------------------------------------------

    def audit_events(self, principal: Principal, **filters: Any) -> list[StoredEvent]:
        self._decide(principal, policy.Request(Operation.AUDIT_READ), None, name=None)
        return self.audit.query(**filters)

    def authorize_metrics(self, principal: Principal) -> None:
        self._decide(principal, policy.Request(Operation.METRICS_READ), None, name=None)

    def audit_verify(self, principal: Principal) -> VerifyReport:
        self._decide(principal, policy.Request(Operation.AUDIT_READ), None, name=None)
        return self.audit.verify()

    def readiness(self) -> str | None:
        """None when the database answers and the audit chain can be appended to; else why not.

        Every request writes an audit event (I6), so an instance whose database is gone or
        whose chain head is missing can only refuse. Not a decision, and not audited: load
        balancers probe it every few seconds and no credential is touched.
        """
        return self.audit.readiness()

    def count_credentials(self) -> int:
        with self._session() as session:
            return int(session.scalar(select(func.count()).select_from(CredentialRow)) or 0)

    # --- administration ----------------------------------------------------------------------------

    def _admin(
        self,
        principal: Principal,
        detail: str,
        *,
        owner: str | None = None,
        name: str | None = None,
    ) -> None:
        """Decide an administrative action and audit it with what was done."""
        decision = self._decide(
            principal, policy.Request(Operation.ADMIN), None, name=name, record_allow=False
        )
        self._record(
            principal, Operation.ADMIN, decision, owner=owner, name=name, detail=detail[:500]
        )

    def ban(self, principal: Principal, kind: str, pattern: str, reason: str) -> None:
        if kind not in ("user", "host"):
            raise BadRequest("bans are of kind user or host (sites are masked in the task queue)")
        self._admin(principal, f"ban {kind} {pattern}: {reason}")
        try:
            with self._writing() as session:
                session.add(
                    BanRow(kind=kind, pattern=pattern, reason=reason, created_by=principal.identity)
                )
        except IntegrityError:
            raise BadRequest(f"{kind} {pattern!r} is already banned") from None

    def unban(self, principal: Principal, kind: str, pattern: str) -> bool:
        self._admin(principal, f"unban {kind} {pattern}")
        with self._writing() as session:
            result = session.execute(
                delete(BanRow).where(BanRow.kind == kind, BanRow.pattern == pattern)
            )
        return bool(getattr(result, "rowcount", 0))

    def lock(
        self, principal: Principal, username: str, name: str | None, message: str
    ) -> list[CredentialInfo]:
        """Lock `username`'s credential `name` (without a name: all of them), as
        myproxy-admin-query -L does: every use of it (retrieve, renew, payload proxy, key
        retrieval, storing over it) is refused with `credential.locked` and `message`,
        until `unlock`. INFO and DESTROY stay open to the owner. Decided as an admin
        action; each credential's event commits with its change (I6)."""
        return self._set_lock(principal, username, name, check_lock_message(message))

    def unlock(
        self, principal: Principal, username: str, name: str | None = None
    ) -> list[CredentialInfo]:
        """Lift the lock of `username`'s credential `name` (all of them without a name)."""
        return self._set_lock(principal, username, name, None)

    def _set_lock(
        self, principal: Principal, username: str, name: str | None, message: str | None
    ) -> list[CredentialInfo]:
        verb = "lock" if message is not None else "unlock"
        decision = self._decide(
            principal, policy.Request(Operation.ADMIN), None, name=name, record_allow=False
        )
        now = dt.datetime.now(dt.UTC)
        done: list[CredentialInfo] = []
        with self._writing() as session:
            query = select(CredentialRow).where(CredentialRow.username == username)
            if name is not None:
                query = query.where(CredentialRow.name == name)
            rows = list(session.scalars(query.order_by(CredentialRow.name)))
            found = bool(rows)
            if message is None:
                rows = [r for r in rows if r.lock_message is not None]
            for row in rows:
                row.lock_message = message
                row.locked_by = principal.identity if message is not None else None
                row.locked_at = now if message is not None else None
                session.flush()
                self._record(
                    principal,
                    Operation.ADMIN,
                    decision,
                    owner=row.owner_dn,
                    name=row.name,
                    detail=f"{verb} {username}/{row.name}" + (f": {message}" if message else ""),
                    conn=session.connection(),
                )
                done.append(_info(row))
        if not done:
            where = f"{username[:100]}/{name[:100]}" if name is not None else username[:100]
            refusal: RepositoryError = (
                BadRequest(f"no credential of {where} is locked", "credential.not_locked")
                if found
                else NotFound(
                    f'No credentials exist for username "{where}".', "credential.not_found"
                )
            )
            self._record(
                principal,
                Operation.ADMIN,
                Decision(False, refusal.rule or "credential.not_found", refusal.message),
                owner=None,
                name=name,
                detail=f"{verb} {where}: {refusal.message}",
            )
            raise refusal
        return done

    def list_bans(self, principal: Principal) -> list[BanRow]:
        self._decide(
            principal, policy.Request(Operation.ADMIN), None, name=None, record_allow=False
        )
        with self._session() as session:
            return list(session.scalars(select(BanRow).order_by(BanRow.kind, BanRow.pattern)))

    def list_credentials(
        self, principal: Principal, *, owner: str | None = None, expired: bool = False
    ) -> list[CredentialInfo]:
        """The inventory (never a key), for operators and the auditor dashboard."""
        self._decide(
            principal, policy.Request(Operation.ADMIN), None, name=None, record_allow=False
        )
        query = select(CredentialRow).order_by(
            CredentialRow.owner_dn, CredentialRow.username, CredentialRow.name
        )
        if owner:
            query = query.where(CredentialRow.owner_dn == owner)
        if expired:
            query = query.where(CredentialRow.not_after < dt.datetime.now(dt.UTC))
        with self._session() as session:
            return [_info(r) for r in session.scalars(query)]

    def inventory(self, principal: Principal, *, limit: int = 1000) -> list[CredentialInfo]:
        """The read-only credential inventory for auditors (never a key), by owner, username, name.

        Decided and audited as `audit_read` (auditors), where `list_credentials`
        is an administrative read. At most `limit` credentials.
        """
        self._decide(principal, policy.Request(Operation.AUDIT_READ), None, name=None)
        query = (
            select(CredentialRow)
            .order_by(CredentialRow.owner_dn, CredentialRow.username, CredentialRow.name)
            .limit(max(1, limit))
        )
        with self._session() as session:
            return [_info(r) for r in session.scalars(query)]

    def expire(self, principal: Principal, *, dry_run: bool = False) -> list[CredentialInfo]:
        """Delete the credentials that can no longer be used (past their end)."""
        gone = self.list_credentials(principal, expired=True)
        if gone and not dry_run:
            self._admin(principal, f"expired {len(gone)} credential(s)")
            with self._writing() as session:
                session.execute(
                    delete(CredentialRow).where(CredentialRow.not_after < dt.datetime.now(dt.UTC))
                )
        return gone

    def import_pem(self, principal: Principal, options: StoreOptions, pem: bytes) -> CredentialInfo:
        """Store a credential read from another repository (e.g. a myproxy-server storage dir).

        Like MyProxy STORE, an encrypted key stays encrypted and opens only
        with its passphrase; an unencrypted one is sealed under the master key.
        """
        self._decide(
            principal, policy.Request(Operation.ADMIN), None, name=options.name, record_allow=False
        )
        return self.store_pem(principal, options, pem)

    def rotate_master_key(self, principal: Principal | None = None) -> int:
        """Re-wrap every master-wrapped key under a new current master key."""
        if principal is not None:
            self._admin(principal, "rotate the master key")
        self.keyring.rotate()
        count = 0
        with self._writing() as session:
            for row in session.scalars(
                select(CredentialRow).where(CredentialRow.master_key_id.is_not(None))
            ):
                updated = rewrap(_sealed(row), self.keyring, aad=_aad(row.username, row.name))
                row.sealed_key = updated.to_bytes()
                row.master_key_id = updated.master_key_id
                count += 1
        return count

    # --- payload proxies for pilots (task queue) ---------------------------------------------------

    def payload_proxy(
        self,
        principal: Principal,
        task_id: int,
        csr: x509.CertificateSigningRequest,
        queue: TaskQueue,
    ) -> IssuedProxy:
        """A limited proxy of a task's owner, for the pilot the queue matched the task to (I2).

        Policy decides with the queue's assignment (which pilot, whether it
        is live, the task's wall time left) and the facts of the task's
        stored credential (`credential_username`, `credential_name`): only
        that pilot, only while the task is matched or running, never a
        pilot-owned credential. The proxy is always limited, carries a VOMS
        AC with the task's FQANs (normalised by TaskSpec) first, and lives
        no longer than the time left plus `payload_lifetime_margin`. Allow
        and deny are audited; the allow with the serial and "task <id>".
        """
        op = Operation.PAYLOAD_PROXY
        task = queue.get(task_id)
        if task is None:
            # The invariants (bans, limited peers, pilots only) still speak first.
            decision = policy.decide(
                policy.Request(op), principal, None, self.config.policy, self._bans()
            )
            if decision.allowed or decision.rule == "credential.not_found":
                decision = Decision(False, "payload.not_assigned", f"there is no task {task_id}")
            self._record(
                principal,
                op,
                decision,
                owner=None,
                name=None,
                detail=f"task {task_id}: no such task",
            )
            raise Denied(decision.reason, decision.rule)
        spec = task.spec
        try:
            plan = self._plan_acs(spec.owner, [VomsRequest(spec.vo, spec.fqans)])
        except BadRequest as exc:
            self._record(
                principal,
                op,
                Decision(False, exc.rule or "voms.unknown_vo", exc.message),
                owner=spec.owner,
                name=spec.credential_name,
                detail=f"task {task_id}: {exc.message}",
            )
            raise
        row = self._find(spec.credential_username, spec.credential_name)
        request = policy.Request(
            op,
            owner=spec.owner,
            name=spec.credential_name,
            lifetime=None,  # the assignment's time left caps it
            fqans=tuple(f for _, explicit, _ in plan for f in explicit),
            held_fqans=tuple(f for _, _, held in plan for f in held),
            assignment=queue.assignment(task_id),
        )
        facts = self._facts_in_use(row)[0] if row is not None else None
        decision = self._decide(
            principal,
            request,
            facts,
            name=spec.credential_name,
            record_allow=False,
            detail=f"task {task_id}",
        )
        assert row is not None  # policy refuses a task whose credential is missing
        decision = dataclasses.replace(decision, limited=True)  # I2, whatever policy may become
        chain = self._stored_chain(row.chain_pem)
        key = self._open_key(principal, op, row, None)
        retrieval = Retrieval(
            principal,
            op,
            decision,
            row.owner_dn,
            spec.credential_name,
            chain,
            key,
            tuple(plan),
            # "limited" also tells the issuance metrics what kind of proxy this was.
            detail=f"task {task_id} (limited)",
        )
        return self.complete_retrieval(retrieval, csr)

    # --- names (issue 15, finding 5) -----------------------------------------------------------

    def _check_store_names(
        self,
        options: StoreOptions,
        *,
        chain: Sequence[x509.Certificate] = (),
        pem: bytes | None = None,
    ) -> None:
        """Refuse (BadRequest) a store whose names or chain DNs break `proxyd.names`' rules.

        The edges check first, naming their own fields; this is the same check
        for every caller of the store paths (admin import included).
        """
        from . import names

        try:
            names.check(names.USERNAME, options.username, "username")
            names.check(names.CREDENTIAL_NAME, options.name, "credential name")
            if options.description is not None:
                names.check(names.DESCRIPTION, options.description, "description")
            for label in ("retrievers", "renewers", "trusted_retrievers", "key_retrievers"):
                names.check_patterns(getattr(options, label), label)
        except names.InvalidField as exc:
            raise BadRequest(exc.message, exc.rule) from None
        if pem is not None:
            try:
                chain = parse_credential_pem(
                    _KEY_BLOCK.sub(b"", pem), source="stored credential"
                ).certificates
            except VomsExtError:
                chain = ()  # store_pem itself says what is wrong with it
        try:
            names.check_chain_names(chain)
        except names.UnsafeName as exc:
            raise BadRequest(str(exc), "request.bad_dn") from None


def _with_reason(detail: str | None, decision: Decision) -> str | None:
    """An audit detail that also gives a denial's reason."""
    return f"{detail}: {decision.reason}" if detail and not decision.allowed else detail


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _spki(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _aad(username: str, name: str) -> bytes:
    """Binds a sealed key to its row, so keys cannot be swapped between credentials."""
    return f"proxyd-credential\x00{username}\x00{name}".encode()


def _sealed(row: CredentialRow | StoredCredential) -> SealedKey:
    return SealedKey.from_bytes(row.sealed_key)
