"""What proxyd accepts as a username, credential name, description, ACL pattern or DN.

One module decides and every edge asks here (the MyProxy and HTTPS edges,
the CLIs, the repository's store paths), so a name refused on one edge is
refused on all. It also says how to show text that came from outside
(`escape`, `shown`): tables, CSV, MyProxy answers and error messages never
carry a raw control character.

Unsafe characters are those of the Unicode categories Cc (controls: NUL,
newline, ESC, ...), Cf (format: the bidi overrides U+202A-202E and isolates
U+2066-2069, zero-width characters, ...), Zl and Zp (U+2028, U+2029), Cs
(surrogates) and Co (private use). They forge lines in logs and tables,
break the MyProxy `KEY=VALUE` framing, or make one name display as another.

The rules (each a `Kind`):

- credential name: 1 to 64 characters among letters, digits and `. _ - @ + :`.
  Enough for `default`, CRAB's hex hashes, `wms-use`, `user@vo`; no `=` (a
  name is part of `CRED_<name>_*` keys in MyProxy INFO answers) and no `,`
  (`ADDL_CREDS` is a comma-separated list). An absent or empty name means
  the default credential and is resolved before the check.
- username: 1 to 255 characters (the database column), none unsafe. MyProxy
  usernames are often DNs or e-mail addresses, so anything printable goes.
- description: up to 1024 characters, none unsafe.
- DN pattern (retriever, renewer, trusted-retriever and key-retriever ACLs):
  1 to 1024 characters, none unsafe, and a pattern that `proxyd.patterns`
  reads as myproxy-server would (`check_patterns`; one regular expression
  each, never split on commas).
- a certificate DN: no unsafe character in the subject or issuer (slash
  form) of any certificate of a chain presented for authentication or
  storage (`check_chain_names`).
"""

from __future__ import annotations

import argparse
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509

from voms_ext import DistinguishedNameError
from voms_ext.names import dn_to_slash

from .patterns import PatternError, check_pattern

__all__ = [
    "CREDENTIAL_NAME",
    "DESCRIPTION",
    "DN_PATTERN",
    "MAX_DESCRIPTION",
    "MAX_NAME",
    "MAX_PATTERN",
    "MAX_USERNAME",
    "UNSAFE_CATEGORIES",
    "USERNAME",
    "InvalidField",
    "Kind",
    "UnsafeName",
    "argument",
    "check",
    "check_chain_names",
    "check_patterns",
    "escape",
    "first_unsafe",
    "shown",
]

MAX_NAME = 64
MAX_USERNAME = 255
MAX_DESCRIPTION = 1024
MAX_PATTERN = 1024
SHOWN_CHARS = 64  # how much of a refused value an error message repeats
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})
_NAME = re.compile(r"[A-Za-z0-9._@+:\-]+")


@dataclass(frozen=True)
class Kind:
    """A kind of text that requests carry: its rule, as refusals state it, and its length bounds."""

    label: str
    rule: str
    low: int
    high: int


USERNAME = Kind(
    "username",
    f"a username is 1 to {MAX_USERNAME} printable characters (no control or format characters)",
    1,
    MAX_USERNAME,
)
CREDENTIAL_NAME = Kind(
    "credential_name",
    f"a credential name is 1 to {MAX_NAME} characters from [A-Za-z0-9._@+:-]",
    1,
    MAX_NAME,
)
DESCRIPTION = Kind(
    "description",
    f"a description is at most {MAX_DESCRIPTION} printable characters "
    "(no control or format characters)",
    0,
    MAX_DESCRIPTION,
)
DN_PATTERN = Kind(
    "pattern",
    f"a DN pattern is 1 to {MAX_PATTERN} printable characters (no control or format characters)",
    1,
    MAX_PATTERN,
)


class InvalidField(ValueError):
    """A request field refused by its rule. `message` names the field and the rule.

    It repeats at most `SHOWN_CHARS` characters of the value, escaped, so it
    is safe to send to the client and to log.
    """

    def __init__(self, field: str, kind: Kind, value: str, why: str) -> None:
        self.field = field
        self.kind = kind
        self.why = why
        self.message = f"{field} {shown(value)} refused: {why}; {kind.rule}"
        super().__init__(self.message)

    @property
    def rule(self) -> str:
        """A stable name for the refusal (problem details, audit): `request.bad_<kind>`."""
        return f"request.bad_{self.kind.label}"


