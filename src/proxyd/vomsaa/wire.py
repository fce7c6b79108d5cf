"""The VOMS attribute-authority protocols, both sides, without I/O (PROTOCOLS.md §4).

Two request forms reach one TLS port, after a single `0` byte record:

* legacy XML: `<voms><command>B/dteam:production</command>...</voms>`,
  answered by `<vomsans><version>3</version>[<error>...</error>]<ac>B64</ac></vomsans>`;
* REST: `GET /generate-ac?fqans=...&lifetime=... HTTP/1.0`, answered by an
  HTTP/1.1 status line and `<voms><ac>B64</ac></voms>` or `<voms><error>...`.

Neither side has a length prefix: a request ends with `</voms>` or the blank
line after the GET head, an answer with the server closing the connection.
The XML is a flat, fixed vocabulary, so it is read by a strict tokenizer
(no DTDs, no attributes, no entities beyond the five predefined ones) rather
than a general XML parser an untrusted peer could make expensive.

Error numbers and codes are those of voms-server 2.1 (`src/include/errors.h`,
`vomsresult::makeRESTAnswer`); `rule_for` maps them to proxyd's rule names.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from voms_ext import FqanError, parse_fqan

from .flatxml import ESCAPE, Element, read_xml
from .flatxml import WireError as WireError  # raised by every parser here

GSI_NO_DELEGATION = b"0"  # the first TLS record a VOMS client sends, discarded by the server
MAX_REQUEST_BYTES = 16 * 1024  # a real request is a few hundred bytes
MAX_ANSWER_BYTES = 256 * 1024  # an AC is a few KiB, with its AA chain perhaps 10
MAX_FQANS = 64
MAX_FIELD = 1024  # one FQAN, target, message or number
ALL: Literal["all"] = "all"

# Legacy error numbers (voms errors.h): >= 1000 is an error, below is a warning.
ERROR_OFFSET = 1000
LEGACY_NOT_MEMBER = 1001
LEGACY_ATTR_EMPTY = 1002
LEGACY_WITH_DB = 1003
LEGACY_SUSPENDED = 1004
LEGACY_NO_COMMAND = 1005
LEGACY_UNEXPECTED = 1006

# REST error codes and the HTTP status voms-server sends with each.
REST_NO_SUCH_USER = "NoSuchUser"
REST_SUSPENDED_USER = "SuspendedUser"
REST_BAD_REQUEST = "BadRequest"
REST_INTERNAL_ERROR = "InternalError"
REST_STATUS = {
    REST_NO_SUCH_USER: 403,
    REST_SUSPENDED_USER: 403,
    REST_BAD_REQUEST: 400,
    REST_INTERNAL_ERROR: 500,
}
_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 500: "Error"}

RULE_UNKNOWN_USER = "voms.upstream_unknown_user"
RULE_SUSPENDED_USER = "voms.upstream_suspended_user"
RULE_ROLE_NOT_HELD = "voms.upstream_role_not_held"
RULE_BAD_REQUEST = "voms.upstream_bad_request"
RULE_ERROR = "voms.upstream_error"
RULE_UNREACHABLE = "voms.upstream_unreachable"
RULE_TIMEOUT = "voms.upstream_timeout"
RULE_BAD_AC = "voms.upstream_bad_ac"

# voms-server reports "role not held" as NOT_MEMBER/BadRequest with this text.
_UNSATISFIABLE = "Unable to satisfy"


# --- values ------------------------------------------------------------------------------------


def _check_field(value: str, what: str, forbidden: str) -> None:
    if not value:
        raise WireError(f"{what}: empty")
    if len(value) > MAX_FIELD:
        raise WireError(f"{what}: {len(value)} characters, more than {MAX_FIELD}")
    bad = sorted({c for c in value if c in forbidden or not c.isprintable() or not c.isascii()})
    if bad:
        raise WireError(
            f"{what} {value!r}: holds {''.join(bad)!r}, which the protocol cannot carry"
        )


_FQAN_FORBIDDEN = ",&<> ?#%:"
_TARGET_FORBIDDEN = ",&<> ?#%/"


def _check_fqan(fqan: str, what: str) -> None:
    _check_field(fqan, what, _FQAN_FORBIDDEN)
    try:
        parse_fqan(fqan)
    except FqanError as exc:
        raise WireError(f"{what} {fqan!r}: {exc}") from None


@dataclass(frozen=True)
class AcRequest:
    """What a client asks a VOMS AA for.

    `fqans` are full FQANs (`/dteam`, `/dteam/Role=production`), or `"all"`
    (voms-proxy-init --list). An empty tuple is a REST request without
    `fqans=`, which voms-server answers for the VO's root group.
    `lifetime` is in seconds; None lets the server choose.
    """

    fqans: tuple[str, ...] | Literal["all"]
    lifetime: int | None = None
    order: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.fqans != ALL:
            if not isinstance(self.fqans, tuple):
                raise WireError(f"fqans: expected a tuple of FQANs or 'all', got {self.fqans!r}")
            if len(self.fqans) > MAX_FQANS:
                raise WireError(f"fqans: {len(self.fqans)} FQANs, more than {MAX_FQANS}")
            for i, fqan in enumerate(self.fqans):
                _check_fqan(fqan, f"fqans[{i}]")
        if self.lifetime is not None and not 0 < self.lifetime <= 10 * 365 * 86400:
            raise WireError(f"lifetime: {self.lifetime} seconds is not a positive duration")
        if len(self.order) > MAX_FQANS or len(self.targets) > MAX_FQANS:
            raise WireError(f"order/targets: more than {MAX_FQANS} entries")
        for i, fqan in enumerate(self.order):
            _check_fqan(fqan, f"order[{i}]")
        for i, target in enumerate(self.targets):
            _check_field(target, f"targets[{i}]", _TARGET_FORBIDDEN)


@dataclass(frozen=True)
class AaError:
    """One error (or, with a legacy number below 1000, warning) of an AA's answer.

    `code` is the legacy number (int) or the REST code (str).
    """

    code: int | str
    message: str

    @property
    def is_warning(self) -> bool:
        return isinstance(self.code, int) and self.code < ERROR_OFFSET

    @property
    def rule(self) -> str:
        return rule_for(self.code, self.message)


@dataclass(frozen=True)
class AaAnswer:
    """A parsed answer: the AC's DER if one came, the errors and warnings, the HTTP status (REST)."""

    ac: bytes | None
    errors: tuple[AaError, ...] = ()
    warnings: tuple[str, ...] = ()
    status: int | None = None
    http_version: str | None = field(default=None, compare=False)

    @property
    def ok(self) -> bool:
        return self.ac is not None and not self.errors

    @property
    def rule(self) -> str | None:
        """The rule of the first error, None when the answer carries an AC and no error."""
        if self.errors:
            return self.errors[0].rule
        return None if self.ac is not None else RULE_ERROR

    @property
    def message(self) -> str:
        return "; ".join(e.message for e in self.errors)


