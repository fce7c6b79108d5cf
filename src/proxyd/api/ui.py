"""The auditor dashboard: read-only HTML pages under /ui/, for auditors only.

The client is authenticated by its TLS certificate, like every API client.
Every page makes exactly one policy decision, `audit_read` (the
`policy.auditors` patterns), through the Repository *before* it reads
anything: the view is audited like any other decision (I6), and the API's
check that a successful answer followed a decision holds. A refusal is a
403 page that names the rule; an error is a page without a traceback.

Pages are rendered here, with `html.escape` on every value that comes from
the database or the request. No template engine, no JavaScript, no remote
asset: the only other file is the stylesheet served from this package, on
the one open route (it is the same for everyone and reveals nothing).

Two aggregates have no query in the core yet: issuances and denials per
day (`audit_events`) and tasks per state and per pilot (`tasks`). They are
read-only SELECTs over the store tables, below under "read model".
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import html
import logging
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from importlib import resources
from typing import Any, cast

from aiohttp import web
from sqlalchemy import and_, case, func, literal_column, select
from sqlalchemy.engine import Engine
from sqlalchemy.sql.elements import ColumnElement

from .. import names, policy
from ..audit import AuditError, Decision, StoredEvent, VerifyReport
from ..policy import Operation
from ..principal import Principal
from ..repository import BadPassphrase, BadRequest, Denied, NotFound, Repository, RepositoryError
from ..store.models import AuditRow, TaskRow
from ..taskqueue.model import AccountingTotal, TaskState
from ..tasks import TaskService
from .openapi import ApiRoute, Handler
from .tasks import TASKS
from .util import blocking, principal_of

log = logging.getLogger("proxyd.ui")

CHART_DAYS = 30
LOG_PAGE = 50
LOG_PAGE_MAX = 500
INVENTORY_LIMIT = 1000
RECENT_TASKS = 25
MAX_FILTER = 1024
STYLESHEET = "/ui/static/dashboard.css"
_CSS = (resources.files(__package__) / "static" / "dashboard.css").read_bytes()

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
NAV = (
    ("/ui/", "Overview"),
    ("/ui/log", "Issuance log"),
    ("/ui/credentials", "Credentials"),
    ("/ui/tasks", "Task queue"),
    ("/ui/pilots", "Pilots"),
    ("/ui/accounting", "Accounting"),
)
_ERROR_STATUS: tuple[tuple[type[RepositoryError], int], ...] = (
    (Denied, 403),
    (BadPassphrase, 403),
    (NotFound, 404),
    (BadRequest, 400),
)


class BadInput(Exception):
    """A query parameter the page cannot use; the message is shown to the auditor."""


def h(value: object) -> str:
    """Escaped text for HTML content and quoted attribute values; None is empty. Control and
    bidi-format characters are shown as escapes (names.escape), so an RTL override in a DN
    cannot reorder what an auditor reads."""
    return "" if value is None else html.escape(names.escape(str(value)), quote=True)


# --- the frame of every page ---------------------------------------------------------------


def _layout(title: str, body: str, principal: Principal, here: str | None) -> str:
    nav = ""
    if here is not None:
        links = "".join(
            f'<a href="{h(path)}"{" class=here" if path == here else ""}>{h(label)}</a>'
            for path, label in NAV
        )
        nav = f"<nav>{links}</nav>"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{h(title)} · proxyd audit</title>"
        f'<link rel="stylesheet" href="{STYLESHEET}"></head>'
        f"<body><header><h1>proxyd audit</h1>{nav}"
        f'<span class="who">{h(principal.identity)}</span></header>'
        f"<main><h2>{h(title)}</h2>{body}</main></body></html>\n"
    )


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(
        text=text, status=status, content_type="text/html", charset="utf-8", headers=HEADERS
    )


def _error_page(
    principal: Principal, status: int, title: str, message: str, rule: str | None
) -> web.Response:
    body = f'<div class="error"><p>{h(message)}</p>'
    if rule:
        body += f'<p>Rule: <code class="rule">{h(rule)}</code></p>'
    body += "</div>"
    if status == 403:
        body += (
            "<p class=muted>The dashboard is for the auditors named in the server's "
            "<code>[policy] auditors</code>. The refusal is in the audit log.</p>"
        )
    # Navigation only after an allowed decision: a 400 comes from an auditor's own input.
    return _html(_layout(title, body, principal, "/ui/" if status == 400 else None), status)


PageResult = tuple[str, str]  # (title, body HTML)
PageFn = Callable[[web.Request, Repository, Principal], Awaitable[PageResult]]


def _page(here: str) -> Callable[[PageFn], Handler]:
    """Wrap a page: the repository and principal in, HTML out, every error as an HTML page."""

    def wrap(fn: PageFn) -> Handler:
        @functools.wraps(fn)
        async def handler(request: web.Request) -> web.StreamResponse:
            principal = principal_of(request)
            try:
                title, body = await fn(request, _repo(request), principal)
            except RepositoryError as exc:
                status = next((s for cls, s in _ERROR_STATUS if isinstance(exc, cls)), 400)
                phrase = {403: "Forbidden", 404: "Not found"}.get(status, "Bad request")
                return _error_page(principal, status, f"{status} {phrase}", exc.message, exc.rule)
            except BadInput as exc:
                return _error_page(principal, 400, "400 Bad request", str(exc), None)
            except Exception:
                log.exception("internal error rendering %s", request.path)
                return _error_page(
                    principal,
                    500,
                    "500 Internal error",
                    "The page could not be rendered; the event is logged on the server.",
                    None,
                )
            return _html(_layout(title, body, principal, here))

        return handler

    return wrap


def _repo(request: web.Request) -> Repository:
    from .app import REPO  # app.py imports this module for its route table

    return request.app[REPO]


async def _authorize(repo: Repository, principal: Principal) -> None:
    """The page's one decision: audit_read (auditors), audited allow or deny."""
    await blocking(repo.authorize, principal, policy.Request(Operation.AUDIT_READ))


