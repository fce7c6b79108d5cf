"""`[tokens]`: proxyd as a token issuer (outbound) and the issuers it trusts (inbound).

[tokens]
issuer = "https://proxyd.example.org:8443"   # iss of the tokens proxyd signs; off if unset
max_lifetime = "12h"                         # no token outlives this (nor its proxy)
leeway = "60s"                               # clock skew allowed on inbound tokens (<= 5m)
[tokens.scopes]                              # per VO: the scope of payload tokens
dteam = ["storage.read:/", "storage.create:/"]  # relative to the storage's base_path for dteam
[[tokens.issuers]]                           # inbound: whose tokens are accepted
url = "https://iam.example.org/"
audiences = ["https://proxyd.example.org"]
scope = "proxyd.retrieve"
vo = "dteam"
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..configsection import ConfigError, Section
from .profile import MAX_LEEWAY, TrustedIssuer


@dataclass(frozen=True)
class TokensConfig:
    issuer: str | None = None  # None: proxyd issues no tokens
    key_dir: Path | None = None  # default: <state_dir>/token-keys
    max_lifetime: dt.timedelta = dt.timedelta(hours=12)
    leeway: dt.timedelta = dt.timedelta(seconds=60)
    scopes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    issuers: tuple[TrustedIssuer, ...] = ()

    @property
    def issuing(self) -> bool:
        return self.issuer is not None


def parse_tokens(t: Section) -> TokensConfig:

    issuer = t.str("issuer")
    if issuer is not None and (not issuer.startswith("https://") or issuer.endswith("/")):
        raise ConfigError(
            f"{t.where('issuer')} must be the https:// URL of proxyd's API without a trailing "
            f"slash (relying parties fetch {issuer!r}/.well-known/openid-configuration)"
        )
    leeway = t.duration("leeway", dt.timedelta(seconds=60))
    if leeway > MAX_LEEWAY:
        raise ConfigError(f"{t.where('leeway')} must be at most 5 minutes")
    scopes: dict[str, tuple[str, ...]] = {}
    for vo, value in t.table("scopes").items():
        if not isinstance(value, list) or not all(
            isinstance(v, str) and v and " " not in v for v in value
        ):
            raise ConfigError(f"{t.where('scopes')}: {vo!r} must be a list of scope strings")
        scopes[vo] = tuple(value)
    entries: Any = t.data.get("issuers", [])
    t.seen.add("issuers")
    if not isinstance(entries, list):
        raise ConfigError(f"{t.where('issuers')} must be an array of tables ([[tokens.issuers]])")
    issuers = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(f"{t.where('issuers')} entry {index + 1} must be a table")
        s = Section(t.source, f"tokens.issuers #{index + 1}", entry)
        url = s.str("url", required=True) or ""
        if not url.startswith("https://"):
            raise ConfigError(f"{s.where('url')} must be an https:// URL, got {url!r}")
        audiences = s.strings("audiences")
        if not audiences:
            raise ConfigError(f"{s.where('audiences')} must name at least one audience")
        issuers.append(TrustedIssuer(url, audiences, s.str("scope"), s.str("vo")))
        s.finish()
    urls = [i.url for i in issuers]
    if len(set(urls)) != len(urls):
        raise ConfigError(f"{t.where('issuers')}: an issuer URL appears twice")
    return TokensConfig(
        issuer=issuer,
        key_dir=t.path("key_dir"),
        max_lifetime=t.duration("max_lifetime", dt.timedelta(hours=12)),
        leeway=leeway,
        scopes=scopes,
        issuers=tuple(issuers),
    )