def rule_for(code: int | str, message: str = "") -> str:
    """The proxyd rule name for a legacy error number or a REST error code."""
    if code in (LEGACY_NOT_MEMBER, REST_BAD_REQUEST, REST_NO_SUCH_USER) and (
        _UNSATISFIABLE in message
    ):
        return RULE_ROLE_NOT_HELD
    if code in (LEGACY_NOT_MEMBER, REST_NO_SUCH_USER):
        return RULE_UNKNOWN_USER
    if code in (LEGACY_SUSPENDED, REST_SUSPENDED_USER):
        return RULE_SUSPENDED_USER
    if code == LEGACY_ATTR_EMPTY:
        return RULE_ROLE_NOT_HELD
    if code in (LEGACY_NO_COMMAND, REST_BAD_REQUEST):
        return RULE_BAD_REQUEST
    return RULE_ERROR


_LEGACY_FOR_RULE = {
    RULE_UNKNOWN_USER: LEGACY_NOT_MEMBER,
    RULE_SUSPENDED_USER: LEGACY_SUSPENDED,
    RULE_ROLE_NOT_HELD: LEGACY_ATTR_EMPTY,
    RULE_BAD_REQUEST: LEGACY_NO_COMMAND,
}
_REST_FOR_RULE = {
    RULE_UNKNOWN_USER: REST_NO_SUCH_USER,
    RULE_SUSPENDED_USER: REST_SUSPENDED_USER,
    RULE_ROLE_NOT_HELD: REST_BAD_REQUEST,
    RULE_BAD_REQUEST: REST_BAD_REQUEST,
}


def legacy_error(rule: str, message: str) -> AaError:
    """The legacy error an AA sends for one of the `voms.upstream_*` outcomes (others: 1006)."""
    return AaError(_LEGACY_FOR_RULE.get(rule, LEGACY_UNEXPECTED), message)


def rest_error(rule: str, message: str) -> AaError:
    """The REST error an AA sends for one of the `voms.upstream_*` outcomes (others: 500)."""
    return AaError(_REST_FOR_RULE.get(rule, REST_INTERNAL_ERROR), message)