# --- small formatters ----------------------------------------------------------------------


def _time(t: dt.datetime | None) -> str:
    if t is None:
        return ""
    t = t.astimezone(dt.UTC)
    return f'<time datetime="{h(t.isoformat())}">{h(t.strftime("%Y-%m-%d %H:%M:%S"))}</time>'


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = int(seconds)
    days, rest = divmod(s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (0 if days else secs, "s")]
    return " ".join(f"{n}{unit}" for n, unit in parts if n) or "0s"


def _dn(dn: str | None, note: str | None = None) -> str:
    # Wrap long DNs at their slashes, not inside a word.
    cell = h(dn).replace("/", "/<wbr>") if dn else '<span class="muted">—</span>'
    if note:
        cell += f'<br><span class="muted">{h(note)}</span>'
    return f'<td class="dn">{cell}</td>'


def _list(values: Sequence[str] | None, none: str = "any (server policy)") -> str:
    if values is None:
        return f'<span class="muted">{h(none)}</span>'
    if not values:
        return '<span class="muted">nobody</span>'
    return "<br>".join(h(v) for v in values)


def _link(path: str, params: Mapping[str, object]) -> str:
    query = urllib.parse.urlencode({k: str(v) for k, v in params.items() if v not in (None, "")})
    return f"{path}?{query}" if query else path


def _table(headers: Sequence[str], rows: Sequence[str], *, caption: str = "", cls: str = "") -> str:
    head = "".join(
        f'<th{" class=num" if n.startswith("#") else ""} scope="col">{h(n.lstrip("#"))}</th>'
        for n in headers
    )
    cap = f"<caption>{h(caption)}</caption>" if caption else ""
    if not rows:
        rows = [f'<tr><td colspan="{len(headers)}" class="muted">nothing to show</td></tr>']
    return f'<table class="{h(cls)}">{cap}<thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


# --- query parameters ----------------------------------------------------------------------


def _text(query: Mapping[str, str], name: str) -> str | None:
    value = query.get(name, "").strip()
    if not value:
        return None
    if len(value) > MAX_FILTER or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise BadInput(f"filter {name!r}: at most {MAX_FILTER} characters, no control characters")
    return value


