"""`proxyd admin`: operate a proxyd installation from the server itself.

Every command reads the service's configuration (`--config`), acts on its
database as the local operator, and is decided by the policy and written
to the audit log like any other action.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from voms_ext import TrustStoreError

from ..config import ConfigError, load_config
from ..core.admin import CredentialState
from ..errors import ServeError
from ..names import escape
from ..principal import local_operator
from ..repository import DEFAULT_NAME, Repository, RepositoryError, StoreOptions
from ..sealing import SealingError
from . import common, myproxy_import, token_map, vo_admin

if TYPE_CHECKING:
    from ..tasks import TaskService


def parse_myproxy_data(text: str) -> dict[str, str]:
    """A myproxy-server `<user>[-<name>].data` file: KEY=VALUE lines up to END_OPTIONS."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip() == "END_OPTIONS":
            break
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    return values


def _patterns(value: str | None) -> tuple[str, ...] | None:
    """A myproxy-server per-credential policy: one regular expression, never split."""
    return (value,) if value else None


def _repo(args: argparse.Namespace) -> Repository:
    try:
        return Repository.open(load_config(args.config))
    except (ConfigError, ServeError, SealingError, TrustStoreError) as exc:
        common.fail(str(exc))


def _ban(args: argparse.Namespace) -> int:
    kind, dn = ("user", args.user) if args.user else ("host", args.host)
    _repo(args).ban(local_operator(), kind, dn, args.reason)
    print(f"banned {kind} {escape(dn)}")
    return 0


def _unban(args: argparse.Namespace) -> int:
    kind, dn = ("user", args.user) if args.user else ("host", args.host)
    if not _repo(args).unban(local_operator(), kind, dn):
        common.fail(f"{kind} {escape(dn)} was not banned")
    print(f"unbanned {kind} {escape(dn)}")
    return 0


def _bans(args: argparse.Namespace) -> int:
    for ban in _repo(args).list_bans(local_operator()):
        print(
            f"{ban.kind:5}  {escape(ban.pattern)}  ({escape(ban.reason)}; "
            f"by {escape(ban.created_by)} at {ban.created_at:%Y-%m-%d %H:%M}Z)"
        )
    return 0


def _tasks(args: argparse.Namespace) -> TaskService:
    from ..taskqueue.model import TaskQueueError
    from ..tasks import open_task_service

    repo = _repo(args)
    try:
        service = open_task_service(repo)
    except TaskQueueError as exc:
        common.fail(f"cannot open the task queue: {exc}")
    if service is None:
        common.fail("this server has no task queue ([taskqueue] backend is not set)")
    return service


def _site(args: argparse.Namespace, masked: bool) -> int:
    _tasks(args).mask_site(local_operator(), args.site, masked, args.reason)
    print(f"site {args.site} {'masked' if masked else 'unmasked'}")
    return 0


def _reschedule(args: argparse.Namespace) -> int:
    task = _tasks(args).reschedule(local_operator(), args.task_id, args.reason)
    print(f"task {task.id} {task.state.value} (attempts so far: {task.attempts})")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    count = _repo(args).rotate_master_key(local_operator())
    print(f"master key rotated; {count} credential(s) re-wrapped")
    return 0


def _list(args: argparse.Namespace) -> int:
    if args.expiring_within is not None or args.invalid or args.json:
        if args.expired:
            common.fail("--expired lists by end time only; with these options use --invalid")
        return _review(args)
    creds = _repo(args).list_credentials(local_operator(), owner=args.owner, expired=args.expired)
    now = dt.datetime.now(dt.UTC)
    for c in creds:
        left = common.format_hms(max(c.not_after - now, dt.timedelta(0)))
        lock = "passphrase" if c.has_passphrase else "trusted"
        # Escaped: a tab or newline in a stored name must not shift columns or forge a line.
        locked = f"\tlocked: {escape(c.locked)}" if c.locked is not None else ""
        print(f"{escape(c.username)}\t{escape(c.name)}\t{escape(c.owner)}\t{left}\t{lock}{locked}")
    print(f"{len(creds)} credential(s)", file=sys.stderr)
    return 0


def _within(text: str) -> dt.timedelta:
    """--expiring-within: "48h", "30m", "7d", "2w" or seconds."""
    match = re.fullmatch(r"\s*(\d{1,9})\s*([smhdw]?)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f'expected a duration such as "48h", "30m", "7d" or seconds, got {text!r}'
        )
    units = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    return dt.timedelta(seconds=int(match[1]) * units[match[2]])