def _b64_lines(der: bytes) -> str:
    """Base64 in 64-character lines, each ending with a newline (voms-proxy-init requires them)."""
    text = base64.b64encode(der).decode("ascii")
    return "".join(text[i : i + 64] + "\n" for i in range(0, len(text), 64))


def _b64_decode(text: str, where: str) -> bytes:
    compact = "".join(text.split())
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WireError(f"{where}: the AC is not valid base64 ({exc})") from None


def _int(text: str, where: str) -> int:
    text = text.strip()
    if not text.isdigit() or len(text) > 12:
        raise WireError(f"{where}: {text[:24]!r} is not a number")
    return int(text)


def _bounded(data: bytes, limit: int, what: str) -> None:
    if len(data) > limit:
        raise WireError(f"{what}: {len(data)} bytes, more than {limit}")


# --- requests -------------------------------------------------------------------------------------


def is_rest(data: bytes | bytearray) -> bool:
    """Whether the bytes after the `0` record start a REST request (voms-server looks for GET)."""
    return data.lstrip()[:3] == b"GET"


def request_complete(data: bytes | bytearray) -> bool:
    """Whether `data` holds a whole request: the blank line after a GET head, or `</voms>`."""
    if is_rest(data):
        return b"\n\n" in data or b"\r\n\r\n" in data
    return data.rstrip().endswith(b"</voms>")


def _command(fqan: str) -> str:
    parsed = parse_fqan(fqan)
    if parsed.role is None:
        return "G" + parsed.group
    return f"B{parsed.group}:{parsed.role}"


def encode_legacy_request(request: AcRequest) -> bytes:
    """The XML request voms-proxy-init sends (one `<command>` per FQAN, `A` for all)."""
    if request.fqans == ALL:
        commands = ["A"]
    elif request.fqans:
        commands = [_command(f) for f in request.fqans]
    else:
        raise WireError("legacy request: at least one FQAN is needed (the VO's root group)")
    out = ['<?xml version="1.0" encoding="US-ASCII"?><voms>']
    out += [f"<command>{c}</command>" for c in commands]
    if request.order:
        out.append(f"<order>{','.join(request.order)}</order>")
    if request.targets:
        out.append(f"<targets>{','.join(request.targets)}</targets>")
    out.append("<base64>1</base64><version>4</version>")
    lifetime = "" if request.lifetime is None else str(request.lifetime)
    out.append(f"<lifetime>{lifetime}</lifetime></voms>")
    return "".join(out).encode("ascii")


def _fqan_of_command(command: str, where: str) -> str | Literal["all"]:
    if command == "A":
        return ALL
    if command.startswith("/"):
        return command
    kind, body = command[:1], command[1:]
    if kind == "G" and body.startswith("/") and ":" not in body:
        return body
    if kind == "B" and body.startswith("/"):
        group, sep, role = body.partition(":")
        if sep and role:
            return f"{group}/Role={role}"
    raise WireError(
        f"{where}: command {command[:64]!r} is not one of A, G/group, B/group:role or an FQAN"
    )


def parse_legacy_request(data: bytes) -> AcRequest:
    """The AcRequest of a legacy XML request (the bytes after the `0` record)."""
    what = "legacy request"
    _bounded(data, MAX_REQUEST_BYTES, what)
    root = read_xml(data, "voms", what)
    known = {"command", "order", "targets", "base64", "version", "lifetime"}
    for child in root.children:
        if child.tag not in known:
            raise WireError(f"{what}: unknown element <{child.tag}>")
        if child.children:
            raise WireError(f"{what}: <{child.tag}> must hold text, not elements")
    commands = root.all("command")
    if not commands:
        raise WireError(f"{what}: no <command>")
    if len(commands) > MAX_FQANS:
        raise WireError(f"{what}: {len(commands)} commands, more than {MAX_FQANS}")
    fqans: list[str] = []
    everything = False
    for i, c in enumerate(commands):
        got = _fqan_of_command(c.text.strip(), f"{what}, command {i + 1}")
        if got == ALL:
            everything = True
        elif got not in fqans:
            fqans.append(got)
    if everything and fqans:
        raise WireError(f"{what}: command A (all) cannot be combined with other commands")
    base64_el = root.one("base64", what)
    if base64_el is not None and base64_el.text.strip() not in ("", "1"):
        raise WireError(f"{what}: only base64 answers are supported (<base64>1</base64>)")
    lifetime_el = root.one("lifetime", what)
    lifetime = None
    if lifetime_el is not None and lifetime_el.text.strip():
        value = (
            int(lifetime_el.text.strip())
            if lifetime_el.text.strip().lstrip("-").isdigit()
            else None
        )
        if value is None:
            raise WireError(f"{what}: <lifetime> {lifetime_el.text[:24]!r} is not a number")
        lifetime = value if value > 0 else None
    return _request(
        ALL if everything else tuple(fqans),
        lifetime,
        _split(root.one("order", what)),
        _split(root.one("targets", what)),
        what,
    )


