"""`proxy-info`: what a proxy file holds, checked like a relying party checks it.

The options are those of `grid-proxy-info` and `voms-proxy-info`, spelled
with one dash or two, and site scripts get the same exit status from them
(docs/cli.md, "Scripts and exit codes", lists every case). The one
deliberate difference: VOMS attributes are shown only when their AC
verifies against `X509_VOMS_DIR`; an AC that does not verify is an error
with the reason (voms-proxy-info prints forged attributes and exits 0).

Every answer comes from `validate_chain` against `X509_CERT_DIR`: a proxy
whose chain does not validate (untrusted CA, broken signature) is an
error, never printed as if it were usable. An *expired* proxy is still
described, as both tools describe it, with zero time left: scripts read
`--timeleft` to decide to renew, and an error there would leave them
comparing an empty string. Its chain is validated as of the moment it
expired. ACs are verified now, and only when an option looks at them, so
`--identity`, `--type`, `--timeleft` and `--exists` agree with
grid-proxy-info on a proxy that carries a bad AC.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from voms_ext import (
    Credential,
    CredentialFileError,
    TrustStore,
    ValidationResult,
    VomsAttributes,
    VomsExtError,
    dn_to_slash,
    load_credential_file,
    validate_chain,
)
from voms_ext.validate import verified_voms_attributes

from .. import __version__
from .common import (
    CliError,
    fail,
    format_hms,
    load_trust,
    parse_hours_minutes,
    proxy_path,
    run_command,
)

PROG = "proxy-info"
# Single-field options, in the order grid-proxy-info documents them, then voms-proxy-info's.
FIELDS = (
    "subject",
    "issuer",
    "identity",
    "type",
    "timeleft",
    "strength",
    "path",
    "vo",
    "fqan",
    "actimeleft",
)
VOMS_FIELDS = frozenset({"vo", "fqan", "actimeleft"})
# The grid tools' one-letter spellings (grid-proxy-info -help).
SHORT = {"subject": "-s", "issuer": "-i"}


def _spellings(name: str, short: str | None = None) -> list[str]:
    """`--name`, the grid tools' `-name`, and their one-letter form if any."""
    return [*([short] if short else []), f"--{name}", f"-{name}"]


def build_parser() -> argparse.ArgumentParser:
    # -h is grid-proxy-info's `-hours`, so help is only --help / -help / -usage.
    parser = argparse.ArgumentParser(
        prog=PROG,
        add_help=False,
        description=(
            "Show the proxy certificate in a grid proxy file, validated against "
            "X509_CERT_DIR (and X509_VOMS_DIR for VOMS attributes)."
        ),
        epilog=(
            "Single-field options print just the value, one line each, in the order given. "
            "Without any, a summary like grid-proxy-info's is printed. Every option may be "
            "spelled with one dash, as grid-proxy-info and voms-proxy-info spell them."
        ),
    )
    parser.add_argument("--help", "-help", "-usage", action="help", help="show this help and exit")
    parser.add_argument(
        *_spellings("file", "-f"),
        type=Path,
        help="the proxy file (default: $X509_USER_PROXY, else /tmp/x509up_u<uid>)",
    )
    helps = {
        "subject": "the proxy's subject DN",
        "issuer": "the DN of the proxy's issuer (the certificate that signed it)",
        "identity": "the identity the proxy speaks for: the end-entity subject",
        "type": "the proxy type, in grid-proxy-info -type words",
        "timeleft": "seconds until the proxy (or anything in its chain) expires; 0 once expired",
        "strength": "the proxy key size in bits",
        "path": "the path of the proxy file",
        "vo": "the VO of each verified VOMS AC, one per line (exit 1 if there is none)",
        "fqan": "the FQANs of the verified VOMS ACs, one per line, in order (exit 1 if none)",
        "actimeleft": "seconds until each verified VOMS AC expires, one per line (exit 1 if none)",
    }
    for field in FIELDS:
        parser.add_argument(
            *_spellings(field, SHORT.get(field)),
            dest="fields",
            action="append_const",
            const=field,
            help=helps[field],
        )
    parser.add_argument(
        *_spellings("all"),
        action="store_true",
        help="the summary plus a section per VOMS AC (as voms-proxy-info -all)",
    )
    parser.add_argument("--json", action="store_true", help="every field, as one JSON object")
    parser.add_argument(
        *_spellings("exists", "-e"),
        action="store_true",
        help="exit 0 if a valid proxy exists (meeting --valid/--hours/--bits), else 1",
    )
    parser.add_argument(
        *_spellings("valid", "-v"),
        metavar="H:MM",
        type=_hours_minutes,
        help="with --exists: the proxy must stay valid this long (default 0:00)",
    )
    parser.add_argument(
        *_spellings("hours", "-h"),
        metavar="H",
        type=_count("hours"),
        help="with --exists: the proxy must stay valid this many hours (older form of --valid)",
    )
    parser.add_argument(
        *_spellings("bits", "-b"),
        metavar="B",
        type=_count("bits"),
        help="with --exists: the proxy key must have at least this many bits",
    )
    parser.add_argument(
        *_spellings("acexists"),
        metavar="VO",
        help="exit 0 if the proxy carries a verified VOMS AC of VO, else 1",
    )
    parser.add_argument(*_spellings("version"), action="version", version=f"%(prog)s {__version__}")
    return parser


