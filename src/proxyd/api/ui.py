"""The auditor dashboard: read-only HTML pages under /ui/, for auditors only.

The client is authenticated by its TLS certificate, like every API client.
This edge only moves bytes: each page asks the read model
(`proxyd.core.dashboard.Dashboard`) in a thread, which makes the page's one
policy decision, `audit_read`, audited allow or deny, before it reads
anything; then a template turns the answer into HTML. A refusal is a 403
page that names the rule; an error is a page without a traceback.

HTML comes only from the Jinja2 templates in `templates/`, with autoescaping
on for every template; values are also passed through `names.escape`, so a
control or bidi-format character in a DN (an RTL override) is shown as an
escape and cannot reorder what an auditor reads. No JavaScript, no remote
asset: the only other file is the stylesheet served from this package, on
the one open route (it is the same for everyone and reveals nothing).

The template environment lives on the application: `setup_ui(app)` must run
before the application starts (`make_app` calls it).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from importlib import resources
from typing import Any

import aiohttp_jinja2
import jinja2
import jinja2.ext
from aiohttp import web
from markupsafe import Markup, escape

from .. import names
from ..core.dashboard import (
    LOG_PAGE_MAX,
    BadPassphrase,
    BadRequest,
    Dashboard,
    DayCounts,
    Denied,
    NotFound,
    RepositoryError,
    iso,
)
from ..principal import Principal
from .openapi import ApiRoute, Handler
from .tasks import TASKS
from .util import blocking, principal_of

log = logging.getLogger("proxyd.ui")

STYLESHEET = "/ui/static/dashboard.css"
_CSS = (resources.files(__package__) / "static" / "dashboard.css").read_bytes()
TEMPLATES = web.AppKey("ui_templates", jinja2.Environment)

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
    ("/ui/members", "VO members"),
    ("/ui/tasks", "Task queue"),
    ("/ui/pilots", "Pilots"),
    ("/ui/accounting", "Accounting"),
)
EVENT_HEADERS = (
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
PILOT_STATES = ("matched", "running", "done", "failed", "stalled", "rescheduled", "cancelled")
PILOT_HEADERS = ("pilot", "site", *(f"#{s}" for s in PILOT_STATES), "#total", "last match")
_ERROR_STATUS: tuple[tuple[type[RepositoryError], int], ...] = (
    (Denied, 403),
    (BadPassphrase, 403),
    (NotFound, 404),
    (BadRequest, 400),
)


# --- the template environment ----------------------------------------------------------------

_BREAK = re.compile(r"[ \t]*\n\s*")


def _join_lines(source: str) -> str:
    """Template source with its line breaks taken out, before Jinja2 reads it.

    Templates are laid out on many lines for people; the page gets none of that
    whitespace, which between inline elements (navigation links, the pager, the
    chart's SVG) would render as gaps, and each table row stays on one line. A
    break between two tags or template delimiters disappears; anywhere else (inside
    prose, between attributes) it becomes one space.
    """

    def join(match: re.Match[str]) -> str:
        before = source[match.start() - 1] if match.start() else ">"
        after = source[match.end()] if match.end() < len(source) else "<"
        return "" if before in ">}" and after in "<{" else " "

    return _BREAK.sub(join, source)


class _JoinLines(jinja2.ext.Extension):
    def preprocess(self, source: str, name: str | None, filename: str | None = None) -> str:
        return _join_lines(source)


def _shown(value: object) -> object:
    """What an expression shows, before autoescaping: None is empty, text is names.escape'd."""
    if value is None:
        return ""
    if hasattr(value, "__html__"):  # markup a macro or filter built from escaped parts
        return value
    return names.escape(str(value))


def _wbr(dn: str) -> Markup:
    """An escaped DN that wraps at its slashes, not inside a word."""
    return Markup("/<wbr>").join(escape(names.escape(part)) for part in dn.split("/"))


def _utc(t: dt.datetime) -> dt.datetime:
    return t.astimezone(dt.UTC)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (0 if days else secs, "s")]
    return " ".join(f"{n}{unit}" for n, unit in parts if n) or "0s"


