"""Where proxyd's CPU goes on its hot paths: cert-auth MyProxy GET, MyProxy INFO, HTTPS issuance.

    .venv/bin/python -m bench.profile_hot_paths [--quick]

Four views, because each alone misleads. The live ones run the real server
(`proxyd serve --workers 1`, so one process holds all the work) under load
at C=8 with the bench client, next to the server CPU per request that /proc
reports for the same window.

1. perf (CPU samples, if `perf` works here): the server's CPU per request
   split by where the instructions ran: the system OpenSSL behind Python's
   `ssl` (TLS handshakes and records), `cryptography`'s Rust/OpenSSL (proxy
   signatures, CSR and chain checks, X.509 parsing), SQLite, the Python
   interpreter with libc, and the kernel (syscalls, loopback TCP, thread
   wake-ups, fsync). This is the CPU view; the others say which Python code.
2. The floor: a bare asyncio TLS server with proxyd's own MyProxy TLS
   context answers every connection with a canned INFO reply, driven by the
   same client. Its CPU per connection is what any asyncio edge pays before
   proxyd does anything; once with the trust anchors looked up in the
   hashed CA directory per handshake (as proxyd does), once loaded in memory,
   and once served the other way a Python edge can: a thread per connection
   with the ssl module's blocking sockets (the handshake and the records in
   C, the GIL released), which trades the Python of asyncio's TLS for the
   kernel's thread switches, and the way proxyd's MyProxy edge serves since
   session 8 (proxyd.tlsstream: OpenSSL on the non-blocking socket, asyncio
   only asked when it would block) (docs/performance.md).
3. py-spy (if installed: `.venv/bin/pip install py-spy`; not a proxyd
   dependency) samples the live server; samples go in buckets by the
   innermost frame that says what the work is. Wall-clock shares of busy
   threads, not CPU: a thread waiting for the GIL or a lock counts where
   it waits.
4. cProfile, deterministic, in this process: the Repository calls the two
   edges make per request (the peer chain through the PeerCache, authorize +
   issue, audit), without TLS or the event loop, one request at a time. Its
   clock is this thread's CPU time. Its top entries by own time, minus
   signing, TLS and database, are the overheads left to remove.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import datetime as dt
import io
import linecache
import pstats
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from bench.common import (
    VENV_BIN,
    LoadResult,
    Operation,
    ProxydServer,
    bench_setup,
    free_port,
    heading,
    load_cert,
    load_key,
    machine_line,
    run_load,
    running,
    say,
    thread_switches,
    wait_for_port,
    write_keys,
)
from bench.issuance import Issue, delegate
from bench.myproxy_vs_real import ALICE, PROXYD, TRUSTED, Get, Info, Target
from proxyd.config import load_config
from proxyd.devpki import user_dn
from proxyd.issuer import VomsRequest
from proxyd.repository import Repository
from voms_ext import load_credential_file

DER = serialization.Encoding.DER

# Each sample is put in one bucket: the innermost Python frame that matches a rule decides,
# matched as "function (path:line) :: source line" so that a frame calling into native code
# (OpenSSL, SQLite, Rust) is recognised by what the line calls. Library frames that only say
# *how* (pyasn1, json, re, ...) are skipped so that the caller says *why*.
BUCKETS: list[tuple[str, re.Pattern[str]]] = [
    ("RSA key load + consistency check", re.compile(r"load_pem_private_key|load_der_private_key")),
    ("argon2 (passphrase unseal)", re.compile(r"argon2|hash_secret_raw")),
    ("signature checks (CSR, chains)", re.compile(r"is_signature_valid|verify_directly_issued_by")),
    ("RSA signing (proxy, AC)", re.compile(r"CertificateBuilder\.sign|\.sign\(")),
    ("TLS (handshake, records)", re.compile(r"/ssl\.py|/sslproto\.py")),
    ("database (SQLAlchemy, sqlite3)", re.compile(r"/sqlalchemy/|sqlite3")),
    ("audit: canonical JSON + hash", re.compile(r"/proxyd/audit\.py")),
    ("trust-store chain validation", re.compile(r"/voms_ext/(validate|trust)")),
    (
        "stored-chain PEM parsing",
        re.compile(r"parse_credential_pem|/voms_ext/files\.py|load_pem_x509"),
    ),
    ("VOMS AC building", re.compile(r"/voms_ext/ac\.py|/proxyd/issuer\.py")),
    ("proxy classify/build (voms_ext.proxy)", re.compile(r"/voms_ext/proxy\.py")),
    ("logging (JSON access log)", re.compile(r"/logging/|/proxyd/logs\.py")),
    ("DN names, patterns", re.compile(r"/voms_ext/names\.py|/proxyd/patterns\.py")),
    ("policy, principal", re.compile(r"/proxyd/policy\.py|/proxyd/principal\.py")),
    ("metrics (prometheus_client)", re.compile(r"/prometheus_client/|/proxyd/metrics\.py")),
    ("aiohttp (HTTP, JSON bodies)", re.compile(r"/aiohttp/|/multidict/|/yarl/")),
    ("MyProxy edge + codec", re.compile(r"/proxyd/myproxy/")),
    (
        "asyncio event loop, executor",
        re.compile(r"/asyncio/|/concurrent/|/threading\.py|/selectors\.py"),
    ),
]
LIBRARY = re.compile(
    r"/pyasn1|/json/|/re/|/enum\.py|/typing\.py|/functools\.py|/datetime\.py|/abc\.py"
)
IDLE = re.compile(
    r"^_worker \(.*concurrent/futures/thread\.py|select \(.*selectors\.py|wait \(.*threading\.py"
)
FRAME = re.compile(r"^(?P<func>.*) \((?P<path>.*):(?P<line>\d+)\)$")


def described(frame: str) -> str:
    m = FRAME.match(frame)
    if m is None:
        return frame
    text = linecache.getline(m["path"], int(m["line"])).strip()
    return f"{frame} :: {text}"


def classify_stack(frames: list[str]) -> str:
    """The bucket of the innermost Python frame that matches a rule; 'other Python' otherwise."""
    for frame in reversed(frames):
        if LIBRARY.search(frame):
            continue
        text = described(frame)
        for bucket, pattern in BUCKETS:
            if pattern.search(text):
                return bucket
    return "other Python"


@dataclasses.dataclass
class SpyProfile:
    buckets: Counter[str]
    leaf_lines: Counter[str]  # innermost frame with its source line, for detective work
    samples: int  # busy samples (threads waiting for work are left out)
    idle: int


def short(frame: str) -> str:
    return re.sub(r"\(/\S*/(site-packages|src|lib/python3\.\d+)/", "(", frame)


def read_raw(path: Path) -> SpyProfile:
    buckets: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = idle = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if FRAME.match(f)]
        if not frames or IDLE.search(frames[-1]):
            idle += count
            continue
        buckets[classify_stack(frames)] += count
        leaves[short(described(frames[-1]))[:150]] += count
        total += count
    return SpyProfile(buckets, leaves, total, idle)


def spy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    argv = [str(VENV_BIN / "py-spy"), "record", "--pid", str(pid), "--duration", str(int(seconds))]
    argv += ["--rate", "200", "--format", "raw", "--full-filenames", "--output", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def report_spy(title: str, prof: SpyProfile, result: LoadResult) -> None:
    heading(
        f"py-spy: {title}: {result.rate:.1f} ops/s, "
        f"server CPU {result.server_cpu_ms_per_op:.1f} ms/op ({result.server_cpu / result.duration * 100:.0f}% of a core)"
        if result.server_cpu is not None
        else f"py-spy: {title}"
    )
    say(
        f"  {prof.samples} busy-thread samples ({prof.idle} idle left out). Wall-clock shares: a"
        " thread waiting for the GIL or an SQLite lock counts where it waits."
    )
    for bucket, n in prof.buckets.most_common():
        say(f"  {bucket:<40}{n / prof.samples * 100:6.1f}%")
    say("  innermost Python lines (top 10):")
    for frame, n in prof.leaf_lines.most_common(10):
        say(f"    {n / prof.samples * 100:5.1f}%  {frame}")


# --- perf: CPU by component --------------------------------------------------------------------

# Shared objects, in order of the first match, and what their instructions are.
COMPONENTS: list[tuple[str, re.Pattern[str]]] = [
    ("TLS: system OpenSSL behind Python's ssl", re.compile(r"^lib(ssl|crypto)\.so")),
    ("cryptography (Rust + its OpenSSL): sign, verify, X.509", re.compile(r"_rust\.abi3\.so")),
    ("SQLite", re.compile(r"libsqlite3")),
    ("kernel: syscalls, loopback TCP, wake-ups, fsync", re.compile(r"\[kernel")),
    (
        "Python interpreter, libc, extension modules",
        re.compile(r"libpython|^libc[.-]|cpython-|^ld-linux|\[vdso\]|libm[.-]|libz|libffi"),
    ),
]


def have_perf() -> bool:
    if shutil.which("perf") is None:
        return False
    probe = subprocess.run(
        ["perf", "stat", "-e", "task-clock", "true"], capture_output=True, check=False
    )
    return probe.returncode == 0


def perf_record(pids: list[int], seconds: float, out: Path) -> subprocess.Popen[bytes]:
    argv = ["perf", "record", "-F", "999", "-o", str(out), "-p", ",".join(map(str, pids))]
    argv += ["--", "sleep", str(seconds)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def perf_shares(data: Path) -> Counter[str]:
    """Per cent of samples per component (from `perf report --sort dso`)."""
    report = subprocess.run(
        ["perf", "report", "-i", str(data), "--no-children", "--sort", "dso", "--stdio"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    shares: Counter[str] = Counter()
    for line in report.splitlines():
        m = re.match(r"^\s+([0-9.]+)%\s+(\S.*?)\s*$", line)
        if m is None:
            continue
        dso = m[2]
        component = next((c for c, pattern in COMPONENTS if pattern.search(dso)), "other")
        shares[component] += float(m[1])
    return shares


def report_perf(title: str, shares: Counter[str], result: LoadResult) -> None:
    per_op = result.server_cpu_ms_per_op
    heading(f"perf: {title}: {result.rate:.0f} ops/s, server CPU {per_op:.2f} ms/op")
    say(f"  {'component':<58}{'share':>7}{'ms/op':>8}")
    total = sum(shares.values()) or 1.0
    for component, share in shares.most_common():
        say(f"  {component:<58}{share / total * 100:6.1f}%{share / total * per_op:8.2f}")


# --- the floor: TLS + asyncio with nothing behind them ---------------------------------------------

FLOOR_SERVER = """
import asyncio, glob, socket, ssl, sys
from proxyd.config import load_config
from proxyd.myproxy import protocol as p
from proxyd.myproxy.server import myproxy_context