def _hours_minutes(text: str) -> dt.timedelta:
    try:
        return parse_hours_minutes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.strip().isdigit():
            raise argparse.ArgumentTypeError(f"expected a whole number of {what}, got {text!r}")
        return int(text)

    return parse


@dataclass(frozen=True)
class ProxyInfo:
    """A validated proxy file and the moment it was looked at.

    `expired`: the chain validated only as of the moment it expired.
    `result.voms` holds the verified ACs once `with_attributes` was called.
    """

    path: Path
    credential: Credential
    result: ValidationResult
    now: dt.datetime
    expired: bool = False

    @property
    def subject(self) -> str:
        return dn_to_slash(self.credential.certificate.subject)

    @property
    def issuer(self) -> str:
        return dn_to_slash(self.credential.certificate.issuer)

    @property
    def timeleft(self) -> int:
        return int(self.result.time_left(self.now).total_seconds())

    @property
    def strength(self) -> int | None:
        key = self.credential.certificate.public_key()
        if isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            return key.key_size
        return None

    def with_attributes(self, trust: TrustStore) -> ProxyInfo:
        """This proxy with its VOMS ACs verified now; VomsExtError says why one does not verify.

        The holder is the end-entity certificate, so an expired proxy's ACs
        verify as long as they (and their AA) are valid themselves, as
        libvomsapi sees it.
        """
        voms = verified_voms_attributes(self.result.chain, self.result.end_entity, trust, self.now)
        return dataclasses.replace(self, result=dataclasses.replace(self.result, voms=voms))

    def ac_timeleft(self, voms: VomsAttributes) -> int:
        return max(int((voms.not_after - self.now).total_seconds()), 0)

    def field_lines(self, field: str) -> list[str]:
        result = self.result
        if field == "subject":
            return [self.subject]
        if field == "issuer":
            return [self.issuer]
        if field == "identity":
            return [result.identity]
        if field == "type":
            return [result.proxy_type.description]
        if field == "timeleft":
            return [str(self.timeleft)]
        if field == "strength":
            return [str(self.strength or 0)]
        if field == "path":
            return [str(self.path)]
        if field == "vo":
            return [v.vo for v in result.voms]
        if field == "fqan":
            return list(result.fqans)
        if field == "actimeleft":
            return [str(self.ac_timeleft(v)) for v in result.voms]
        raise AssertionError(field)

    def summary_lines(self) -> list[str]:
        """grid-proxy-info's layout."""
        strength = f"{self.strength} bits" if self.strength else "unknown"
        rows = [
            ("subject", self.subject),
            ("issuer", self.issuer),
            ("identity", self.result.identity),
            ("type", self.result.proxy_type.description),
            ("strength", strength),
            ("path", str(self.path)),
            ("timeleft", format_hms(self.result.time_left(self.now))),
        ]
        return [f"{name:<8} : {value}" for name, value in rows]

    def voms_lines(self, voms: VomsAttributes) -> list[str]:
        """voms-proxy-info -all's section for one AC."""
        rows = [
            ("VO", voms.vo),
            ("subject", dn_to_slash(self.result.end_entity.subject)),
            ("issuer", voms.issuer),
        ]
        rows += [("attribute", fqan) for fqan in voms.fqans]
        rows += [
            ("attribute", f"{ga.name} = {ga.value} ({ga.qualifier})")
            for ga in voms.generic_attributes
        ]
        rows += [("timeleft", format_hms(voms.not_after - self.now)), ("uri", voms.uri)]
        return [f"=== VO {voms.vo} extension information ==="] + [
            f"{name:<9} : {value}" for name, value in rows
        ]

    def as_json(self) -> dict[str, Any]:
        result = self.result
        return {
            "path": str(self.path),
            "subject": self.subject,
            "issuer": self.issuer,
            "identity": result.identity,
            "identity_issuer": result.issuer,
            "type": result.proxy_type.description,
            "proxy_type": result.proxy_type.value,
            "limited": result.is_limited,
            "proxy_depth": result.proxy_depth,
            "strength": self.strength,
            "not_after": _iso(result.not_after),
            "timeleft": self.timeleft,
            "fqans": list(result.fqans),
            "voms": [
                {
                    "vo": v.vo,
                    "uri": v.uri,
                    "issuer": v.issuer,
                    "holder": dn_to_slash(result.end_entity.subject),
                    "fqans": list(v.fqans),
                    "generic_attributes": [
                        {"name": g.name, "value": g.value, "qualifier": g.qualifier}
                        for g in v.generic_attributes
                    ],
                    "targets": list(v.targets),
                    "serial_number": str(v.serial_number),
                    "not_before": _iso(v.not_before),
                    "not_after": _iso(v.not_after),
                    "timeleft": self.ac_timeleft(v),
                }
                for v in result.voms
            ],
        }


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def load_proxy_info(path: Path, *, check_voms: bool, now: dt.datetime | None = None) -> ProxyInfo:
    """Load and validate a proxy file; CliError / VomsExtError / OSError say why it is no good.

    A chain that fails now but validates as of the moment its first
    certificate expired is an expired proxy, described with zero time left.
    """
    now = now or dt.datetime.now(dt.UTC)
    credential = load_credential_file(path)
    trust = load_trust(with_voms=check_voms)
    certificates = credential.certificates
    try:
        result = validate_chain(certificates, trust, now, check_voms=False)
        info = ProxyInfo(path, credential, result, now)
    except VomsExtError as exc:
        last_valid = min(c.not_valid_after_utc for c in certificates)
        if last_valid >= now:
            fail(f"{path}: {exc}")
        try:
            result = validate_chain(certificates, trust, last_valid, check_voms=False)
        except VomsExtError:
            fail(f"{path}: {exc}")  # the problem now, not the one it had then
        info = ProxyInfo(path, credential, result, now, expired=True)
    if not check_voms:
        return info
    try:
        return info.with_attributes(trust)
    except VomsExtError as exc:
        fail(f"{path}: {exc}")


