"""Where proxyd's CPU goes on its two hot paths: cert-auth MyProxy GET and HTTPS issuance.

    .venv/bin/python -m bench.profile_hot_paths [--quick]

Two views, because each alone misleads:

1. py-spy samples the real server (`proxyd serve --workers 1`, so one
   process holds all the work) under load at C=8, next to the server CPU
   per request that /proc reports for the same window. Samples are put in
   buckets by the innermost frame that says what the work is (RSA signing,
   RSA key loading, TLS, database, ...); time inside OpenSSL, SQLite or
   Rust is attributed through the Python line that called it. These are
   wall-clock shares of busy threads, not CPU: a thread blocked on the GIL
   or on the SQLite write lock is counted where it waits.
   py-spy is a profiling tool, not a proxyd dependency:
   `.venv/bin/pip install py-spy`; without it this view is skipped.
2. cProfile, deterministic, in this process: the same Repository calls the
   MyProxy edge and the HTTPS route make per request (chain validation,
   authorize + issue, audit), without TLS or the event loop, on the same
   database, one request at a time (so no lock waits). Its clock is this
   thread's CPU time, so other load on the machine does not inflate it.
   Its top entries by own time, minus signing, TLS and database, are the
   overheads worth removing.
"""

from __future__ import annotations

import argparse
import contextlib
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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from sqlalchemy import event

from bench.common import (
    VENV_BIN,
    LoadResult,
    Operation,
    ProxydServer,
    free_port,
    heading,
    load_cert,
    load_key,
    machine_line,
    run_load,
    running,
    say,
    write_credential_file,
    write_keys,
    write_proxyd_config,
)
from bench.issuance import Issue, delegate
from bench.myproxy_vs_real import PROXYD, TRUSTED, Get, Target
from proxyd.config import load_config
from proxyd.devpki import generate, user_dn
from proxyd.issuer import VomsRequest
from proxyd.principal import classify as classify_principal
from proxyd.repository import Repository
from voms_ext import load_credential_file, validate_chain

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


# --- cProfile of the request path, in process -----------------------------------------------------

INFRA = re.compile(
    r"sqlalchemy|sqlite3|ssl\.py|\{method '(sign|do_handshake)'|built-in method _rust|"
    r"\{method 'execute'|\{method 'commit'"
)


def profile_in_process(config_path: Path, wms_chain: list[x509.Certificate], n: int) -> None:
    """cProfile `n` cert-auth GETs and `n` VOMS issuances through the Repository, as the edges
    make them (the peer chain validated per request), TLS and asyncio left out."""
    config = load_config(config_path)
    repo = Repository.open(config)
    key = load_key(Path(write_keys(config.server.state_dir / "profile-keys", 1)[0]))
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "proxy")]))
        .sign(key, hashes.SHA256())
    )
    dteam = [VomsRequest.parse("dteam")]

    def get(lookup_twice: bool = True) -> None:  # the MyProxy edge, trusted-retriever GET
        principal = classify_principal(validate_chain(wms_chain, repo.trust), config.policy, "::1")
        if lookup_twice:
            repo.has_passphrase("alice", "default")  # Session._needs_challenge
        retrieval = repo.authorize_retrieval(principal, "alice", name="default")
        repo.complete_retrieval(retrieval, csr)

    def issue() -> None:  # what the HTTPS route does, after its middleware validated the peer
        principal = classify_principal(validate_chain(wms_chain, repo.trust), config.policy, "::1")
        repo.retrieve(principal, user_dn("alice"), csr, name="bench", voms=dteam)

    for title, fn in (("cert-auth GET (MyProxy path)", get), ("HTTPS issuance + AC", issue)):
        fn()  # warm caches, as a running server would be
        prof = cProfile.Profile(time.thread_time)  # CPU time: other load must not inflate it
        t0 = time.process_time()
        prof.enable()
        for _ in range(n):
            fn()
        prof.disable()
        per_op = (time.process_time() - t0) / n * 1000
        heading(f"cProfile: {title}: {per_op:.1f} ms CPU per request in process (n={n})")
        show_top(prof, n)
    what_ifs(repo, get, issue, n)
    repo.engine.dispose()


