"""Signing proxies from stored credentials, with VOMS ACs from our attribute authority.

The issuer never takes the requester's word for what it gets: the proxy's
type, subject and lifetime come from the policy decision, and only the
public key is taken from the CSR. ACs are cached per (holder, VO, FQANs)
and reused while they outlive the proxy they go into.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)

from voms_ext import (
    AttributeCertificate,
    AttributeCertificateBuilder,
    FqanError,
    ProxyBuilder,
    ProxyType,
    VomsExtError,
    classify,
    load_credential_file,
    parse_fqan,
)
from voms_ext.cache import BoundedCache
from voms_ext.proxy import BACKDATE

from .config import VoConfig

_SHA256 = hashes.SHA256()
AC_ROUNDING = dt.timedelta(hours=1)


def _round_up(t: dt.datetime, step: dt.timedelta) -> dt.datetime:
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    units = -(-(t - epoch) // step)
    return epoch + units * step


class IssueError(Exception):
    """A proxy or AC that cannot be issued; the message is safe to show the client."""


@dataclass(frozen=True)
class VomsRequest:
    """`VONAME=dteam` or `VONAME=dteam:/dteam/Role=production`, parsed."""

    vo: str
    fqans: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> VomsRequest:
        vo, sep, rest = text.partition(":")
        if not vo or "/" in vo:
            raise IssueError(f"VOMS request {text!r}: expected VO or VO:/VO/group/Role=role")
        fqans: tuple[str, ...] = ()
        if sep:
            try:
                fqan = parse_fqan(rest)
            except FqanError as exc:
                raise IssueError(f"VOMS request {text!r}: {exc}") from None
            if fqan.vo != vo:
                raise IssueError(f"VOMS request {text!r}: FQAN is not in VO {vo}")
            fqans = (str(fqan),)
        return cls(vo, fqans)


def merge_voms_requests(requests: Sequence[VomsRequest]) -> list[VomsRequest]:
    """One request per VO, in first-seen order, FQANs concatenated (myproxy sends VONAME repeatedly)."""
    merged: dict[str, list[str]] = {}
    for r in requests:
        bucket = merged.setdefault(r.vo, [])
        bucket.extend(f for f in r.fqans if f not in bucket)
    return [VomsRequest(vo, tuple(fqans)) for vo, fqans in merged.items()]


# (VO, DN) -> the FQANs the DN holds in the VO, () for no member: the database's
# `vo_members` (store.members.MemberReads.held) in a server, the TOML table without one.
MemberSource = Callable[[str, str], tuple[str, ...]]
# (VO, DN) -> why a VO admin suspended the DN in the VO, None when not suspended
# (store.members.MemberReads.suspension); a suspended member holds nothing in MemberSource.
SuspensionSource = Callable[[str, str], str | None]


class AttributeAuthority:
    """proxyd's VOMS attribute authority for one VO.

    Membership comes from `members`, asked on every issuance (a change made with
    `proxyd admin vo` applies to the next request); without it, from the TOML table.
    """

    def __init__(
        self,
        config: VoConfig,
        members: MemberSource | None = None,
        suspensions: SuspensionSource | None = None,
    ) -> None:
        self.config = config
        self._members = members
        self._suspensions = suspensions
        try:
            cred = load_credential_file(config.aa_cert)
            key = serialization.load_pem_private_key(config.aa_key.read_bytes(), password=None)
        except (OSError, ValueError, TypeError, VomsExtError) as exc:
            raise IssueError(f"VO {config.vo}: cannot load the AA credential: {exc}") from None
        self.cert = cred.certificate
        self.chain = cred.chain
        if not isinstance(key, rsa.RSAPrivateKey):
            raise IssueError(f"VO {config.vo}: the AA key {config.aa_key} must be an RSA key")
        self._key = key
        # Keyed by (holder fingerprint, FQANs); bounded however many holders come.
        self._cache: BoundedCache[tuple[bytes, tuple[str, ...]], AttributeCertificate] = (
            BoundedCache(10_000)
        )

    @property
    def vo(self) -> str:
        return self.config.vo

    def held_fqans(self, dn: str) -> tuple[str, ...]:
        if self._members is not None:
            return self._members(self.vo, dn)
        return self.config.members.get(dn, ())

    def suspension(self, dn: str) -> str | None:
        """Why `dn` is suspended in this VO; None when it is not (the TOML table suspends none)."""
        return self._suspensions(self.vo, dn) if self._suspensions is not None else None

    def default_fqans(
        self, dn: str, requested: Sequence[str] = (), held: Sequence[str] | None = None
    ) -> tuple[str, ...]:
        """What VOMS grants: the requested FQANs first, then every group (no roles) held.

        `held`: what `held_fqans(dn)` answered for this request (saves reading it again)."""
        out = list(requested)
        for fqan in self.held_fqans(dn) if held is None else held:
            if parse_fqan(fqan).role is None and fqan not in out:
                out.append(fqan)
        return tuple(out)

    def issue(
        self,
        holder: x509.Certificate,
        fqans: Sequence[str],
        not_after: dt.datetime,
        now: dt.datetime,
    ) -> AttributeCertificate:
        """An AC valid until `not_after` rounded up to the hour (at most the VO's maximum).

        The AC is sized to the proxy that carries it, as VOMS does; rounding
        lets proxies of similar lifetimes share one cached AC. A cached AC is
        reused while it covers the proxy and does not outlast it by more
        than the rounding.
        """
        key = (holder.fingerprint(_SHA256), tuple(fqans))
        ceiling = now + self.config.max_lifetime
        limit = min(not_after, ceiling)
        # Not `valid=`: an AC too long for this proxy may still fit the next one.
        cached = self._cache.get(key)
        if (
            cached is not None
            and cached.not_before <= now
            and limit <= cached.not_after <= limit + AC_ROUNDING
        ):
            return cached
        end = min(_round_up(limit, AC_ROUNDING), ceiling)
        ac = (
            AttributeCertificateBuilder()
            .vo(self.vo)
            .uri(self.config.uri)
            .fqans(fqans)
            .holder(holder)
            .validity(now - BACKDATE, end)
            .sign(self.cert, self._key, self.chain)
        )
        self._cache.put(key, ac)
        return ac


def load_authorities(
    vos: Sequence[VoConfig],
    members: MemberSource | None = None,
    suspensions: SuspensionSource | None = None,
) -> dict[str, AttributeAuthority]:
    return {vo.vo: AttributeAuthority(vo, members, suspensions) for vo in vos}


@dataclass(frozen=True)
class IssuedProxy:
    certificates: tuple[x509.Certificate, ...]  # new proxy first, then the stored chain
    acs: tuple[AttributeCertificate, ...]

    @property
    def proxy(self) -> x509.Certificate:
        return self.certificates[0]


def issue_proxy(
    chain: Sequence[x509.Certificate],
    key: CertificateIssuerPrivateKeyTypes,
    public_key: CertificatePublicKeyTypes,
    *,
    limited: bool,
    lifetime: dt.timedelta,
    acs: Sequence[AttributeCertificate] = (),
    now: dt.datetime | None = None,
) -> IssuedProxy:
    """Sign a proxy for `public_key` with the stored credential (`chain[0]` and `key`).

    I4: the proxy ends no later than `now + lifetime`, the stored chain and every AC it carries.
    """
    now = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    end = now + lifetime
    for ac in acs:
        end = min(end, ac.not_after)
    if end <= now:
        raise IssueError("the attribute certificate would expire before the proxy starts")
    builder = ProxyBuilder(chain[0], chain[1:]).public_key(public_key).lifetime(end - now)
    builder = builder.limited() if limited else builder.impersonation()
    if acs:
        builder = builder.attribute_certificates(acs)
    proxy = builder.sign(key, now=now)
    return IssuedProxy((proxy, *chain), tuple(acs))


def end_entity(chain: Sequence[x509.Certificate]) -> x509.Certificate:
    """The end-entity certificate of a stored chain: the holder of its ACs."""
    for cert in chain:
        if classify(cert).type is ProxyType.EEC:
            return cert
    raise IssueError("the stored chain has no end-entity certificate")


def authorities_for(authorities: Mapping[str, AttributeAuthority], vo: str) -> AttributeAuthority:
    aa = authorities.get(vo)
    if aa is None:
        known = ", ".join(sorted(authorities)) or "none"
        raise IssueError(f"VO {vo!r} is not served by this proxyd (served: {known})")
    return aa