@dataclass(frozen=True)
class Requirements:
    """What `--exists` asks of the proxy (grid-proxy-info -exists -valid/-hours/-bits)."""

    valid_for: dt.timedelta = dt.timedelta(0)
    bits: int = 0

    def met_by(self, info: ProxyInfo) -> bool:
        return (
            not info.expired
            and info.result.proxy_type.is_proxy
            and info.result.time_left(info.now) >= self.valid_for
            and (info.strength or 0) >= self.bits
        )


def _requirements(args: argparse.Namespace) -> Requirements:
    # Both must be met, as voms-proxy-info has it (grid-proxy-info takes the last one
    # given): a script that names two thresholds never gets a yes that one of them denies.
    valid = args.valid or dt.timedelta(0)
    if args.hours is not None:
        valid = max(valid, dt.timedelta(hours=args.hours))
    return Requirements(valid, args.bits or 0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    fields: list[str] = args.fields or []
    thresholds = [args.valid, args.hours, args.bits]
    if any(t is not None for t in thresholds) and not args.exists:
        parser.error("--valid, --hours and --bits go with --exists")
    if fields and (args.all or args.json):
        parser.error("single-field options cannot be combined with --all or --json")
    path: Path = args.file or proxy_path()
    checks_only = not (fields or args.all or args.json)
    if checks_only and (args.exists or args.acexists is not None):
        return _check(path, args)

    def body() -> int:
        check_voms = (
            args.all
            or args.json
            or args.acexists is not None
            or any(f in VOMS_FIELDS for f in fields)
        )
        info = load_proxy_info(path, check_voms=check_voms)
        if args.json:
            lines = [json.dumps(info.as_json(), indent=2)]
        elif fields:
            lines = [line for field in fields for line in info.field_lines(field)]
        else:
            lines = info.summary_lines()
            if args.all:
                for voms in info.result.voms:
                    lines += info.voms_lines(voms)
        for line in lines:
            sys.stdout.write(line + "\n")
        return _status(info, args, fields)

    return run_command(PROG, body)


def _status(info: ProxyInfo, args: argparse.Namespace, fields: list[str]) -> int:
    """The exit status the grid tools give for what was printed and asked."""
    if args.exists and not _requirements(args).met_by(info):
        return 1
    if args.acexists is not None and args.acexists not in {v.vo for v in info.result.voms}:
        return 1
    if not info.result.voms and any(f in VOMS_FIELDS for f in fields):
        # voms-proxy-info exits 1 when asked for attributes the proxy does not have.
        print(f"{PROG}: {info.path}: the proxy carries no VOMS attributes", file=sys.stderr)
        return 1
    return 0


def _check(path: Path, args: argparse.Namespace) -> int:
    """--exists / --acexists alone: only an exit status, as in scripts' `if` tests.

    No proxy (a missing, empty or unreadable file) is a plain 1 with nothing
    printed. A proxy the grid tools would accept and proxyd does not (an
    untrusted or broken chain, an AC that does not verify) also says why on
    stderr, so that the difference never goes unexplained.
    """
    try:
        info = load_proxy_info(path, check_voms=False)
    except (CredentialFileError, OSError):
        return 1
    except (CliError, VomsExtError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    if args.exists and not _requirements(args).met_by(info):
        return 1
    if args.acexists is None:
        return 0
    try:
        info = info.with_attributes(load_trust(with_voms=True))
    except VomsExtError as exc:
        print(f"{PROG}: {path}: {exc}", file=sys.stderr)
        return 1
    return 0 if args.acexists in {v.vo for v in info.result.voms} else 1


if __name__ == "__main__":
    sys.exit(main())
