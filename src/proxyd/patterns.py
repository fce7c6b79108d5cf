"""DN patterns in MyProxy's language, so existing myproxy-server policies carry over unchanged.

MyProxy (gct `myproxy_server_config.c`, `regex_compare`; man page
myproxy-server.config(5), "REGULAR EXPRESSIONS") reads a pattern as a POSIX
extended regular expression after one rewrite, character by character:

    *  -> .*        ?  -> .         .  -> \\.
    \\* -> *        \\? -> ?        \\. -> .
    \\\\ -> \\        \\c -> \\c  (any other character c)

and wraps the result in `^(` ... `)$`. Matching is case-sensitive. A pattern
may start with `FQAN:` (it then matches the peer's verified VOMS FQANs
instead of its DN) or `SUBJECT:` (the DN, as without a prefix); MyProxy
compares these prefixes without regard to case. `to_ere` is that rewrite;
`translate` turns the ERE into a Python expression with the same meaning,
and refuses (`PatternError`) what has none or that myproxy-server itself
cannot compile (it then matches no one, silently):

- back-references and every backslash before a letter or digit (`\\1`,
  `\\w`, `\\d`, `\\<`): GNU or Perl syntax that POSIX reads otherwise;
- `[:alpha:]` outside a bracket expression: POSIX reads it as the set of
  the characters `:alph`, not as the class `[[:alpha:]]` it looks like
  (the man page's own example has this mistake);
- a `)` without its `(`: it would close MyProxy's `^(` early, and the
  pattern would match any DN that merely starts or ends in part of it;
- collating elements and equivalence classes other than one character,
  intervals over 255, and whatever POSIX refuses (a quantifier with
  nothing to repeat, an unclosed `(` or `[`, an unknown class, a range
  running backwards).

POSIX classes (`[[:alpha:]]` ...) are ASCII, as in the C locale that
myproxy-server runs in; text is matched by character, not by byte.

Two ways to match, for two kinds of rule:

- **allow rules** (retriever, renewer and key-retriever ACLs, admins,
  auditors, full-delegation hosts) use `matches`: MyProxy's exact,
  case-sensitive semantics, so a pattern never grants more than it did
  under myproxy-server (and one that cannot be read grants nothing);
- **deny rules** (bans, pilot classification, self-authorization) use
  `dn_denied` / `same_dn`, which err on the side of matching: a DN written
  in any spelling that X.500 name matching or the grid tools treat as the
  same name matches (attribute names in any case and their aliases such as
  `E`/`Email`/`emailAddress` and `UID`/`USERID`, values compared without
  case and with runs of spaces folded, Unicode compatibility forms folded,
  and OpenSSL's comma form in either RDN order). A deny pattern matches if
  it matches read as a regular expression (without regard to case) OR read
  as the older shell-style glob where everything but `*` and `?` is literal,
  so no ban written for the glob reading lets anyone through.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable

from voms_ext import VomsExtError
from voms_ext.fqan import parse_fqan

from .ere import MAX_REPEAT, Atom, Cat, EreError, Matcher, Node, Rep, parse, to_python

__all__ = [
    "FQAN_PREFIX",
    "MAX_REPEAT",
    "SUBJECT_PREFIX",
    "PatternError",
    "any_dn_denied",
    "any_dn_matches",
    "any_glob_matches",
    "any_matches",
    "check_pattern",
    "dn_denied",
    "dn_matches",
    "dn_spellings",
    "glob_matches",
    "matches",
    "same_dn",
    "to_ere",
    "translate",
]

FQAN_PREFIX = "FQAN:"
SUBJECT_PREFIX = "SUBJECT:"


class PatternError(ValueError):
    """A pattern proxyd cannot read as myproxy-server would. `message`: what, where, why."""

    def __init__(self, pattern: str, position: int | None, why: str) -> None:
        self.pattern = pattern
        self.position = position
        self.why = why
        shown = pattern if len(pattern) <= 80 else pattern[:80] + "..."
        where = "" if position is None else f" at character {position + 1}"
        self.message = f"pattern {shown!r}{where}: {why}"
        super().__init__(self.message)


def _split_prefix(pattern: str) -> tuple[str, str]:
    """("fqan" | "subject", the rest): MyProxy compares the prefixes without regard to case."""
    for kind, prefix in (("fqan", FQAN_PREFIX), ("subject", SUBJECT_PREFIX)):
        if pattern[: len(prefix)].upper() == prefix:
            return kind, pattern[len(prefix) :]
    return "subject", pattern


def _convert(pattern: str) -> list[tuple[str, int]]:
    """MyProxy's rewrite into ERE characters, each with the index of the pattern character
    it came from (for error messages)."""
    out: list[tuple[str, int]] = []
    escaped = False
    for at, ch in enumerate(pattern):
        if ch == "\\" and not escaped:
            escaped = True
            continue
        index = at - 1 if escaped else at  # errors point at the backslash of an escape
        if ch == "*":
            out += [(".", index), ("*", index)] if not escaped else [("*", index)]
        elif ch == "?":
            out.append(("?" if escaped else ".", index))
        elif ch == ".":
            out += [(".", index)] if escaped else [("\\", index), (".", index)]
        elif ch == "\\":  # an escaped backslash: one backslash, which escapes the next ERE char
            out.append(("\\", index))
        else:
            out += [("\\", index), (ch, index)] if escaped else [(ch, index)]
        escaped = False
    return out  # a trailing lone backslash is dropped, as MyProxy does


def to_ere(pattern: str) -> str:
    """The POSIX ERE that myproxy-server compiles for `pattern` (no prefix handling)."""
    return "^(" + "".join(ch for ch, _ in _convert(pattern)) + ")$"


@functools.lru_cache(maxsize=2048)
def _tree(body: str) -> Node:
    """The ERE tree of a pattern without its prefix; PatternError naming the pattern's own
    character (not the ERE's) where it is refused."""
    chars = _convert(body)
    try:
        return parse("".join(ch for ch, _ in chars))
    except EreError as exc:
        if exc.index < len(chars):
            position: int | None = chars[exc.index][1]
        else:
            position = len(body) - 1 if body else None
        raise PatternError(body, position, exc.why) from None


def translate(body: str) -> str:
    """A Python expression with the meaning MyProxy gives `body` (a pattern without its
    `FQAN:`/`SUBJECT:` prefix), for `re.fullmatch` with re.DOTALL; PatternError if refused.
    For people and tests: proxyd matches with `ere.Matcher`, which never backtracks."""
    return to_python(_tree(body))


@functools.lru_cache(maxsize=4096)
def _compiled(body: str, ignore_case: bool) -> Matcher | None:
    try:
        return Matcher(_tree(body), ignore_case=ignore_case)
    except PatternError:
        return None


def check_pattern(pattern: str, *, fqan: bool = True) -> None:
    """Raise PatternError unless `pattern` reads as it would under myproxy-server.

    `fqan=False` for lists that only ever see DNs (deny lists), where `FQAN:` is refused.
    """
    if not pattern:
        raise PatternError(pattern, None, "a pattern must not be empty")
    kind, body = _split_prefix(pattern)
    if kind == "fqan" and not fqan:
        raise PatternError(pattern, 0, "this list matches DNs only; 'FQAN:' is not allowed here")
    try:
        _tree(body)
    except PatternError as exc:
        offset = len(pattern) - len(body)
        position = None if exc.position is None else exc.position + offset
        raise PatternError(pattern, position, exc.why) from None


def matches(pattern: str, dn: str, fqans: Iterable[str] = ()) -> bool:
    """Does `pattern` grant `dn` (or, for an `FQAN:` pattern, one of the peer's verified
    `fqans`, in their long form), exactly as under myproxy-server? A pattern that cannot be
    read matches no one."""
    kind, body = _split_prefix(pattern)
    if kind == "fqan":
        return any(_fullmatch(body, False, _long_fqan(f)) for f in fqans)
    return _fullmatch(body, False, dn)


@functools.lru_cache(maxsize=16384)
def _fullmatch(body: str, ignore_case: bool, text: str) -> bool:
    """The decisions repeat (one WMS, thousands of retrievals): remembered."""
    matcher = _compiled(body, ignore_case)
    return matcher is not None and matcher.fullmatch(text)


@functools.lru_cache(maxsize=1024)
def _long_fqan(fqan: str) -> str:
    """The form myproxy-server matches: as VOMS writes it into the AC, with `Role=NULL` and
    `Capability=NULL` spelt out (proxyd keeps the short form)."""
    try:
        return parse_fqan(fqan).long
    except VomsExtError:
        return fqan


def any_matches(patterns: Iterable[str], dn: str, fqans: Iterable[str] = ()) -> bool:
    fqans = tuple(fqans)
    return any(matches(p, dn, fqans) for p in patterns)


def dn_matches(pattern: str, dn: str) -> bool:
    """`matches` for a peer without FQANs."""
    return matches(pattern, dn)


def any_dn_matches(patterns: Iterable[str], dn: str) -> bool:
    return any(matches(p, dn) for p in patterns)


# --- shell-style globs: proxyd's own lists (site bans, pilot sites) ------------------------------


@functools.lru_cache(maxsize=1024)
def _glob(pattern: str) -> Matcher:
    items: list[Node] = []
    for ch in pattern:
        if ch == "*":
            items.append(Rep(Atom("."), 0, None))
        else:
            items.append(Atom("." if ch == "?" else re.escape(ch)))
    return Matcher(Cat(tuple(items)))


def glob_matches(pattern: str, text: str) -> bool:
    """`*` any run of characters, `?` one, everything else literal; the whole text. For
    proxyd's own lists that never were MyProxy's (site names, pilot site bindings)."""
    return _glob_fullmatch(pattern, text)


@functools.lru_cache(maxsize=16384)
def _glob_fullmatch(pattern: str, text: str) -> bool:
    return _glob(pattern).fullmatch(text)


def any_glob_matches(patterns: Iterable[str], text: str) -> bool:
    return any(glob_matches(p, text) for p in patterns)


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
    kind, body = _split_prefix(pattern)
    if kind == "fqan":
        return False  # deny lists see DNs only (check_pattern(fqan=False) refuses these)
    targets = dn_spellings(dn)
    folded = dn_spellings(body)
    if any(_glob_fullmatch(p, t) for p in folded for t in targets):
        return True
    for candidate in (body, *folded):
        if any(_fullmatch(candidate, True, t) for t in (dn, *targets)):
            return True
    return False


def any_dn_denied(patterns: Iterable[str], dn: str) -> bool:
    return any(dn_denied(p, dn) for p in patterns)


def same_dn(a: str, b: str) -> bool:
    """Are two DNs the same name in any spelling (for rules that refuse an identity itself)?"""
    return bool(set(dn_spellings(a)) & set(dn_spellings(b)))
