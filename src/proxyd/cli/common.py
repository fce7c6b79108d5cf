"""What the user-facing CLIs (proxy-init, proxy-info, proxy-destroy) share.

- The grid environment conventions: where the trust directories, the user
  certificate and key, and the proxy file are (`X509_*` variables, with
  the defaults the Globus and VOMS tools use), and `PROXYD_URL`.
- Reading the user's credential, with the key's pass phrase from a prompt
  or from standard input.
- A small HTTPS JSON client for the proxyd API (urllib, client certificate
  authentication, the server checked against `X509_CERT_DIR`) that turns
  RFC 9457 problem responses into one readable line naming the policy rule.

Everything a user can get wrong ends as a `CliError`, which the commands
print as one `<prog>: <reason>` line (exit 1), never as a traceback.
"""

from __future__ import annotations

import datetime as dt
import getpass
import http.client
import json
import os
import re
import ssl
import stat
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from voms_ext import (
    Credential,
    TrustStore,
    VomsExtError,
    parse_credential_pem,
)

from .. import __version__

DEFAULT_CERT_DIR = "/etc/grid-security/certificates"
DEFAULT_VOMS_DIR = "/etc/grid-security/vomsdir"
USER_AGENT = f"proxyd-cli/{__version__}"
HTTP_TIMEOUT = 60.0
# An error body is shown to the user; never echo an unbounded one.
MAX_SHOWN_TEXT = 300
KEY_PROMPT = "Enter GRID pass phrase for this identity:"


class CliError(Exception):
    """A failure to report as one line `<prog>: <message>` with exit status 1."""


def fail(message: str) -> NoReturn:
    raise CliError(message)


