"""What every benchmark needs: servers on loopback, a load loop, percentiles, CPU accounting.

The machine is small (2 cores) and shared, so absolute numbers are noisy.
Every figure worth quoting is therefore a ratio of two measurements taken
in the same run, with the same client code, on the same PKI.

Load runs in separate processes (one per core, each with threads), so the
client's GIL is not the limit; its CPU is measured too and printed, because
on 2 cores the client competes with the server for the same CPUs.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import multiprocessing
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from proxyd.devpki import DevPKI, generate

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
LOOPBACK = "127.0.0.1"
PR_SET_CHILD_SUBREAPER = 36


# --- machine -----------------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_line(when: str = "at start") -> str:
    """nproc, CPU model and the load average: other people's load is part of every result."""
    load = os.getloadavg()
    return (
        f"machine: nproc={os.cpu_count()}, cpu={cpu_model()!r}, python "
        f"{platform.python_version()}; loadavg(1m) {when} {load[0]:.2f}"
    )


# --- ports -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float, alive: Callable[[], bool] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RuntimeError(f"the server for port {port} exited while starting")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {LOOPBACK}:{port} after {timeout}s")


# --- CPU accounting from /proc -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ProcStat:
    pid: int
    ppid: int
    comm: str
    state: str
    ticks: int  # utime + stime + cutime + cstime: itself and its reaped children

    @classmethod
    def read(cls, pid: int) -> ProcStat | None:
        try:
            raw = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        # comm is in parentheses and may contain spaces; the rest is space separated.
        head, _, rest = raw.rpartition(")")
        f = rest.split()
        return cls(pid, int(f[1]), head.partition("(")[2], f[0], sum(int(x) for x in f[11:15]))


def all_processes() -> dict[int, ProcStat]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := ProcStat.read(int(entry))) is not None:
            out[st.pid] = st
    return out