config, port, owner, anchors = load_config(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
REPLY = p.ok([("CRED_START_TIME", "1"), ("CRED_END_TIME", "2"), ("CRED_OWNER", owner)])

def context():
    ctx = myproxy_context(config)  # proxyd's: host credential, CApath, proxy certificates allowed
    if anchors == "memory":  # the same, with the anchors loaded once instead of looked up per handshake
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(config.server.host_cert, config.server.host_key)
        pems = "".join(open(f).read() for f in glob.glob(f"{config.server.cert_dir}/*.0"))
        ctx.load_verify_locations(cadata=pems)
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.verify_flags |= ssl.VERIFY_ALLOW_PROXY_CERTS
        ctx.num_tickets = 0
    return ctx

async def handle(reader, writer):
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    writer.write(b"\\x00")
    await writer.drain()
    data = b""
    while b"\\0" not in data[1:]:
        chunk = await reader.read(65536)
        if not chunk:
            break
        data += chunk
    writer.write(REPLY)
    await writer.drain()
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 2)
    except Exception:
        pass

async def main():
    await asyncio.start_server(handle, "127.0.0.1", port, ssl=context(), backlog=512)
    await asyncio.Event().wait()

def serve_threaded():
    from concurrent.futures import ThreadPoolExecutor
    ctx = context()
    def handle_blocking(conn):
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(15)
            try:
                tls = ctx.wrap_socket(conn, server_side=True)
                tls.sendall(b"\\x00")
                data = b""
                while b"\\0" not in data[1:]:
                    chunk = tls.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                tls.sendall(REPLY)
                tls.close()
            except OSError:
                pass
    threads = ThreadPoolExecutor(64)
    listener = socket.create_server(("127.0.0.1", port), backlog=512)
    while True:
        threads.submit(handle_blocking, listener.accept()[0])

