"""`proxyd-audit`: ask the issuance log questions, check its hash chain, export it.

Works on the local database (`--config /etc/proxyd/proxyd.toml`, for the
operator on the server) or against the HTTPS API (`--server URL`, with the
caller's proxy or certificate; the caller must be listed in `auditors`).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from ..audit import AuditWriteError
from ..config import ConfigError, load_config
from ..core.audit_reads import LocalAuditReads
from ..core.errors import RepositoryError
from ..names import escape
from . import common

COLUMNS = (
    "seq",
    "time",
    "decision",
    "rule",
    "operation",
    "actor_dn",
    "owner_dn",
    "credential_name",
    "serial",
    "lifetime_s",
    "fqans",
    "peer",
)
PAGE = 1000


def _time(text: str) -> dt.datetime:
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 date or time (e.g. 2026-11-25 or 2026-11-25T12:00Z)"
        ) from None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "actor": args.actor,
        "owner": args.owner,
        "serial": args.serial,
        "decision": args.decision,
        "rule": args.rule,
        "operation": args.operation,
        "since": args.since,
        "until": args.until,
        "task": args.task,
    }


def _task_id(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a task id (a positive integer)")
    return int(text)


class Source:
    """Where events come from: the local database, or the API."""

    def pages(
        self, filters: dict[str, Any], *, newest_first: bool, limit: int | None
    ) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def verify(self) -> dict[str, Any]:
        raise NotImplementedError

    def event(self, seq: int) -> dict[str, Any] | None:
        """The event at `seq`, or None if the chain has none there."""
        raise NotImplementedError


class LocalSource(Source):
    """The server's own database, read through the core as the local operator."""

    def __init__(self, config_path: str, command: str) -> None:
        try:
            config = load_config(config_path)
        except ConfigError as exc:
            common.fail(str(exc))
        try:
            self.log = LocalAuditReads(config, command, forensic=command == "verify")
        except AuditWriteError as exc:
            common.fail(
                f"this read could not be recorded in the audit log, so it is refused: {exc} "
                "(`proxyd-audit --config ... verify` still checks the chain)"
            )
        except RepositoryError as exc:
            common.fail(exc.message)
        if self.log.unrecorded is not None:
            print(
                f"proxyd-audit: warning: this read could not be recorded in the audit log: "
                f"{self.log.unrecorded}",
                file=sys.stderr,
            )

    def pages(
        self, filters: dict[str, Any], *, newest_first: bool, limit: int | None
    ) -> Iterator[dict[str, Any]]:
        after: int | None = None
        seen = 0
        while limit is None or seen < limit:
            size = PAGE if limit is None else min(PAGE, limit - seen)
            batch = self.log.query(
                **filters, limit=size, after_seq=after, newest_first=newest_first
            )
            for event in batch:
                yield event.to_dict()
            seen += len(batch)
            if len(batch) < size:
                return
            after = batch[-1].seq

    def event(self, seq: int) -> dict[str, Any] | None:
        found = self.log.query(limit=1, after_seq=seq + 1, newest_first=True)
        return found[0].to_dict() if found and found[0].seq == seq else None

    def verify(self) -> dict[str, Any]:
        r = self.log.verify()
        return {
            "ok": r.ok,
            "checked": r.checked,
            "first_bad_seq": r.first_bad_seq,
            "reason": r.reason,
        }


class ApiSource(Source):
    def __init__(self, url: str) -> None:
        auth = common.ClientAuth.from_proxy(common.proxy_path())
        if not auth.cert_file.exists():
            common.fail(
                f"no proxy at {auth.cert_file}; create one (proxy-init) or set X509_USER_PROXY"
            )
        self.client = common.ApiClient(common.server_url(url), auth, common.cert_dir())

    def pages(
        self, filters: dict[str, Any], *, newest_first: bool, limit: int | None
    ) -> Iterator[dict[str, Any]]:
        if not newest_first:
            common.fail(
                "export and stats through the API read newest first; use --config on the server for oldest-first"
            )
        query = {
            k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in filters.items()
        }
        after: int | None = None
        seen = 0
        while limit is None or seen < limit:
            size = PAGE if limit is None else min(PAGE, limit - seen)
            page = common.expect_dict(
                self.client.request(
                    "GET",
                    "/v1/audit",
                    query={**query, "limit": str(size), "after": str(after) if after else None},
                ),
                "the audit query",
            )
            events = page.get("events") or []
            yield from events
            seen += len(events)
            if page.get("next") is None or not events:
                return
            after = int(page["next"])

    def verify(self) -> dict[str, Any]:
        return common.expect_dict(self.client.request("GET", "/v1/audit/verify"), "the chain check")

    def event(self, seq: int) -> dict[str, Any] | None:
        page = common.expect_dict(
            self.client.request("GET", "/v1/audit", query={"limit": "1", "after": str(seq + 1)}),
            "the audit query",
        )
        events = page.get("events") or []
        return events[0] if events and events[0].get("seq") == seq else None


