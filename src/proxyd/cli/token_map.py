"""`proxyd admin token-map`: which owner DN a token's (issuer, subject) acts as.

A mapping lets the tokens of one subject of a trusted issuer ([[tokens.issuers]])
exchange for limited proxies of that owner's credentials and use the API as
that owner (docs/operator.md). Changes go to the database and apply to the
next token; each is decided and audited as an administrative action of the
local operator.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from ..names import escape
from ..principal import local_operator
from ..repository import Repository

RepoOpener = Callable[[argparse.Namespace], Repository]


def _add(args: argparse.Namespace, repo: Repository) -> int:
    m = repo.add_token_mapping(local_operator(), args.issuer, args.subject, args.dn)
    print(f"mapped {escape(m.subject)} of {escape(m.issuer)} to {escape(m.owner_dn)}")
    if args.issuer not in {i.url for i in repo.config.tokens.issuers}:
        print(
            f"note: {escape(args.issuer)} is not a [[tokens.issuers]] url of this "
            "configuration: its tokens are refused until it is",
            file=sys.stderr,
        )
    return 0


def _remove(args: argparse.Namespace, repo: Repository) -> int:
    dn = repo.remove_token_mapping(local_operator(), args.issuer, args.subject)
    print(f"removed {escape(args.subject)} of {escape(args.issuer)} (was {escape(dn)})")
    return 0


def _list(args: argparse.Namespace, repo: Repository) -> int:
    mappings = repo.list_token_mappings(local_operator())
    if args.json:
        document = {
            "count": len(mappings),
            "mappings": [
                {
                    "issuer": m.issuer,
                    "subject": m.subject,
                    "owner": m.owner_dn,
                    "added_by": m.added_by,
                    "added_at": m.added_at.isoformat(timespec="seconds"),
                }
                for m in mappings
            ],
        }
        print(json.dumps(document, indent=2))
        return 0
    for m in mappings:
        # Escaped: a tab or newline in a value must not shift columns or forge a line.
        print(f"{escape(m.issuer)}\t{escape(m.subject)}\t{escape(m.owner_dn)}")
    print(f"{len(mappings)} mapping(s)", file=sys.stderr)
    return 0


def add_parser(
    cmds: argparse._SubParsersAction[argparse.ArgumentParser], open_repo: RepoOpener
) -> None:
    tm = cmds.add_parser(
        "token-map", help="map a token issuer's subject to an owner DN (token exchange, bearer)"
    )
    sub = tm.add_subparsers(dest="token_map_command", required=True)

    def action(
        name: str, help: str, func: Callable[[argparse.Namespace, Repository], int]
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.set_defaults(func=lambda a: func(a, open_repo(a)))
        return p

    def key(p: argparse.ArgumentParser) -> None:
        p.add_argument("issuer", help="the issuer's URL, as the tokens' iss claim says it")
        p.add_argument("subject", help="the subject, as the tokens' sub claim says it")

    p = action("add", "let a subject's tokens act as an owner DN", _add)
    key(p)
    p.add_argument("dn", help='the owner\'s certificate subject, e.g. "/DC=org/CN=Alice"')
    p = action("remove", "remove a mapping", _remove)
    key(p)
    p = action("list", "every mapping", _list)
    p.add_argument("--json", action="store_true", help="one JSON document, for scripts")


__all__ = ["add_parser"]