async def handle_stream(ctx, conn):
    from proxyd.tlsstream import TlsStream  # the MyProxy edge's TLS connection
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        stream = await TlsStream.accept(conn, ctx, 15)
    except OSError:
        return
    try:
        stream.write(b"\\x00")
        await stream.drain()
        data = b""
        while b"\\0" not in data[1:]:
            chunk = await stream.read(65536)
            if not chunk:
                break
            data += chunk
        stream.write(REPLY)
        await stream.drain()
    except OSError:
        pass
    finally:
        stream.close()

async def serve_sockets():
    loop = asyncio.get_running_loop()
    ctx = context()
    listener = socket.create_server(("127.0.0.1", port), backlog=512)
    listener.setblocking(False)
    tasks = set()
    def accept():
        while True:
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                return
            task = loop.create_task(handle_stream(ctx, conn))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    loop.add_reader(listener.fileno(), accept)
    await asyncio.Event().wait()

if sys.argv[5] == "threads":
    serve_threaded()
elif sys.argv[5] == "sockets":
    asyncio.run(serve_sockets())
else:
    asyncio.run(main())
"""


def tls_floor(
    root: Path,
    config: Path,
    alice: Path,
    cert_dir: str,
    duration: float,
    anchors: str,
    edge: str = "asyncio",
) -> LoadResult:
    """CPU per connection of a bare TLS server that answers INFO with a canned reply: asyncio's
    TLS (`edge` "asyncio"), a thread per connection with blocking sockets ("threads"), or
    proxyd.tlsstream on the loop ("sockets", the MyProxy edge's way)."""
    script = root / "floor_server.py"
    script.write_text(FLOOR_SERVER)
    port = free_port()
    proc = subprocess.Popen(
        [str(VENV_BIN / "python"), str(script), str(config), str(port), ALICE, anchors, edge],
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, 30, alive=lambda: proc.poll() is None)
        target = Target("floor", port, cert_dir)
        return run_load(
            Info(target, str(alice), "alice"),
            label=f"floor ({anchors}, {edge})",
            concurrency=8,
            duration=duration,
            warmup=1.0,
            servers=[proc.pid],
        )
    finally:
        proc.kill()
        proc.wait()


# --- cProfile of the request path, in process -----------------------------------------------------

INFRA = re.compile(
    r"sqlalchemy|sqlite3|ssl\.py|\{method '(sign|do_handshake)'|built-in method _rust|"
    r"\{method 'execute'|\{method 'commit'"
)


def profile_in_process(
    config_path: Path, wms_chain: list[bytes], alice_chain: list[bytes], n: int
) -> None:
    """cProfile `n` cert-auth GETs, INFOs and VOMS issuances through the Repository, as the
    edges make them (the peer through the PeerCache), TLS and asyncio left out."""
    config = load_config(config_path)
    repo = Repository.open(config)
    key = load_key(Path(write_keys(config.server.state_dir / "profile-keys", 1)[0]))
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "proxy")]))
        .sign(key, hashes.SHA256())
    )
    csr_pem = csr.public_bytes(serialization.Encoding.PEM)
    dteam = [VomsRequest.parse("dteam")]

    def get() -> None:  # the MyProxy edge: trusted-retriever GET, CSR received as DER
        principal = repo.peers.principal(wms_chain, repo.trust, "::1")
        retrieval = repo.authorize_retrieval(principal, "alice", name="default")
        repo.complete_retrieval(retrieval, x509.load_der_x509_csr(csr.public_bytes(DER)))

    def info() -> None:  # the MyProxy edge: INFO by the owner
        principal = repo.peers.principal(alice_chain, repo.trust, "::1")
        repo.info(principal, "alice")

    def issue() -> None:  # the HTTPS route, after its middleware found the peer
        principal = repo.peers.principal(wms_chain, repo.trust, "::1")
        repo.retrieve(
            principal, user_dn("alice"), x509.load_pem_x509_csr(csr_pem), name="bench", voms=dteam
        )

    for title, fn in (
        ("cert-auth GET (MyProxy path)", get),
        ("INFO (MyProxy path)", info),
        ("HTTPS issuance + AC", issue),
    ):
        fn()  # warm the memos, as a running server has them
        cpu = _cpu_per_call(fn)
        prof = cProfile.Profile(time.thread_time)  # CPU time: other load must not inflate it
        prof.enable()
        for _ in range(n):
            fn()
        prof.disable()
        heading(f"cProfile: {title}: {cpu:.2f} ms CPU per request in process without the profiler")
        show_top(prof, n)
    repo.engine.dispose()


