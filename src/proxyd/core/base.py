"""The state the core's operations share, and the steps they all take: find, check, unseal, decide, record."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Self

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import (
    PrivateKeyTypes,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from voms_ext import (
    TrustStore,
    VomsExtError,
    parse_credential_pem,
    validate_chain,
)
from voms_ext.cache import BoundedCache

from .. import policy
from ..audit import AuditLog
from ..config import Config
from ..issuer import (
    AttributeAuthority,
    load_authorities,
)
from ..keyfiles import check_key_files
from ..metrics import LOCKOUTS
from ..peers import peer_group
from ..policy import AuthMethod, Bans, CredentialFacts, Decision, Operation
from ..principal import (
    PeerCache,
    Principal,
    validity_window,
)
from ..ratelimit import FailureLimiter
from ..sealing import (
    MasterKeyring,
    SealedKey,
    SealingError,
    UnsealedKeyCache,
    WrongPassphrase,
    seal,
    unseal,
)
from ..store.credentials import (
    CredentialReads,
    bans_of,
)
from ..store.db import make_engine, migrate, session_factory, write_transaction
from ..store.members import MemberReads
from ..vomsaa.upstream import UpstreamAuthority, load_upstreams
from .checks import (
    KEY_BLOCK,
    Verified,
    chain_refusal,
)
from .errors import BadPassphrase, BadRequest, Denied, NotFound, RepositoryError
from .gate import Clock, Gate, system_clock
from .values import (
    DEFAULT_NAME,
    StoredCredential,
    StoreOptions,
    TrialKey,
    credential_aad,
    credential_facts,
    sealed_key_of,
)


class CoreBase:
    """What every operation of the core shares: the configuration, the database and its
    gate, the master keyring, the trust store, the attribute authorities, the per-process
    memos of the request paths, and the steps they all take (find, check, unseal)."""

    def __init__(
        self,
        config: Config,
        engine: Engine,
        keyring: MasterKeyring,
        trust: TrustStore,
        authorities: dict[str, AttributeAuthority] | None = None,
        clock: Clock = system_clock,
    ) -> None:
        self.config = config
        self.clock = clock
        self.engine = engine
        self.keyring = keyring
        self.trust = trust
        # Without given authorities, membership is read from the database on every
        # issuance (proxyd admin vo changes apply at once), seeded from the TOML below.
        seed = authorities is None
        reads = MemberReads(engine)
        self.authorities = (
            authorities
            if authorities is not None
            else load_authorities(config.voms, reads.held, reads.suspension)
        )
        # VOs whose ACs come from their own VOMS servers ([[voms]] vomses); the trust store
        # is read at each use, as it is reloaded when the trust directories change.
        self.upstreams: dict[str, UpstreamAuthority] = load_upstreams(
            config.upstream_voms, lambda: self.trust
        )
        self.audit = AuditLog(engine)
        self.gate = Gate(engine, self.audit, lambda: self.config.policy, self._bans, clock)
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
        self._verdicts: BoundedCache[tuple[int, str], Verified] = BoundedCache(1024)
        self._verdicts_trust: TrustStore | None = None
        self._reads = CredentialReads(engine)
        self._argon = {
            "time_cost": config.sealing.argon2_time_cost,
            "memory_kib": config.sealing.argon2_memory_kib,
            "parallelism": config.sealing.argon2_parallelism,
        }
        if seed:
            from .members import seed_configured_members  # it builds on this class

            seed_configured_members(self.gate, config.voms, clock)

    @classmethod
    def open(cls, config: Config) -> Self:
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

    def _bans(self) -> Bans:
        """The runtime bans, read anew for every request: a ban works at once, everywhere."""
        return self._reads.current_bans()

    @property
    def database_in_process(self) -> bool:
        """SQLite: a read or a commit is a few tenths of a millisecond of this process's own
        work, never a network round trip (see MyProxyGet.retrieval_is_quick)."""
        return self.engine.dialect.name == "sqlite"

    def _find(self, username: str, name: str) -> StoredCredential | None:
        with self._reads.cursor() as cursor:
            rows = self._reads.find.run(cursor, {"username": username, "name": name})
        return StoredCredential(*rows[0]) if rows else None

    def _lookup(self, username: str, name: str) -> tuple[StoredCredential | None, Bans]:
        """The credential and the bans, read in one go (one connection, two statements)."""
        with self._reads.cursor() as cursor:
            rows = self._reads.find.run(cursor, {"username": username, "name": name})
            bans = bans_of(self._reads.bans.run(cursor))
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
        now = self.clock()
        key = (row.id, row.chain_pem)
        hit = self._verdicts.get(key)
        if hit is not None and hit.trust is trust and hit.start <= now <= hit.end:
            return None
        try:
            result = validate_chain(chain, trust, now, check_voms=False)
        except VomsExtError as exc:
            self._verdicts.pop(key)
            return chain_refusal(chain, trust, now, str(exc))
        if trust is not self._verdicts_trust:  # entries for an older store are of no use
            self._verdicts.clear()
            self._verdicts_trust = trust
        start, end = validity_window(result, trust)
        self._verdicts.put(key, Verified(trust, start, end))
        return None

    def _facts_in_use(
        self, row: StoredCredential
    ) -> tuple[CredentialFacts, tuple[x509.Certificate, ...]]:
        """The policy facts of a credential about to be used (issued from, its key handed
        out): its lock and the verdict on its chain now. Its parsed chain too."""
        chain = self._stored_chain(row.chain_pem)
        facts = credential_facts(row, self.config)
        verdict = self._chain_verdict(row, chain)
        if verdict is not None:
            facts = dataclasses.replace(facts, chain_verdict=verdict[0], chain_problem=verdict[1])
        return facts, chain

    def authorize(
        self,
        principal: Principal,
        request: policy.Request,
        facts: CredentialFacts | None = None,
        *,
        name: str | None = None,
    ) -> Decision:
        """A read decided and audited (allow and deny) through the gate; raises when refused."""
        return self.gate.read(principal, request, facts, name=name)

    def stored_facts(self, username: str, name: str) -> CredentialFacts | None:
        """What policy may know of the credential stored at (username, name), or None.
        Never its key; for the core's other services (the task queue's submit)."""
        row = self._find(username, name)
        return credential_facts(row, self.config) if row is not None else None

    def _auth_failure(
        self,
        principal: Principal,
        op: Operation,
        owner: str | None,
        name: str,
        rule: str,
        message: str,
    ) -> BadPassphrase:
        self.gate.record(principal, op, Decision(False, rule, message), owner=owner, name=name)
        return BadPassphrase(message, rule)

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
        *,
        after_decision: bool = True,
    ) -> None:
        """Refuse (and record) a passphrase attempt while its credential or peer is locked out.

        `after_decision`: policy has decided this request already (else this refusal is
        the request's only decision, see Gate.refuse)."""
        wait = self.limiter.locked(self._lock_keys(principal, username, name))
        if wait > 0:
            message = f"too many failed passphrase attempts; try again in {math.ceil(wait)} s"
            raise self.gate.refuse(
                principal,
                op,
                Decision(False, "auth.locked_out", message),
                owner=owner,
                name=name,
                after_decision=after_decision,
            )

    def _count_failure(self, principal: Principal, username: str, name: str) -> None:
        if self.limiter.failure(self._lock_keys(principal, username, name)):
            LOCKOUTS.inc()

    def _seal(self, key_pem: bytes, options: StoreOptions) -> SealedKey:
        """Under the passphrase when there is one (then only it opens the key), else the master key."""
        return seal(
            key_pem,
            passphrase=options.passphrase,
            keyring=None if options.passphrase else self.keyring,
            aad=credential_aad(options.username, options.name),
            **self._argon,
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
        self.gate.record(
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
        self,
        principal: Principal,
        op: Operation,
        row: StoredCredential,
        passphrase: str | None,
        trial: TrialKey | None = None,
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
        if trial is not None and trial.sealed_key == row.sealed_key:
            # Opened by this request's trial of the very same sealed bytes (_trial_key).
            if passphrase:
                self.limiter.success([("credential", row.username, row.name)])
            return trial.key
        sealed = sealed_key_of(row)
        try:
            key_pem = unseal(
                sealed,
                passphrase=passphrase if sealed.has_passphrase else None,
                keyring=self.keyring,
                aad=credential_aad(row.username, row.name),
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

    def _trial_key(self, row: StoredCredential, passphrase: str | None) -> TrialKey | None:
        """The key `_open_key` would open, opened without recording or counting anything
        (check_multiple_credentials tries several credentials with one passphrase); None
        when it would not open. The chosen one's goes on to `_open_key`, so that a
        passphrase costs one argon2 derivation, not two."""
        cached = self._keys.get(row.username, row.name, row.sealed_key)
        if cached is not None:
            return TrialKey(row.sealed_key, cached)  # type: ignore[arg-type]
        sealed = sealed_key_of(row)
        try:
            key_pem = unseal(
                sealed,
                passphrase=passphrase if sealed.has_passphrase else None,
                keyring=self.keyring,
                aad=credential_aad(row.username, row.name),
            )
            if b"ENCRYPTED" in key_pem.split(b"\n-----END", 1)[0]:
                if not passphrase:
                    return None
                key = serialization.load_pem_private_key(key_pem, password=passphrase.encode())
            else:
                key = serialization.load_pem_private_key(
                    key_pem, password=None, unsafe_skip_rsa_key_validation=True
                )
        except (WrongPassphrase, SealingError, ValueError, TypeError):
            return None
        return TrialKey(row.sealed_key, key)

    def record_failure(
        self, principal: Principal, op: Operation, username: str, name: str, rule: str, reason: str
    ) -> None:
        """Audit an authentication the edge itself refused (e.g. a failed renewal challenge)."""
        row = self._find(username, name)
        self.gate.refuse(
            principal,
            op,
            Decision(False, rule, reason),
            owner=row.owner_dn if row is not None else None,
            name=name,
            detail=reason[:500],
        )

    def challenge_facts(self, username: str, name: str = DEFAULT_NAME) -> CredentialFacts | None:
        """A credential's policy facts (its passphrase flag, owner and ACL patterns; no
        secrets) from one lookup, no decision; None: no such credential. The MyProxy edge
        no longer calls it (open_retrieval chooses the challenge from the lookup that
        authorizes); bench.scale times the lookup with it."""
        row = self._find(username, name)
        return None if row is None else credential_facts(row, self.config)

    def readiness(self) -> str | None:
        """None when the database answers and the audit chain can be appended to; else why not.

        Every request writes an audit event (I6), so an instance whose database is gone or
        whose chain head is missing can only refuse. Not a decision, and not audited: load
        balancers probe it every few seconds and no credential is touched.
        """
        return self.audit.readiness()

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
        from .. import names

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
                    KEY_BLOCK.sub(b"", pem), source="stored credential"
                ).certificates
            except VomsExtError:
                chain = ()  # store_pem itself says what is wrong with it
        try:
            names.check_chain_names(chain)
        except names.UnsafeName as exc:
            raise BadRequest(str(exc), "request.bad_dn") from None
