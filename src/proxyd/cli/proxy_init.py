"""`proxy-init`: make a local RFC 3820 proxy, optionally with VOMS attributes, and store one.

Like grid-proxy-init, it signs a new proxy with the user's certificate and
key and writes it, 0600, to `X509_USER_PROXY` (or /tmp/x509up_u<uid>).
With `--voms` it first asks proxyd's attribute authority for VOMS ACs
(`POST /v1/voms/ac`, authenticated with the user's certificate) and embeds
them, as voms-proxy-init does. With `--store` it also delegates a
longer-lived proxy to proxyd's repository (`POST /v1/delegations`, then
`PUT /v1/delegations/{id}` with the chain signed for the server's key), as
myproxy-init does; the private key of the stored proxy never leaves the
server.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import datetime as dt
import sys
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from voms_ext import (
    Credential,
    FqanError,
    ProxyBuilder,
    VomsExtError,
    dn_to_slash,
    parse_attribute_certificate,
    parse_fqan,
    validate_chain,
    write_credential_file,
)

from .. import __version__, names
from .common import (
    ApiClient,
    ClientAuth,
    UserCredential,
    cert_dir,
    expect_dict,
    expect_str,
    fail,
    load_trust,
    load_user_credential,
    parse_hours_minutes,
    prompt_secret,
    proxy_path,
    read_stdin_line,
    run_command,
    server_url,
    split_dns,
    user_cert_path,
    user_key_path,
)

PROG = "proxy-init"
KEY_SIZES = (2048, 3072, 4096)
STORE_PROMPT = "Enter MyProxy pass phrase:"
STORE_VERIFY_PROMPT = "Verifying - Enter MyProxy pass phrase:"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Create a local RFC 3820 proxy from your certificate and key, optionally with "
            "VOMS attributes from proxyd (--voms), and optionally store a longer-lived "
            "proxy in proxyd's repository (--store)."
        ),
    )
    local = parser.add_argument_group("local proxy")
    local.add_argument(
        "--valid",
        metavar="H:MM",
        type=_lifetime,
        default=dt.timedelta(hours=12),
        help="lifetime of the proxy (default 12:00)",
    )
    local.add_argument("--limited", action="store_true", help="make a limited proxy")
    local.add_argument(
        "--rfc",
        action="store_true",
        help="make an RFC 3820 proxy (the default and only format; accepted for compatibility)",
    )
    local.add_argument(
        "--bits",
        type=int,
        choices=KEY_SIZES,
        default=2048,
        help="RSA key size of the proxy (default 2048)",
    )
    local.add_argument(
        "--voms",
        metavar="VO[:FQAN]",
        action="append",
        type=_voms_request,
        help="embed VOMS attributes of VO from proxyd's attribute authority, optionally "
        "for one FQAN (e.g. dteam:/dteam/Role=production); repeatable",
    )
    local.add_argument(
        "--verify",
        action="store_true",
        help="validate the new proxy against X509_CERT_DIR before writing it "
        "(always done with --voms, also against X509_VOMS_DIR)",
    )
    local.add_argument(
        "--cert", type=Path, help="user certificate (default: $X509_USER_CERT, else "
        "~/.globus/usercert.pem)"
    )  # fmt: skip
    local.add_argument(
        "--key", type=Path, help="user private key (default: $X509_USER_KEY, else "
        "~/.globus/userkey.pem)"
    )  # fmt: skip
    local.add_argument(
        "--out",
        type=Path,
        help="where to write the proxy (default: $X509_USER_PROXY, else /tmp/x509up_u<uid>)",
    )
    local.add_argument(
        "--pwstdin",
        action="store_true",
        help="read the user key's pass phrase from the first line of standard input",
    )
    local.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")

    store = parser.add_argument_group("storing a proxy in proxyd (--store)")
    store.add_argument(
        "--store", action="store_true", help="also delegate a proxy to proxyd's repository"
    )
    store.add_argument(
        "--store-lifetime",
        metavar="H:MM",
        type=_lifetime,
        default=dt.timedelta(hours=168),
        help="lifetime of the proxy delegated to the repository (default 168:00)",
    )
    store.add_argument(
        "--max-proxy-lifetime",
        metavar="H:MM",
        type=_lifetime,
        help="the longest proxies later issued from the stored one may live "
        "(default: the server's maximum)",
    )
    store.add_argument(
        "--name",
        type=names.argument(names.CREDENTIAL_NAME, "--name"),
        help="name of the stored credential (default: default)",
    )
    store.add_argument(
        "--username",
        type=names.argument(names.USERNAME, "--username"),
        help="store under this username (default: your DN)",
    )
    store.add_argument(
        "--description",
        type=names.argument(names.DESCRIPTION, "--description"),
        help="a description stored with the credential",
    )
    store.add_argument(
        "--retrievers",
        metavar="DN,...",
        action="append",
        type=names.argument(names.DN_PATTERN, "--retrievers"),
        help="who may retrieve proxies with the pass phrase (DNs or patterns)",
    )
    store.add_argument(
        "--renewers",
        metavar="DN,...",
        action="append",
        type=names.argument(names.DN_PATTERN, "--renewers"),
        help="who may renew proxies",
    )
    store.add_argument(
        "--trusted-retrievers",
        metavar="DN,...",
        action="append",
        type=names.argument(names.DN_PATTERN, "--trusted-retrievers"),
        help="services that may retrieve proxies without a pass phrase",
    )
    store.add_argument(
        "--no-passphrase",
        action="store_true",
        help="store without a pass phrase: only trusted retrievers and renewers can use it",
    )
    store.add_argument(
        "--store-pwstdin",
        action="store_true",
        help="read the repository pass phrase from standard input (after the key's, "
        "with --pwstdin) instead of asking twice",
    )
    parser.add_argument(
        "--server", metavar="URL", help="proxyd API base URL (default: $PROXYD_URL)"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def _lifetime(text: str) -> dt.timedelta:
    try:
        value = parse_hours_minutes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= dt.timedelta(0):
        raise argparse.ArgumentTypeError("the lifetime must be positive")
    return value


def _voms_request(text: str) -> str:
    """`vo` or `vo:/vo/group/Role=r`, checked here so typos fail before any network."""
    vo, colon, fqan = text.partition(":")
    if not vo or "/" in vo:
        raise argparse.ArgumentTypeError(f"{text!r}: expected VO or VO:FQAN")
    if colon:
        try:
            parsed = parse_fqan(fqan)
        except FqanError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
        if parsed.vo != vo:
            raise argparse.ArgumentTypeError(f"{text!r}: the FQAN is not in VO {vo}")
    return text


class Printer:
    """Progress lines on stdout (none with --quiet), grid-proxy-init style."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __call__(self, text: str = "", *, end: str = "\n") -> None:
        if not self.quiet:
            sys.stdout.write(text + end)
            sys.stdout.flush()

    @contextlib.contextmanager
    def step(self, text: str) -> Iterator[None]:
        """`<text> ... Done`, or `<text> ... Failed` before the error is reported."""
        self(f"{text} ...", end="")
        try:
            yield
        except BaseException:
            self(" Failed")
            raise
        self(" Done")


