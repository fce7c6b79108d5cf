"""The grid in a box: proxyd as a `proxyd serve` process among the real grid services.

Everything runs on loopback and is stopped by the PID the harness started:
proxyd (`serve --workers 2`, PostgreSQL), the VO's voms-server
(tests/support/voms_server.py), XRootD (tests/support/xrootd.py) and the
`proxyd-pilot` processes. What is here is only what those harnesses do not
do already: proxyd as a subprocess with the VO's AA upstream and tokens on,
identities the dev PKI does not have (eve, a second pilot), and the pilots.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from proxyd.devpki import DevPKI
from tests.support.grid import spare_key
from tests.support.server import free_port, write_config
from voms_ext import Credential, write_credential_file

BIN = Path(sys.executable).parent
WORKERS = 2
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0


def mint_identity(pki: DevPKI, unit: str, name: str, out: Path) -> Path:
    """A certificate and key (one PEM file) for /C=XX/O=proxyd dev/OU=<unit>/CN=<name>,
    issued by the dev CA: people and pilots the dev PKI does not have."""
    cert, key = pki.issue(f"/C=XX/O=proxyd dev/OU={unit}/CN={name}", key=spare_key(7))
    path = out / f"{name}.pem"
    write_credential_file(path, Credential((cert,), key))
    return path


def _toml_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def e2e_config(
    pki: DevPKI,
    state: Path,
    *,
    database: str,
    vomses: Path,
    voms_dir: Path,
    pilot_dns: Sequence[str],
    auditors: Sequence[str],
    scopes: Mapping[str, Sequence[str]],
) -> tuple[Path, int, int]:
    """proxyd.toml for the box: (its path, MyProxy port, API port).

    The dev configuration (tests/support/server.py write_config), changed as a
    site running a VO's WMS changes it: PostgreSQL; dteam's ACs from the VO's
    own VOMS server (`vomses`, its trust files as `voms_dir`) instead of a key
    proxyd holds; the pilots' DNs; an auditor; proxyd issuing payload tokens.
    """
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    mp_port, api_port = free_port(), free_port()
    path = write_config(pki, state, mp_port, api_port)
    text = path.read_text()
    replacements = {
        '# database = "sqlite:///state/proxyd.db"   (the default)': f"database = {json.dumps(database)}",
        'voms_dir = "vomsdir"': f"voms_dir = {json.dumps(str(voms_dir))}",
    }
    for old, new in replacements.items():
        assert old in text, f"the dev config changed: no {old!r} in {pki.config}"
        text = text.replace(old, new)
    text = re.sub(r"(?m)^pilot_dns = .*$", f"pilot_dns = {_toml_list(pilot_dns)}", text)
    # The dev config may name its own auditor (issue 21 item 2); this box names its own.
    text = re.sub(r"(?m)^auditors = .*\n", "", text)
    text = text.replace("banned_dns = []", f"banned_dns = []\nauditors = {_toml_list(auditors)}")
    # dteam's [[voms]] table up to the next one: proxyd signs no dteam AC itself.
    dteam = re.compile(r'\[\[voms\]\]\nvo = "dteam"\n.*?(?=\[\[voms\]\])', re.DOTALL)
    upstream = f'[[voms]]\nvo = "dteam"\nvomses = {json.dumps(str(vomses))}\ntimeout = "20s"\n\n'
    text, found = dteam.subn(upstream, text)
    assert found == 1, f"no dteam [[voms]] table in {pki.config}"
    # A payload that fails is not run again: each outcome below is its first attempt's.
    text += "\n[taskqueue]\nmax_attempts = 1\n"
    text += f'\n[tokens]\nissuer = "https://localhost:{api_port}"\n[tokens.scopes]\n'
    text += "".join(f"{vo} = {_toml_list(s)}\n" for vo, s in scopes.items())
    path.write_text(text)
    return path, mp_port, api_port


@dataclass
class ProxydProcess:
    """`proxyd serve --workers 2` as the operator runs it, logging JSON to a file."""

    config: Path
    myproxy_port: int
    api_port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://localhost:{self.api_port}"

    def start(self) -> None:
        with self.log.open("ab") as out:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                [
                    *(str(BIN / "proxyd"), "serve", "--config", str(self.config)),
                    *("--workers", str(WORKERS), "--log-format", "json"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        # Each worker binds both listeners itself (SO_REUSEPORT) and says so.
        deadline = time.monotonic() + START_TIMEOUT
        while self.log.read_text(errors="replace").count("listening on") < WORKERS * 2:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"proxyd serve did not start:\n{self.tail()}")
            time.sleep(0.1)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM to the PID we started (its workers are its children), then SIGKILL."""
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(STOP_TIMEOUT)


def start_pilot(
    server: ProxydProcess,
    site: str,
    credential: Path,
    workroot: Path,
    *,
    cert_dir: Path,
    voms_dir: Path,
) -> subprocess.Popen[str]:
    """A real `proxyd-pilot` at `site` with `credential`, 1 s heartbeats; it ends when the
    queue has nothing more for it."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(workroot),
        "X509_USER_PROXY": str(credential),
        "X509_CERT_DIR": str(cert_dir),
        "X509_VOMS_DIR": str(voms_dir),
        "PROXYD_URL": server.url,
    }
    return subprocess.Popen(
        [
            *(str(BIN / "proxyd-pilot"), "--site", site, "--workdir", str(workroot)),
            *("--heartbeat", "1", "--time", "600", "--pilot-id", f"{site}-pilot"),
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_process(proc: subprocess.Popen[str]) -> None:
    """End a process the test started, by its PID, if it is still there."""
    if proc.poll() is None:
        proc.kill()
        proc.communicate(timeout=STOP_TIMEOUT)
