"""The pilot agent loop: match, fetch the payload proxy, run under watch, report, clean up.

Every call to proxyd is authenticated with the pilot's own credential; what
it receives for a task is a limited proxy of the task's owner (I2), written
0600 into a fresh work directory and removed with it afterwards.

A match comes with an assignment secret: the proof that this pilot instance,
not a sibling sharing the pilot certificate, holds the task. The agent keeps
it in memory only (never on disk, never in a log or in the payload's
environment) and sends it with every call about the task.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from voms_ext import Credential, parse_credential_pem, write_credential_file

from .identity import IdentityError, IdentitySwitch
from .watchdog import WATCHDOG_FINDINGS, Limits, Outcome, StopPayload, run_watched

log = logging.getLogger("proxyd.pilot")

# Heartbeat refusals that mean the task ended elsewhere (cancelled by its owner
# or an admin, or declared stalled and handed on, possibly to a sibling pilot
# instance): the payload must stop.
TASK_GONE_RULES = frozenset(
    {"payload.assignment_ended", "task.not_assigned", "payload.wrong_instance"}
)
LOG_TAIL_BYTES = 16 * 1024
REASON_CHARS = 2000  # the server refuses longer failure reasons
SECRET_FIELD = "assignment_secret"  # noqa: S105 - api.tasks.SECRET_FIELD


def _task_gone(exc: BaseException) -> str | None:
    """The rule of a refusal saying the task ended elsewhere, or None for any other error."""
    # Errors of Api.request carry the policy rule that refused (cli.common.ApiError).
    rule = getattr(exc, "rule", None)
    return rule if rule in TASK_GONE_RULES else None


class Api(Protocol):
    def request(self, method: str, path: str, body: Any = None, *, query: Any = None) -> Any: ...


@dataclass(frozen=True)
class PilotSettings:
    site: str
    pilot_id: str
    ce: str = ""
    platform: str = ""
    tags: frozenset[str] = frozenset()
    time_budget_s: int = 24 * 3600  # the pilot's slot: it stops asking for work when spent
    memory_mb: int = 0
    workdir_root: Path = field(default_factory=lambda: Path(tempfile.gettempdir()))
    heartbeat_s: float = 60.0
    # A payload outliving its proxy (max_proxy_lifetime shorter than the task)
    # gets a fresh one when less than this is left; checked at every heartbeat.
    renew_proxy_before_s: float = 1800.0
    max_tasks: int = 0  # 0: no limit
    # The watchdog's own checks (pilot.watchdog.Limits; 0 turns one off). Defaults as DIRAC's.
    stuck_s: float = 1800.0
    stuck_cpu_fraction: float = 0.05
    min_disk_mb: int = 10
    cores: int = 1  # the slot's cores: the load check allows load_factor x cores runnable threads
    load_factor: float = 4.0
    load_window_s: float = 60.0
    cert_dir: str = "/etc/grid-security/certificates"
    voms_dir: str = "/etc/grid-security/vomsdir"
    path: str = "/usr/local/bin:/usr/bin:/bin"


@dataclass
class Summary:
    done: int = 0
    failed: int = 0
    reasons: list[str] = field(default_factory=list)


class PilotAgent:
    def __init__(
        self,
        api: Api,
        settings: PilotSettings,
        switch: IdentitySwitch,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.settings = settings
        self.switch = switch
        self.clock = clock
        self.started = clock()
        self._proxy_ends = self._task_deadline = dt.datetime.now(dt.UTC)
        self._token_ends: dt.datetime | None = None

    def time_left(self) -> int:
        return max(0, int(self.settings.time_budget_s - (self.clock() - self.started)))

    def run(self) -> Summary:
        summary = Summary()
        while self.time_left() > 0 and not (
            self.settings.max_tasks and summary.done + summary.failed >= self.settings.max_tasks
        ):
            task = self.api.request("POST", "/v1/pilot/match", self._capabilities())
            if not task:
                log.info("no matching task; the pilot ends")
                break
            outcome, reason = self.run_task(task)
            if outcome is not None and outcome.succeeded:
                summary.done += 1
            else:
                summary.failed += 1
                summary.reasons.append(f"task {task['id']}: {reason}")
        return summary

    def _capabilities(self) -> dict[str, Any]:
        s = self.settings
        return {
            "pilot_id": s.pilot_id,
            "site": s.site,
            "ce": s.ce,
            "platform": s.platform,
            "tags": sorted(s.tags),
            "cpu_time_left": self.time_left(),
            "memory_mb": s.memory_mb,
        }

    def run_task(self, task: dict[str, Any]) -> tuple[Outcome | None, str]:
        # The task's wall-time budget runs from the match (the server counts it so too).
        matched = self.clock()
        task_id = int(task["id"])
        # In memory only: this pilot instance's proof that it holds the task.
        secret = {SECRET_FIELD: task.pop(SECRET_FIELD, None)}
        workdir = Path(tempfile.mkdtemp(prefix=f"task-{task_id}-", dir=self.settings.workdir_root))
        outcome: Outcome | None = None
        reason = ""
        try:
            proxy = workdir / "x509up"
            proxy_ends = self._fetch_proxy(task_id, proxy, secret)
            token = workdir / "bearer_token"
            self._token_ends = self._fetch_token(task_id, token, secret)
            payload = task["payload"]
            argv = [payload["command"], *payload["args"]]
            launch = self.switch.launch(task["owner"], argv, proxy)
            self._stage(payload.get("input_files", []), workdir)
            if launch.uid is not None:
                for path in (workdir, proxy, *workdir.iterdir()):
                    os.chown(path, launch.uid, -1)
            self._proxy_ends = proxy_ends
            self.api.request("POST", f"/v1/tasks/{task_id}/start", dict(secret))
            limits = Limits(
                wall_s=max(
                    0.0,
                    min(task["max_wall_s"] - (self.clock() - matched), float(self.time_left())),
                ),
                cpu_s=task["max_cpu_s"],
                memory_mb=task["requirements"].get("memory_mb") or self.settings.memory_mb,
                heartbeat_s=self.settings.heartbeat_s,
                stuck_s=self.settings.stuck_s,
                stuck_cpu_fraction=self.settings.stuck_cpu_fraction,
                min_disk_mb=self.settings.min_disk_mb,
                max_load=self.settings.load_factor * self.settings.cores,
                load_window_s=self.settings.load_window_s,
            )
            self._task_deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=limits.wall_s)
            env = {
                "PATH": self.settings.path,
                "HOME": str(workdir),
                "X509_USER_PROXY": str(proxy),
                "X509_CERT_DIR": self.settings.cert_dir,
                "X509_VOMS_DIR": self.settings.voms_dir,
                "PROXYD_TASK_ID": str(task_id),
            }
            if self._token_ends is not None:
                # WLCG bearer token discovery: the payload's tools read the token from here.
                env["BEARER_TOKEN_FILE"] = str(token)
            outcome = run_watched(
                launch.argv,
                cwd=workdir,
                env=env,
                limits=limits,
                log_path=workdir / "payload.log",
                heartbeat=lambda: self._heartbeat(task_id, proxy, launch.uid, secret),
                preexec=launch.preexec,
            )
            tail = _tail(workdir / "payload.log")
            accounting = {
                "cpu_s": round(outcome.cpu_s, 3),
                "wall_s": round(outcome.wall_s, 3),
                "max_rss_kb": outcome.max_rss_kb,
                "exit_code": outcome.exit_code,
                "log_tail": tail,
            }
            if outcome.killed_for is not None and outcome.killed_for.startswith("stopped:"):
                # The server ended the task; reporting on it would only be refused.
                reason = outcome.killed_for
                log.info("task %s: %s", task_id, reason)
            elif outcome.succeeded:
                self._report(task_id, "complete", {**accounting, **secret})
                reason = "done"
            else:
                reason = _failure_reason(outcome)
                self._report(
                    task_id, "fail", {"reason": reason[:REASON_CHARS], **accounting, **secret}
                )
        except (IdentityError, OSError) as exc:
            reason = f"the pilot could not run the payload: {exc}"
            log.warning("task %s: %s", task_id, reason)
            with contextlib.suppress(Exception):
                self.api.request(
                    "POST",
                    f"/v1/tasks/{task_id}/fail",
                    {"reason": reason[:REASON_CHARS], **secret},
                )
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            secret.clear()
        return outcome, reason

    def _report(self, task_id: int, verb: str, body: dict[str, Any]) -> None:
        """Report the end of a task, unless the server ended it first (cancelled meanwhile)."""
        try:
            self.api.request("POST", f"/v1/tasks/{task_id}/{verb}", body)
        except Exception as exc:
            rule = _task_gone(exc)
            if rule is None:
                raise
            log.info("task %s: not reported (%s): the server ended it first", task_id, rule)

    def _heartbeat(
        self, task_id: int, proxy: Path, uid: int | None, secret: dict[str, Any]
    ) -> None:
        try:
            # The end of the payload's output goes with it: its owner may look while it runs.
            beat = {**secret, "log_tail": _tail(proxy.with_name("payload.log"))}
            self.api.request("POST", f"/v1/tasks/{task_id}/heartbeat", beat)
        except Exception as exc:
            rule = _task_gone(exc)
            if rule is not None:
                raise StopPayload(f"stopped: the task is no longer this pilot's ({rule})") from exc
            raise
        # The server gives a proxy for the task's wall time when it may; only a
        # shorter one (max_proxy_lifetime, an expiring stored credential) is renewed.
        now = dt.datetime.now(dt.UTC)
        left = (self._proxy_ends - now).total_seconds()
        if self._proxy_ends < self._task_deadline and left < self.settings.renew_proxy_before_s:
            self._renew_proxy(task_id, proxy, uid, secret)
        if self._token_ends is not None:
            token_left = (self._token_ends - now).total_seconds()
            if (
                self._token_ends < self._task_deadline
                and token_left < self.settings.renew_proxy_before_s
            ):
                self._renew_token(task_id, proxy.with_name("bearer_token"), uid, secret)

    def _renew_proxy(
        self, task_id: int, proxy: Path, uid: int | None, secret: dict[str, Any]
    ) -> None:
        """Replace the payload's proxy file in one rename, so the payload never reads half a file.

        A failure leaves the old proxy in place (the payload may still finish
        on it) and is logged; the next heartbeat tries again.
        """
        fresh = proxy.with_name(proxy.name + ".new")
        try:
            ends = self._fetch_proxy(task_id, fresh, secret)
            if uid is not None:
                # The payload owns this directory and could swap in a symlink: never follow one.
                os.chown(fresh, uid, -1, follow_symlinks=False)
            os.replace(fresh, proxy)
        except Exception as exc:  # a failed renewal must not kill the payload
            log.warning("task %s: the payload proxy could not be renewed: %s", task_id, exc)
            fresh.unlink(missing_ok=True)
            return
        self._proxy_ends = ends
        log.info("task %s: payload proxy renewed, valid until %s", task_id, ends.isoformat())

    def _fetch_token(self, task_id: int, path: Path, secret: dict[str, Any]) -> dt.datetime | None:
        """Write the task's WLCG token to `path` (0600); when it ends, or None if the server
        issues no tokens (the payload then runs with its proxy only)."""
        try:
            answer = self.api.request("POST", f"/v1/tasks/{task_id}/token", dict(secret))
        except Exception as exc:
            if (
                getattr(exc, "rule", None) == "token.not_issuing"
                or getattr(exc, "status", 0) == 404
            ):
                return None
            raise
        token = answer.get("access_token") if isinstance(answer, dict) else None
        try:
            ends = dt.datetime.fromisoformat(str(answer["expires_at"]).replace("Z", "+00:00"))
        except (KeyError, TypeError, ValueError):
            ends = None
        if not isinstance(token, str) or not token or ends is None or ends.tzinfo is None:
            log.warning("task %s: the server's token answer is malformed; no token", task_id)
            return None
        fresh = path.with_name(path.name + ".new")
        fresh.unlink(missing_ok=True)
        fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(token + "\n")
        os.replace(fresh, path)
        return ends

    def _renew_token(
        self, task_id: int, path: Path, uid: int | None, secret: dict[str, Any]
    ) -> None:
        """A fresh token beside a renewed proxy; a failure leaves the old one and is logged."""
        try:
            ends = self._fetch_token(task_id, path, secret)
            if uid is not None:
                os.chown(path, uid, -1, follow_symlinks=False)
        except Exception as exc:  # a failed renewal must not kill the payload
            log.warning("task %s: the payload token could not be renewed: %s", task_id, exc)
            return
        self._token_ends = ends

    def _fetch_proxy(self, task_id: int, path: Path, secret: dict[str, Any]) -> dt.datetime:
        """Write a fresh limited proxy of the task's owner to `path`; return when it ends."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "proxy")]))
            .sign(key, hashes.SHA256())
        )
        answer = self.api.request(
            "POST",
            f"/v1/tasks/{task_id}/proxy",
            {"csr": csr.public_bytes(serialization.Encoding.PEM).decode(), **secret},
        )
        chain = parse_credential_pem(
            answer["chain"].encode(), source=f"payload proxy of task {task_id}"
        )
        write_credential_file(path, Credential(chain.certificates, key))
        return chain.certificates[0].not_valid_after_utc

    @staticmethod
    def _stage(files: list[str], workdir: Path) -> None:
        for name in files:
            src = Path(name)
            if not src.is_file():
                raise OSError(f"input file {name} cannot be staged (not a readable local file)")
            shutil.copy2(src, workdir / src.name)


def _failure_reason(outcome: Outcome) -> str:
    if outcome.killed_for in WATCHDOG_FINDINGS:
        return f"killed by the watchdog as {outcome.killed_for}: {outcome.detail}"
    if outcome.killed_for:
        return f"killed: exceeded its {outcome.killed_for} limit"
    if outcome.exit_code is not None:
        return f"exit code {outcome.exit_code}"
    return f"killed by signal {outcome.signal}"


def _tail(path: Path) -> str:
    """The end of the payload's log. The payload owns its work directory and may have put
    a symlink (to a file only the pilot can read) or a FIFO in its place: only a regular
    file reached without following a link is read, and never blocks."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return ""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        with os.fdopen(fd, "rb") as fh:
            fd = -1
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - LOG_TAIL_BYTES))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    finally:
        if fd >= 0:
            os.close(fd)


__all__ = ["PilotAgent", "PilotSettings", "Summary"]