def _when(query: Mapping[str, str], name: str) -> dt.datetime | None:
    """An ISO 8601 date or time; without a zone it is UTC."""
    value = _text(query, name)
    if value is None:
        return None
    text = value.replace(" ", "T")
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    try:
        t = dt.datetime.fromisoformat(text)
        return (t if t.tzinfo else t.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
    except (ValueError, OverflowError):
        raise BadInput(
            f"filter {name!r}: {value!r} is not a date or time such as 2026-01-31 "
            "or 2026-01-31T12:00Z"
        ) from None


def _int(
    query: Mapping[str, str], name: str, default: int | None, low: int, high: int
) -> int | None:
    value = query.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        number = low - 1
    if not low <= number <= high:
        raise BadInput(f"{name!r} must be a whole number from {low} to {high}")
    return number


@dataclasses.dataclass(frozen=True)
class LogFilters:
    actor: str | None = None
    owner: str | None = None
    decision: Decision | None = None
    rule: str | None = None
    operation: str | None = None
    serial: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    limit: int = LOG_PAGE
    after: int | None = None

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> LogFilters:
        decision = _text(query, "decision")
        if decision is not None and decision not in ("allow", "deny"):
            raise BadInput("filter 'decision' must be allow or deny")
        return cls(
            actor=_text(query, "actor"),
            owner=_text(query, "owner"),
            decision=cast("Decision | None", decision),
            rule=_text(query, "rule"),
            operation=_text(query, "operation"),
            serial=_text(query, "serial"),
            since=_when(query, "since"),
            until=_when(query, "until"),
            limit=_int(query, "limit", LOG_PAGE, 1, LOG_PAGE_MAX) or LOG_PAGE,
            after=_int(query, "after", None, 1, 2**62),
        )

    def params(self, **changes: object) -> dict[str, object]:
        """The filters as query parameters (as typed into the form), with changes."""
        values: dict[str, object] = {
            "actor": self.actor,
            "owner": self.owner,
            "decision": self.decision,
            "rule": self.rule,
            "operation": self.operation,
            "serial": self.serial,
            "since": _iso(self.since),
            "until": _iso(self.until),
            "limit": self.limit if self.limit != LOG_PAGE else None,
            "after": self.after,
        }
        values.update(changes)
        return values


def _iso(t: dt.datetime | None) -> str | None:
    """A UTC time as the form shows it and links carry it (microseconds kept, if any)."""
    return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z") if t is not None else None


# --- read model: aggregates the core has no query for ----------------------------------------


def _day_of(engine: Engine) -> ColumnElement[Any] | None:
    """The UTC calendar day of an audit row, in SQL, per dialect (None: count in Python)."""
    if engine.dialect.name == "sqlite":  # stored as naive UTC text
        return func.date(AuditRow.time)
    if engine.dialect.name == "postgresql":  # timestamptz: take the UTC day, not the session's
        return func.date(func.timezone(literal_column("'UTC'"), AuditRow.time))
    return None


def daily_counts(engine: Engine, since: dt.datetime) -> dict[dt.date, tuple[int, int]]:
    """Per UTC day since `since`: (certificates issued, decisions denied).

    An issuance is an allowed decision that carries a serial (a proxy was
    signed); a denial is any denied decision.
    """
    issued = and_(AuditRow.decision == "allow", AuditRow.serial.is_not(None))
    denied = AuditRow.decision == "deny"
    day = _day_of(engine)
    counts: dict[dt.date, tuple[int, int]] = {}
    with engine.connect() as conn:
        if day is None:
            rows = conn.execute(
                select(AuditRow.time, issued, denied).where(AuditRow.time >= since)
            ).all()
            for t, i, d in rows:
                key = t.astimezone(dt.UTC).date()
                a, b = counts.get(key, (0, 0))
                counts[key] = (a + int(bool(i)), b + int(bool(d)))
            return counts
        stmt = (
            select(
                day.label("day"),
                func.sum(case((issued, 1), else_=0)),
                func.sum(case((denied, 1), else_=0)),
            )
            .where(AuditRow.time >= since)
            .group_by(day)
        )
        for when, i, d in conn.execute(stmt).all():
            key = when if isinstance(when, dt.date) else dt.date.fromisoformat(str(when)[:10])
            counts[key] = (int(i or 0), int(d or 0))
    return counts


def task_states(engine: Engine) -> dict[str, int]:
    """How many tasks of the SQL queue are in each state."""
    with engine.connect() as conn:
        rows = conn.execute(select(TaskRow.state, func.count()).group_by(TaskRow.state)).all()
    return {str(state): int(n) for state, n in rows}


def recent_tasks(engine: Engine, limit: int = RECENT_TASKS) -> list[Any]:
    """The newest tasks of the SQL queue (rows of the columns the page shows)."""
    stmt = (
        select(
            TaskRow.id,
            TaskRow.state,
            TaskRow.owner_dn,
            TaskRow.group_name,
            TaskRow.priority,
            TaskRow.attempts,
            TaskRow.pilot_dn,
            TaskRow.pilot_id,
            TaskRow.site,
            TaskRow.submitted_at,
            TaskRow.finished_at,
            TaskRow.reason,
        )
        .order_by(TaskRow.id.desc())
        .limit(limit)
    )
    with engine.connect() as conn:
        return list(conn.execute(stmt).all())


PilotRow = tuple[str, str, dict[str, int], dt.datetime | None]  # pilot, site, per state, last


def tasks_by_pilot(engine: Engine) -> list[PilotRow]:
    """Tasks per (pilot DN, site) that holds or last held them, per state, and the last match."""
    stmt = (
        select(
            TaskRow.pilot_dn,
            TaskRow.site,
            TaskRow.state,
            func.count(),
            func.max(TaskRow.matched_at),
        )
        .where(TaskRow.pilot_dn.is_not(None))
        .group_by(TaskRow.pilot_dn, TaskRow.site, TaskRow.state)
    )
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    grouped: dict[tuple[str, str], tuple[dict[str, int], dt.datetime | None]] = {}
    for pilot, site, state, n, last in rows:
        key = (str(pilot), site or "")
        per_state, seen = grouped.get(key, ({}, None))
        per_state[str(state)] = int(n)
        matched = _as_utc(last)
        grouped[key] = (per_state, max((t for t in (seen, matched) if t), default=None))
    return [(p, s, per, last) for (p, s), (per, last) in sorted(grouped.items())]


def _as_utc(value: object) -> dt.datetime | None:
    """An aggregate's datetime (SQLite may hand back text) as aware UTC."""
    if value is None:
        return None
    t = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)


