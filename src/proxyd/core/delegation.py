"""Delegation in: MyProxy PUT/STORE, the HTTPS delegation, and the operator's import."""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from voms_ext import (
    VomsExtError,
    parse_credential_pem,
    validate_chain,
)
from voms_ext.files import private_key_to_pem

from .. import policy
from ..policy import Decision, Operation
from ..principal import (
    Principal,
    PrincipalKind,
    identity_of,
)
from ..sealing import (
    SealedKey,
)
from ..store.models import CredentialRow, PendingDelegationRow
from .base import CoreBase
from .checks import (
    KEY_BLOCK,
    MAX_PENDING_PER_ACTOR,
    MIN_PASSPHRASE,
    spki,
    token_hash,
)
from .errors import BadRequest, Denied
from .values import (
    CredentialInfo,
    PendingStore,
    StoreOptions,
    credential_facts,
    credential_info,
)


class Delegation(CoreBase):
    """Storing credentials: the two-step delegation (the server makes the key), STORE of a
    PEM credential, and the operator's import."""

    def begin_store(self, principal: Principal, options: StoreOptions) -> PendingStore:
        """Check the store is allowed, then make the key pair and a CSR for the client to sign.

        Two decisions, two events: this one (the server makes a key and hands out its
        CSR) and the store's own, made anew when the signed chain arrives (`finish_store`:
        the chain names the owner, and a ban may have come meanwhile).
        """
        self._check_store_names(options)
        if options.passphrase is not None and len(options.passphrase) < MIN_PASSPHRASE:
            raise BadRequest(
                f"Pass phrase too short.  Must be at least {MIN_PASSPHRASE} characters long."
            )
        decision = self._decide_store(principal, options, owner=principal.identity)
        self.gate.allow(
            principal,
            Operation.STORE,
            decision,
            owner=principal.identity,
            name=options.name,
            detail="delegation begun: key pair made, certificate request sent",
        )
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "proxy")]))
            .sign(key, hashes.SHA256())
        )
        sealed = self._seal(private_key_to_pem(key), options)
        return PendingStore(principal, options, key, csr, sealed)

    def save_pending(
        self, pending: PendingStore, ttl: dt.timedelta = dt.timedelta(minutes=5)
    ) -> str:
        """Keep a delegation for its second request, on any worker or instance; returns its token."""
        token = secrets.token_urlsafe(24)
        now = self.clock()
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
                    token_hash=token_hash(token),
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
        now = self.clock()
        with self._writing() as session:
            row = session.get(PendingDelegationRow, token_hash(token))
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
        ours = spki(pending.csr.public_key())
        if spki(chain[0].public_key()) != ours:
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
        facts = credential_facts(existing, self.config) if existing is not None else None
        return self.gate.decide(principal, request, facts, name=options.name)

    def store_pem(self, principal: Principal, options: StoreOptions, pem: bytes) -> CredentialInfo:
        """MyProxy STORE: certificate, key and chain as PEM text, the key possibly encrypted.

        An encrypted key stays encrypted (we never see its passphrase); it
        is sealed under the master key and opens only with the passphrase.
        """
        self._check_store_names(options, pem=pem)
        key_blocks = [m.group(0) for m in KEY_BLOCK.finditer(pem)]
        if len(key_blocks) != 1:
            raise BadRequest(
                f"stored credential: expected one private key, found {len(key_blocks)}"
            )
        key_pem = key_blocks[0]
        certs_only = KEY_BLOCK.sub(b"", pem)
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
        now = self.clock()
        try:
            result = validate_chain(chain, self.trust, now, check_voms=False)
            owner = identity_of(result)
        except VomsExtError as exc:
            raise BadRequest(f"the delegated chain does not validate: {exc}") from None
        if principal.kind is PrincipalKind.OPERATOR:
            # An import by the local operator (proxyd admin import-myproxy): an admin decision.
            decision = self.gate.decide(
                principal, policy.Request(Operation.ADMIN), None, name=options.name
            )
        else:
            decision = self._decide_store(principal, options, owner=owner)
        ceiling = self.config.policy.max_stored_lifetime
        max_lifetime = min(options.lifetime or ceiling, ceiling)
        if sealed is None:
            assert key_pem is not None
            sealed = self._seal(key_pem, options)
        chain_pem = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in chain)
        with self.gate.act(
            principal, Operation.STORE, decision, owner=owner, name=options.name
        ) as act:
            act.lifetime = max_lifetime
            session = act.session
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
            row.retrievers = list(options.retrievers) if options.retrievers is not None else None
            row.renewers = list(options.renewers) if options.renewers is not None else None
            row.trusted_retrievers = (
                list(options.trusted_retrievers) if options.trusted_retrievers is not None else None
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
                # Lost a race after the decision: the gate records this refusal (I6).
                raise Denied(
                    f'credentials for username "{options.username}" were stored concurrently',
                    "store.conflict",
                ) from None
            info = credential_info(row)
        return info

    def import_pem(self, principal: Principal, options: StoreOptions, pem: bytes) -> CredentialInfo:
        """Store a credential read from another repository (e.g. a myproxy-server storage dir).

        Like MyProxy STORE, an encrypted key stays encrypted and opens only
        with its passphrase; an unencrypted one is sealed under the master key.
        Decided as an admin action once the chain has been read (`_store_chain`).
        """
        return self.store_pem(principal, options, pem)