def _split(element: Element | None) -> tuple[str, ...]:
    if element is None:
        return ()
    return tuple(p.strip() for p in element.text.split(",") if p.strip())


def _request(
    fqans: tuple[str, ...] | Literal["all"],
    lifetime: int | None,
    order: tuple[str, ...],
    targets: tuple[str, ...],
    what: str,
) -> AcRequest:
    try:
        return AcRequest(fqans, lifetime, order, targets)
    except WireError as exc:
        raise WireError(f"{what}: {exc}") from None


def encode_rest_request(request: AcRequest, host: str, port: int) -> bytes:
    """The GET voms-proxy-init sends: bare `\\n` line ends, FQANs comma-separated, not URL-encoded."""
    _check_field(host, "host", "/<>&, ?#\r\n")
    params = []
    if request.fqans == ALL:
        params.append("fqans=all")
    elif request.fqans:
        params.append("fqans=" + ",".join(request.fqans))
    if request.lifetime is not None:
        params.append(f"lifetime={request.lifetime}")
    if request.order:
        params.append("order=" + ",".join(request.order))
    if request.targets:
        params.append("targets=" + ",".join(request.targets))
    query = ("?" + "&".join(params)) if params else ""
    head = (
        f"GET /generate-ac{query} HTTP/1.0\n"
        "User-Agent: voms APIs 2.0\nAccept: */*\n"
        f"Host: {host}:{port}\n\n"
    )
    return head.encode("ascii")


_GET_LINE = re.compile(r"GET (/[^ ?]*)(?:\?([^ ]*))? HTTP/1\.[01]")


def parse_rest_request(data: bytes) -> AcRequest:
    """The AcRequest of a REST GET head (headers are read to the blank line and ignored)."""
    what = "REST request"
    _bounded(data, MAX_REQUEST_BYTES, what)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise WireError(f"{what}: non-ASCII byte at {exc.start}") from None
    first, _, _ = text.lstrip().partition("\n")
    m = _GET_LINE.fullmatch(first.rstrip("\r"))
    if m is None:
        raise WireError(f"{what}: {first[:80]!r} is not 'GET /generate-ac?... HTTP/1.x'")
    if m.group(1) != "/generate-ac":
        raise WireError(f"{what}: unknown path {m.group(1)[:64]!r} (only /generate-ac)")
    fqans: tuple[str, ...] | Literal["all"] = ()
    lifetime: int | None = None
    order: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    seen: set[str] = set()
    for part in (m.group(2) or "").split("&"):
        if not part:
            continue
        name, sep, value = part.partition("=")
        if not sep:
            raise WireError(f"{what}: parameter {part[:40]!r} has no '='")
        if name in seen:
            raise WireError(f"{what}: parameter {name!r} given twice")
        seen.add(name)
        values = tuple(v for v in value.split(",") if v)
        if name == "fqans":
            fqans = ALL if value == ALL else values
        elif name == "lifetime":
            number = int(value) if value.lstrip("-").isdigit() and len(value) < 12 else None
            if number is None:
                raise WireError(f"{what}: lifetime {value[:24]!r} is not a number")
            lifetime = number if number > 0 else None
        elif name == "order":
            order = values
        elif name == "targets":
            targets = values
        # Other parameters are ignored, as voms-server does.
    return _request(fqans, lifetime, order, targets, what)


# --- answers --------------------------------------------------------------------------------------


def _answer_parts(result: bytes | AaError) -> tuple[str | None, AaError | None]:
    if isinstance(result, AaError):
        return None, result
    if not result:
        raise WireError("answer: an empty AC")
    return _b64_lines(result), None


def _esc(text: str) -> str:
    return text.translate(ESCAPE)