# --- pages ---------------------------------------------------------------------------------


def _chart(first: dt.date, counts: Mapping[dt.date, tuple[int, int]]) -> str:
    """Inline SVG bars: issued and denied per UTC day, oldest left; each bar links to the log."""
    days = [first + dt.timedelta(days=i) for i in range(CHART_DAYS)]
    peak = max([1, *(max(counts.get(d, (0, 0))) for d in days)])
    step, bar, top, height, left = 24, 9, 12, 140, 36
    width, total_h = left + step * len(days) + 6, top + height + 22
    base = top + height
    out = [
        f'<svg class="chart" id="daily-chart" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'aria-labelledby="chart-title" viewBox="0 0 {width} {total_h}" '
        f'width="{width}" height="{total_h}">',
        f'<title id="chart-title">Issued and denied per day, {h(days[0])} to {h(days[-1])} (UTC)'
        "</title>",
        f'<line x1="{left}" y1="{top}" x2="{width - 4}" y2="{top}"/>',
        f'<line x1="{left}" y1="{base}" x2="{width - 4}" y2="{base}"/>',
        f'<text x="{left - 5}" y="{top + 4}" text-anchor="end">{peak}</text>',
        f'<text x="{left - 5}" y="{base}" text-anchor="end">0</text>',
    ]
    for i, day in enumerate(days):
        issued, denied = counts.get(day, (0, 0))
        x = left + i * step + 2
        span = {"since": day.isoformat(), "until": (day + dt.timedelta(days=1)).isoformat()}
        out.append(
            f'<g class="day" data-day="{h(day)}" data-issued="{issued}" data-denied="{denied}">'
        )
        for kind, n, dx, decision in (
            ("issued", issued, 0, "allow"),
            ("denied", denied, bar, "deny"),
        ):
            bar_h = round(height * n / peak)
            href = _link("/ui/log", {**span, "decision": decision})
            out.append(
                f'<a href="{h(href)}"><rect class="{kind}" x="{x + dx}" y="{base - bar_h}" '
                f'width="{bar}" height="{bar_h}"><title>{h(day)}: {n} {kind}</title></rect></a>'
            )
        if i % 5 == 0 or i == len(days) - 1:
            out.append(
                f'<text x="{x + bar}" y="{base + 15}" text-anchor="middle">'
                f"{h(day.strftime('%m-%d'))}</text>"
            )
        out.append("</g>")
    out.append("</svg>")
    total_i = sum(counts.get(d, (0, 0))[0] for d in days)
    total_d = sum(counts.get(d, (0, 0))[1] for d in days)
    legend = (
        f'<p class="legend"><span class="issued">issued: <b id="total-issued">{total_i}</b></span>'
        f'<span class="denied">denied: <b id="total-denied">{total_d}</b></span>'
        '<span class="muted">An issuance is an allowed decision that signed a certificate. '
        "Click a bar for that day's log.</span></p>"
    )
    return "".join(out) + legend


