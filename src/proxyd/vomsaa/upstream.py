"""ACs from the VO's own VOMS servers, obtained as the credential's owner ([[voms]] vomses).

To put an AC into a proxy it issues, proxyd asks the VO's server for it,
authenticated with a short-lived proxy it signs with the stored credential:
the stored key never leaves proxyd, and the VO decides what the owner holds
(policy's `voms.fqan_not_held` applies to local AAs only). Every AC is
verified against `voms_dir` as libvomsapi would before it is returned;
one that does not verify is never embedded (`voms.upstream_bad_ac`).

Two per-process caches keep a hot GET free of round trips and RSA key
generation, and neither can hand out anything wrong:

* the authentication proxy and its TLS context, per stored chain, reused
  for AUTH_REUSE of its AUTH_LIFETIME;
* the ACs, per (holder certificate, FQANs), reused only while the AC covers
  the new proxy and outlasts it by at most about an hour (ACs are asked to
  end just before the hour after the proxy, so proxies of one hour share
  one), for at most
  AC_REUSE after it was fetched, and verified again against the current
  trust store on every reuse. A suspension or role removal at the VO thus
  reaches new proxies within AC_REUSE; ACs already issued keep their own
  lifetime, as with any VOMS AC.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PrivateKeyTypes,
)

from voms_ext import (
    AttributeCertificate,
    ProxyBuilder,
    TrustStore,
    VomsExtError,
    verify_attribute_certificate,
)
from voms_ext.cache import BoundedCache

from ..issuer import AC_ROUNDING, IssueError, end_entity
from . import wire
from .client import Fetched, UpstreamRefusal, VomsAaClient, client_context
from .vomses import UpstreamVoConfig, select

log = logging.getLogger("proxyd.vomsaa")
_SHA256 = hashes.SHA256()
AUTH_LIFETIME = dt.timedelta(minutes=15)
AUTH_REUSE = dt.timedelta(minutes=5)
AC_REUSE = dt.timedelta(minutes=10)
# ACs are asked to end a minute before the hour after the proxy: a server that grants
# exactly what is asked (VOMS) and one that rounds up to the hour (proxyd's [aa]) both give
# an AC that covers the proxy and that later proxies of the hour can share.
_SLACK = dt.timedelta(minutes=1)

__all__ = ["AC_REUSE", "UpstreamAuthority", "UpstreamRefusal", "load_upstreams"]


@dataclass(frozen=True)
class _Auth:
    context: ssl.SSLContext
    made: dt.datetime


@dataclass(frozen=True)
class _Cached:
    ac: AttributeCertificate
    fetched: dt.datetime


def _round_up(t: dt.datetime, step: dt.timedelta) -> dt.datetime:
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return epoch + -(-(t - epoch) // step) * step


def asked_end(limit: dt.datetime) -> dt.datetime:
    """When an AC for a proxy ending at `limit` is asked to end: a minute before the first
    hour that is at least two minutes after `limit`, so between one and 61 minutes after it."""
    return _round_up(limit + 2 * _SLACK, AC_ROUNDING) - _SLACK


class UpstreamAuthority:
    """The VO's VOMS servers as the source of its ACs, for one VO."""

    def __init__(
        self,
        config: UpstreamVoConfig,
        trust: Callable[[], TrustStore],
        client: VomsAaClient | None = None,
    ) -> None:
        self.config = config
        self._trust = trust
        self.client = client or VomsAaClient(config.timeout.total_seconds())
        self._auth: BoundedCache[bytes, _Auth] = BoundedCache(1024)
        self._acs: BoundedCache[tuple[bytes, tuple[str, ...]], _Cached] = BoundedCache(10_000)
        self._lock = threading.Lock()
        self.last_fetch: Fetched | None = None  # what the last round trip did (tests, logs)
        self.fetches = 0

    @property
    def vo(self) -> str:
        return self.config.vo

    def obtain(
        self,
        chain: Sequence[x509.Certificate],
        key: PrivateKeyTypes,
        fqans: Sequence[str],
        lifetime: dt.timedelta,
        now: dt.datetime,
        vomses_lines: Sequence[str] = (),
    ) -> AttributeCertificate:
        """A verified AC for the owner of `chain` (signed with `key`), with `fqans` asked for,
        for a proxy living `lifetime` from `now`; UpstreamRefusal when there is none.

        Blocking (network): call it from a worker thread, outside any database transaction.
        """
        try:
            holder = end_entity(chain)
        except IssueError as exc:
            raise UpstreamRefusal(wire.RULE_BAD_REQUEST, str(exc)) from None
        limit = now + min(lifetime, self.config.max_lifetime)
        cache_key = (holder.fingerprint(_SHA256), tuple(fqans))
        cached = self._acs.get(cache_key)
        if (
            cached is not None
            and now - cached.fetched <= AC_REUSE
            and limit <= cached.ac.not_after <= limit + AC_ROUNDING + 2 * _SLACK
        ):
            try:
                return self._verified(cached.ac, holder, now)
            except UpstreamRefusal:
                pass  # the trust store changed: ask the server again
        end = asked_end(limit)
        ask = min(end - now, self.config.max_lifetime)
        request = wire.AcRequest(tuple(fqans), max(60, int(ask.total_seconds())))
        servers = select(self.config.servers, vomses_lines)
        fetched = self.client.fetch(servers, self._context(chain, key), request)
        with self._lock:
            self.last_fetch = fetched
            self.fetches += 1
        log.info(
            "VOMS AC for VO %s from %s via %s%s",
            self.vo,
            fetched.server,
            fetched.protocol,
            f" (REST unusable: {fetched.fallback_reason})" if fetched.fallback_reason else "",
        )
        ac = self._verified(fetched.ac, holder, now)
        self._acs.put(cache_key, _Cached(ac, now))
        return ac

    def _verified(
        self, ac: AttributeCertificate, holder: x509.Certificate, now: dt.datetime
    ) -> AttributeCertificate:
        if ac.vo != self.vo:
            raise UpstreamRefusal(
                wire.RULE_BAD_AC, f"{ac.describe()}: the AC is for VO {ac.vo!r}, not {self.vo!r}"
            )
        try:
            verify_attribute_certificate(ac, holder, self._trust(), now)
        except VomsExtError as exc:
            raise UpstreamRefusal(wire.RULE_BAD_AC, str(exc)) from None
        return ac

    def _context(self, chain: Sequence[x509.Certificate], key: PrivateKeyTypes) -> ssl.SSLContext:
        """The TLS context of an authentication proxy of `chain[0]`, made or reused.

        On the wall clock, not the core's: the proxy is shown in a handshake right now.
        """
        now = dt.datetime.now(dt.UTC)
        fingerprint = chain[0].fingerprint(_SHA256)
        auth = self._auth.get(fingerprint)
        if auth is not None and auth.made <= now < auth.made + AUTH_REUSE:
            return auth.context
        proxy_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        try:
            proxy = (
                ProxyBuilder(chain[0], chain[1:])
                .public_key(proxy_key.public_key())
                .lifetime(AUTH_LIFETIME)
                .sign(cast(CertificateIssuerPrivateKeyTypes, key), now=now)
            )
        except VomsExtError as exc:
            raise UpstreamRefusal(
                wire.RULE_BAD_REQUEST, f"cannot make a proxy to authenticate with: {exc}"
            ) from None
        cert_dir = self._trust().cert_dir
        if cert_dir is None:  # pragma: no cover - a server's trust store comes from a directory
            raise UpstreamRefusal(wire.RULE_UNREACHABLE, "no CA directory to verify servers with")
        context = client_context(cert_dir, (proxy, *chain), proxy_key)
        self._auth.put(fingerprint, _Auth(context, now))
        return context


def load_upstreams(
    vos: Sequence[UpstreamVoConfig], trust: Callable[[], TrustStore]
) -> dict[str, UpstreamAuthority]:
    return {vo.vo: UpstreamAuthority(vo, trust) for vo in vos}
