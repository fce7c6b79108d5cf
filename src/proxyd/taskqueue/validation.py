"""How the task queue's values are checked when they are built: bounds, names, site names.

Every number and list a task or a pilot report carries is bounded, and
every name is storable in every database and, where people read it, plain
(no control or formatting characters). A bad field raises `InvalidTask`
naming the field first (`invalid`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from voms_ext import Fqan, FqanError, parse_fqan

from .errors import InvalidTask

__all__ = [
    "ARG_LEN",
    "DN_LEN",
    "EXIT_CODE_RANGE",
    "LIST_MAX",
    "LOG_TAIL_MAX",
    "MAX_CPU_S",
    "MAX_MEMORY_MB",
    "MAX_PRIORITY",
    "MAX_RSS_KB",
    "MAX_WALL_S",
    "MIN_PRIORITY",
    "NAME_LEN",
    "REASON_MAX",
    "SITE_NAME_LEN",
    "VO_NAME",
    "checked_count",
    "checked_fqan",
    "checked_name",
    "checked_names",
    "checked_sites",
    "free_text",
    "invalid",
    "normalise_site",
    "storable",
    "text_field",
]

MIN_PRIORITY = -1_000_000
MAX_PRIORITY = 1_000_000
# Bounds of every number a task or a pilot report carries: far beyond any real job, far
# within the database's integers (a 32-bit INTEGER holds 68 years of seconds).
MAX_WALL_S = 365 * 86400  # the ceiling; [taskqueue] max_wall_time (default 30 days) is lower
MAX_CPU_S = 10 * 365 * 86400  # CPU seconds: a year on ten cores
MAX_MEMORY_MB = 64 * 1024 * 1024  # 64 TiB
MAX_RSS_KB = MAX_MEMORY_MB * 1024
EXIT_CODE_RANGE = (-(2**31), 2**31 - 1)
LIST_MAX = 256  # sites, tags, FQANs, arguments, input files
LOG_TAIL_MAX = 16 * 1024  # characters of payload output a pilot reports
REASON_MAX = 2000  # characters of a failure reason
SITE_NAME_LEN = 255
VO_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
NAME_LEN = 255
DN_LEN = 1024
ARG_LEN = 4096
# Control, format (bidirectional overrides, zero-width), surrogate and line/paragraph
# separator characters: never part of a name a person reads in a log or a table.
_NOT_IN_NAMES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def invalid(where: str, message: str) -> InvalidTask:
    """The error of a bad field: the field's name first."""
    return InvalidTask(f"{where}: {message}")


def storable(where: str, value: str) -> str:
    """A string every database stores: no NUL (PostgreSQL refuses it), no lone surrogate
    (not UTF-8)."""
    if "\x00" in value:
        raise invalid(where, "must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid(where, "must be valid Unicode text (it has a lone surrogate)") from None
    return value


def checked_name(where: str, value: object, *, length: int = NAME_LEN, plain: bool = False) -> str:
    """A non-empty string of at most `length` characters; `plain`: no control characters."""
    if not isinstance(value, str) or not value or len(value) > length:
        raise invalid(where, f"must be a non-empty string of at most {length} characters")
    storable(where, value)
    if plain and any(unicodedata.category(c) in _NOT_IN_NAMES for c in value):
        raise invalid(where, f"{value!r} contains control or formatting characters")
    return value


def text_field(where: str, value: object, *, length: int = NAME_LEN, plain: bool = False) -> str:
    """A name given to the queue (e.g. an owner DN pattern to ban): non-empty, at most `length`
    characters, storable in every database; `plain`: no control characters. InvalidTask
    names `where` otherwise."""
    return checked_name(where, value, length=length, plain=plain)


def _listed(where: str, values: object) -> list[object]:
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise invalid(where, "must be a collection of names, not one string")
    items = list(values)
    if len(items) > LIST_MAX:
        raise invalid(where, f"must have at most {LIST_MAX} entries, not {len(items)}")
    return items


def checked_names(where: str, values: Iterable[str]) -> frozenset[str]:
    return frozenset(checked_name(where, v, plain=True) for v in _listed(where, values))


def checked_sites(where: str, values: Iterable[str]) -> frozenset[str]:
    return frozenset(normalise_site(v, where) for v in _listed(where, values))


def normalise_site(name: object, where: str = "site") -> str:
    """The one spelling of a site name that masks, matching, requirements and accounting use.

    Unicode compatibility forms folded (NFKC), case folded, surrounding white space
    stripped: `SITE-A`, ` site-a ` and `Ｓｉｔｅ-A` are the same site. Empty names, names
    longer than 255 characters and names with control or formatting characters (newlines,
    bidirectional overrides, zero-width characters) raise InvalidTask naming `where`.
    """
    if not isinstance(name, str):
        raise invalid(where, f"a site name must be a string, not {type(name).__name__}")
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    folded = folded.strip()
    if any(unicodedata.category(c) in _NOT_IN_NAMES for c in folded):
        raise invalid(where, f"the site name {name!r} contains control or formatting characters")
    if not folded:
        raise invalid(where, "a site name must not be empty")
    if len(folded) > SITE_NAME_LEN:
        raise invalid(where, f"a site name must be at most {SITE_NAME_LEN} characters")
    return folded


def free_text(value: str, length: int) -> str:
    """Free text a database can store (NUL and lone surrogates replaced), at most `length`
    characters from its end."""
    text = value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")
    return text[-length:]


def checked_count(
    where: str, value: object, *, positive: bool = False, maximum: int | None = None
) -> int:
    low = 1 if positive else 0
    if type(value) is not int or value < low or (maximum is not None and value > maximum):
        bound = f">= {low}" if maximum is None else f"from {low} to {maximum}"
        raise invalid(where, f"must be an int {bound}, not {value!r}")
    return value


def checked_fqan(where: str, text: object, vo: str) -> Fqan:
    if isinstance(text, str):
        checked_name(where, text, length=NAME_LEN, plain=True)
    try:
        fqan = parse_fqan(text)  # type: ignore[arg-type]
    except FqanError as exc:
        raise invalid(where, str(exc)) from None
    if fqan.vo != vo:
        raise invalid(where, f"{text!r} is not in VO {vo!r}")
    return fqan