def _verification(report: VerifyReport, bad_row: StoredEvent | None, bad_error: str | None) -> str:
    if report.ok:
        return (
            '<p id="chain-status" data-ok="true"><span class="badge ok">chain intact</span> '
            f"{report.checked} events verified from the genesis hash to the audit head.</p>"
        )
    out = (
        '<div class="error" id="chain-status" data-ok="false">'
        '<p><span class="badge bad">chain broken</span> '
        f"{report.checked} events verified before the break. First bad row: "
        f'<b id="first-bad-seq">{h(report.first_bad_seq if report.first_bad_seq is not None else "—")}'
        f"</b>.</p><p>{h(report.reason)}</p></div>"
    )
    if bad_row is not None:
        out += "<p>The first bad row as stored (its contents are not trustworthy):</p>"
        out += _events_table([bad_row])
    elif bad_error:
        out += f"<p class=muted>The row cannot be shown: {h(bad_error)}</p>"
    return out


@_page("/ui/")
async def ui_overview(request: web.Request, repo: Repository, principal: Principal) -> PageResult:
    report = await blocking(repo.audit_verify, principal)  # the decision, and the verification
    today = dt.datetime.now(dt.UTC).date()
    first = today - dt.timedelta(days=CHART_DAYS - 1)

    def read() -> tuple[dict[dt.date, tuple[int, int]], StoredEvent | None, str | None]:
        since = dt.datetime.combine(first, dt.time(), tzinfo=dt.UTC)
        counts = daily_counts(repo.engine, since)
        bad_row, bad_error = None, None
        if report.first_bad_seq is not None:
            try:
                rows = repo.audit.query(after_seq=report.first_bad_seq + 1, limit=1)
                bad_row = rows[0] if rows and rows[0].seq == report.first_bad_seq else None
            except AuditError as exc:
                bad_error = str(exc)
        return counts, bad_row, bad_error

    counts, bad_row, bad_error = await blocking(read)
    body = (
        "<section><h3>Audit chain</h3>"
        + _verification(report, bad_row, bad_error)
        + f"</section><section><h3>Issuances and denials, last {CHART_DAYS} days (UTC)</h3>"
        + _chart(first, counts)
        + "</section>"
    )
    return "Overview", body


def _events_table(events: Sequence[StoredEvent]) -> str:
    rows = []
    for s in events:
        e = s.event
        rule_link = _link("/ui/log", {"rule": e.rule})
        rows.append(
            f'<tr data-seq="{s.seq}" data-decision="{h(e.decision)}" data-rule="{h(e.rule)}">'
            f'<td class="num">{s.seq}</td><td>{_time(e.time)}</td>'
            f'<td class="{h(e.decision)}">{h(e.decision)}</td>'
            f'<td><a href="{h(rule_link)}"><code>{h(e.rule)}</code></a></td>'
            f"<td>{h(e.operation)}</td>"
            f"{_dn(e.actor_dn, f'{e.actor_kind} from {e.peer}' if e.peer else e.actor_kind)}"
            f"{_dn(e.owner_dn, e.credential_name)}"
            f"<td>{h(e.serial)}</td>"
            f'<td class="num">{h(_duration(e.lifetime_s))}</td>'
            f"<td>{'<br>'.join(h(f) for f in e.fqans)}</td>"
            f"<td>{h(e.detail)}</td></tr>"
        )
    headers = (
        "#seq",
        "time (UTC)",
        "decision",
        "rule",
        "operation",
        "actor",
        "owner / credential",
        "serial",
        "#lifetime",
        "FQANs",
        "detail",
    )
    return _table(headers, rows, cls="events")