def _source(args: argparse.Namespace) -> Source:
    if args.config:
        return LocalSource(args.config, args.command)
    return ApiSource(args.server)


def _cell(event: dict[str, Any], column: str) -> str:
    """A value as the table and CSV show it: control and format characters escaped
    (proxyd.names.escape), so one event is one line whatever its DNs and names hold."""
    value = event.get(column)
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return escape(",".join(str(v) for v in value))
    return escape(str(value))


def _print_table(events: list[dict[str, Any]], out: TextIO) -> None:
    if not events:
        print("no matching events", file=out)
        return
    shown = ("seq", "time", "decision", "rule", "operation", "actor_dn", "owner_dn", "serial")
    rows = [[_cell(e, c) for c in shown] for e in events]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(shown)]
    print(
        "  ".join(c.upper().ljust(w) for c, w in zip(shown, widths, strict=True)).rstrip(), file=out
    )
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip(), file=out)


def _query(args: argparse.Namespace) -> int:
    events = list(_source(args).pages(_filters(args), newest_first=True, limit=args.limit or None))
    if args.json:
        for e in events:
            print(json.dumps(e, default=str, sort_keys=True))
    elif args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(COLUMNS)
        for e in events:
            writer.writerow([_cell(e, c) for c in COLUMNS])
    else:
        _print_table(events, sys.stdout)
    return 0


def _verify(args: argparse.Namespace) -> int:
    source = _source(args)
    anchors = _read_anchors(args.anchors) if args.anchors else []
    report = source.verify()
    if not report.get("ok"):
        print(
            f"audit chain BROKEN at row {report.get('first_bad_seq')}: "
            f"{escape(str(report.get('reason')))}"
        )
        return 1
    print(f"audit chain OK: {report.get('checked')} events verified")
    bad = 0
    for line, anchor in anchors:
        event = source.event(anchor["seq"])
        where = (
            f"{args.anchors}:{line}: anchor of seq {anchor['seq']} taken {anchor.get('taken', '?')}"
        )
        if event is None:
            print(f"{where}: the event is gone: the log was cut back or restored since")
            bad += 1
        elif event.get("hash") != anchor["hash"]:
            print(f"{where}: the hash differs: the log was rewritten since")
            bad += 1
    if anchors:
        print(f"anchors: {len(anchors) - bad} of {len(anchors)} match")
    return 1 if bad else 0


def _read_anchors(path: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, anchor) of every line of an anchor file, or a precise error."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        common.fail(f"cannot read the anchor file {path}: {exc.strerror}")
    anchors = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            anchor = json.loads(line)
            ok = isinstance(anchor["seq"], int) and isinstance(anchor["hash"], str)
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            common.fail(
                f'{path}:{number}: not an anchor (a JSON object with "seq" and "hash", '
                "as `proxyd-audit anchor` writes)"
            )
        anchors.append((number, anchor))
    return anchors