class UnsafeName(DistinguishedNameError):
    """A certificate whose subject or issuer DN holds an unsafe character (refused to authenticate)."""


def first_unsafe(text: str) -> int | None:
    """Index of the first unsafe character of `text`, or None."""
    for index, char in enumerate(text):
        if unicodedata.category(char) in UNSAFE_CATEGORIES:
            return index
    return None


def _char(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _describe(char: str) -> str:
    name = unicodedata.name(char, "")
    return f"U+{ord(char):04X}{' ' + name if name else ''} ({unicodedata.category(char)})"


def escape(text: str) -> str:
    """`text` with every unsafe character written as `\\xNN`, `\\uNNNN` or `\\UNNNNNNNN`."""
    if first_unsafe(text) is None:
        return text
    return "".join(_char(c) if unicodedata.category(c) in UNSAFE_CATEGORIES else c for c in text)


def shown(value: str, limit: int = SHOWN_CHARS) -> str:
    """A refused value as an error message may repeat it: quoted, escaped, at most `limit` chars."""
    head = escape(value[:limit]).replace('"', '\\"')
    more = f" (+{len(value) - limit} more characters)" if len(value) > limit else ""
    return f'"{head}"{more}'


def check(kind: Kind, value: object, field: str) -> str:
    """`value` if it satisfies the rule of `kind`; else InvalidField naming `field`.

    The one validation every edge calls (directly or through `check_patterns`).
    """
    if not isinstance(value, str):
        raise InvalidField(field, kind, repr(value), "not a string")
    bad = first_unsafe(value)
    if bad is not None:
        raise InvalidField(field, kind, value, f"character {bad + 1} is {_describe(value[bad])}")
    if not kind.low <= len(value) <= kind.high:
        raise InvalidField(field, kind, value, f"{len(value)} characters")
    if kind is CREDENTIAL_NAME and not _NAME.fullmatch(value):
        wrong = next(c for c in value if not _NAME.fullmatch(c))
        raise InvalidField(field, kind, value, f"{wrong!r} is not allowed")
    return value


def check_patterns(values: Iterable[str] | None, field: str) -> tuple[str, ...] | None:
    """Each pattern of an ACL list checked as a DN pattern, and as MyProxy's pattern language
    reads it (patterns.check_pattern); None stays None."""
    if values is None:
        return None
    checked = []
    for value in values:
        check(DN_PATTERN, value, field)
        try:
            check_pattern(value)
        except PatternError as exc:
            where = "" if exc.position is None else f"at character {exc.position + 1}: "
            raise InvalidField(field, DN_PATTERN, value, where + exc.why) from None
        checked.append(value)
    return tuple(checked)


def check_chain_names(certs: Sequence[x509.Certificate]) -> None:
    """Refuse (UnsafeName) a chain with an unsafe character in any subject or issuer DN."""
    for index, cert in enumerate(certs, start=1):
        for role in ("subject", "issuer"):
            try:
                dn = dn_to_slash(cert.subject if role == "subject" else cert.issuer)
            except (ValueError, TypeError) as exc:  # cryptography parses names lazily
                raise UnsafeName(
                    f"certificate {index} of the chain: its {role} cannot be read ({exc})"
                ) from None
            bad = first_unsafe(dn)
            if bad is not None:
                raise UnsafeName(
                    f"certificate {index} of the chain: its {role} {shown(dn, 200)} holds "
                    f"{_describe(dn[bad])}; DNs with control or format characters are refused"
                )


def argument(kind: Kind, option: str) -> Callable[[str], str]:
    """An argparse `type=` for a command-line option carrying a name of `kind` (the CLI edge).

    For DN_PATTERN, the option's value may list several patterns, separated by a comma
    before a `/` (as cli.common.split_dns splits them).
    """

    def parse(value: str) -> str:
        try:
            if kind is DN_PATTERN:
                parts = re.split(r",(?=\s*/)", value)
                check_patterns([v.strip() for v in parts if v.strip()], option)
            else:
                check(kind, value, option)
        except InvalidField as exc:
            raise argparse.ArgumentTypeError(exc.message) from None
        return value

    return parse