def _review(args: argparse.Namespace) -> int:
    """`admin list --expiring-within`/`--invalid`/`--json` (myproxy-admin-query -e/-i)."""
    states = _repo(args).review_credentials(
        local_operator(),
        owner=args.owner,
        expiring_within=args.expiring_within,
        invalid=args.invalid,
    )
    now = dt.datetime.now(dt.UTC)
    if args.json:
        within = args.expiring_within
        document = {
            "generated": now.isoformat(timespec="seconds"),
            "filters": {
                "owner": args.owner,
                "expiring_within_s": int(within.total_seconds()) if within else None,
                "invalid": args.invalid,
            },
            "count": len(states),
            "credentials": [_state_json(s, now) for s in states],
        }
        print(json.dumps(document, indent=2))
        return 0
    for st in states:
        c = st.info
        left = common.format_hms(max(c.not_after - now, dt.timedelta(0)))
        lock = "passphrase" if c.has_passphrase else "trusted"
        status = f"{st.verdict}: {escape(st.problem)}" if st.verdict else "valid"
        locked = f"\tlocked: {escape(c.locked)}" if c.locked is not None else ""
        print(
            f"{escape(c.username)}\t{escape(c.name)}\t{escape(c.owner)}\t{left}\t{lock}"
            f"\t{status}{locked}"
        )
    print(f"{len(states)} credential(s)", file=sys.stderr)
    return 0


def _state_json(state: CredentialState, now: dt.datetime) -> dict[str, object]:
    c = state.info
    return {
        "username": c.username,
        "name": c.name,
        "owner": c.owner,
        "description": c.description,
        "not_before": c.not_before.isoformat(timespec="seconds"),
        "not_after": c.not_after.isoformat(timespec="seconds"),
        "seconds_left": max(int((c.not_after - now).total_seconds()), 0),
        "has_passphrase": c.has_passphrase,
        "locked": c.locked,
        "status": state.verdict or "valid",
        "problem": state.problem or None,
    }


def _lock(args: argparse.Namespace) -> int:
    done = _repo(args).lock(local_operator(), args.username, args.name, args.message)
    for c in done:
        print(f"locked {escape(c.username)}/{escape(c.name)} of {escape(c.owner)}")
    return 0


def _unlock(args: argparse.Namespace) -> int:
    done = _repo(args).unlock(local_operator(), args.username, args.name)
    for c in done:
        print(f"unlocked {escape(c.username)}/{escape(c.name)} of {escape(c.owner)}")
    return 0