def _store_passphrase(args: argparse.Namespace) -> str | None:
    if not args.store or args.no_passphrase:
        return None
    if args.store_pwstdin:
        return read_stdin_line("repository pass phrase")
    first = prompt_secret(STORE_PROMPT)
    if prompt_secret(STORE_VERIFY_PROMPT) != first:
        fail("the pass phrases do not match")
    return first


def fetch_acs(client: ApiClient, requests: Sequence[str], lifetime: dt.timedelta) -> list[bytes]:
    """DER ACs from proxyd's attribute authority (`POST /v1/voms/ac`)."""
    answer = expect_dict(
        client.request(
            "POST",
            "/v1/voms/ac",
            {"voms": list(requests), "lifetime": int(lifetime.total_seconds())},
        ),
        "POST /v1/voms/ac",
    )
    acs = answer.get("acs")
    if not isinstance(acs, list) or not acs or not all(isinstance(a, str) for a in acs):
        fail("unexpected answer from the server to POST /v1/voms/ac: no 'acs' list")
    ders: list[bytes] = []
    for text in acs:
        try:
            der = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            fail("the server sent an attribute certificate that is not base64")
        try:
            parse_attribute_certificate(der)
        except VomsExtError as exc:
            fail(f"the server sent an unusable attribute certificate: {exc}")
        ders.append(der)
    return ders