def process_tree(root: int, procs: dict[int, ProcStat] | None = None) -> list[ProcStat]:
    procs = procs if procs is not None else all_processes()
    children: dict[int, list[int]] = {}
    for st in procs.values():
        children.setdefault(st.ppid, []).append(st.pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in procs:
            out.append(procs[pid])
            todo.extend(children.get(pid, ()))
    return out


def tree_cpu_by_pid(roots: Sequence[int]) -> dict[int, float]:
    """CPU seconds so far of each process in the trees under `roots` (see tree_cpu_seconds)."""
    procs = all_processes()
    out: dict[int, float] = {}
    for root in roots:
        for st in process_tree(root, procs):
            out[st.pid] = st.ticks / CLK_TCK
    return out


def cpu_between(before: dict[int, float], after: dict[int, float], *, reaped: bool) -> float:
    """CPU used between two `tree_cpu_by_pid` samples.

    reaped=True: processes that exit in between are reaped by a parent in
    the trees, which then counts their whole time (cutime), so the sums are
    subtracted. reaped=False (unrelated processes, such as the PostgreSQL
    backends of a load): only processes alive at both samples count; one
    that exits in between would otherwise take its earlier time away."""
    if reaped:
        return sum(after.values()) - sum(before.values())
    return sum(after[pid] - before[pid] for pid in before.keys() & after.keys())


def thread_switches(pid: int) -> int:
    """Context switches so far (voluntary + involuntary) of all live threads of `pid`: each is
    a sleep and a wake-up, the kernel cost of thread hand-offs and GIL contention. Threads
    that have exited are not counted, so read it around a window where none do."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


def tree_cpu_seconds(roots: Sequence[int]) -> float:
    """CPU seconds (user + system) used so far by `roots` and all their descendants.

    Live processes count their own time and that of children they have
    reaped (cutime/cstime), so the sum over the live tree at one instant is
    exact: a per-connection child of a forking server that was reaped between
    two samples still shows up, in its parent's cutime.
    """
    procs = all_processes()
    seen: set[int] = set()
    ticks = 0
    for root in roots:
        for st in process_tree(root, procs):
            if st.pid not in seen:
                seen.add(st.pid)
                ticks += st.ticks
    return ticks / CLK_TCK


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of all cores so far, from /proc/stat: everyone's load, not ours."""
    with contextlib.suppress(OSError):
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        total = sum(fields[:8])  # guest time is already inside user time
        return total - idle, total
    return 0, 0


# --- statistics --------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN for no data."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")


# --- load --------------------------------------------------------------------------------------


class Operation(Protocol):
    """A picklable description of one kind of request.

    `setup` runs once per load thread, inside a load process, and returns the
    callable that performs one request. That callable raises on any failure,
    including a reply that does not check out (so failures are never counted
    as successes). What it returns, if not None, is collected for every call
    (warm-up included) into `LoadResult.values`, e.g. the task ids a pilot got.
    """

    def setup(self, slot: int) -> Callable[[], object]: ...


@dataclasses.dataclass
class LoadResult:
    label: str
    concurrency: int
    duration: float
    latencies: list[float]  # seconds, sorted, successful requests completed in the window
    errors: Counter[str]
    server_cpu: float | None  # CPU seconds of the watched server trees during the window
    client_cpu: float  # CPU seconds of the load processes during the window
    values: list[Any] = dataclasses.field(default_factory=list)  # non-None returns, all calls
    machine_busy: float | None = None  # share of all cores busy during the window (anyone's)

    @property
    def ops(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.ops / self.duration

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def p(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000

    @property
    def server_cpu_ms_per_op(self) -> float:
        if self.server_cpu is None or not self.ops:
            return float("nan")
        return self.server_cpu / self.ops * 1000

    @property
    def client_cpu_ms_per_op(self) -> float:
        return self.client_cpu / self.ops * 1000 if self.ops else float("nan")

    def line(self) -> str:
        cpu = (
            f", server CPU {self.server_cpu_ms_per_op:.1f} ms/op"
            f" ({self.server_cpu / self.duration * 100:.0f}% of a core)"
            if self.server_cpu is not None
            else ""
        )
        return (
            f"{self.label:<30} C={self.concurrency:<3} {self.rate:8.1f} ops/s"
            f"  p50 {self.p(50):7.1f} ms  p99 {self.p(99):7.1f} ms"
            f"  ok {self.ops:5d}  errors {self.error_count:3d}{cpu}"
            f", client CPU {self.client_cpu_ms_per_op:.1f} ms/op"
            f" ({self.client_cpu / self.duration * 100:.0f}% of a core)"
        )

    def error_lines(self, limit: int = 3) -> list[str]:
        return [f"    {n} x {msg}" for msg, n in self.errors.most_common(limit)]


@dataclasses.dataclass
class _ThreadTally:
    """What one load thread saw in the window (one per thread: no shared counters to race on)."""

    latencies: list[float] = dataclasses.field(default_factory=list)
    errors: Counter[str] = dataclasses.field(default_factory=Counter)
    values: list[Any] = dataclasses.field(default_factory=list)


def _thread_loop(
    run: Callable[[], object], schedule: Any, go: MpEvent, tally: _ThreadTally
) -> None:
    go.wait()
    _, window_start, window_end = schedule[:]
    while (t0 := time.monotonic()) < window_end:
        try:
            value = run()
            failure = None
            if value is not None:
                tally.values.append(value)
        except Exception as exc:
            failure = f"{type(exc).__name__}: {exc}"[:160]
        t1 = time.monotonic()
        if window_start <= t1 <= window_end:
            if failure is None:
                tally.latencies.append(t1 - t0)
            else:
                tally.errors[failure] += 1


def _load_process(
    op: Operation, slots: list[int], schedule: Any, go: MpEvent, results: Any
) -> None:
    """One load process: a thread per slot, all released together by `go`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator decides when to stop
    tallies: list[_ThreadTally] = []
    threads = []
    try:
        for slot in slots:
            run = op.setup(slot)
            tallies.append(_ThreadTally())
            threads.append(
                threading.Thread(
                    target=_thread_loop, args=(run, schedule, go, tallies[-1]), daemon=True
                )
            )
    except Exception as exc:
        results.put((os.getpid(), None, f"setup failed: {type(exc).__name__}: {exc}"))
        return
    for t in threads:
        t.start()
    results.put((os.getpid(), "ready", None))
    for t in threads:
        t.join()
    latencies = [x for tally in tallies for x in tally.latencies]
    errors: Counter[str] = Counter()
    for tally in tallies:
        errors.update(tally.errors)
    values = [v for tally in tallies for v in tally.values]
    results.put((os.getpid(), (latencies, dict(errors), values), None))


def run_load(
    op: Operation,
    *,
    label: str,
    concurrency: int,
    duration: float,
    warmup: float = 1.0,
    servers: Sequence[int] | Callable[[], Sequence[int]] = (),
    processes: int | None = None,
) -> LoadResult:
    """Run `concurrency` closed-loop clients of `op` for `warmup + duration` seconds.

    Only requests that complete inside the measured window count; server
    CPU (the trees under the `servers` pids) and client CPU are sampled at
    the window's edges. `servers` may be a callable, asked for the pids when
    the window opens (for servers whose processes appear during the warm-up,
    such as the PostgreSQL backends of the load's connections); those count
    while they live through the window (see `cpu_between`).
    """
    ctx = multiprocessing.get_context("spawn")
    nproc = max(1, min(concurrency, processes or os.cpu_count() or 1))
    slot_groups = [list(range(i, concurrency, nproc)) for i in range(nproc)]
    schedule = ctx.Array("d", 3, lock=False)
    go = ctx.Event()
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_load_process, args=(op, slots, schedule, go, results), daemon=True)
        for slots in slot_groups
    ]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            pid, _ready, failure = results.get(timeout=120)
            if failure:
                raise RuntimeError(f"load process {pid}: {failure}")
        start = time.monotonic() + 0.1
        window_start, window_end = start + warmup, start + warmup + duration
        schedule[:] = [start, window_start, window_end]
        go.set()
        client_pids = [p.pid for p in procs if p.pid is not None]
        _sleep_until(window_start)
        server_pids = servers() if callable(servers) else servers
        server0 = tree_cpu_by_pid(server_pids) if server_pids else None
        client0 = tree_cpu_seconds(client_pids)
        machine0 = machine_cpu()
        _sleep_until(window_end)
        server1 = tree_cpu_by_pid(server_pids) if server_pids else None
        client1 = tree_cpu_seconds(client_pids)
        machine1 = machine_cpu()
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        values: list[Any] = []
        for _ in procs:
            pid, payload, failure = results.get(timeout=120 + duration)
            if failure:
                raise RuntimeError(f"load process {pid}: {failure}")
            lat, errs, vals = payload
            latencies += lat
            errors.update(errs)
            values += vals
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()
    latencies.sort()
    server_cpu = (
        None
        if server0 is None or server1 is None
        else cpu_between(server0, server1, reaped=not callable(servers))
    )
    busy = machine1[0] - machine0[0]
    total = machine1[1] - machine0[1]
    return LoadResult(
        label,
        concurrency,
        duration,
        latencies,
        errors,
        server_cpu,
        client1 - client0,
        values,
        busy / total if total else None,
    )


def _sleep_until(t: float) -> None:
    while (left := t - time.monotonic()) > 0:
        time.sleep(min(left, 0.5))


# --- identities --------------------------------------------------------------------------------


def write_credential_file(cert: Path, key: Path, out: Path) -> Path:
    """One PEM file with certificate and key, mode 0600 (what ssl.load_cert_chain wants)."""
    out.write_bytes(cert.read_bytes() + key.read_bytes())
    out.chmod(0o600)
    return out


def load_key(path: Path) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(
        path.read_bytes(), password=None, unsafe_skip_rsa_key_validation=True
    )
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def same_public_key(cert: x509.Certificate, key: PrivateKeyTypes) -> bool:
    """Whether `cert` certifies the public half of `key` (RSA only, as the grid uses)."""
    pub, ours = cert.public_key(), key.public_key()
    return (
        isinstance(pub, rsa.RSAPublicKey)
        and isinstance(ours, rsa.RSAPublicKey)
        and pub.public_numbers() == ours.public_numbers()
    )


def write_keys(directory: Path, count: int) -> list[Path]:
    """`count` pre-generated RSA-2048 keys (PEM), so key generation stays out of timed loops."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = directory / f"key{i}.pem"
        if not path.exists():
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            path.write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            path.chmod(0o600)
        paths.append(path)
    return paths


def write_proxyd_config(pki: DevPKI, myproxy_port: int, api_port: int) -> Path:
    """The dev PKI's proxyd.toml (default sealing costs, SQLite) on the given loopback ports."""
    text = pki.config.read_text()
    for default, port in (("127.0.0.1:7512", myproxy_port), ("127.0.0.1:8443", api_port)):
        if f'listen = "{default}"' not in text:
            raise RuntimeError(f"{pki.config} no longer has listen = {default!r}")
        text = text.replace(f'listen = "{default}"', f'listen = "{LOOPBACK}:{port}"')
    path = pki.root / "bench.toml"
    path.write_text(text)
    return path


class BenchSetup(NamedTuple):
    """What every bench script starts from: a dev PKI, client credentials, keys, a config."""

    pki: DevPKI
    alice: Path  # alice's certificate and key, one 0600 PEM file
    wms: Path  # the trusted WMS host's, likewise
    keys: tuple[str, ...]  # pre-generated RSA-2048 keys for the clients' CSRs
    mp_port: int
    api_port: int
    config: Path  # proxyd.toml of the PKI on those ports


def bench_setup(root: Path, nkeys: int = 8) -> BenchSetup:
    """A dev PKI under `root`, alice's and the WMS host's credentials, keys and a proxyd.toml."""
    pki = generate(root / "pki")
    creds = root / "creds"
    creds.mkdir()
    mp_port, api_port = free_port(), free_port()
    return BenchSetup(
        pki=pki,
        alice=write_credential_file(*pki.user("alice"), creds / "alice.pem"),
        wms=write_credential_file(*pki.host("wms"), creds / "wms.pem"),
        keys=tuple(str(p) for p in write_keys(root / "keys", nkeys)),
        mp_port=mp_port,
        api_port=api_port,
        config=write_proxyd_config(pki, mp_port, api_port),
    )


# --- servers -----------------------------------------------------------------------------------


class ProxydServer:
    """`proxyd serve --workers N` as a subprocess, JSON logs to a file."""

    def __init__(
        self,
        config: Path,
        *,
        workers: int,
        log: Path,
        ports: Sequence[int],
        env: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self.workers = workers
        self.log = log
        self.ports = ports
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        self._log_offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(VENV_BIN / "proxyd"),
                    "serve",
                    "--config",
                    str(self.config),
                    "--workers",
                    str(self.workers),
                    "--log-format",
                    "json",
                ],
                env={**os.environ, **self.env} if self.env else None,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        # With N workers each binds the ports itself (SO_REUSEPORT): wait until every worker
        # logged every listener, or the first measurements would see some workers only.
        wanted = max(1, self.workers) * len(self.ports)
        deadline = time.monotonic() + 60
        while self._listening() < wanted:
            if self.proc.poll() is not None:
                raise RuntimeError(f"proxyd exited while starting; see {self.log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"proxyd did not start its listeners; see {self.log}")
            time.sleep(0.1)
        for port in self.ports:
            wait_for_port(port, 10)

    def _listening(self) -> int:
        with self.log.open("rb") as f:
            f.seek(self._log_offset)
            text = f.read().decode(errors="replace")
        return text.count("listening on")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


# A what-if, never shipped: proxyd loads stored keys without re-running OpenSSL's RSA
# consistency check (the key was checked when it was stored and is AEAD-sealed since).
SKIP_KEY_CHECK_SHIM = """\
from cryptography.hazmat.primitives import serialization as _serialization

_load = _serialization.load_pem_private_key


def _load_stored(data, password=None, backend=None, *, unsafe_skip_rsa_key_validation=False):
    return _load(data, password, unsafe_skip_rsa_key_validation=True)


_serialization.load_pem_private_key = _load_stored
"""


def what_if_env(directory: Path) -> dict[str, str]:
    """Environment that makes a proxyd subprocess import SKIP_KEY_CHECK_SHIM at start-up."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(SKIP_KEY_CHECK_SHIM)
    return {"PYTHONPATH": str(directory)}


def become_subreaper() -> None:
    """Adopt orphaned descendants (the real server daemonises by forking twice), so they can be
    reaped here instead of lingering as zombies under an init that does not reap."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def reap_adopted(comm: str) -> None:
    """waitpid() every zombie child of ours named `comm` (only those: others have owners)."""
    me = os.getpid()
    for st in all_processes().values():
        if st.ppid == me and st.state == "Z" and st.comm == comm:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(st.pid, os.WNOHANG)


class RealMyProxyServer:
    """The Debian myproxy-server, forking per connection as in production.

    `-d` would keep it in the foreground but also makes it serve one
    connection and exit, so it runs as the daemon it is, with a pid file;
    this process is its subreaper, which keeps the pid ours to stop and reap.
    """

    binary = "/usr/sbin/myproxy-server"

    def __init__(self, workdir: Path, *, port: int, config: str, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.port = port
        self.config_text = config
        self.env = env
        self.pid_file = workdir / "myproxy-server.pid"
        self._pid: int | None = None

    @property
    def pid(self) -> int:
        assert self._pid is not None
        return self._pid

    def start(self) -> None:
        become_subreaper()
        self.workdir.mkdir(parents=True, exist_ok=True)
        storage = self.workdir / "storage"
        storage.mkdir(mode=0o700, exist_ok=True)
        config = self.workdir / "myproxy-server.config"
        config.write_text(self.config_text)
        self.pid_file.unlink(missing_ok=True)
        launcher = subprocess.run(
            [
                self.binary,
                "-c",
                str(config),
                "-s",
                str(storage),
                "-l",
                LOOPBACK,
                "-p",
                str(self.port),
                "-P",
                str(self.pid_file),
            ],
            env={**os.environ, **self.env},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
            check=False,
        )
        if launcher.returncode != 0:
            raise RuntimeError(
                f"myproxy-server failed to start: {launcher.stderr.decode(errors='replace')}"
            )
        deadline = time.monotonic() + 30
        while not self.pid_file.exists() or not self.pid_file.read_text().strip():
            if time.monotonic() > deadline:
                raise RuntimeError("myproxy-server wrote no pid file")
            time.sleep(0.05)
        self._pid = int(self.pid_file.read_text().strip())
        wait_for_port(self.port, 30, alive=lambda: ProcStat.read(self.pid) is not None)
        reap_adopted("myproxy-server")

    def stop(self) -> None:
        if self._pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            st = ProcStat.read(self._pid)
            if st is None or st.state == "Z":
                break
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
        time.sleep(0.1)
        reap_adopted("myproxy-server")
        self._pid = None


@contextlib.contextmanager
def running(*servers: ProxydServer | RealMyProxyServer) -> Iterator[None]:
    started: list[ProxydServer | RealMyProxyServer] = []
    try:
        for s in servers:
            s.start()
            started.append(s)
        yield
    finally:
        for s in reversed(started):
            s.stop()


# --- output ------------------------------------------------------------------------------------


def say(text: str = "") -> None:
    print(text, flush=True)


def heading(text: str) -> None:
    say()
    say(f"== {text}")