def _filter_form(f: LogFilters) -> str:
    def field(name: str, label: str, value: str | None, placeholder: str = "") -> str:
        return (
            f'<label>{h(label)}<input name="{name}" value="{h(value)}" '
            f'placeholder="{h(placeholder)}"></label>'
        )

    options = "".join(
        f'<option value="{v}"{" selected" if f.decision == (v or None) else ""}>{label}</option>'
        for v, label in (("", "any"), ("allow", "allow"), ("deny", "deny"))
    )
    return (
        '<form class="filters" method="get" action="/ui/log" id="filters">'
        + field("actor", "actor DN", f.actor)
        + field("owner", "owner DN", f.owner)
        + f'<label>decision<select name="decision">{options}</select></label>'
        + field("rule", "rule", f.rule, "retrieve.not_trusted")
        + field("operation", "operation", f.operation, "retrieve")
        + field("serial", "serial", f.serial)
        + field("since", "since (UTC)", _iso(f.since), "2026-01-31")
        + field("until", "until (UTC, excl.)", _iso(f.until), "2026-02-01T12:00Z")
        + f'<label>per page<input name="limit" type="number" min="1" max="{LOG_PAGE_MAX}" '
        f'value="{f.limit}"></label>'
        + '<button type="submit">Filter</button> <a href="/ui/log">reset</a></form>'
    )


@_page("/ui/log")
async def ui_log(request: web.Request, repo: Repository, principal: Principal) -> PageResult:
    await _authorize(repo, principal)
    f = LogFilters.parse(request.query)
    if f.since is not None and f.until is not None and f.since >= f.until:
        raise BadInput("'since' must be before 'until'")
    events = await blocking(
        repo.audit.query,
        actor=f.actor,
        owner=f.owner,
        serial=f.serial,
        decision=f.decision,
        rule=f.rule,
        operation=f.operation,
        since=f.since,
        until=f.until,
        limit=f.limit + 1,
        after_seq=f.after,
    )
    more, events = len(events) > f.limit, events[: f.limit]
    pager = []
    if f.after is not None:
        pager.append(f'<a href="{h(_link("/ui/log", f.params(after=None)))}">← newest</a>')
    if more:
        older = _link("/ui/log", f.params(after=events[-1].seq))
        pager.append(f'<a id="older" href="{h(older)}">older →</a>')
    if events:
        plural = "" if len(events) == 1 else "s"
        shown = f"{len(events)} event{plural}, seq {events[0].seq} down to {events[-1].seq}"
    else:
        shown = "No matching events"
    body = (
        _filter_form(f)
        + f'<p class="muted" id="shown">{h(shown)}.</p>'
        + _events_table(events)
        + f'<p class="pager">{"".join(pager)}</p>'
    )
    return "Issuance log", body


@_page("/ui/credentials")
async def ui_credentials(
    request: web.Request, repo: Repository, principal: Principal
) -> PageResult:
    creds = await blocking(repo.inventory, principal, limit=INVENTORY_LIMIT)  # the decision
    now = dt.datetime.now(dt.UTC)
    rows = []
    for c in creds:
        expired = c.not_after <= now
        access = "passphrase" if c.has_passphrase else "trusted retrieval only"
        rows.append(
            f'<tr data-owner="{h(c.owner)}" data-name="{h(c.name)}">'
            f"{_dn(c.owner)}<td>{h(c.username)}</td><td>{h(c.name)}</td>"
            f"<td>{_time(c.not_after)}{' <b class=deny>expired</b>' if expired else ''}</td>"
            f'<td class="num">{h(_duration(c.max_lifetime.total_seconds()))}</td>'
            f"<td>{h(access)}</td>"
            f"<td>{_list(c.retrievers)}</td><td>{_list(c.renewers)}</td>"
            f"<td>{_list(c.trusted_retrievers)}</td><td>{h(c.description)}</td></tr>"
        )
    note = (
        f"The first {INVENTORY_LIMIT} credentials. "
        if len(creds) >= INVENTORY_LIMIT
        else f"{len(creds)} stored credentials. "
    )
    body = (
        f'<p class="muted">{h(note)}Keys and passphrases are never shown; '
        "an empty list means the server's policy decides.</p>"
        + _table(
            (
                "owner",
                "username",
                "name",
                "not after (UTC)",
                "#max proxy",
                "access",
                "retrievers",
                "renewers",
                "trusted retrievers",
                "description",
            ),
            rows,
            cls="credentials",
        )
    )
    return "Credential inventory", body