def encode_legacy_answer(result: bytes | AaError, warnings: Sequence[AaError] = ()) -> bytes:
    """A legacy answer: the AC's DER, or an error (with the `QQ==` "no AC" placeholder)."""
    ac, error = _answer_parts(result)
    out = ['<?xml version="1.0" encoding = "US-ASCII"?><vomsans><version>3</version>']
    items = [*warnings, *([error] if error else [])]
    for item in items:
        if not isinstance(item.code, int):
            raise WireError(f"legacy answer: error code {item.code!r} is not a number")
    if items:
        out.append("<error>")
        out += [
            f"<item><number>{i.code}</number><message>{_esc(i.message)}</message></item>"
            for i in items
        ]
        out.append("</error>")
    out.append(f"<ac>{ac if ac is not None else 'QQ==' + chr(10)}</ac></vomsans>")
    return "".join(out).encode("utf-8")


def parse_legacy_answer(data: bytes) -> AaAnswer:
    """A legacy answer: the AC (None for the `QQ==` placeholder), errors and warnings."""
    what = "legacy answer"
    _bounded(data, MAX_ANSWER_BYTES, what)
    if not data.strip():
        raise WireError(f"{what}: the server closed the connection without answering")
    root = read_xml(data, "vomsans", what)
    errors: list[AaError] = []
    warnings: list[str] = []
    error_el = root.one("error", what)
    for item in error_el.all("item") if error_el else []:
        number = item.one("number", f"{what}, <item>")
        message = item.one("message", f"{what}, <item>")
        if number is None:
            raise WireError(f"{what}: an error <item> without <number>")
        code = _int(number.text, f"{what}, error number")
        text = message.text.strip() if message else ""
        if code < ERROR_OFFSET:
            warnings.append(text)
        else:
            errors.append(AaError(code, text))
    ac = _ac(root.one("ac", what), what)
    if ac is None and not errors:
        raise WireError(f"{what}: neither an AC nor an error")
    return AaAnswer(ac, tuple(errors), tuple(warnings))


def _ac(element: Element | None, what: str) -> bytes | None:
    if element is None:
        return None
    der = _b64_decode(element.text, f"{what}, <ac>")
    # voms-server's "no AC" is the base64 of "A"
    return None if der in (b"", b"A") else der


def encode_rest_answer(result: bytes | AaError, warnings: Sequence[str] = ()) -> bytes:
    """A REST answer: `HTTP/1.1 <status>`, XML body, base64 in 64-char lines; then close."""
    ac, error = _answer_parts(result)
    body = ['<?xml version="1.0" encoding="UTF-8"?><voms>']
    status = 200
    if ac is not None:
        body.append(f"<ac>{ac}</ac>")
    body += [f"<warning>{_esc(w)}</warning>" for w in warnings]
    if error is not None:
        if not isinstance(error.code, str) or error.code not in REST_STATUS:
            raise WireError(
                f"REST answer: error code {error.code!r} is not one of {sorted(REST_STATUS)}"
            )
        status = REST_STATUS[error.code]
        body.append(
            f"<error><code>{error.code}</code><message>{_esc(error.message)}</message></error>"
        )
    body.append("</voms>")
    payload = "".join(body).encode("utf-8")
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        "Content-Type: text/xml; charset=utf-8\r\n"
        f"Content-Length: {len(payload)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + payload


_STATUS_LINE = re.compile(rb"HTTP/(1\.[01]) ([0-9]{3})(?: [^\r\n]*)?\r?\n")


def parse_rest_answer(data: bytes) -> AaAnswer:
    """A REST answer: status, then the `<voms>` body (an answer without XML has no AC or error)."""
    what = "REST answer"
    _bounded(data, MAX_ANSWER_BYTES, what)
    if not data.strip():
        raise WireError(f"{what}: the server closed the connection without answering")
    m = _STATUS_LINE.match(data)
    if m is None:
        raise WireError(f"{what}: {data[:40]!r} is not an HTTP status line")
    version, status = m.group(1).decode("ascii"), int(m.group(2))
    start = data.find(b"<?xml")
    if start < 0:
        return AaAnswer(None, status=status, http_version=version)
    root = read_xml(data[start:], "voms", what)
    errors: list[AaError] = []
    for error_el in root.all("error"):
        code = error_el.one("code", f"{what}, <error>")
        message = error_el.one("message", f"{what}, <error>")
        errors.append(
            AaError(
                code.text.strip() if code else REST_INTERNAL_ERROR,
                message.text.strip() if message else "",
            )
        )
    warnings = tuple(w.text.strip() for w in root.all("warning"))
    ac = _ac(root.one("ac", what), what)
    return AaAnswer(ac, tuple(errors), warnings, status=status, http_version=version)
