"""Failed authentications: a reason class, a bounded audit trail (I6), and clean client texts.

A peer whose certificate chain passed the TLS handshake but not proxyd's
own checks (`validate_chain`: VOMS ACs, proxy rules, CRLs; `names`: control
characters in DNs) is refused on both edges. Each refusal is

- named by a reason class (`reason_class`): `auth.bad_name`, `auth.expired`,
  `auth.revoked`, `auth.bad_voms_ac`, `auth.bad_proxy`,
  `auth.independent_proxy`, `auth.untrusted_chain`, `auth.bad_chain`;
- audited as a `deny` event of operation `authenticate` and actor kind
  `unauthenticated`, with the peer address and the identity the chain
  presents (its end-entity subject, escaped), at a bounded rate
  (`FailureBudget`): at most `BURST` (5) events per reason class and peer
  group (`peers.peer_group`: an IPv4 address or an IPv6 /64) per
  `INTERVAL` (60) seconds. Further failures are only counted; once the
  interval is over, one summary event (detail `summary: N more ...`) says
  how many were not recorded one by one; pending summaries are also
  written when the listeners close. This is the approach of
  `connlimit.ConnectionGate` for refused connections (first at once, then
  counted, then one summary per interval), here per key and into the audit
  log. Every failure, recorded or not, counts in `proxyd_decisions_total`.

Texts sent to clients never contain the server's paths (`Redactor`): the
trust directories, the state directory, the configuration and key files
are replaced by placeholders such as `<X509_VOMS_DIR>`; the server log and
the audit detail keep them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

from voms_ext import AttributeCertificateError, ChainError, ProxyError

from .audit import AuditError, AuditEvent, AuditLog
from .config import Config
from .metrics import DECISIONS
from .names import UnsafeName, escape
from .peers import peer_group

if TYPE_CHECKING:
    from .repository import Repository

__all__ = [
    "BURST",
    "INTERVAL",
    "OPERATION",
    "AuthFailure",
    "AuthFailureLog",
    "FailureBudget",
    "Redactor",
    "for_repository",
    "presented_identity",
    "reason_class",
]

log = logging.getLogger("proxyd.auth")

OPERATION = "authenticate"
ACTOR_KIND = "unauthenticated"
BURST = 5  # audit events per (reason class, peer group) and interval
INTERVAL = 60.0  # seconds
MAX_KEYS = 4096  # windows kept; beyond, new peer groups share one window per reason class
OVERFLOW_GROUP = "*"
MAX_DN = 512
MAX_DETAIL = 500


def reason_class(exc: BaseException, certs: Sequence[x509.Certificate], at: dt.datetime) -> str:
    """The audit rule of a refused chain: what kind of failure, not which certificate."""
    if isinstance(exc, UnsafeName):
        return "auth.bad_name"
    text = str(exc)
    if "revoked" in text:
        return "auth.revoked"
    if "CRL" in text:  # a stale or badly signed CRL: the chain cannot be trusted now
        return "auth.untrusted_chain"
    if any(not c.not_valid_before_utc <= at <= c.not_valid_after_utc for c in certs) or any(
        words in text for words in ("expired", "not valid anymore", "not yet valid")
    ):
        return "auth.expired"
    if isinstance(exc, AttributeCertificateError):
        return "auth.bad_voms_ac"
    if "independent" in text:
        return "auth.independent_proxy"
    if isinstance(exc, ProxyError):
        return "auth.bad_proxy"
    if isinstance(exc, ChainError):
        return "auth.untrusted_chain"
    return "auth.bad_chain"


def presented_identity(certs: Sequence[x509.Certificate]) -> str:
    """Who the refused chain speaks for: the subject of its first certificate that is not a
    proxy (the end-entity; the TLS handshake verified its signature), else of its leaf;
    escaped and bounded."""
    from voms_ext import classify
    from voms_ext.names import dn_to_slash

    if not certs:
        return "<no certificate>"
    try:
        eec = next((c for c in certs if not classify(c).type.is_proxy), certs[0])
        dn = dn_to_slash(eec.subject)
    except Exception:  # an unreadable name is still a failed authentication
        return "<unreadable subject>"
    return escape(dn)[:MAX_DN]


@dataclasses.dataclass(frozen=True)
class AuthFailure:
    """One refused authentication, as the edge saw it."""

    rule: str
    address: str
    identity: str  # presented, escaped (presented_identity)
    reason: str  # server side: may name files; never sent to the client as is
    where: str  # e.g. "myproxy GET", "https POST /v1/delegations"


@dataclasses.dataclass
class _Window:
    start: float
    started_at: dt.datetime
    recorded: int = 0
    suppressed: int = 0
    last: AuthFailure | None = None


@dataclasses.dataclass(frozen=True)
class Summary:
    """Failures of one key not recorded one by one in a window."""

    rule: str
    group: str
    count: int
    since: dt.datetime
    last: AuthFailure


class FailureBudget:
    """At most `burst` recorded failures per key and `interval`; the rest counted for a summary.

    Thread-safe (the edges record from worker threads). Memory is bounded by
    `max_keys` windows: beyond that, new peer groups share one window per
    reason class (`OVERFLOW_GROUP`).
    """

    def __init__(
        self,
        burst: int | None = None,
        interval: float | None = None,
        *,
        max_keys: int = MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        burst = BURST if burst is None else burst  # the module's values when built (tests set them)
        interval = INTERVAL if interval is None else interval
        if burst < 1 or interval <= 0:
            raise ValueError("need burst >= 1 and interval > 0")
        self.burst = burst
        self.interval = interval
        self.max_keys = max_keys
        self._clock = clock
        self._windows: dict[tuple[str, str], _Window] = {}
        self._next_sweep = float("-inf")
        self._lock = threading.Lock()

    def admit(self, failure: AuthFailure) -> tuple[bool, list[Summary]]:
        """(record this failure?, summaries now due: of windows that ended with suppressions)."""
        now = self._clock()
        with self._lock:
            due: list[Summary] = []
            if now >= self._next_sweep:  # other keys' ended windows, at most once a second
                due = self._take_due(now)
                self._next_sweep = now + min(1.0, self.interval)
            group = peer_group(failure.address)
            key = (failure.rule, group)
            window = self._windows.get(key)
            if window is not None and now - window.start >= self.interval:
                due += self._end(key, window)
                window = None
            if window is None and len(self._windows) >= self.max_keys:
                key = (failure.rule, OVERFLOW_GROUP)
                window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = _Window(now, dt.datetime.now(dt.UTC))
            window.last = failure
            if window.recorded < self.burst:
                window.recorded += 1
                return True, due
            window.suppressed += 1
            return False, due

    def due(self, *, everything: bool = False) -> list[Summary]:
        """Summaries of ended windows (`everything`: of every window, ended or not)."""
        with self._lock:
            return self._take_due(None if everything else self._clock())

    @property
    def pending(self) -> bool:
        """Whether some failures are counted and not yet summarised."""
        with self._lock:
            return any(w.suppressed for w in self._windows.values())

    def _take_due(self, now: float | None) -> list[Summary]:
        out = []
        for key, window in list(self._windows.items()):
            if now is None or now - window.start >= self.interval:
                out += self._end(key, window)
        return out

    def _end(self, key: tuple[str, str], window: _Window) -> list[Summary]:
        del self._windows[key]
        if not window.suppressed or window.last is None:
            return []
        return [Summary(key[0], key[1], window.suppressed, window.started_at, window.last)]


class AuthFailureLog:
    """Audits failed authentications through a FailureBudget; one per Repository."""

    def __init__(self, audit: AuditLog, budget: FailureBudget | None = None) -> None:
        self.audit = audit
        self.budget = budget or FailureBudget()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_lock = threading.Lock()

    def record(self, failure: AuthFailure) -> bool:
        """Count and (within the budget) audit one failure; True if it got an event of its own.

        A failed audit write is logged, not raised: the peer is refused either way.
        """
        DECISIONS.labels(OPERATION, "deny", failure.rule).inc()
        wanted, due = self.budget.admit(failure)
        # The server log keeps the full reason (paths included), at the audit's rate.
        log.log(
            logging.INFO if wanted else logging.DEBUG,
            "%s: authentication of %s refused (%s): %s",
            failure.where,
            failure.address,
            failure.rule,
            failure.reason,
        )
        self._write_summaries(due)
        if wanted:
            self._append(
                failure.rule,
                failure.identity,
                failure.address,
                f"{failure.where}: {escape(failure.reason)}"[:MAX_DETAIL],
            )
        return wanted

    def flush(self, *, everything: bool = False) -> int:
        """Write the summaries that are due (`everything`: all, as at shutdown); how many."""
        due = self.budget.due(everything=everything)
        self._write_summaries(due)
        return len(due)

    def schedule_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """From the event loop: make sure pending summaries are written once their window ends."""
        with self._timer_lock:
            if self._timer is not None or not self.budget.pending:
                return
            self._timer = loop.call_later(self.budget.interval, self._fire, loop)

    def close(self) -> None:
        """No more timers; every pending summary written now."""
        with self._timer_lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        self.flush(everything=True)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._timer_lock:
            self._timer = None
        future = loop.run_in_executor(None, self.flush)
        future.add_done_callback(lambda _: self.schedule_flush(loop))

    def _write_summaries(self, summaries: Sequence[Summary]) -> None:
        for s in summaries:
            detail = (
                f"summary: {s.count} more failed authentication(s) of this class from {s.group} "
                f"since {s.since:%Y-%m-%d %H:%M:%SZ} were not recorded one by one (at most "
                f"{self.budget.burst} per {self.budget.interval:.0f} s are); the last: "
                f"{s.last.where}: {escape(s.last.reason)}"
            )
            self._append(s.rule, s.last.identity, s.group, detail[:MAX_DETAIL])

    def _append(self, rule: str, identity: str, peer: str, detail: str) -> None:
        try:
            self.audit.append(
                AuditEvent(
                    actor_dn=identity,
                    actor_kind=ACTOR_KIND,
                    peer=peer[:255],
                    operation=OPERATION,
                    rule=rule,
                    decision="deny",
                    detail=detail,
                )
            )
        except AuditError:
            log.exception("could not audit a failed authentication (%s from %s)", rule, peer)


_LOGS: weakref.WeakKeyDictionary[Repository, AuthFailureLog] = weakref.WeakKeyDictionary()
_LOGS_LOCK = threading.Lock()


def for_repository(repo: Repository) -> AuthFailureLog:
    """The AuthFailureLog of `repo`: one per Repository, shared by the edges of a process."""
    with _LOGS_LOCK:
        found = _LOGS.get(repo)
        if found is None:
            found = _LOGS[repo] = AuthFailureLog(repo.audit)
        return found


def _paths(config: Config) -> list[tuple[Path, str]]:
    server = config.server
    named: list[tuple[Path | None, str]] = [
        (server.cert_dir, "<X509_CERT_DIR>"),
        (server.voms_dir, "<X509_VOMS_DIR>"),
        (server.state_dir, "<state_dir>"),
        (server.master_key_file, "<master_key_file>"),
        (server.host_cert, "<host_cert>"),
        (server.host_key, "<host_key>"),
        (config.source, "<config>"),
        (config.source.parent, "<config dir>"),
    ]
    for vo in config.voms:
        named += [(vo.aa_cert, f"<{vo.vo} aa_cert>"), (vo.aa_key, f"<{vo.vo} aa_key>")]
    database = server.database
    if database.startswith("sqlite:///"):
        named.append((Path(database.removeprefix("sqlite:///")), "<database>"))
    out = []
    for path, label in named:
        if path is None:
            continue
        for form in {path, path.absolute(), path.resolve()}:
            if len(str(form)) > 1:  # never "/" itself: DNs are full of slashes
                out.append((form, label))
    return out


class Redactor:
    """Replaces the server's paths in texts meant for clients (longest path first)."""

    def __init__(self, paths: Sequence[tuple[Path, str]]) -> None:
        self._pairs = sorted(
            {(str(p), label) for p, label in paths}, key=lambda pair: -len(pair[0])
        )

    @classmethod
    def for_config(cls, config: Config) -> Redactor:
        return cls(_paths(config))

    def __call__(self, text: str) -> str:
        for path, label in self._pairs:
            if path in text:
                text = text.replace(path, label)
        return text
