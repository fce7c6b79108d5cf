"""`proxy-info`: what a proxy file holds, checked like a relying party checks it.

The options follow `grid-proxy-info` (identity, type, timeleft, -exists)
and `voms-proxy-info` (-all, -fqan, -vo), with one deliberate difference:
VOMS attributes are shown only when their AC verifies against
`X509_VOMS_DIR`. An AC that does not verify is an error with the reason
(voms-proxy-info prints forged attributes and exits 0).

Every answer comes from `validate_chain` against `X509_CERT_DIR`: a proxy
whose chain does not validate (expired, untrusted CA, broken signature) is
reported as an error, never printed as if it were usable. VOMS ACs are only
verified when the output includes attributes (`--fqan`, `--vo`, `--all`,
`--json`), so `--identity`, `--type`, `--timeleft` and `--exists` agree with
grid-proxy-info on a proxy that carries a bad AC.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from voms_ext import (
    Credential,
    ValidationResult,
    VomsAttributes,
    VomsExtError,
    dn_to_slash,
    load_credential_file,
    validate_chain,
)

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
# Single-field options, in the order grid-proxy-info documents them.
FIELDS = ("subject", "issuer", "identity", "type", "timeleft", "strength", "path", "vo", "fqan")
VOMS_FIELDS = frozenset({"vo", "fqan"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Show the proxy certificate in a grid proxy file, validated against "
            "X509_CERT_DIR (and X509_VOMS_DIR for VOMS attributes)."
        ),
        epilog=(
            "Single-field options print just the value, one line each, in the order given. "
            "Without any, a summary like grid-proxy-info's is printed."
        ),
    )
    parser.add_argument(
        "-f",
        "--file",
        type=Path,
        help="the proxy file (default: $X509_USER_PROXY, else /tmp/x509up_u<uid>)",
    )
    helps = {
        "subject": "the proxy's subject DN",
        "issuer": "the DN of the proxy's issuer (the certificate that signed it)",
        "identity": "the identity the proxy speaks for: the end-entity subject",
        "type": "the proxy type, in grid-proxy-info -type words",
        "timeleft": "seconds until the proxy (or anything in its chain) expires",
        "strength": "the proxy key size in bits",
        "path": "the path of the proxy file",
        "vo": "the VO of each verified VOMS AC, one per line",
        "fqan": "the FQANs of the verified VOMS ACs, one per line, in order",
    }
    for field in FIELDS:
        parser.add_argument(
            f"--{field}",
            dest="fields",
            action="append_const",
            const=field,
            help=helps[field],
        )
    parser.add_argument(
        "--all",
        action="store_true",
        help="the summary plus a section per VOMS AC (as voms-proxy-info -all)",
    )
    parser.add_argument("--json", action="store_true", help="every field, as one JSON object")
    parser.add_argument(
        "-e",
        "--exists",
        action="store_true",
        help="print nothing; exit 0 if a valid proxy exists (for at least --valid), else 1",
    )
    parser.add_argument(
        "--valid",
        metavar="H:MM",
        type=_hours_minutes,
        help="with --exists: the proxy must stay valid this long (default 0:00)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def _hours_minutes(text: str) -> dt.timedelta:
    try:
        return parse_hours_minutes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@dataclass(frozen=True)
class ProxyInfo:
    """A validated proxy file and the moment it was looked at."""

    path: Path
    credential: Credential
    result: ValidationResult
    now: dt.datetime

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
                    "timeleft": max(int((v.not_after - self.now).total_seconds()), 0),
                }
                for v in result.voms
            ],
        }


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def load_proxy_info(path: Path, *, check_voms: bool, now: dt.datetime | None = None) -> ProxyInfo:
    """Load and validate a proxy file; VomsExtError / OSError say why it is no good."""
    now = now or dt.datetime.now(dt.UTC)
    credential = load_credential_file(path)
    trust = load_trust(with_voms=check_voms)
    try:
        result = validate_chain(credential.certificates, trust, now, check_voms=check_voms)
    except VomsExtError as exc:
        fail(f"{path}: {exc}")
    return ProxyInfo(path, credential, result, now)


def exists(path: Path, valid_for: dt.timedelta) -> bool:
    """grid-proxy-info -exists: a proxy that validates now and for at least `valid_for`."""
    try:
        info = load_proxy_info(path, check_voms=False)
    except (CliError, VomsExtError, OSError):
        return False
    return info.result.proxy_type.is_proxy and info.result.time_left(info.now) >= valid_for


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    fields: list[str] = args.fields or []
    if args.valid is not None and not args.exists:
        parser.error("--valid goes with --exists")
    if fields and (args.all or args.json):
        parser.error("single-field options cannot be combined with --all or --json")
    path: Path = args.file or proxy_path()

    if args.exists:
        return 0 if exists(path, args.valid or dt.timedelta(0)) else 1

    def body() -> int:
        check_voms = args.all or args.json or any(f in VOMS_FIELDS for f in fields)
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
        return 0

    return run_command(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