def _anchor(args: argparse.Namespace) -> int:
    head = next(iter(_source(args).pages({}, newest_first=True, limit=1)), None)
    if head is None:
        common.fail("the audit log is empty: there is no head to anchor")
    anchor = {
        "seq": head["seq"],
        "hash": head["hash"],
        "time": str(head["time"]),
        "taken": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    line = json.dumps(anchor, sort_keys=True)
    if args.append:
        try:
            with open(args.append, "a", encoding="utf-8") as out:
                out.write(line + "\n")
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            common.fail(f"cannot append to {args.append}: {exc.strerror}")
    print(line)
    return 0


def _export(args: argparse.Namespace) -> int:
    out: TextIO = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115
    newest_first = not bool(args.config)  # locally, export oldest first: the chain's own order
    count = 0
    try:
        for event in _source(args).pages(_filters(args), newest_first=newest_first, limit=None):
            out.write(json.dumps(event, default=str, sort_keys=True) + "\n")
            count += 1
            if args.progress and count % 10_000 == 0:
                print(f"\r{count} events exported", end="", file=sys.stderr, flush=True)
    finally:
        if out is not sys.stdout:
            out.close()
    if args.progress:
        print(f"\r{count} events exported", file=sys.stderr)
    return 0


def _stats(args: argparse.Namespace) -> int:
    filters = _filters(args)
    filters["decision"] = None
    issued: Counter[str] = Counter()
    denied: Counter[str] = Counter()
    for e in _source(args).pages(filters, newest_first=True, limit=None):
        key = escape(
            {
                "day": str(e.get("time", ""))[:10],
                "host": e.get("actor_dn") or "",
                "user": e.get("owner_dn") or "",
            }[args.by]
        )
        if e.get("decision") == "allow" and e.get("serial"):
            issued[key] += 1
        elif e.get("decision") == "deny":
            denied[key] += 1
    keys = sorted(set(issued) | set(denied))
    if args.json:
        print(
            json.dumps(
                {k: {"issued": issued[k], "denied": denied[k]} for k in keys}, sort_keys=True
            )
        )
        return 0
    width = max([len(args.by), *(len(k) for k in keys)])
    print(f"{args.by.upper().ljust(width)}  ISSUED  DENIED")
    for k in keys:
        print(f"{k.ljust(width)}  {issued[k]:6d}  {denied[k]:6d}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="proxyd-audit", description="query and verify the proxyd issuance log"
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--config", "-c", help="read the local database named in this proxyd.toml")
    where.add_argument(
        "--server", help="proxyd API URL (default $PROXYD_URL); authenticates with your proxy"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def filters(p: argparse.ArgumentParser) -> None:
        p.add_argument("--actor", help="DN of who asked")
        p.add_argument("--owner", help="DN of the credential owner")
        p.add_argument("--serial", help="serial number of an issued proxy (decimal)")
        p.add_argument("--decision", choices=("allow", "deny"))
        p.add_argument("--rule", help="policy rule name, e.g. retrieve.trusted")
        p.add_argument("--operation", help="e.g. retrieve, renew, store")
        p.add_argument("--since", type=_time, help="ISO 8601 date or time")
        p.add_argument("--until", type=_time, help="ISO 8601 date or time")
        p.add_argument("--task", type=_task_id, help="every decision about one task, by its id")

    p = sub.add_parser("query", help="list matching events, newest first")
    filters(p)
    p.add_argument("--limit", type=int, default=100, help="at most this many (0: all)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON object per line")
    fmt.add_argument("--csv", action="store_true")
    p.set_defaults(func=_query)

    p = sub.add_parser("verify", help="check the hash chain; exit 1 naming the first broken row")
    p.add_argument(
        "--anchors",
        metavar="FILE",
        help="also check that every head recorded in FILE (by `anchor`) is still in the chain",
    )
    p.set_defaults(func=_verify)

    p = sub.add_parser(
        "anchor", help="print the chain's head (seq, hash) as one JSON line, to keep elsewhere"
    )
    p.add_argument("--append", metavar="FILE", help="also append the line to FILE")
    p.set_defaults(func=_anchor)

    p = sub.add_parser("export", help="all matching events as JSON lines")
    filters(p)
    p.add_argument("--output", "-o", help="file to write (default: stdout)")
    p.add_argument("--progress", action="store_true", help="show a running count on stderr")
    p.set_defaults(func=_export)

    p = sub.add_parser("stats", help="issuances and denials per day, host or user")
    filters(p)
    p.add_argument("--by", choices=("day", "host", "user"), default="day")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_stats)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return common.run_command("proxyd-audit", lambda: int(args.func(args)))


if __name__ == "__main__":
    sys.exit(main())
