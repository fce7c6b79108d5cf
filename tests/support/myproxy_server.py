"""The real myproxy-server (Debian's, from gct) on loopback, as a judge for proxyd.

It runs with the dev PKI's CA and host certificate, in its own storage
directory and with a config written for the test. It forks per connection
and daemonises, so it is started with a pid file and this process becomes a
child subreaper: the daemon stays ours to stop (by its pid) and to reap.

`issue` makes more end-entity certificates from the dev CA, for the DNs a
test needs beyond alice, bob, carol and the hosts.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from proxyd.devpki import DevPKI
from tests.support.grid import spare_key
from tests.support.server import free_port
from tests.support.tools import require_tool
from tests.support.waiting import eventually

BINARY = "myproxy-server"
_PR_SET_CHILD_SUBREAPER = 36


@dataclasses.dataclass(frozen=True)
class RealMyProxy:
    port: int
    pid: int
    workdir: Path

    @property
    def storage(self) -> Path:
        return self.workdir / "storage"


def config_text(pki: DevPKI, policy: dict[str, list[str]], *, extra: str = "") -> str:
    """A myproxy-server.config: `policy` maps a directive (authorized_retrievers, ...) to its
    patterns, one line each, as MyProxy wants them (quoted)."""
    lines = [f"cert_dir {pki.cert_dir}", "max_proxy_lifetime 12"]
    for directive, patterns in policy.items():
        for pattern in patterns:
            if '"' in pattern:
                raise ValueError(f"myproxy-server.config cannot quote {pattern!r}")
            lines.append(f'{directive} "{pattern}"')
    return "\n".join(lines) + "\n" + extra


def _become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _adopted_zombies() -> list[int]:
    """Our zombie children named myproxy-server (only those: other children have owners)."""
    found = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] == "Z" and int(fields[1]) == me and comm == BINARY:
            found.append(int(entry.name))
    return found


def _reap() -> None:
    for pid in _adopted_zombies():
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


@contextlib.contextmanager
def real_myproxy_server(pki: DevPKI, workdir: Path, config: str) -> Iterator[RealMyProxy]:
    """myproxy-server on 127.0.0.1 with `config`; stopped (SIGTERM, by pid) at exit."""
    binary = require_tool(BINARY)
    _become_subreaper()
    workdir.mkdir(parents=True, exist_ok=True)
    storage = workdir / "storage"
    storage.mkdir(mode=0o700, exist_ok=True)
    config_file = workdir / "myproxy-server.config"
    config_file.write_text(config)
    pid_file = workdir / "myproxy-server.pid"
    pid_file.unlink(missing_ok=True)
    port = free_port()
    host_cert, host_key = pki.host("host")
    env = {
        **os.environ,
        "X509_CERT_DIR": str(pki.cert_dir),
        "X509_VOMS_DIR": str(pki.voms_dir),  # to verify the ACs of peers (FQAN: patterns)
        "X509_USER_CERT": str(host_cert),
        "X509_USER_KEY": str(host_key),
    }
    argv = [binary, "-c", config_file, "-s", storage, "-l", "127.0.0.1", "-p", str(port)]
    launched = subprocess.run(
        [str(a) for a in (*argv, "-P", pid_file)],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
        check=False,
    )
    if launched.returncode != 0:
        raise RuntimeError(f"myproxy-server did not start: {launched.stderr.decode()!r}")
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text().strip():
        if time.monotonic() > deadline:
            raise RuntimeError("myproxy-server wrote no pid file")
        time.sleep(0.05)
    pid = int(pid_file.read_text().strip())
    try:
        eventually(lambda: _listening(port), bool, f"myproxy-server listening on {port}")
        _reap()
        yield RealMyProxy(port, pid, workdir)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        _reap()


def issue(pki: DevPKI, dn: str, out: Path, *, host: bool = False) -> tuple[Path, Path]:
    """(cert, key) files of a new end-entity certificate for `dn` from the dev CA, in `out`.

    All such certificates share one spare key: key generation is the slow part, and
    nothing here depends on keys being distinct.
    """
    cert, key = pki.issue(dn, server=host, key=spare_key(5))
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out / "cert.pem", out / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path
