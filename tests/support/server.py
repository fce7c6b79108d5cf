"""A real proxyd (MyProxy + HTTPS listeners) on loopback, in a background thread.

Tests talk to it with real clients over real TLS; the state lives in a
per-test SQLite file (or a PostgreSQL database), with the dev PKI.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from proxyd.config import (
    AaConfig,
    ApiConfig,
    Config,
    Listen,
    MyProxyConfig,
    PolicyConfig,
    TaskQueueConfig,
)
from proxyd.devpki import DevPKI
from proxyd.repository import Repository
from proxyd.serve import run_listeners
from tests.support.grid import make_test_config


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port no one uses now, for a server a test is about to start.

    Not one the kernel picks (bind to port 0): those come from the ephemeral range, from which
    every outgoing connection (to PostgreSQL, to a peer) also takes its local port, so one may
    hold it by the time the server binds (CI, stop 24: "address already in use"). Outside that
    range only servers bind, and this process never hands out the same port twice.
    """
    low, high = _ephemeral_range()
    candidates = range(10_000, low) if low - 10_000 >= 4_000 else range(high + 1, 65_536)
    for _ in range(1_000):
        port = random.choice(candidates)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port in {candidates.start}-{candidates.stop - 1}")


@dataclasses.dataclass
class RunningServer:
    config: Config
    myproxy_port: int
    api_port: int
    pki: DevPKI
    _repo: Repository | None = None
    aa_port: int | None = None  # the [aa] VOMS endpoint, when running_server(aa=True)

    @property
    def repo(self) -> Repository:
        """A second Repository on the same database, for inspecting state and the audit log."""
        if self._repo is None:
            self._repo = Repository.open(self.config)
        return self._repo

    def myproxy_env(self) -> dict[str, str]:
        return {
            "X509_CERT_DIR": str(self.pki.cert_dir),
            "X509_VOMS_DIR": str(self.pki.voms_dir),
            "MYPROXY_SERVER": "localhost",
            "MYPROXY_SERVER_PORT": str(self.myproxy_port),
            "RANDFILE": "/dev/null",
        }


@contextmanager
def running_server(
    pki: DevPKI,
    state_dir: Path,
    *,
    database: str | None = None,
    tls_min: str = "1.2",
    tls_max: str = "1.3",
    policy: PolicyConfig | None = None,
    taskqueue: TaskQueueConfig | None = None,
    aa: bool | AaConfig = False,
    configure: Callable[[Config], Config] | None = None,
) -> Iterator[RunningServer]:
    """`aa`: also the [aa] VOMS endpoint on a free port (an AaConfig: with its limits).
    `configure`: changes the test configuration (e.g. an upstream [[voms]]) before start."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    config = make_test_config(pki, database or f"sqlite:///{state_dir / 'proxyd.db'}", state_dir)
    mp_port, api_port = free_port(), free_port()
    config = dataclasses.replace(
        config,
        myproxy=MyProxyConfig(Listen("127.0.0.1", mp_port), tls_min, tls_max),
        api=ApiConfig(Listen("127.0.0.1", api_port)),
        policy=policy or config.policy,
        taskqueue=taskqueue or config.taskqueue,
        aa=AaConfig()
        if aa is False
        else dataclasses.replace(
            aa if isinstance(aa, AaConfig) else AaConfig(), listen=Listen("127.0.0.1", free_port())
        ),
    )
    if configure is not None:
        config = configure(config)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(run_listeners(config, ready=ready.set, stop=stop))
        except BaseException as exc:  # surfaced to the test below
            failure.append(exc)
            ready.set()

    # run_listeners installs signal handlers, which only the main thread may do.
    original = loop.add_signal_handler
    loop.add_signal_handler = lambda *a, **k: None  # type: ignore[method-assign]
    thread = threading.Thread(target=run, name="proxyd-test-server", daemon=True)
    thread.start()
    if not ready.wait(30) or failure:
        # The loop (and its self-pipe) closed here, not left to the garbage collector, which
        # would report it as a ResourceWarning in whichever test runs next (CI, stop 24).
        loop.call_soon_threadsafe(stop.set)
        thread.join(15)
        if not thread.is_alive():
            loop.close()
        raise RuntimeError(f"test server did not start: {failure[0] if failure else 'timeout'}")
    server = RunningServer(
        config, mp_port, api_port, pki, aa_port=config.aa.listen.port if config.aa.listen else None
    )
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(15)
        loop.add_signal_handler = original  # type: ignore[method-assign]
        if not thread.is_alive():
            loop.close()
        if server._repo is not None:
            server._repo.engine.dispose()


def write_config(
    pki: DevPKI, state_dir: Path, myproxy_port: int, api_port: int, *, extra: str = ""
) -> Path:
    """A proxyd.toml for a `proxyd serve` process: the dev PKI, these ports, this state dir.

    It is written next to the dev config, so the PKI's relative paths resolve.
    """
    text = pki.config.read_text()
    text = text.replace('listen = "127.0.0.1:7512"', f'listen = "127.0.0.1:{myproxy_port}"')
    text = text.replace('listen = "127.0.0.1:8443"', f'listen = "127.0.0.1:{api_port}"')
    text = text.replace('state_dir = "state"', f'state_dir = "{state_dir}"')
    text = text.replace(
        'master_key_file = "state/master.key"', f'master_key_file = "{state_dir / "master.key"}"'
    )
    text += "\n[sealing]\nargon2_time_cost = 1\nargon2_memory_kib = 64\n" + extra
    path = pki.root / f"serve-{myproxy_port}.toml"
    path.write_text(text)
    return path
