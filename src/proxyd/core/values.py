"""The values the core hands the edges and passes between its parts: never a key in a repr."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    PrivateKeyTypes,
)

from voms_ext import AttributeCertificate

from ..config import Config
from ..issuer import (
    AttributeAuthority,
)
from ..policy import CredentialFacts, Decision, Operation
from ..principal import (
    Principal,
    is_pilot_identity,
)
from ..sealing import (
    SealedKey,
)
from ..store.credentials import STORED_FIELDS
from ..store.models import CredentialRow
from ..vomsaa.upstream import UpstreamAuthority

DEFAULT_NAME = "default"


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
    ac_plan: tuple[
        tuple[AttributeAuthority | UpstreamAuthority, tuple[str, ...], tuple[str, ...]], ...
    ]
    detail: str | None = None  # the audit detail of the issuance (default: limited/full)
    # The ACs the VO's own servers issued while authorizing, one per upstream entry of ac_plan.
    upstream_acs: tuple[AttributeCertificate, ...] = ()

    def __repr__(self) -> str:
        return f"Retrieval(owner={self.owner!r}, name={self.name!r}, rule={self.decision.rule!r})"


@dataclass(frozen=True)
class TrialKey:
    """A stored key opened while trying a user's credentials (check_multiple_credentials),
    bound to the sealed bytes it came from; handed to the real opening of the same request."""

    sealed_key: bytes
    key: PrivateKeyTypes

    def __repr__(self) -> str:
        return "TrialKey(<key>)"


@dataclass(frozen=True)
class ChallengeFirst:
    """A MyProxy GET to be answered with a renewal challenge (policy.challenge) before anything
    is decided: the peer may renew the credential and is not its trusted retriever."""


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


def credential_facts(row: CredentialRow | StoredCredential, config: Config) -> CredentialFacts:
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


def credential_info(row: CredentialRow | StoredCredential) -> CredentialInfo:
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


def sealed_key_of(row: CredentialRow | StoredCredential) -> SealedKey:
    return SealedKey.from_bytes(row.sealed_key)


def credential_aad(username: str, name: str) -> bytes:
    """Binds a sealed key to its row, so keys cannot be swapped between credentials."""
    return f"proxyd-credential\x00{username}\x00{name}".encode()


if tuple(f.name for f in dataclasses.fields(StoredCredential)) != STORED_FIELDS:
    raise ImportError("StoredCredential's fields differ from store.credentials.STORED_FIELDS")
