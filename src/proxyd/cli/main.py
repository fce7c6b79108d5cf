"""`proxyd`: serve, dev-pki, admin."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..config import ConfigError, load_config
from ..errors import ServeError
from ..logs import configure as configure_logging
from . import admin


def _dev_pki(args: argparse.Namespace) -> int:
    from ..devpki import PKCS12_PASSPHRASE, DevPKI, generate

    existed = (
        DevPKI(args.out.absolute()).config.exists() if hasattr(args.out, "absolute") else False
    )
    pki = generate(args.out, force=args.force)
    if existed and not args.force:
        print(f"development PKI already present in {pki.root} (use --force to replace it)")
    else:
        print(f"development PKI written to {pki.root}")
    print(f"  config:        {pki.config}")
    print(f"  X509_CERT_DIR: {pki.cert_dir}")
    print(f"  X509_VOMS_DIR: {pki.voms_dir}")
    print(f"  vomses:        {pki.vomses} (voms-proxy-init --vomses, once [aa] is enabled)")
    if not pki.pkcs12("auditor").exists():
        # A PKI written before the dev identities had PKCS#12 files; generate() keeps it.
        print("  (no auditor or admin identity: `proxyd dev-pki --force` adds them, new state)")
        return 0
    print(f"  auditor:       {pki.pkcs12('auditor')} (import in a browser for /ui/)")
    print(f"  admin:         {pki.pkcs12('admin')} (the admin API)")
    print(f"  PKCS#12 passphrase: {PKCS12_PASSPHRASE} (a fixed dev value; see docs/tutorial.md)")
    print(f"  CA to trust:   {pki.ca_cert}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from ..serve import serve

    configure_logging(debug=args.debug, json_lines=args.log_format == "json")
    config = load_config(args.config)
    serve(config, workers=args.workers, json_lines=args.log_format == "json")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="proxyd", description="proxyd credential service")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the MyProxy and HTTPS listeners")
    p.add_argument("--config", "-c", default="/etc/proxyd/proxyd.toml", help="TOML config file")
    p.add_argument("--debug", action="store_true", help="log at DEBUG level (never secrets)")
    p.add_argument(
        "--log-format",
        choices=("json", "text"),
        default="json",
        help="log lines as JSON (default) or text",
    )
    p.add_argument(
        "--workers", type=int, default=1, help="worker processes sharing the ports (SO_REUSEPORT)"
    )
    p.set_defaults(func=_serve)

    p = sub.add_parser("dev-pki", help="write a development PKI and config")
    p.add_argument("--out", type=Path, default=Path("certs-dev"), help="output directory")
    p.add_argument("--force", action="store_true", help="replace an existing PKI and its state")
    p.set_defaults(func=_dev_pki)

    admin.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "admin":
        return admin.run(args)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"proxyd: configuration error: {exc}", file=sys.stderr)
        return 2
    except ServeError as exc:
        print(f"proxyd: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