def _queue_note(repo: Repository, service: TaskService | None) -> str | None:
    if service is None:
        return "The task queue is not enabled on this server."
    if repo.config.taskqueue.backend != "sql":
        return (
            f"This page reads the built-in SQL task queue; this server uses the "
            f"{repo.config.taskqueue.backend!r} backend."
        )
    return None


@_page("/ui/tasks")
async def ui_tasks(request: web.Request, repo: Repository, principal: Principal) -> PageResult:
    await _authorize(repo, principal)
    note = _queue_note(repo, request.app.get(TASKS))
    if note:
        return "Task queue", f'<p class="muted">{h(note)}</p>'
    states, recent_rows = await blocking(
        lambda: (task_states(repo.engine), recent_tasks(repo.engine))
    )
    counts = [
        f'<tr data-state="{h(s.value)}"><td>{h(s.value)}</td>'
        f'<td class="num">{states.get(s.value, 0)}</td></tr>'
        for s in TaskState
    ]
    recent = [
        f'<tr data-task="{t.id}"><td class="num">{t.id}</td><td>{h(t.state)}</td>'
        f"{_dn(t.owner_dn)}<td>{h(t.group_name)}</td>"
        f'<td class="num">{t.priority}</td><td class="num">{t.attempts}</td>'
        f"{_dn(t.pilot_dn, t.pilot_id)}<td>{h(t.site)}</td>"
        f"<td>{_time(t.submitted_at)}</td><td>{_time(t.finished_at)}</td>"
        f"<td>{h(t.reason)}</td></tr>"
        for t in recent_rows
    ]
    body = (
        f'<p id="task-total">{sum(states.values())} tasks in the queue.</p>'
        + _table(("state", "#tasks"), counts, caption="Tasks by state", cls="states")
        + "<h3>Recent tasks</h3>"
        + _table(
            (
                "#id",
                "state",
                "owner",
                "group",
                "#priority",
                "#attempts",
                "pilot",
                "site",
                "submitted",
                "finished",
                "reason",
            ),
            recent,
            caption=f"The newest {RECENT_TASKS}",
            cls="tasks",
        )
    )
    return "Task queue", body


_PILOT_STATES = ("matched", "running", "done", "failed", "stalled", "rescheduled", "cancelled")


@_page("/ui/pilots")
async def ui_pilots(request: web.Request, repo: Repository, principal: Principal) -> PageResult:
    await _authorize(repo, principal)
    service: TaskService | None = request.app.get(TASKS)
    note = _queue_note(repo, service)
    if note or service is None:
        return "Pilots", f'<p class="muted">{h(note)}</p>'

    queue = service.queue

    def read() -> tuple[list[PilotRow], list[AccountingTotal], frozenset[str]]:
        return tasks_by_pilot(repo.engine), queue.accounting("site"), queue.masked_sites()

    by_pilot, sites, masked = await blocking(read)
    rows = [
        f'<tr data-pilot="{h(pilot)}" data-site="{h(site)}">{_dn(pilot)}<td>{h(site)}</td>'
        + "".join(f'<td class="num">{per_state.get(s, 0)}</td>' for s in _PILOT_STATES)
        + f'<td class="num">{sum(per_state.values())}</td><td>{_time(last)}</td></tr>'
        for pilot, site, per_state, last in by_pilot
    ]
    site_rows = [
        f'<tr data-site="{h(t.key)}"><td>{h(t.key)}</td><td class="num">{t.attempts}</td>'
        f'<td class="num">{t.failed}</td><td class="num">{h(_duration(t.wall_s))}</td>'
        f"<td>{'masked' if t.key in masked else ''}</td></tr>"
        for t in sites
    ]
    masked_list = ", ".join(h(s) for s in sorted(masked)) or "none"
    body = (
        _table(
            ("pilot", "site", *(f"#{s}" for s in _PILOT_STATES), "#total", "last match"),
            rows,
            caption="Tasks by the pilot and site that hold or last held them",
            cls="pilots",
        )
        + "<h3>Sites</h3>"
        + _table(
            ("site", "#attempts reported", "#failed", "#wall time", "mask"),
            site_rows,
            caption="Accounting reported by pilots, per site",
            cls="sites",
        )
        + f"<p>Masked sites: {masked_list}.</p>"
    )
    return "Pilots", body