def run_command(prog: str, body: Callable[[], int]) -> int:
    """Run a command body; turn every expected failure into one line on stderr, exit 1."""
    try:
        return body()
    except CliError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
    except VomsExtError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{prog}: {where}{exc.strerror or exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return 1


# --- the grid environment ------------------------------------------------------------


def _env(name: str, environ: Mapping[str, str] | None) -> str | None:
    value = (os.environ if environ is None else environ).get(name)
    return value or None


def cert_dir(environ: Mapping[str, str] | None = None) -> Path:
    """`X509_CERT_DIR`, default /etc/grid-security/certificates."""
    return Path(_env("X509_CERT_DIR", environ) or DEFAULT_CERT_DIR)


def voms_dir(environ: Mapping[str, str] | None = None) -> Path:
    """`X509_VOMS_DIR`, default /etc/grid-security/vomsdir."""
    return Path(_env("X509_VOMS_DIR", environ) or DEFAULT_VOMS_DIR)


def user_cert_path(environ: Mapping[str, str] | None = None) -> Path:
    """`X509_USER_CERT`, default ~/.globus/usercert.pem."""
    value = _env("X509_USER_CERT", environ)
    return Path(value) if value else Path.home() / ".globus" / "usercert.pem"


def user_key_path(environ: Mapping[str, str] | None = None) -> Path:
    """`X509_USER_KEY`, default ~/.globus/userkey.pem."""
    value = _env("X509_USER_KEY", environ)
    return Path(value) if value else Path.home() / ".globus" / "userkey.pem"


def proxy_path(environ: Mapping[str, str] | None = None) -> Path:
    """`X509_USER_PROXY`, default /tmp/x509up_u<uid>."""
    value = _env("X509_USER_PROXY", environ)
    return Path(value) if value else Path(f"/tmp/x509up_u{os.getuid()}")  # noqa: S108


def server_url(given: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The API base URL from `--server` or `PROXYD_URL`; HTTPS only, no trailing slash."""
    value = given or _env("PROXYD_URL", environ)
    if not value:
        fail("no proxyd server: give --server URL or set PROXYD_URL (e.g. https://localhost:8443)")
    if "://" not in value:
        value = f"https://{value}"
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme != "https":
        fail(f"server URL {value!r}: only https:// is supported (credentials travel over it)")
    if not parsed.hostname:
        fail(f"server URL {value!r} names no host")
    if parsed.query or parsed.fragment:
        fail(f"server URL {value!r}: give only scheme, host, port and an optional path")
    return value.rstrip("/")


def load_trust(*, with_voms: bool, environ: Mapping[str, str] | None = None) -> TrustStore:
    """The trust directories; the vomsdir only when attributes are to be verified."""
    return TrustStore.from_dirs(cert_dir(environ), voms_dir(environ) if with_voms else None)


# --- parsing ---------------------------------------------------------------------------

_HOURS_MINUTES = re.compile(r"(\d{1,6}):([0-5]?\d)")


def parse_hours_minutes(text: str) -> dt.timedelta:
    """`H:MM` (hours unbounded, minutes 0-59), as grid-proxy-init -valid takes it."""
    match = _HOURS_MINUTES.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"expected H:MM (hours:minutes), got {text!r}")
    return dt.timedelta(hours=int(match[1]), minutes=int(match[2]))


def format_hms(delta: dt.timedelta) -> str:
    """`H:MM:SS` with unbounded hours (grid-proxy-info's timeleft); never negative."""
    seconds = max(int(delta.total_seconds()), 0)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def split_dns(values: Sequence[str] | None) -> list[str] | None:
    """DN lists from repeatable options: `DN,DN` splits where a comma precedes `/`.

    Slash-form DNs start with `/`, so a comma inside a DN (`O=Acme, Inc.`) is
    kept. None when the option was never given (the server's default applies).
    """
    if values is None:
        return None
    out: list[str] = []
    for value in values:
        out += [part.strip() for part in re.split(r",(?=\s*/)", value) if part.strip()]
    return out


# --- pass phrases -----------------------------------------------------------------------


def read_stdin_line(what: str) -> str:
    """One line of standard input (without its line ending), for --pwstdin options."""
    line = sys.stdin.readline()
    if not line:
        fail(f"expected the {what} on standard input, found end of input")
    return line.rstrip("\r\n")


def prompt_secret(prompt: str) -> str:
    try:
        return getpass.getpass(prompt + " ")
    except EOFError:
        fail("no terminal to ask for a pass phrase on (use the --pwstdin options)")


# --- the user's credential --------------------------------------------------------------


# DSA is not among them: IGTF CAs have not issued DSA certificates for a decade,
# OpenSSL and cryptography are retiring it, and naming its types makes cryptography
# print a deprecation warning on every run of every tool.
_SIGNING_KEYS = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)


@dataclass(frozen=True)
class UserCredential:
    """The user's certificate (with any chain in the certificate file) and key."""

    cert_path: Path
    key_path: Path
    credential: Credential
    passphrase: bytes | None  # what decrypted the key, for the TLS client

    @property
    def certificate(self) -> x509.Certificate:
        return self.credential.certificate

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        return self.credential.chain

    @property
    def private_key(self) -> CertificateIssuerPrivateKeyTypes:
        key = self.credential.private_key
        if not isinstance(key, _SIGNING_KEYS):
            fail(
                f"{self.key_path}: a {_key_kind(key)} private key cannot sign proxy "
                "certificates here (use an RSA, EC, Ed25519 or Ed448 key)"
            )
        return key


def _key_kind(key: object) -> str:
    """The algorithm of a key in a user's words, from its class name (never naming DSA's type)."""
    name = type(key).__name__.removeprefix("_").removesuffix("PrivateKey")
    return name or "key of unknown type"


_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----\r?\n?", re.DOTALL)


def _pem_blocks(data: bytes, *, keys: bool) -> bytes:
    """The certificate blocks (keys=False) or the private key blocks (keys=True) of PEM text."""
    out = []
    for match in _PEM_BLOCK.finditer(data):
        is_key = match.group(1).endswith(b"PRIVATE KEY")
        if is_key == keys:
            block = match.group(0)
            out.append(block if block.endswith(b"\n") else block + b"\n")
    return b"".join(out)


def _key_is_encrypted(data: bytes) -> bool:
    return b"ENCRYPTED PRIVATE KEY-----" in data or b"Proc-Type: 4,ENCRYPTED" in data


def check_private_file(path: Path, what: str) -> None:
    """Refuse a key or proxy file that others may read, as the Globus tools do."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        fail(
            f"{path}: the {what} must be accessible only by its owner "
            f"(its mode is {stat.S_IMODE(mode):04o}; run chmod 600 {path})"
        )


def load_user_credential(
    cert_path: Path,
    key_path: Path,
    *,
    pwstdin: bool,
    announce: Callable[[x509.Certificate], None] | None = None,
) -> UserCredential:
    """Read the user certificate and key; ask for the key's pass phrase when it is encrypted.

    The certificate file's certificates (the user certificate, then any
    intermediate CAs) and the key file's private key; the two may be one file.
    `announce` is called with the user certificate before any prompt (to
    print "Your identity: ..." first, as grid-proxy-init does).
    """
    try:
        cert_data = cert_path.read_bytes()
    except OSError as exc:
        fail(f"cannot read the user certificate {cert_path}: {exc.strerror}")
    cert_blocks = _pem_blocks(cert_data, keys=False)
    if not cert_blocks:
        fail(f"{cert_path}: no certificate found")
    certificates = parse_credential_pem(cert_blocks, source=str(cert_path)).certificates
    try:
        key_data = key_path.read_bytes()
    except OSError as exc:
        fail(f"cannot read the user key {key_path}: {exc.strerror}")
    check_private_file(key_path, "private key")
    key_blocks = _pem_blocks(key_data, keys=True)
    if not key_blocks:
        fail(f"{key_path}: no private key found")
    if announce is not None:
        announce(certificates[0])
    passphrase: bytes | None = None
    if _key_is_encrypted(key_blocks):
        text = (
            read_stdin_line("pass phrase of the user key") if pwstdin else prompt_secret(KEY_PROMPT)
        )
        passphrase = text.encode("utf-8")
    try:
        credential = parse_credential_pem(
            cert_blocks + key_blocks, password=passphrase, source=str(key_path)
        )
    except VomsExtError as exc:
        if passphrase is not None and "Incorrect password" in str(exc):
            fail(f"{key_path}: wrong pass phrase (the private key could not be decrypted)")
        raise
    key = credential.private_key
    if key is None or _spki(key.public_key()) != _spki(certificates[0].public_key()):
        fail(f"the private key in {key_path} does not belong to the certificate in {cert_path}")
    return UserCredential(cert_path, key_path, Credential(certificates, key), passphrase)


def _spki(public_key: object) -> bytes:
    try:
        return public_key.public_bytes(  # type: ignore[attr-defined, no-any-return]
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except AttributeError:
        return b""


# --- the HTTPS API client ------------------------------------------------------------------


@dataclass(frozen=True)
class ClientAuth:
    """A TLS client credential on disk: a cert+key pair, or a proxy file holding both."""

    cert_file: Path
    key_file: Path
    passphrase: bytes | None = None

    @classmethod
    def from_user(cls, user: UserCredential) -> ClientAuth:
        return cls(user.cert_path, user.key_path, user.passphrase)

    @classmethod
    def from_proxy(cls, path: Path) -> ClientAuth:
        return cls(path, path)


class ApiError(CliError):
    """The server refused a request (HTTP status >= 400)."""

    def __init__(self, message: str, status: int, rule: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.rule = rule


def _clean(text: str, limit: int = MAX_SHOWN_TEXT) -> str:
    """Server text safe to print on one line: no control characters, bounded."""
    text = re.sub(r"[\x00-\x1f\x7f]+", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def problem_message(status: int, reason: str, body: bytes) -> ApiError:
    """One line for an error response: RFC 9457 problem details when the body is one."""
    problem: Any = None
    try:
        problem = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        problem = None
    if isinstance(problem, dict) and ("title" in problem or "detail" in problem):
        title = _clean(str(problem.get("title") or reason or "error"))
        detail = problem.get("detail")
        rule = problem.get("rule")
        rule_text = _clean(str(rule), 100) if rule else None
        message = f"server refused the request (HTTP {status} {title})"
        if detail:
            message += f": {_clean(str(detail))}"
        if rule_text:
            message += f" [rule {rule_text}]"
        return ApiError(message, status, rule_text)
    text = _clean(body.decode("utf-8", "replace")) if body else ""
    message = f"server refused the request (HTTP {status} {_clean(reason or 'error')})"
    return ApiError(f"{message}: {text}" if text else message, status, None)


class ApiClient:
    """JSON over HTTPS to a proxyd API, authenticated with a grid client certificate."""

    def __init__(
        self,
        base_url: str,
        auth: ClientAuth,
        trust_dir: Path,
        *,
        timeout: float = HTTP_TIMEOUT,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._context = self._ssl_context(auth, trust_dir)
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=self._context)
        )

    @staticmethod
    def _ssl_context(auth: ClientAuth, trust_dir: Path) -> ssl.SSLContext:
        if not trust_dir.is_dir():
            fail(f"trust directory {trust_dir} does not exist (set X509_CERT_DIR)")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_verify_locations(capath=str(trust_dir))
        try:
            ctx.load_cert_chain(str(auth.cert_file), str(auth.key_file), password=auth.passphrase)
        except ssl.SSLError as exc:
            fail(f"cannot use {auth.cert_file} as a TLS client credential: {exc.reason or exc}")
        return ctx

    def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, object] | None = None,
        *,
        query: Mapping[str, str | None] | None = None,
    ) -> Any:
        """Send one request; the decoded JSON answer (None for an empty one).

        Raises ApiError for an error status and CliError when the server
        cannot be reached or does not answer JSON.
        """
        url = self.base_url + path
        params = {k: v for k, v in (query or {}).items() if v is not None}
        if params:
            url += "?" + urllib.parse.urlencode(params)
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310
        try:
            with self._opener.open(req, timeout=self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                raise problem_message(exc.code, exc.reason, exc.read()) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, ssl.SSLCertVerificationError):
                fail(
                    f"cannot talk to {self.base_url}: server certificate not accepted: {reason.verify_message}"
                )
            if isinstance(reason, TimeoutError):
                fail(f"{self.base_url} did not answer within {self.timeout:.0f} s")
            if isinstance(reason, OSError):
                reason = reason.strerror or reason
            fail(f"cannot reach {self.base_url}: {reason}")
        except TimeoutError:
            fail(f"{self.base_url} did not answer within {self.timeout:.0f} s")
        except (ssl.SSLError, ConnectionError, http.client.HTTPException) as exc:
            fail(f"connection to {self.base_url} failed: {exc}")
        if not payload.strip():
            return None
        try:
            return json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            fail(f"{method} {path}: the server did not answer JSON")


def expect_dict(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        fail(f"unexpected answer from the server to {what}")
    return value


def expect_str(obj: Mapping[str, Any], key: str, what: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        fail(f"unexpected answer from the server to {what}: no {key!r}")
    return value
