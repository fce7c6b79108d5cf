"""Helpers for the reliability tests: a `proxyd serve` process, client identities, a watchdog client.

Long variants run only with PROXYD_LONG_TESTS=1 (see `long_only`); the
default variants are sized to keep the whole directory within its time budget.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import math
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from proxyd.devpki import DevPKI
from proxyd.myproxy.client import ClientCredential, MyProxyClient
from tests.support.grid import Identity, load_identity, make_proxy, spare_key
from tests.support.https import ApiClient
from tests.support.server import free_port, write_config
from voms_ext import Credential, write_credential_file

LONG = os.environ.get("PROXYD_LONG_TESTS") == "1"
long_only = pytest.mark.skipif(not LONG, reason="long test: set PROXYD_LONG_TESTS=1")


def scaled(default: int, long: int) -> int:
    return long if LONG else default


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def report(line: str) -> None:
    """A measurement the issue asks for: printed (pytest -s shows it) and kept in a file."""
    print(f"\n[reliability] {line}")
    out = Path(__file__).resolve().parents[1] / ".build" / "reliability-report.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as fh:
        fh.write(f"{dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%SZ} {line}\n")


# --- a `proxyd serve` process ---------------------------------------------------------------


def serve_config(
    pki: DevPKI,
    state_dir: Path,
    myproxy_port: int,
    api_port: int,
    *,
    database: str | None = None,
    policy: str = "passphrase_attempts = 1000000\n",
    sections: dict[str, str] | None = None,
) -> Path:
    """write_config, plus extra [policy] lines, extra lines for other sections of the dev
    config (e.g. {"myproxy": "max_connections = 5\\n"}) and optionally another database URL."""
    path = write_config(pki, state_dir, myproxy_port, api_port)
    text = path.read_text()
    text = text.replace("[policy]\n", "[policy]\n" + policy, 1)
    for section, lines in (sections or {}).items():
        assert f"[{section}]\n" in text, section
        text = text.replace(f"[{section}]\n", f"[{section}]\n{lines}", 1)
    if database is not None:
        text = text.replace("[server]\n", f'[server]\ndatabase = "{database}"\n', 1)
    path.write_text(text)
    return path


class ServeProcess:
    """`proxyd serve` in a subprocess, its log in a file (a pipe would fill up and stall it)."""

    def __init__(
        self,
        pki: DevPKI,
        state_dir: Path,
        *,
        database: str | None = None,
        workers: int = 1,
        debug: bool = False,
        policy: str = "passphrase_attempts = 1000000\n",
        sections: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.pki = pki
        self.env = env
        self.state_dir = state_dir
        self.myproxy_port, self.api_port = free_port(), free_port()
        self.config = serve_config(
            pki,
            state_dir,
            self.myproxy_port,
            self.api_port,
            database=database,
            policy=policy,
            sections=sections,
        )
        self.workers = workers
        self.debug = debug
        self.log_path = state_dir.parent / f"proxyd-{self.myproxy_port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 90) -> ServeProcess:
        args = [
            sys.executable,
            "-m",
            "proxyd.cli.main",
            "serve",
            "--config",
            str(self.config),
            "--workers",
            str(self.workers),
        ]
        if self.debug:
            args.append("--debug")
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=log,
            start_new_session=True,
            env={**os.environ, **self.env} if self.env else None,
        )
        log.close()
        self.starts += 1
        deadline = time.monotonic() + timeout
        try:
            for port in (self.myproxy_port, self.api_port):
                while not _port_open(port):
                    if self.proc.poll() is not None:
                        raise AssertionError(f"proxyd exited early:\n{self.log()}")
                    if time.monotonic() > deadline:
                        raise AssertionError(f"proxyd did not open port {port}:\n{self.log()}")
                    time.sleep(0.05)
        except BaseException:
            self.proc.kill()
            self.proc.wait(30)
            raise
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_kib(self) -> int:
        """VmRSS of the serving process (the only process with --workers 1)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS line")

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)  # the server and any workers, at once
        self.proc.wait(30)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
            raise AssertionError(f"proxyd did not stop on SIGTERM:\n{self.log()[-3000:]}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_records(self) -> list[dict[str, object]]:
        out = []
        for line in self.log().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def internal_errors(self) -> Counter[str]:
        """Internal errors in the log, by cause ('database is locked' or 'other')."""
        causes: Counter[str] = Counter()
        for record in self.log_records():
            if "internal error" in str(record.get("message", "")):
                text = str(record.get("exception", ""))
                causes["database is locked" if "database is locked" in text else "other"] += 1
        return causes

    def myproxy(self, cred: ClientCredential | None = None, **kw: object) -> MyProxyClient:
        return MyProxyClient(
            "localhost",
            self.myproxy_port,
            cert_dir=self.pki.cert_dir,
            credential=cred,
            **kw,  # type: ignore[arg-type]
        )

    def api(self, cred: Path | None = None) -> ApiClient:
        return ApiClient(self.api_port, self.pki.cert_dir, cred)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def serving(pki: DevPKI, state_dir: Path, **kw: object) -> Iterator[ServeProcess]:
    server = ServeProcess(pki, state_dir, **kw).start()  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()


# --- client identities --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClientFiles:
    """A proxy of a dev identity, written as a credential file for TLS."""

    identity: Identity
    path: Path

    @property
    def credential(self) -> ClientCredential:
        return ClientCredential(str(self.path))

    @property
    def issuer(self) -> tuple[object, rsa.RSAPrivateKey, tuple[object, ...]]:
        """What MyProxyClient.put signs with: (cert, key, chain)."""
        return self.identity.cert, self.identity.key, self.identity.chain


def client_files(pki: DevPKI, directory: Path, name: str, *, proxy: bool = True) -> ClientFiles:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ident = load_identity(pki, name)
    if proxy:
        ident = make_proxy(ident, lifetime_h=24)
    path = directory / f"{name}{'-proxy' if proxy else ''}.pem"
    write_credential_file(path, Credential(ident.certificates, ident.key))
    return ClientFiles(ident, path)


def tls_probe_context(pki: DevPKI) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(capath=str(pki.cert_dir))
    return ctx


# --- the well-behaved client that must never fail ------------------------------------------------


class Watchdog:
    """A thread doing a MyProxy GET and an API /healthz every `interval` seconds.

    Every attempt must succeed while hostile traffic runs; `failures` keeps
    what went wrong and `latencies` the seconds each round took.
    """

    def __init__(
        self, server: ServeProcess, username: str, passphrase: str, interval: float = 0.1
    ) -> None:
        self.server = server
        self.username = username
        self.passphrase = passphrase
        self.interval = interval
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._lock = threading.Lock()

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return len(self.latencies), len(self.failures)

    def _run(self) -> None:
        client = self.server.myproxy(timeout=30)
        api = self.server.api()
        key = spare_key(4)
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                chain = client.get(self.username, self.passphrase, key=key, lifetime=3600)
                assert len(chain) >= 2, "short chain"
                reply = api.request("GET", "/healthz")
                assert reply.status == 200, reply.status
                with self._lock:
                    self.latencies.append(time.perf_counter() - started)
            except Exception as exc:
                with self._lock:
                    self.failures.append(f"{time.strftime('%X')} {type(exc).__name__}: {exc}")
            self._stop.wait(max(0.0, self.interval - (time.perf_counter() - started)))