def _timed(fn: Callable[[], None], budget: float = 1.0) -> tuple[float, float]:
    """(CPU ms, wall ms) per call, calling `fn` for about `budget` seconds of CPU."""
    fn()
    c0, w0 = time.process_time(), time.perf_counter()
    n = 0
    while n < 5 or time.process_time() - c0 < budget:
        fn()
        n += 1
    return (time.process_time() - c0) / n * 1000, (time.perf_counter() - w0) / n * 1000


WHAT_IFS = [
    "as shipped",
    "+ stored key loaded without re-running the RSA consistency check",
    "+ bans cached (no query per request)",
    "+ GET looks the credential up once (no separate has_passphrase query)",
    "+ SQLite synchronous=NORMAL (WAL; commits no longer fsync)",
]


def what_ifs(repo: Repository, get: Callable[..., None], issue: Callable[[], None], n: int) -> None:
    """The request paths again with cumulative changes applied by patching, in this process only
    (src/ is untouched): what each suggested change would save. Three interleaved rounds; the
    lowest of each is shown, since other load on the machine only ever adds time."""
    original_load = serialization.load_pem_private_key
    bans = repo._bans()

    def load_trusted(data: bytes, password: bytes | None = None, **kw: object) -> object:
        return original_load(data, password, unsafe_skip_rsa_key_validation=True)

    @contextlib.contextmanager
    def applied(level: int) -> Iterator[Callable[[], None]]:
        with contextlib.ExitStack() as stack:
            if level >= 1:
                serialization.load_pem_private_key = load_trusted  # type: ignore[assignment]
                stack.callback(setattr, serialization, "load_pem_private_key", original_load)
            if level >= 2:
                repo._bans = lambda: bans  # type: ignore[method-assign]
                stack.callback(delattr, repo, "_bans")
            if level >= 4:
                event.listen(repo.engine, "connect", _synchronous_normal)
                stack.callback(repo.engine.dispose)
                stack.callback(event.remove, repo.engine, "connect", _synchronous_normal)
                repo.engine.dispose()
            yield lambda: get(level < 3)

    best: dict[tuple[int, str], tuple[float, float]] = {}
    for _ in range(3):
        for level in range(len(WHAT_IFS)):
            with applied(level) as get_variant:
                for path, fn in (("get", get_variant), ("issue", issue)):
                    t = _timed(fn, budget=0.5 if level else 0.3)
                    old = best.get((level, path))
                    best[(level, path)] = (
                        t if old is None else (min(old[0], t[0]), min(old[1], t[1]))
                    )
    heading("what-if (in process, one request at a time; each line adds to the one above)")
    say(f"  {'ms per request':<72}{'GET CPU':>9}{'GET wall':>9}{'issue CPU':>10}{'issue wall':>11}")
    for level, label in enumerate(WHAT_IFS):
        g, i = best[(level, "get")], best[(level, "issue")]
        say(f"  {label:<72}{g[0]:>9.2f}{g[1]:>9.2f}{i[0]:>10.2f}{i[1]:>11.2f}")