def _cpu_per_call(fn: Callable[[], None], budget: float = 0.5) -> float:
    """CPU ms per call, lowest of three rounds (other load only ever adds)."""
    best = float("inf")
    for _ in range(3):
        c0, count = time.process_time(), 0
        while count < 5 or time.process_time() - c0 < budget / 3:
            fn()
            count += 1
        best = min(best, (time.process_time() - c0) / count * 1000)
    return best


def show_top(prof: cProfile.Profile, n: int, limit: int = 15) -> None:
    stats = pstats.Stats(prof, stream=io.StringIO())
    rows = []
    for (file, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        name = f"{func} ({Path(file).name}:{line})" if file != "~" else func
        rows.append((tt, ct, nc, name))
    total = sum(r[0] for r in rows) or 1.0
    say(f"  {'own %':>6}{'cum %':>7}{'calls/req':>10}  function (profiled time; the profiler adds)")
    say("  top by own time, leaving out signing, TLS and database:")
    shown = 0
    for tt, ct, nc, name in sorted(rows, reverse=True):
        if INFRA.search(name):
            continue
        say(f"  {tt / total * 100:>6.1f}{ct / total * 100:>7.1f}{nc / n:>10.1f}  {name}")
        shown += 1
        if shown >= limit:
            break
    say("  cumulative share of selected proxyd/voms_ext functions and of the database layer:")
    wanted = re.compile(
        r"^(principal|validate_chain|classify|_open_key|unseal|_stored_chain|_lookup|_bans|_find|"
        r"_record|append_many|_commit|_append_in|_plan_acs|issue|issue_proxy|sign|decide|_decide|"
        r"authorize_retrieval|complete_retrieval|retrieve|info|check_public_key|canonical|"
        r"_execute_context|commit|connect) "
    )
    for tt, ct, nc, name in sorted(rows, key=lambda r: -r[1]):
        if wanted.search(name) and ct / total > 0.01:
            say(f"  {tt / total * 100:>6.1f}{ct / total * 100:>7.1f}{nc / n:>10.1f}  {name}")


# --- main ------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short sampling windows (< 3 minutes)")
    ap.add_argument("--duration", type=float, help="seconds sampled per workload")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args(argv)
    duration = args.duration or (6.0 if args.quick else 20.0)
    n_inproc = 100 if args.quick else 500
    spy_ok = (VENV_BIN / "py-spy").exists()
    perf_ok = have_perf()

    say(machine_line())
    root = Path(tempfile.mkdtemp(prefix="proxyd-bench-profile-"))
    try:
        pki, alice, wms, keys, mp_port, api_port, config = bench_setup(root)
        server = ProxydServer(config, workers=1, log=root / "proxyd.log", ports=(mp_port, api_port))
        target = Target(PROXYD, mp_port, str(pki.cert_dir))
        c = args.concurrency
        workloads: list[tuple[str, Callable[[], Operation]]] = [
            (f"cert-auth MyProxy GET, C={c}", lambda: Get(target, str(wms), "alice", "", keys)),
            (f"MyProxy INFO, C={c}", lambda: Info(target, str(alice), "alice")),
            (
                f"HTTPS issuance with a dteam AC, C={c}",
                lambda: Issue(api_port, str(pki.cert_dir), str(wms), keys),
            ),
        ]
        with running(server):
            cert, key = load_cert(pki.user("alice")[0]), load_key(pki.user("alice")[1])
            target.client(str(alice)).put("alice", "", (cert, key, []), trusted_retrievers=TRUSTED)
            delegate(pki, api_port, alice)
            if not perf_ok:
                say("perf is not usable here: skipping the CPU-by-component view")
            if not spy_ok:
                say("py-spy is not installed in the venv: skipping the sampled Python view")

            def load_while(
                profiler: subprocess.Popen[bytes], make: Callable[[], Operation], label: str
            ) -> tuple[LoadResult, bytes]:
                """The workload under `profiler`: its result, and the profiler's stderr."""
                result = run_load(
                    make(),
                    label=label,
                    concurrency=c,
                    duration=duration,
                    warmup=1.0,
                    servers=[server.pid],
                )
                _, err = profiler.communicate(timeout=120)
                return result, err

            for i, (title, make) in enumerate(workloads):
                label = title.split(",")[0][:24]
                if perf_ok:
                    out = root / f"perf{i}.data"
                    proc = perf_record([server.pid], duration + 1.5, out)
                    switches = thread_switches(server.pid)
                    result, err = load_while(proc, make, label)
                    switches = thread_switches(server.pid) - switches
                    say("  " + result.line())
                    if result.ops:
                        say(
                            f"  context switches of the server's threads: "
                            f"{switches / result.ops:.1f} per request (the 1 s warm-up's "
                            "switches included, its requests not: an upper bound)"
                        )
                    if proc.returncode != 0 or not out.exists():
                        say(f"  perf failed: {err.decode(errors='replace')[-300:]}")
                    else:
                        report_perf(title, perf_shares(out), result)
                if spy_ok:
                    out = root / f"spy{i}.txt"
                    proc = spy(server.pid, duration + 2, out)
                    result, err = load_while(proc, make, label)
                    if proc.returncode != 0 or not out.exists():
                        say(f"py-spy failed: {err.decode(errors='replace')[-300:]}")
                        continue
                    say("  " + result.line())
                    report_spy(title, read_raw(out), result)
        heading(
            "the floor: a bare asyncio TLS server (proxyd's MyProxy TLS context) answering INFO "
            f"with a canned reply, C={c}"
        )
        for anchors, edge in (
            ("capath", "asyncio"),
            ("memory", "asyncio"),
            ("capath", "threads"),
            ("capath", "sockets"),
        ):
            result = tls_floor(root, config, alice, str(pki.cert_dir), duration, anchors, edge)
            say("  " + result.line())
        say(
            "  (capath: trust anchors looked up in the hashed CA directory at every handshake, "
            "as proxyd's listeners do; memory: loaded once; threads: a thread per connection "
            "with blocking sockets instead of asyncio; sockets: proxyd.tlsstream, the MyProxy "
            "edge's, OpenSSL on the non-blocking socket)"
        )
        wms_cert = load_credential_file(pki.host("wms")[0]).certificate
        alice_cert = load_credential_file(pki.user("alice")[0]).certificate
        ca = load_cert(pki.ca_cert)
        wms_chain = [c.public_bytes(DER) for c in (wms_cert, ca)]
        alice_chain = [c.public_bytes(DER) for c in (alice_cert, ca)]
        profile_in_process(config, wms_chain, alice_chain, n_inproc)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    say(f"\nprofiled at {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}Z; {machine_line('at the end')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