def store_credential(
    client: ApiClient,
    user: UserCredential,
    args: argparse.Namespace,
    passphrase: str | None,
) -> dict[str, Any]:
    """Delegate a proxy to the repository: the server's CSR, signed with the user's key."""
    request: dict[str, object] = {"name": args.name or "default"}
    max_lifetime = args.max_proxy_lifetime
    optional: dict[str, object | None] = {
        "lifetime": int(max_lifetime.total_seconds()) if max_lifetime is not None else None,
        "username": args.username,
        "passphrase": passphrase,
        "description": args.description,
        "retrievers": split_dns(args.retrievers),
        "renewers": split_dns(args.renewers),
        "trusted_retrievers": split_dns(args.trusted_retrievers),
    }
    request.update({k: v for k, v in optional.items() if v is not None})
    pending = expect_dict(
        client.request("POST", "/v1/delegations", request), "POST /v1/delegations"
    )
    delegation_id = expect_str(pending, "id", "POST /v1/delegations")
    csr_pem = expect_str(pending, "csr", "POST /v1/delegations")
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        fail("the server sent a certificate request that cannot be read")
    builder = ProxyBuilder(user.certificate, user.chain).from_csr(csr).lifetime(args.store_lifetime)
    proxy = builder.sign(user.private_key)
    chain_pem = b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in (proxy, *builder.chain)
    ).decode("ascii")
    path = f"/v1/delegations/{urllib.parse.quote(delegation_id, safe='')}"
    stored = client.request("PUT", path, {"chain": chain_pem})
    return expect_dict(stored, f"PUT {path}")


def _describe_lifetime(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours:.0f} hours ({hours / 24:.1f} days)"


def _parse_time(text: object) -> dt.datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def run(args: argparse.Namespace) -> int:
    say = Printer(args.quiet)
    cert_path: Path = args.cert or user_cert_path()
    key_path: Path = args.key or user_key_path()
    out: Path = args.out or proxy_path()
    needs_server = bool(args.voms) or args.store
    base_url = server_url(args.server) if needs_server else None

    # Everything that asks the user comes first; then the work.
    user = load_user_credential(
        cert_path,
        key_path,
        pwstdin=args.pwstdin,
        announce=lambda cert: say(f"Your identity: {dn_to_slash(cert.subject)}"),
    )
    store_passphrase = _store_passphrase(args)

    client = None
    if base_url is not None:
        client = ApiClient(base_url, ClientAuth.from_user(user), cert_dir())

    acs: list[bytes] = []
    if args.voms:
        assert client is not None
        with say.step(f"Contacting {base_url} for VOMS attributes ({', '.join(args.voms)})"):
            acs = fetch_acs(client, args.voms, args.valid)

    with say.step("Creating proxy"):
        key = rsa.generate_private_key(public_exponent=65537, key_size=args.bits)
        builder = (
            ProxyBuilder(user.certificate, user.chain)
            .public_key(key.public_key())
            .lifetime(args.valid)
        )
        if args.limited:
            builder = builder.limited()
        if acs:
            builder = builder.attribute_certificates(acs)
        proxy = builder.sign(user.private_key)
        certificates = (proxy, *builder.chain)
        if args.voms or args.verify:
            try:
                validate_chain(certificates, load_trust(with_voms=bool(args.voms)))
            except VomsExtError as exc:
                fail(f"the new proxy does not validate: {exc}")
        write_credential_file(out, Credential(certificates, key))
    not_after = proxy.not_valid_after_utc
    say(f"Your proxy is valid until: {time.ctime(not_after.timestamp())}")
    requested_end = proxy.not_valid_before_utc + dt.timedelta(minutes=5) + args.valid
    if not_after < requested_end - dt.timedelta(seconds=1):
        print(
            f"{PROG}: warning: the proxy ends earlier than requested, when your "
            "certificate (or a certificate in its chain) expires",
            file=sys.stderr,
        )

    if args.store:
        assert client is not None
        with say.step(f"Storing a proxy in {base_url}"):
            stored = store_credential(client, user, args, store_passphrase)
        start, end = _parse_time(stored.get("not_before")), _parse_time(stored.get("not_after"))
        seconds = (
            (end - dt.datetime.now(dt.UTC)).total_seconds()
            if end is not None and start is not None
            else args.store_lifetime.total_seconds()
        )
        owner = stored.get("username") or dn_to_slash(user.certificate.subject)
        name = stored.get("name") or args.name or "default"
        say(
            f"A proxy valid for {_describe_lifetime(seconds)} for user {owner} "
            f"now exists on {base_url} (credential {name!s})."
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    store_only = [
        opt
        for opt, given in (
            ("--name", args.name),
            ("--username", args.username),
            ("--description", args.description),
            ("--max-proxy-lifetime", args.max_proxy_lifetime),
            ("--retrievers", args.retrievers),
            ("--renewers", args.renewers),
            ("--trusted-retrievers", args.trusted_retrievers),
            ("--no-passphrase", args.no_passphrase),
            ("--store-pwstdin", args.store_pwstdin),
        )
        if given
    ]
    if store_only and not args.store:
        parser.error(f"{', '.join(store_only)} only make sense with --store")
    if args.no_passphrase and args.store_pwstdin:
        parser.error("--no-passphrase and --store-pwstdin exclude each other")
    return run_command(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
