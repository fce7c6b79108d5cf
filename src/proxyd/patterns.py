"""DN patterns in MyProxy's syntax, so existing myproxy-server configs carry over.

`*` matches any run of characters, `?` one character, everything else is
literal (`.` included), and a pattern matches the whole DN. This is what
myproxy-server does with `authorized_retrievers` and friends.

Two ways to match, for two kinds of rule:

- **allow rules** (retriever, renewer and key-retriever ACLs, admins,
  auditors, full-delegation hosts) use `dn_matches`: MyProxy's exact,
  case-sensitive semantics, so a pattern never grants more than it did
  under myproxy-server;
- **deny rules** (bans, pilot classification, self-authorization) use
  `dn_denied` / `same_dn`, which err on the side of matching: a DN written
  in any spelling that X.500 name matching or the grid tools treat as the
  same name matches (attribute names in any case and their aliases such as
  `E`/`Email`/`emailAddress` and `UID`/`USERID`, values compared without
  case and with runs of spaces folded, Unicode compatibility forms folded,
  and OpenSSL's comma form in either RDN order).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable


@functools.lru_cache(maxsize=1024)
def _compile(pattern: str) -> re.Pattern[str]:
    parts = []
    for ch in pattern:
        if ch == "*":
            parts.append(".*")
        elif ch == "?":
            parts.append(".")
        else:
            parts.append(re.escape(ch))
    return re.compile("".join(parts), re.DOTALL)


def dn_matches(pattern: str, dn: str) -> bool:
    return _compile(pattern).fullmatch(dn) is not None


def any_dn_matches(patterns: Iterable[str], dn: str) -> bool:
    return any(dn_matches(p, dn) for p in patterns)


# --- deny rules: every spelling of a name matches ----------------------------------------------

# Attribute names as the grid tools spell them, folded to one name each.
_ALIASES = {
    "e": "emailaddress",
    "email": "emailaddress",
    "emailaddress": "emailaddress",
    "userid": "uid",
    "uid": "uid",
    "s": "st",
    "st": "st",
    "stateorprovincename": "st",
    "commonname": "cn",
    "countryname": "c",
    "organizationname": "o",
    "organizationalunitname": "ou",
    "localityname": "l",
    "domaincomponent": "dc",
    "0.9.2342.19200300.100.1.25": "dc",
    "0.9.2342.19200300.100.1.1": "uid",
    "1.2.840.113549.1.9.1": "emailaddress",
    "2.5.4.3": "cn",
}
_KEY = r"[A-Za-z][A-Za-z0-9\-]*|[0-9]+(?:\.[0-9]+)+"
_SLASH_RDN = re.compile(r"/(?=\s*(?:" + _KEY + r")\s*=)")
_COMMA_RDN = re.compile(r"(?<!\\)[,;](?=\s*(?:" + _KEY + r")\s*=)")
_AVA = re.compile(r"^\s*(" + _KEY + r")\s*=\s*(.*?)\s*$", re.DOTALL)
_SPACES = re.compile(r"\s+")


def _fold_rdn(rdn: str) -> str:
    match = _AVA.match(rdn)
    if match is None:  # a pattern's wildcard part, or text that is no attribute
        return _SPACES.sub(" ", rdn).casefold()
    name = match.group(1).lower()
    value = _SPACES.sub(" ", match.group(2)).casefold()
    return f"{_ALIASES.get(name, name)}={value}"


@functools.lru_cache(maxsize=4096)
def dn_spellings(text: str) -> tuple[str, ...]:
    """The folded slash forms of a DN or DN pattern (two for OpenSSL's comma form: it is
    printed in either RDN order, RFC 2253 reversed or `openssl x509 -subject` forward)."""
    text = unicodedata.normalize("NFKC", text).strip()
    if (
        text.startswith("/") or "/" in text.split("=", 1)[0]
    ):  # slash form (or a pattern like */CN=x)
        rdns = _SLASH_RDN.split(text)
        return ("/".join(_fold_rdn(r) for r in rdns),)
    rdns = [r for r in _COMMA_RDN.split(text)]
    if len(rdns) < 2 and "=" not in text:
        return (_fold_rdn(text),)
    forward = "/" + "/".join(_fold_rdn(r) for r in rdns)
    backward = "/" + "/".join(_fold_rdn(r) for r in reversed(rdns))
    return (forward, backward)


def dn_denied(pattern: str, dn: str) -> bool:
    """Does a deny-rule pattern match `dn` in any of their spellings (see the module doc)?"""
    targets = dn_spellings(dn)
    return any(_compile(p).fullmatch(t) is not None for p in dn_spellings(pattern) for t in targets)


def any_dn_denied(patterns: Iterable[str], dn: str) -> bool:
    return any(dn_denied(p, dn) for p in patterns)


def same_dn(a: str, b: str) -> bool:
    """Are two DNs the same name in any spelling (for rules that refuse an identity itself)?"""
    return bool(set(dn_spellings(a)) & set(dn_spellings(b)))