def _synchronous_normal(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


def show_top(prof: cProfile.Profile, n: int, limit: int = 18) -> None:
    stats = pstats.Stats(prof, stream=io.StringIO())
    rows = []
    for (file, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        name = f"{func} ({Path(file).name}:{line})" if file != "~" else func
        rows.append((tt, ct, nc, name))
    say(f"  {'own ms/req':>10}{'cum ms/req':>11}{'calls/req':>10}  function")
    say("  top by own time, all:")
    for tt, ct, nc, name in sorted(rows, reverse=True)[:8]:
        say(f"  {tt / n * 1000:>10.2f}{ct / n * 1000:>11.2f}{nc / n:>10.1f}  {name}")
    say("  top by own time, leaving out signing, TLS and database:")
    shown = 0
    for tt, ct, nc, name in sorted(rows, reverse=True):
        if INFRA.search(name):
            continue
        say(f"  {tt / n * 1000:>10.2f}{ct / n * 1000:>11.2f}{nc / n:>10.1f}  {name}")
        shown += 1
        if shown >= limit:
            break
    say("  cumulative time of selected proxyd/voms_ext functions:")
    wanted = re.compile(
        r"^(validate_chain|classify|_open_key|unseal|load_pem_private_key|parse_credential_pem|"
        r"_record|append|_bans|_find|_plan_acs|issue|issue_proxy|decide|_decide|authorize_retrieval|"
        r"complete_retrieval|retrieve|check_public_key|has_passphrase|canonical|_dumps) "
    )
    for tt, ct, nc, name in sorted(rows, key=lambda r: -r[1]):
        if wanted.search(name) and ("proxyd" in name or "voms_ext" in name or ".py" in name):
            say(f"  {tt / n * 1000:>10.2f}{ct / n * 1000:>11.2f}{nc / n:>10.1f}  {name}")


# --- main ------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short sampling windows (< 2 minutes)")
    ap.add_argument("--duration", type=float, help="seconds sampled per workload")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args(argv)
    duration = args.duration or (8.0 if args.quick else 30.0)
    n_inproc = 40 if args.quick else 200
    have_spy = (VENV_BIN / "py-spy").exists()

    say(machine_line())
    root = Path(tempfile.mkdtemp(prefix="proxyd-bench-profile-"))
    try:
        pki = generate(root / "pki")
        creds = root / "creds"
        creds.mkdir()
        alice = write_credential_file(*pki.user("alice"), creds / "alice.pem")
        wms = write_credential_file(*pki.host("wms"), creds / "wms.pem")
        keys = tuple(str(p) for p in write_keys(root / "keys", 8))
        mp_port, api_port = free_port(), free_port()
        config = write_proxyd_config(pki, mp_port, api_port)
        server = ProxydServer(config, workers=1, log=root / "proxyd.log", ports=(mp_port, api_port))
        target = Target(PROXYD, mp_port, str(pki.cert_dir))
        workloads: list[tuple[str, Callable[[], Operation]]] = [
            (
                f"cert-auth MyProxy GET, C={args.concurrency}",
                lambda: Get(target, str(wms), "alice", "", keys),
            ),
            (
                f"HTTPS issuance with a dteam AC, C={args.concurrency}",
                lambda: Issue(api_port, str(pki.cert_dir), str(wms), keys),
            ),
        ]
        with running(server):
            cert, key = load_cert(pki.user("alice")[0]), load_key(pki.user("alice")[1])
            target.client(str(alice)).put("alice", "", (cert, key, []), trusted_retrievers=TRUSTED)
            delegate(pki, api_port, alice)
            if not have_spy:
                say("py-spy is not installed in the venv: skipping the sampled view")
            for i, (title, make) in enumerate(workloads):
                if not have_spy:
                    break
                out = root / f"spy{i}.txt"
                proc = spy(server.pid, duration + 2, out)
                result = run_load(
                    make(),
                    label=title.split(",")[0][:16],
                    concurrency=args.concurrency,
                    duration=duration,
                    warmup=1.0,
                    servers=[server.pid],
                )
                _, err = proc.communicate(timeout=60)
                if proc.returncode != 0 or not out.exists():
                    say(f"py-spy failed: {err.decode(errors='replace')[-300:]}")
                    continue
                say("  " + result.line())
                report_spy(title, read_raw(out), result)
        wms_chain = [load_credential_file(pki.host("wms")[0]).certificate, load_cert(pki.ca_cert)]
        profile_in_process(config, wms_chain, n_inproc)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    say(f"\nprofiled at {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}Z; {machine_line('at the end')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