@_page("/ui/accounting")
async def ui_accounting(request: web.Request, repo: Repository, principal: Principal) -> PageResult:
    service: TaskService | None = request.app.get(TASKS)
    if service is None:
        await _authorize(repo, principal)
        return "Accounting", '<p class="muted">The task queue is not enabled on this server.</p>'
    by = request.query.get("by", "owner")
    totals = await blocking(service.accounting, principal, by)  # the decision (audit_read)
    options = "".join(
        f'<option value="{k}"{" selected" if k == by else ""}>{k}</option>'
        for k in ("owner", "group", "site")
    )
    rows = [
        f'<tr data-key="{h(t.key)}">{_dn(t.key) if by == "owner" else f"<td>{h(t.key)}</td>"}'
        f'<td class="num">{t.attempts}</td><td class="num">{t.failed}</td>'
        f'<td class="num">{t.cpu_s / 3600:.2f}</td><td class="num">{t.wall_s / 3600:.2f}</td>'
        f'<td class="num">{t.max_rss_kb / 1024:.0f}</td></tr>'
        for t in totals
    ]
    body = (
        '<form class="filters" method="get" action="/ui/accounting">'
        f'<label>by<select name="by">{options}</select></label>'
        '<button type="submit">Show</button></form>'
        + _table(
            (by, "#attempts", "#failed", "#CPU hours", "#wall hours", "#max RSS (MiB)"),
            rows,
            caption="Reported by pilots, all time",
            cls="accounting",
        )
    )
    return f"Accounting by {by}", body


async def ui_stylesheet(request: web.Request) -> web.Response:
    """The dashboard's stylesheet (open: static package data, the same for everyone)."""
    return web.Response(
        body=_CSS,
        content_type="text/css",
        charset="utf-8",
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


_HTML = {"type": "string", "description": "an HTML page"}

UI_ROUTES: list[ApiRoute] = [
    ApiRoute(
        "GET",
        "/ui/",
        ui_overview,
        "Dashboard: audit chain status and issuances per day (auditors; HTML)",
        content_type="text/html",
        response=_HTML,
    ),
    ApiRoute(
        "GET",
        "/ui/log",
        ui_log,
        "Dashboard: the issuance log, filtered, newest first (auditors; HTML)",
        content_type="text/html",
        response=_HTML,
        query=(
            ("actor", "actor DN"),
            ("owner", "credential owner DN"),
            ("decision", "allow or deny"),
            ("rule", "policy rule name"),
            ("operation", "operation name"),
            ("serial", "certificate serial (decimal)"),
            ("since", "ISO 8601 date or time, inclusive (UTC without a zone)"),
            ("until", "ISO 8601 date or time, exclusive"),
            ("limit", f"events per page, 1 to {LOG_PAGE_MAX}"),
            ("after", "the last seq of the previous page"),
        ),
    ),
    ApiRoute(
        "GET",
        "/ui/credentials",
        ui_credentials,
        "Dashboard: the credential inventory, without secrets (auditors; HTML)",
        content_type="text/html",
        response=_HTML,
    ),
    ApiRoute(
        "GET",
        "/ui/tasks",
        ui_tasks,
        "Dashboard: tasks by state and the newest tasks (auditors; HTML)",
        content_type="text/html",
        response=_HTML,
    ),
    ApiRoute(
        "GET",
        "/ui/pilots",
        ui_pilots,
        "Dashboard: tasks by pilot and site, site accounting and masks (auditors; HTML)",
        content_type="text/html",
        response=_HTML,
    ),
    ApiRoute(
        "GET",
        "/ui/accounting",
        ui_accounting,
        "Dashboard: accounting by owner, group or site (auditors; HTML)",
        content_type="text/html",
        response=_HTML,
        query=(("by", "owner, group or site"),),
    ),
    ApiRoute(
        "GET",
        STYLESHEET,
        ui_stylesheet,
        "The dashboard's stylesheet",
        open=True,
        content_type="text/css",
        response={"type": "string"},
    ),
]