def _link(path: str, params: Mapping[str, object]) -> str:
    query = urllib.parse.urlencode({k: str(v) for k, v in params.items() if v not in (None, "")})
    return f"{path}?{query}" if query else path


def setup_ui(app: web.Application) -> jinja2.Environment:
    """Give `app` the dashboard's template environment; before it starts, once (idempotent)."""
    if TEMPLATES in app:
        return app[TEMPLATES]
    env = aiohttp_jinja2.setup(
        app,
        app_key=TEMPLATES,
        default_helpers=False,
        loader=jinja2.PackageLoader("proxyd.api", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,  # a misspelt name is an error page, not a blank
        finalize=_shown,
        extensions=[_JoinLines],
    )
    # aiohttp_jinja2 hands templates the application (and so the Repository); they get
    # only what a page passes them.
    env.globals.pop("app", None)
    env.filters.update(wbr=_wbr, utc=_utc, duration=_duration)
    env.globals.update(
        STYLESHEET=STYLESHEET,
        NAV=NAV,
        EVENT_HEADERS=EVENT_HEADERS,
        PILOT_STATES=PILOT_STATES,
        PILOT_HEADERS=PILOT_HEADERS,
        LOG_PAGE_MAX=LOG_PAGE_MAX,
        link=_link,
        iso=iso,
    )
    return env


# --- the frame of every page ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class View:
    """What a page handler hands to the frame: which template, its title and its values."""

    template: str
    title: str
    context: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def _render(
    request: web.Request, principal: Principal, view: View, here: str | None, status: int = 200
) -> web.Response:
    context = {**view.context, "title": view.title, "principal": principal, "here": here}
    response = aiohttp_jinja2.render_template(
        view.template, request, context, app_key=TEMPLATES, status=status
    )
    response.headers.update(HEADERS)
    return response


def _error_page(
    request: web.Request,
    principal: Principal,
    status: int,
    title: str,
    message: str,
    rule: str | None,
) -> web.Response:
    view = View("error.html", title, {"status": status, "message": message, "rule": rule})
    # Navigation only after an allowed decision: a 400 comes from an auditor's own input.
    return _render(request, principal, view, "/ui/" if status == 400 else None, status)


PageFn = Callable[[web.Request, Dashboard, Principal], Awaitable[View]]


def _page(here: str) -> Callable[[PageFn], Handler]:
    """Wrap a page: the read model and principal in, HTML out, every error as an HTML page."""

    def wrap(fn: PageFn) -> Handler:
        @functools.wraps(fn)
        async def handler(request: web.Request) -> web.StreamResponse:
            principal = principal_of(request)
            try:
                view = await fn(request, _dashboard(request), principal)
                return _render(request, principal, view, here)
            except RepositoryError as exc:
                status = next((s for cls, s in _ERROR_STATUS if isinstance(exc, cls)), 400)
                phrase = {403: "Forbidden", 404: "Not found"}.get(status, "Bad request")
                return _error_page(
                    request, principal, status, f"{status} {phrase}", exc.message, exc.rule
                )
            except Exception:
                log.exception("internal error rendering %s", request.path)
                return _error_page(
                    request,
                    principal,
                    500,
                    "500 Internal error",
                    "The page could not be rendered; the event is logged on the server.",
                    None,
                )

        return handler

    return wrap


def _dashboard(request: web.Request) -> Dashboard:
    from .app import REPO  # app.py imports this module for its route table

    return Dashboard(request.app[REPO], request.app.get(TASKS))


# --- pages ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Bar:
    kind: str  # issued or denied
    n: int
    x: int
    height: int
    href: str  # that day's log, of this decision


@dataclasses.dataclass(frozen=True)
class ChartDay:
    day: dt.date
    issued: int
    denied: int
    bars: tuple[Bar, ...]  # issued, denied
    label: str  # the axis label, on every fifth day and the last; else empty
    label_x: int


@dataclasses.dataclass(frozen=True)
class Chart:
    """The overview's bar chart, laid out in SVG user units."""

    days: tuple[ChartDay, ...]
    peak: int  # the busiest day's larger count: a full-height bar
    issued: int
    denied: int
    width: int
    height: int
    left: int  # the axis
    right: int
    top: int  # the peak line
    base: int  # the zero line
    bar: int  # one bar's width


def chart(days: Sequence[tuple[dt.date, DayCounts]]) -> Chart:
    """Bars of issued and denied per UTC day, oldest left, scaled to the busiest day."""
    step, bar, left, top, full = 24, 9, 36, 12, 140
    base = top + full
    peak = max([1, *(max(c.issued, c.denied) for _, c in days)])
    width = left + step * len(days) + 6
    laid_out = []
    for i, (day, counts) in enumerate(days):
        x = left + i * step + 2
        span = {"since": day.isoformat(), "until": (day + dt.timedelta(days=1)).isoformat()}

        bars = tuple(
            Bar(kind, n, x + dx, round(full * n / peak), _link("/ui/log", {**span, "decision": d}))
            for kind, n, dx, d in (
                ("issued", counts.issued, 0, "allow"),
                ("denied", counts.denied, bar, "deny"),
            )
        )
        label = day.strftime("%m-%d") if i % 5 == 0 or i == len(days) - 1 else ""
        laid_out.append(ChartDay(day, counts.issued, counts.denied, bars, label, x + bar))
    return Chart(
        days=tuple(laid_out),
        peak=peak,
        issued=sum(c.issued for _, c in days),
        denied=sum(c.denied for _, c in days),
        width=width,
        height=base + 22,
        left=left,
        right=width - 4,
        top=top,
        base=base,
        bar=bar,
    )


@_page("/ui/")
async def ui_overview(request: web.Request, board: Dashboard, principal: Principal) -> View:
    o = await blocking(board.overview, principal)
    context = {
        "report": o.report,
        "bad_row": o.bad_row,
        "bad_error": o.bad_error,
        "chart": chart(o.days),
    }
    return View("overview.html", "Overview", context)


@_page("/ui/log")
async def ui_log(request: web.Request, board: Dashboard, principal: Principal) -> View:
    page = await blocking(board.log, principal, dict(request.query))
    return View("log.html", "Issuance log", {"page": page})


@_page("/ui/credentials")
async def ui_credentials(request: web.Request, board: Dashboard, principal: Principal) -> View:
    inventory = await blocking(board.credentials, principal)
    return View("credentials.html", "Credential inventory", {"inventory": inventory})


@_page("/ui/members")
async def ui_members(request: web.Request, board: Dashboard, principal: Principal) -> View:
    return View("members.html", "VO members", {"view": await blocking(board.members, principal)})


@_page("/ui/tasks")
async def ui_tasks(request: web.Request, board: Dashboard, principal: Principal) -> View:
    return View("tasks.html", "Task queue", {"view": await blocking(board.tasks, principal)})


@_page("/ui/pilots")
async def ui_pilots(request: web.Request, board: Dashboard, principal: Principal) -> View:
    return View("pilots.html", "Pilots", {"view": await blocking(board.pilots, principal)})


@_page("/ui/accounting")
async def ui_accounting(request: web.Request, board: Dashboard, principal: Principal) -> View:
    view = await blocking(board.accounting, principal, request.query.get("by", "owner"))
    title = "Accounting" if view.note else f"Accounting by {view.by}"
    return View("accounting.html", title, {"view": view})


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
        "/ui/members",
        ui_members,
        "Dashboard: the members of each VO and the FQANs they hold (auditors; HTML)",
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
