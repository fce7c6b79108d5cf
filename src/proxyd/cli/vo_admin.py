"""`proxyd admin vo`: the members of the VOs proxyd's attribute authority serves.

Changes go to the database and apply to the next request of every running
server, without a restart; each is decided and audited as an administrative
action of the local operator.
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
    held = repo.add_member(local_operator(), args.vo, args.dn, args.fqans)
    print(f"added {escape(args.dn)} to VO {args.vo}: {' '.join(held)}")
    return 0


def _remove(args: argparse.Namespace, repo: Repository) -> int:
    held = repo.remove_member(local_operator(), args.vo, args.dn)
    print(f"removed {escape(args.dn)} from VO {args.vo} (held {' '.join(held)})")
    return 0


def _grant(args: argparse.Namespace, repo: Repository) -> int:
    held = repo.grant(local_operator(), args.vo, args.dn, args.fqan)
    print(f"{escape(args.dn)} in VO {args.vo} now holds: {' '.join(held)}")
    return 0


def _revoke(args: argparse.Namespace, repo: Repository) -> int:
    held = repo.revoke(local_operator(), args.vo, args.dn, args.fqan)
    print(f"{escape(args.dn)} in VO {args.vo} now holds: {' '.join(held) or 'nothing'}")
    return 0


def _suspend(args: argparse.Namespace, repo: Repository) -> int:
    reason = repo.suspend(local_operator(), args.vo, args.dn, args.reason)
    print(f"suspended {escape(args.dn)} in VO {args.vo}: {escape(reason)}")
    return 0


def _restore(args: argparse.Namespace, repo: Repository) -> int:
    was = repo.restore(local_operator(), args.vo, args.dn)
    print(f"restored {escape(args.dn)} in VO {args.vo} (was suspended: {escape(was)})")
    return 0


def _list(args: argparse.Namespace, repo: Repository) -> int:
    members = repo.list_members(local_operator(), args.vo)
    if args.json:
        document = {
            "vo": args.vo,
            "count": len(members),
            "members": [
                {
                    "vo": m.vo,
                    "dn": m.dn,
                    "fqans": list(m.fqans),
                    "added_by": m.added_by,
                    "added_at": m.added_at.isoformat(timespec="seconds"),
                    "changed_at": m.changed_at.isoformat(timespec="seconds"),
                    "suspended": m.suspended_reason is not None,
                    "suspended_reason": m.suspended_reason,
                    "suspended_at": (
                        m.suspended_at.isoformat(timespec="seconds") if m.suspended_at else None
                    ),
                }
                for m in members
            ],
        }
        print(json.dumps(document, indent=2))
        return 0
    for m in members:
        # Escaped: a tab or newline in a DN must not shift columns or forge a line.
        line = f"{m.vo}\t{escape(m.dn)}\t{' '.join(m.fqans)}"
        if m.suspended_reason is not None:
            line += f"\tSUSPENDED: {escape(m.suspended_reason)}"
        print(line)
    print(f"{len(members)} member(s)", file=sys.stderr)
    return 0


def add_parser(
    cmds: argparse._SubParsersAction[argparse.ArgumentParser], open_repo: RepoOpener
) -> None:
    vo = cmds.add_parser(
        "vo", help="VO members of proxyd's attribute authority (no restart needed)"
    )
    sub = vo.add_subparsers(dest="vo_command", required=True)

    def action(
        name: str, help: str, func: Callable[[argparse.Namespace, Repository], int]
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.set_defaults(func=lambda a: func(a, open_repo(a)))
        return p

    def member(p: argparse.ArgumentParser) -> None:
        p.add_argument("vo", help="the VO (a [[voms]] table of the configuration)")
        p.add_argument("dn", help='the member\'s certificate subject, e.g. "/DC=org/CN=Alice"')

    p = action("add-member", "make a DN a member of a VO, holding FQANs", _add)
    member(p)
    p.add_argument(
        "fqans",
        nargs="*",
        metavar="FQAN",
        help="groups and group/role pairs held, e.g. /dteam /dteam/Role=production "
        "(default: the VO's root group /VO)",
    )
    p = action("remove-member", "remove a member from a VO", _remove)
    member(p)
    p = action("grant", "let a member hold one more group or role", _grant)
    member(p)
    p.add_argument("fqan", help="e.g. /dteam/analysis or /dteam/Role=production")
    p = action("revoke", "take a group or role from a member (it stays a member)", _revoke)
    member(p)
    p.add_argument("fqan", help="e.g. /dteam/Role=production")
    p = action("suspend", "suspend a member: it keeps what it holds but gets no AC", _suspend)
    member(p)
    p.add_argument(
        "--reason",
        required=True,
        help="why (1 to 200 printable characters); the member sees it when refused",
    )
    p = action("restore", "end a member's suspension", _restore)
    member(p)
    p = action("list", "the members, what they hold, and who is suspended (why)", _list)
    p.add_argument("vo", nargs="?", help="only this VO")
    p.add_argument("--json", action="store_true", help="one JSON document, for scripts")


__all__ = ["add_parser"]
