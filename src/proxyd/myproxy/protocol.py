"""MyProxy v2 messages as values: bytes in, requests and responses out (sans-I/O).

Both our server and our client use this module, through the conversation's
state machine (conversation.py), which says which message comes when;
neither the network nor the repository is touched here. Wire facts are in ../shared/PROTOCOLS.md
§1: `KEY=VALUE\\n` lines ended by a NUL, responses `RESPONSE=0|1|2`,
certificate chains as one count byte followed by DER certificates.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from voms_ext.der import read_tlv
from voms_ext.errors import DecodeError

from .. import names

VERSION = "MYPROXYv2"
GSI_NO_DELEGATION = b"0"
MAX_REQUEST_BYTES = 16 * 1024  # a real request is a few hundred bytes
MAX_VALUE_BYTES = 2048
MAX_LINES = 64
MAX_REPEATED = 16  # VONAME= / VOMSES= lines
MAX_CHAIN_CERTS = 32
MAX_DER_BYTES = 64 * 1024

# Error texts the real clients print; keep them recognisable.
ERR_PARSE = "error parsing request"
ERR_VERSION = "Invalid version number received."
ERR_COMMAND = "UNKNOWN command in request."


class Command(enum.IntEnum):
    GET = 0
    PUT = 1
    INFO = 2
    DESTROY = 3
    CHANGE_CRED_PASSPHRASE = 4
    STORE = 5
    RETRIEVE = 6
    GET_TRUSTROOTS = 7


class ResponseType(enum.IntEnum):
    OK = 0
    ERROR = 1
    AUTHORIZATION = 2


class ProtocolError(Exception):
    """Malformed input. The message is safe to send back in an ERROR= line."""


@dataclass(frozen=True)
class Request:
    command: Command
    username: str = ""
    passphrase: str = field(default="", repr=False)
    lifetime: int = 0
    cred_name: str | None = None
    cred_desc: str | None = None
    retriever: str | None = None
    renewer: str | None = None
    trusted_retrievers: str | None = None
    keyretrievers: str | None = None
    new_phrase: str | None = field(default=None, repr=False)
    vonames: tuple[str, ...] = ()
    vomses: tuple[str, ...] = ()
    trusted_certs: bool = False


_SINGLE_KEYS = {
    "USERNAME": "username",
    "PASSPHRASE": "passphrase",
    "CRED_NAME": "cred_name",
    "CRED_DESC": "cred_desc",
    "RETRIEVER": "retriever",
    "RENEWER": "renewer",
    "RETRIEVER_TRUSTED": "trusted_retrievers",
    "KEYRETRIEVERS": "keyretrievers",
    "NEW_PHRASE": "new_phrase",
}


def _lines(data: bytes, what: str) -> list[tuple[str, str]]:
    if len(data) > MAX_REQUEST_BYTES:
        raise ProtocolError(f"{what} too large ({len(data)} bytes, at most {MAX_REQUEST_BYTES})")
    end = data.find(b"\0")
    body = data if end < 0 else data[:end]
    if b"\r" in body:
        raise ProtocolError(ERR_PARSE + " (CR characters are not allowed)")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(ERR_PARSE + " (not UTF-8 text)") from None
    raw = text.split("\n")
    if raw and raw[-1] == "":
        raw.pop()
    if len(raw) > MAX_LINES:
        raise ProtocolError(ERR_PARSE + f" (more than {MAX_LINES} lines)")
    pairs = []
    for number, line in enumerate(raw, start=1):
        key, sep, value = line.partition("=")
        if not sep or not key:
            raise ProtocolError(ERR_PARSE + f" (line {number} is not KEY=VALUE)")
        if len(value.encode()) > MAX_VALUE_BYTES:
            raise ProtocolError(
                ERR_PARSE + f" ({key[:32]} value longer than {MAX_VALUE_BYTES} bytes)"
            )
        pairs.append((key, value))
    return pairs


def parse_request(data: bytes) -> Request:
    """Parse one request message; unknown keys are ignored, as myproxy-server does."""
    pairs = _lines(data, "request")
    if not pairs or pairs[0][0] != "VERSION":
        raise ProtocolError(ERR_VERSION if pairs else ERR_PARSE + " (empty request)")
    if pairs[0][1] != VERSION:
        raise ProtocolError(ERR_VERSION)
    values: dict[str, object] = {}
    vonames: list[str] = []
    vomses: list[str] = []
    command: Command | None = None
    for key, value in pairs[1:]:
        if key == "COMMAND":
            try:
                command = Command(int(value))
            except ValueError:
                raise ProtocolError(ERR_COMMAND) from None
        elif key == "LIFETIME":
            if not (value.isascii() and value.isdigit()) or len(value) > 10:
                raise ProtocolError(ERR_PARSE + " (LIFETIME must be a number of seconds)")
            values["lifetime"] = int(value)
        elif key == "VONAME":
            vonames.append(value)
        elif key == "VOMSES":
            vomses.append(value)
        elif key == "TRUSTED_CERTS":
            values["trusted_certs"] = value.strip() == "1"
        elif key in _SINGLE_KEYS:
            values[_SINGLE_KEYS[key]] = value
        elif key == "TRUSTED_RETRIEVERS":  # the spelling in older documents
            values["trusted_retrievers"] = value
    if command is None:
        raise ProtocolError(ERR_COMMAND)
    missing = [
        k for k in ("USERNAME", "PASSPHRASE", "LIFETIME") if k not in {key for key, _ in pairs}
    ]
    if missing:
        raise ProtocolError(ERR_PARSE + f" (missing {', '.join(missing)})")
    if len(vonames) > MAX_REPEATED or len(vomses) > MAX_REPEATED:
        raise ProtocolError(ERR_PARSE + f" (more than {MAX_REPEATED} VONAME or VOMSES lines)")
    return Request(command=command, vonames=tuple(vonames), vomses=tuple(vomses), **values)  # type: ignore[arg-type]


# The request fields that carry names, and the rule each follows (proxyd.names).
_PATTERN_FIELDS = (
    ("RETRIEVER", "retriever"),
    ("RENEWER", "renewer"),
    ("RETRIEVER_TRUSTED", "trusted_retrievers"),
    ("KEYRETRIEVERS", "keyretrievers"),
)


def check_names(request: Request) -> None:
    """Refuse (ProtocolError) a request whose names break proxyd.names' rules.

    USERNAME for every command but GET_TRUSTROOTS (which names no credential),
    CRED_NAME when given (absent or empty: the default credential), CRED_DESC,
    and each comma-separated pattern of RETRIEVER, RENEWER, RETRIEVER_TRUSTED
    (TRUSTED_RETRIEVERS) and KEYRETRIEVERS. The error line names the field and
    the rule and repeats at most a short, escaped part of the value.
    """
    try:
        if request.command is not Command.GET_TRUSTROOTS:
            names.check(names.USERNAME, request.username, "USERNAME")
        if request.cred_name:
            names.check(names.CREDENTIAL_NAME, request.cred_name, "CRED_NAME")
        if request.cred_desc is not None:
            names.check(names.DESCRIPTION, request.cred_desc, "CRED_DESC")
        for key, attr in _PATTERN_FIELDS:
            value = getattr(request, attr)
            if value:
                names.check_patterns([value], key)  # one regular expression, as MyProxy
    except names.InvalidField as exc:
        raise ProtocolError(exc.message) from None


def encode_request(request: Request) -> bytes:
    lines = [
        f"VERSION={VERSION}",
        f"COMMAND={int(request.command)}",
        f"USERNAME={request.username}",
        f"PASSPHRASE={request.passphrase}",
        f"LIFETIME={request.lifetime}",
    ]
    for key, attr in _SINGLE_KEYS.items():
        if key in ("USERNAME", "PASSPHRASE"):
            continue
        value = getattr(request, attr)
        if value is not None:
            lines.append(f"{key}={value}")
    lines += [f"VONAME={v}" for v in request.vonames]
    lines += [f"VOMSES={v}" for v in request.vomses]
    if request.trusted_certs:
        lines.append("TRUSTED_CERTS=1")
    for line in lines:
        if "\n" in line or "\0" in line:
            raise ProtocolError("request values must not contain newlines or NUL")
    return ("\n".join(lines) + "\n").encode() + b"\0"


@dataclass(frozen=True)
class Response:
    type: ResponseType
    errors: tuple[str, ...] = ()
    fields: tuple[tuple[str, str], ...] = ()
    authorization: tuple[tuple[str, str], ...] = ()  # (method, hex challenge)

    def get(self, key: str) -> str | None:
        for k, v in self.fields:
            if k == key:
                return v
        return None


_FRAMING = str.maketrans({"\0": "\\x00", "\n": "\\x0a", "\r": "\\x0d"})


def _clean(text: str) -> str:
    """One line of a message: NUL, newline and CR escaped, so no value can break the framing
    or forge a line. What `parse_response` returns has none of them, so encoding it gives
    the same message back. (The server escapes every other control or format character of
    what it shows: proxyd.names.escape.)"""
    return text.translate(_FRAMING)


def encode_response(response: Response) -> bytes:
    lines = [f"VERSION={VERSION}", f"RESPONSE={int(response.type)}"]
    for key, value in response.fields:
        lines.append(f"{_clean(key)}={_clean(value)}")
    for error in response.errors:
        # One ERROR= line per line of text.
        lines.extend(f"ERROR={_clean(part)}" for part in error.split("\n"))
    for method, challenge in response.authorization:
        lines.append(f"AUTHORIZATION_DATA={method}:{challenge}")
    return ("\n".join(lines) + "\n").encode() + b"\0"


def ok_response(fields: Iterable[tuple[str, str]] = ()) -> Response:
    return Response(ResponseType.OK, fields=tuple(fields))


def error_response(*messages: str) -> Response:
    return Response(ResponseType.ERROR, errors=messages or ("unknown error",))


def ok(fields: Iterable[tuple[str, str]] = ()) -> bytes:
    return encode_response(ok_response(fields))


def error(*messages: str) -> bytes:
    return encode_response(error_response(*messages))


def parse_response(data: bytes) -> Response:
    pairs = _lines(data, "response")
    if not pairs or pairs[0] != ("VERSION", VERSION):
        raise ProtocolError(ERR_VERSION)
    if len(pairs) < 2 or pairs[1][0] != "RESPONSE":
        raise ProtocolError("response has no RESPONSE= line")
    try:
        kind = ResponseType(int(pairs[1][1]))
    except ValueError:
        raise ProtocolError(f"unknown RESPONSE={pairs[1][1][:16]}") from None
    errors, fields, authz = [], [], []
    for key, value in pairs[2:]:
        if key == "ERROR":
            errors.append(value)
        elif key == "AUTHORIZATION_DATA":
            method, _, challenge = value.partition(":")
            authz.append((method, challenge))
        else:
            fields.append((key, value))
    return Response(kind, tuple(errors), tuple(fields), tuple(authz))


# --- binary messages ---------------------------------------------------------------


def der_length(buffer: bytes) -> int | None:
    """Length of the complete DER element at the start of `buffer`, or None if more is needed."""
    if len(buffer) < 2:
        return None
    if buffer[0] != 0x30:
        raise ProtocolError("expected a DER SEQUENCE (raw DER, not PEM)")
    first = buffer[1]
    if first & 0x80:
        count = first & 0x7F
        if count == 0 or count > 3:
            raise ProtocolError("DER length encoding not accepted")
        if len(buffer) < 2 + count:
            return None
        total = 2 + count + int.from_bytes(buffer[2 : 2 + count], "big")
    else:
        total = 2 + first
    if total > MAX_DER_BYTES:
        raise ProtocolError(f"DER message of {total} bytes is too large")
    return total if len(buffer) >= total else None


def chain_length(buffer: bytes) -> int | None:
    """Length of a complete `N + N DER certificates` message, or None if more is needed."""
    if not buffer:
        return None
    count = buffer[0]
    if count == 0 or count > MAX_CHAIN_CERTS:
        raise ProtocolError(f"certificate chain of {count} certificates refused")
    pos = 1
    for _ in range(count):
        size = der_length(buffer[pos:])
        if size is None:
            return None
        pos += size
    return pos


def encode_certificates(certs: Sequence[x509.Certificate]) -> bytes:
    if not 0 < len(certs) <= 255:
        raise ProtocolError("a certificate chain message holds 1 to 255 certificates")
    return bytes([len(certs)]) + b"".join(c.public_bytes(serialization.Encoding.DER) for c in certs)


def parse_certificates(data: bytes) -> list[x509.Certificate]:
    total = chain_length(data)
    if total is None or total != len(data):
        raise ProtocolError("certificate chain message is truncated or has trailing bytes")
    certs = []
    pos = 1
    for index in range(data[0]):
        try:
            _, _, end = read_tlv(data, pos)
            certs.append(x509.load_der_x509_certificate(data[pos:end]))
        except (DecodeError, ValueError, x509.InvalidVersion) as exc:
            raise ProtocolError(
                f"certificate {index + 1} of the chain is not valid DER: {exc}"
            ) from None
        pos = end
    return certs


def parse_csr(data: bytes) -> x509.CertificateSigningRequest:
    if data[:1] != b"\x30":
        raise ProtocolError("certificate request must be raw DER PKCS#10 (PEM is refused)")
    try:
        return x509.load_der_x509_csr(data)
    except (ValueError, x509.InvalidVersion) as exc:
        raise ProtocolError(f"certificate request is not valid DER PKCS#10: {exc}") from None