def _expire(args: argparse.Namespace) -> int:
    gone = _repo(args).expire(local_operator(), dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for c in gone:
        print(
            f"{verb} {escape(c.username)}/{escape(c.name)} of {escape(c.owner)} "
            f"(ended {c.not_after:%Y-%m-%d %H:%M}Z)"
        )
    print(f"{len(gone)} expired credential(s) {verb}", file=sys.stderr)
    return 0


def _rotate_token_key(args: argparse.Namespace) -> int:
    repo = _repo(args)
    if not repo.config.tokens.issuing:
        print("this server issues no tokens: set [tokens] issuer in the config", file=sys.stderr)
        return 1
    kid = repo.rotate_token_key(local_operator())
    print(f"new token signing key {kid}; the old one stays published until its tokens expire")
    return 0


def _remind(args: argparse.Namespace) -> int:
    repo = _repo(args)
    if not repo.config.reminders.enabled:
        print(
            "reminders are off: set [reminders] webhook or [reminders.smtp] host in the config",
            file=sys.stderr,
        )
        return 1
    sent = repo.remind_expiring(local_operator())
    for r in sent:
        print(
            f"reminded {escape(r.owner)} of {escape(r.username)}/{escape(r.name)} "
            f"({r.horizon_s // 86400} d horizon) by {', '.join(r.channels)}"
        )
    print(f"{len(sent)} reminder(s) sent", file=sys.stderr)
    return 0


def _migrate(args: argparse.Namespace) -> int:
    _repo(args)  # opening the repository runs the migrations to the newest revision
    print("database schema is at the newest revision")
    return 0


def _import(args: argparse.Namespace) -> int:
    repo = _repo(args)
    operator = local_operator()
    imported = failed = 0
    for data_file in sorted(Path(args.directory).glob("*.data")):
        creds = data_file.with_suffix(".creds")
        meta = parse_myproxy_data(data_file.read_text(errors="replace"))
        username = meta.get("USERNAME") or data_file.stem.split("-", 1)[0]
        name = meta.get("NAME") or DEFAULT_NAME
        lifetime = int(meta["LIFETIME"]) if meta.get("LIFETIME", "").isdigit() else None
        options = StoreOptions(
            username=username,
            name=name,
            lifetime=dt.timedelta(seconds=lifetime) if lifetime else None,
            description=meta.get("DESCRIPTION"),
            retrievers=_patterns(meta.get("RETRIEVERS")),
            renewers=_patterns(meta.get("RENEWERS")),
            trusted_retrievers=_patterns(meta.get("TRUSTED_RETRIEVERS")),
            key_retrievers=_patterns(meta.get("KEYRETRIEVERS")),
        )
        try:
            pem = creds.read_bytes()
            if args.dry_run:
                print(f"would import {escape(username)}/{escape(name)} ({data_file.name})")
            else:
                info = repo.import_pem(operator, options, pem)
                if meta.get("OWNER") and meta["OWNER"] != info.owner:
                    print(
                        f"note: {data_file.name} names owner {meta['OWNER']}; the chain says {info.owner}"
                    )
                print(f"imported {escape(username)}/{escape(name)} of {escape(info.owner)}")
            imported += 1
        except (OSError, RepositoryError) as exc:
            failed += 1
            reason = exc.message if isinstance(exc, RepositoryError) else str(exc)
            print(f"skipped {data_file.name}: {escape(reason)}", file=sys.stderr)
    print(f"{imported} imported, {failed} skipped", file=sys.stderr)
    return 1 if failed and not imported else 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    admin = sub.add_parser(
        "admin", help="administration: bans, site mask, master key, credentials, locks, import"
    )
    admin.add_argument(
        "--config", "-c", default="/etc/proxyd/proxyd.toml", help="the service's proxyd.toml"
    )
    cmds = admin.add_subparsers(dest="admin_command", required=True)

    def who(p: argparse.ArgumentParser) -> None:
        g = p.add_mutually_exclusive_group(required=True)
        g.add_argument("--user", metavar="DN", help="a user DN (pattern)")
        g.add_argument("--host", metavar="DN", help="a host DN (pattern)")

    p = cmds.add_parser("ban", help="refuse a user or host before any other rule (I5)")
    who(p)
    p.add_argument("--reason", required=True)
    p.set_defaults(func=_ban)
    p = cmds.add_parser("unban")
    who(p)
    p.set_defaults(func=_unban)
    p = cmds.add_parser("bans", help="list bans")
    p.set_defaults(func=_bans)
    p = cmds.add_parser("mask-site", help="stop matching tasks at a site")
    p.add_argument("site")
    p.add_argument("--reason", default="")
    p.set_defaults(func=lambda a: _site(a, True))
    p = cmds.add_parser("unmask-site")
    p.add_argument("site")
    p.add_argument("--reason", default="")
    p.set_defaults(func=lambda a: _site(a, False))
    p = cmds.add_parser("reschedule", help="queue a task again (POST /v1/tasks/{id}/reschedule)")
    p.add_argument("task_id", type=int, metavar="TASK_ID")
    p.add_argument("--reason", default="")
    p.set_defaults(func=_reschedule)
    p = cmds.add_parser(
        "rotate-master-key", help="new master key; re-wrap every credential under it"
    )
    p.set_defaults(func=_rotate)
    p = cmds.add_parser("list", help="stored credentials (never keys)")
    p.add_argument("--owner", help="only this owner DN")
    p.add_argument("--expired", action="store_true", help="only those past their end")
    p.add_argument(
        "--expiring-within",
        type=_within,
        metavar="DURATION",
        help='only those ending within DURATION ("48h", "7d"; ended ones included)',
    )
    p.add_argument(
        "--invalid",
        action="store_true",
        help="only those no use would accept now: expired, revoked or untrusted",
    )
    p.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    p.set_defaults(func=_list)
    p = cmds.add_parser(
        "lock", help="refuse every use of a credential, showing a message (myproxy-admin-query -L)"
    )
    p.add_argument("--username", "-l", required=True, help="the MyProxy username")
    p.add_argument("--name", "-k", help="one credential name (default: all of the username's)")
    p.add_argument("--message", "-m", required=True, help="shown to clients (1-512 characters)")
    p.set_defaults(func=_lock)
    p = cmds.add_parser("unlock", help="lift a lock (myproxy-admin-query -U)")
    p.add_argument("--username", "-l", required=True, help="the MyProxy username")
    p.add_argument("--name", "-k", help="one credential name (default: all of the username's)")
    p.set_defaults(func=_unlock)
    p = cmds.add_parser("expire", help="delete credentials past their end")
    p.add_argument("--dry-run", action="store_true")
    p.set_defaults(func=_expire)
    p = cmds.add_parser(
        "rotate-token-key",
        help="a new signing key for WLCG tokens (the old one stays published while needed)",
    )
    p.set_defaults(func=_rotate_token_key)
    p = cmds.add_parser(
        "remind", help="send the expiry reminders due now ([reminders]; the server does it hourly)"
    )
    p.set_defaults(func=_remind)
    p = cmds.add_parser("migrate", help="bring the database schema to the newest revision")
    p.set_defaults(func=_migrate)
    p = cmds.add_parser("import-myproxy", help="import a myproxy-server storage directory")
    p.add_argument("directory", type=Path, help="e.g. /var/lib/myproxy")
    p.add_argument("--dry-run", action="store_true")
    p.set_defaults(func=_import)
    myproxy_import.add_parser(cmds)
    vo_admin.add_parser(cmds, _repo)
    token_map.add_parser(cmds, _repo)


def run(args: argparse.Namespace) -> int:
    def body() -> int:
        try:
            return int(args.func(args))
        except RepositoryError as exc:
            rule = f" [rule {exc.rule}]" if exc.rule else ""
            common.fail(f"{exc.message}{rule}")

    return common.run_command("proxyd admin", body)
