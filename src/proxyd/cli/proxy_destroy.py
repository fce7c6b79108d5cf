"""`proxy-destroy`: remove the local proxy file and, with `--remote`, a stored credential.

Like grid-proxy-destroy it unlinks the proxy file; it refuses to remove a
file whose first certificate is not a proxy (a `--file` pointing at a user
certificate by mistake). With `--remote` it first destroys the credential
stored in proxyd (`DELETE /v1/credentials/{name}`), authenticated with the
local proxy when it is still valid, else with the user certificate and key.
"""

from __future__ import annotations

import argparse
import sys
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from voms_ext import (
    VomsExtError,
    classify,
    dn_to_slash,
    load_credential_file,
    validate_chain,
)

from .. import __version__, names
from .common import (
    ApiClient,
    ClientAuth,
    cert_dir,
    fail,
    load_trust,
    load_user_credential,
    proxy_path,
    run_command,
    server_url,
    user_cert_path,
    user_key_path,
)

PROG = "proxy-destroy"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Remove the local proxy file and, with --remote, a credential stored in proxyd.",
    )
    parser.add_argument(
        "-f",
        "--file",
        type=Path,
        help="the proxy file (default: $X509_USER_PROXY, else /tmp/x509up_u<uid>)",
    )
    parser.add_argument(
        "--remote",
        action="store_true",
        help="also destroy the credential stored in proxyd (see --name, --username)",
    )
    parser.add_argument(
        "--name",
        type=names.argument(names.CREDENTIAL_NAME, "--name"),
        help="with --remote: the credential name (default: default)",
    )
    parser.add_argument(
        "--username",
        type=names.argument(names.USERNAME, "--username"),
        help="with --remote: the username it is stored under (default: your DN)",
    )
    parser.add_argument(
        "--server", metavar="URL", help="proxyd API base URL (default: $PROXYD_URL)"
    )
    parser.add_argument(
        "--pwstdin",
        action="store_true",
        help="with --remote and no local proxy: read the user key's pass phrase from stdin",
    )
    parser.add_argument(
        "-n", "--dry-run", action="store_true", help="say what would be removed, remove nothing"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def _check_is_proxy(path: Path) -> None:
    """Refuse to remove a readable credential whose leaf is not a proxy."""
    try:
        leaf = load_credential_file(path).certificate
        kind = classify(leaf).type
    except VomsExtError:
        return  # unreadable or damaged: still the proxy location, removable
    if not kind.is_proxy:
        fail(
            f"{path} holds a certificate that is not a proxy ({dn_to_slash(leaf.subject)}, "
            f"{kind.description}); not removing it"
        )


def _usable_proxy(path: Path) -> bool:
    """A proxy the server will accept for TLS: it validates now, attributes included."""
    try:
        credential = load_credential_file(path)
        if credential.private_key is None:
            return False
        validate_chain(credential.certificates, load_trust(with_voms=True))
    except (VomsExtError, OSError):
        return False
    return True


def _remote(args: argparse.Namespace, path: Path, local_exists: bool) -> str:
    name = args.name or "default"
    base_url = server_url(args.server)
    whose = f"user {args.username}" if args.username else "your DN"
    if args.dry_run:
        return f"Would destroy credential {name!r} of {whose} on {base_url}"
    if local_exists and _usable_proxy(path):
        auth = ClientAuth.from_proxy(path)
    else:
        user = load_user_credential(user_cert_path(), user_key_path(), pwstdin=args.pwstdin)
        auth = ClientAuth.from_user(user)
    client = ApiClient(base_url, auth, cert_dir())
    client.request(
        "DELETE",
        f"/v1/credentials/{urllib.parse.quote(name, safe='')}",
        query={"username": args.username},
    )
    return f"Destroyed credential {name!r} of {whose} on {base_url}"


def run(args: argparse.Namespace) -> int:
    path: Path = args.file or proxy_path()
    local_exists = path.is_file()
    if path.exists() and not local_exists:
        fail(f"{path} is not a regular file; not removing it")
    if local_exists:
        _check_is_proxy(path)
    lines: list[str] = []
    if args.remote:
        lines.append(_remote(args, path, local_exists))
    if local_exists:
        if args.dry_run:
            lines.append(f"Would remove proxy file {path}")
        else:
            path.unlink()
            lines.append(f"Removed proxy file {path}")
    elif args.remote:
        lines.append(f"No local proxy file at {path}")
    if not args.quiet:
        for line in lines:
            print(line)
    if not local_exists and not args.remote:
        fail(f"no proxy file at {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.name or args.username) and not args.remote:
        parser.error("--name and --username go with --remote")
    return run_command(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
