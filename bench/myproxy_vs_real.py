"""proxyd against the real myproxy-server, same PKI, same client, same run.

    .venv/bin/python -m bench.myproxy_vs_real [--quick]

Both servers run on loopback with equivalent configurations: the WMS host
is a trusted retriever, alice's credential is stored without a passphrase
for it (case a), a second one with a passphrase (case b). The client is
proxyd's MyProxyClient with pre-generated RSA-2048 keys (key generation is
never in the timed loop), run from one process per core. Every GET is
checked: the returned leaf must carry the key of our CSR and be signed by
the next certificate. Server CPU is read from /proc for the server and all
its children (myproxy-server forks per connection; proxyd has workers).

The last line printed is the headline: cert-auth GET at C=8.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from bench.common import (
    LOOPBACK,
    LoadResult,
    Operation,
    ProxydServer,
    RealMyProxyServer,
    bench_setup,
    free_port,
    heading,
    load_cert,
    load_key,
    machine_line,
    ratio,
    run_load,
    running,
    same_public_key,
    say,
)
from proxyd.config import SealingConfig, load_config
from proxyd.devpki import WMS_HOST, DevPKI, user_dn
from proxyd.myproxy.client import ClientCredential, MyProxyClient
from proxyd.sealing import dummy_unseal_cost

PASSPHRASE = "bench-passphrase-1"  # noqa: S105 - a benchmark fixture
TRUSTED = f"*/CN={WMS_HOST}"
ALICE = user_dn("alice")
GET_LIFETIME = 3600
PROXYD = "proxyd"
REAL = "myproxy-server"


# --- what the load processes run ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    port: int
    cert_dir: str

    def client(self, credential: str | None) -> MyProxyClient:
        return MyProxyClient(
            LOOPBACK,
            self.port,
            cert_dir=self.cert_dir,
            credential=ClientCredential(credential) if credential else None,
        )


class CheckFailed(Exception):
    """A reply that arrived but is wrong: counted as an error, never as a success."""


def check_chain(chain: Sequence[x509.Certificate], key: PrivateKeyTypes) -> None:
    """The new proxy certifies our key and is signed by the next certificate of the chain."""
    if len(chain) < 2:
        raise CheckFailed(f"chain of {len(chain)} certificates")
    if not same_public_key(chain[0], key):
        raise CheckFailed("the issued proxy is not for our key")
    chain[0].verify_directly_issued_by(chain[1])


@dataclasses.dataclass(frozen=True)
class Get:
    """GET by certificate (trusted retriever, empty passphrase) or by passphrase."""

    target: Target
    credential: str | None
    username: str
    passphrase: str
    keys: tuple[str, ...]

    def setup(self, slot: int) -> Callable[[], None]:
        client = self.target.client(self.credential)
        key = load_key(Path(self.keys[slot % len(self.keys)]))

        def run() -> None:
            chain = client.get(self.username, self.passphrase, key=key, lifetime=GET_LIFETIME)
            check_chain(chain, key)

        return run


@dataclasses.dataclass(frozen=True)
class Put:
    """Delegation: the server makes a key and a CSR, the client signs it with alice's cert."""

    target: Target
    credential: str
    cert: str
    key: str

    def setup(self, slot: int) -> Callable[[], None]:
        client = self.target.client(self.credential)
        issuer: tuple[x509.Certificate, rsa.RSAPrivateKey, list[x509.Certificate]] = (
            load_cert(Path(self.cert)),
            load_key(Path(self.key)),
            [],
        )
        username = f"bench-put-{slot}"

        def run() -> None:
            client.put(username, "", issuer, trusted_retrievers=TRUSTED, lifetime=43200)

        return run


@dataclasses.dataclass(frozen=True)
class Info:
    target: Target
    credential: str
    username: str

    def setup(self, slot: int) -> Callable[[], None]:
        client = self.target.client(self.credential)

        def run() -> None:
            owner = client.info(self.username).get("CRED_OWNER")
            if owner != ALICE:
                raise CheckFailed(f"CRED_OWNER={owner!r}")

        return run


@dataclasses.dataclass(frozen=True)
class Logon:
    """The real `myproxy-logon -n` as the WMS host: one process per request, own key pair."""

    target: Target
    env: tuple[tuple[str, str], ...]
    username: str
    out_dir: str

    def setup(self, slot: int) -> Callable[[], None]:
        out = Path(self.out_dir) / f"{self.target.name}-{slot}.pem"
        argv = [
            "myproxy-logon",
            "-s",
            "localhost",
            "-p",
            str(self.target.port),
            "-l",
            self.username,
            "-n",
            "-q",
            "-t",
            "1",
            "-o",
            str(out),
        ]
        env = dict(self.env)

        def run() -> None:
            out.unlink(missing_ok=True)
            done = subprocess.run(argv, env=env, capture_output=True, timeout=60, check=False)
            if done.returncode != 0:
                raise CheckFailed(done.stderr.decode(errors="replace").strip()[-120:])
            data = out.read_bytes()
            certs = x509.load_pem_x509_certificates(data)
            key = serialization.load_pem_private_key(
                data, password=None, unsafe_skip_rsa_key_validation=True
            )
            check_chain(certs, key)

        return run


# --- set-up --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Bench:
    root: Path
    pki: DevPKI
    alice: Path
    wms: Path
    keys: tuple[str, ...]
    proxyd: ProxydServer
    real: RealMyProxyServer
    targets: dict[str, Target]

    def server_pid(self, name: str) -> int:
        return self.proxyd.pid if name == PROXYD else self.real.pid


def real_server_config(pki: DevPKI) -> str:
    """myproxy-server.config equivalent to the dev proxyd.toml's policy."""
    return "\n".join(
        [
            'accepted_credentials "*"',
            'authorized_retrievers "*"',
            'default_retrievers "*"',
            'authorized_renewers "*"',
            'default_renewers "none"',
            f'trusted_retrievers "{TRUSTED}"',
            'default_trusted_retrievers "none"',
            "max_proxy_lifetime 12",
            f"cert_dir {pki.cert_dir}",
            "",
        ]
    )


def prepare(root: Path, workers: int, nkeys: int) -> Bench:
    pki, alice, wms, keys, mp_port, api_port, config = bench_setup(root, nkeys)
    real_port = free_port()
    proxyd = ProxydServer(
        config,
        workers=workers,
        log=root / "proxyd.log",
        ports=(mp_port, api_port),
    )
    host_cert, host_key = pki.host("host")
    real = RealMyProxyServer(
        root / "myproxy-server",
        port=real_port,
        config=real_server_config(pki),
        env={
            "X509_CERT_DIR": str(pki.cert_dir),
            "X509_USER_CERT": str(host_cert),
            "X509_USER_KEY": str(host_key),
        },
    )
    targets = {
        PROXYD: Target(PROXYD, mp_port, str(pki.cert_dir)),
        REAL: Target(REAL, real_port, str(pki.cert_dir)),
    }
    return Bench(root, pki, alice, wms, keys, proxyd, real, targets)


def seed(bench: Bench) -> None:
    """Store the same credentials on both servers with the same client, and check them once."""
    cert, key = load_cert(bench.pki.user("alice")[0]), load_key(bench.pki.user("alice")[1])
    probe = load_key(Path(bench.keys[0]))
    for target in bench.targets.values():
        owner = target.client(str(bench.alice))
        owner.put("alice", "", (cert, key, []), trusted_retrievers=TRUSTED, lifetime=43200)
        owner.put("alice-pp", PASSPHRASE, (cert, key, []), lifetime=43200)
        check_chain(target.client(str(bench.wms)).get("alice", "", key=probe), probe)
        check_chain(target.client(None).get("alice-pp", PASSPHRASE, key=probe), probe)


def argon2_cost_ms(config_path: Path) -> tuple[SealingConfig, float]:
    sealing = load_config(config_path).sealing
    costs = {
        "time_cost": sealing.argon2_time_cost,
        "memory_kib": sealing.argon2_memory_kib,
        "parallelism": sealing.argon2_parallelism,
    }
    dummy_unseal_cost(**costs)
    t0 = time.process_time()
    for _ in range(3):
        dummy_unseal_cost(**costs)
    return sealing, (time.process_time() - t0) / 3 * 1000


# (--cases key, title, operation for a target, C values, window s, warm-up s)
Case = tuple[str, str, Callable[[Target], Operation], list[int], float, float]


# --- cases ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Pair:
    case: str
    concurrency: int
    proxyd: LoadResult
    real: LoadResult

    @property
    def rate_ratio(self) -> float:
        return ratio(self.proxyd.rate, self.real.rate)

    @property
    def cpu_ratio(self) -> float:
        """proxyd CPU per op as a fraction of myproxy-server's (target for GET: <= 1/8)."""
        return ratio(self.proxyd.server_cpu_ms_per_op, self.real.server_cpu_ms_per_op)

    def line(self) -> str:
        return (
            f"  -> {self.case} C={self.concurrency}: proxyd {self.proxyd.rate:.1f}/s, "
            f"{REAL} {self.real.rate:.1f}/s, ratio={self.rate_ratio:.2f}; "
            f"p99 {self.proxyd.p(99):.0f} vs {self.real.p(99):.0f} ms; "
            f"CPU/op {self.proxyd.server_cpu_ms_per_op:.1f} vs "
            f"{self.real.server_cpu_ms_per_op:.1f} ms (proxyd/real={self.cpu_ratio:.2f})"
        )


def measure(
    bench: Bench,
    case: str,
    concurrency: int,
    make: Callable[[Target], Operation],
    duration: float,
    warmup: float,
    *,
    proxyd_first: bool,
) -> Pair:
    results: dict[str, LoadResult] = {}
    for name in (PROXYD, REAL) if proxyd_first else (REAL, PROXYD):
        r = run_load(
            make(bench.targets[name]),
            label=f"{case} {name}",
            concurrency=concurrency,
            duration=duration,
            warmup=warmup,
            servers=[bench.server_pid(name)],
        )
        say("  " + r.line())
        for line in r.error_lines():
            say(line)
        results[name] = r
    pair = Pair(case, concurrency, results[PROXYD], results[REAL])
    say(pair.line())
    return pair


def summary(pairs: list[Pair]) -> None:
    heading("summary (ratio = proxyd / myproxy-server; CPU/op from /proc, server + children)")
    say(
        f"{'case':<22}{'C':>4}{'proxyd/s':>10}{'real/s':>9}{'ratio':>7}"
        f"{'p50 ms (pd|real)':>19}{'p99 ms (pd|real)':>19}{'CPU ms/op (pd|real)':>22}"
        f"{'errors':>9}"
    )
    for p in pairs:
        say(
            f"{p.case:<22}{p.concurrency:>4}{p.proxyd.rate:>10.1f}{p.real.rate:>9.1f}"
            f"{p.rate_ratio:>7.2f}"
            f"{f'{p.proxyd.p(50):.0f} | {p.real.p(50):.0f}':>19}"
            f"{f'{p.proxyd.p(99):.0f} | {p.real.p(99):.0f}':>19}"
            f"{f'{p.proxyd.server_cpu_ms_per_op:.1f} | {p.real.server_cpu_ms_per_op:.1f}':>22}"
            f"{f'{p.proxyd.error_count}|{p.real.error_count}':>9}"
        )


def targets_report(pairs: list[Pair]) -> None:
    heading("targets")
    by = {(p.case, p.concurrency): p for p in pairs}

    def verdict(ok: bool) -> str:
        return "MET" if ok else "MISSED"

    for c in (8, 32):
        p = by.get(("cert-auth GET", c))
        if p is None:
            continue
        say(
            f"cert-auth GET C={c}: ops ratio {p.rate_ratio:.2f} (target >= 5) "
            f"{verdict(p.rate_ratio >= 5)}; p99 {p.proxyd.p(99):.0f} vs {p.real.p(99):.0f} ms "
            f"{verdict(p.proxyd.p(99) <= p.real.p(99))}; CPU/GET {p.cpu_ratio:.3f} of real "
            f"(target <= 0.125) {verdict(p.cpu_ratio <= 0.125)}"
        )
    for p in pairs:
        if p.case == "PUT":
            say(
                f"PUT C={p.concurrency}: ops ratio {p.rate_ratio:.2f} (target >= 5) "
                f"{verdict(p.rate_ratio >= 5 and not p.proxyd.error_count)}; "
                f"errors proxyd {p.proxyd.error_count}, {REAL} {p.real.error_count}"
            )
    for p in pairs:
        if p.case == "INFO":
            say(
                f"INFO C={p.concurrency}: ops ratio {p.rate_ratio:.2f} (target >= 3) "
                f"{verdict(p.rate_ratio >= 3)}"
            )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short windows (whole run < 5 minutes)")
    ap.add_argument("--duration", type=float, help="seconds measured per point")
    ap.add_argument("--concurrency", default="1,8,32", help="comma-separated C values")
    ap.add_argument("--workers", type=int, default=2, help="proxyd serve --workers")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument(
        "--cases",
        default="cert,pass,put,info,logon",
        help="any of cert,pass,put,info,logon (comma-separated)",
    )
    args = ap.parse_args(argv)
    duration = args.duration or (4.0 if args.quick else 20.0)
    # Cases at a few ops/s (argon2, RSA key generation, real clients) get longer windows.
    slow_duration = args.duration or (6.0 if args.quick else 30.0)
    warmup = 1.0 if args.quick else 3.0
    slow_warmup = 3.0 if args.quick else 5.0  # at least a request's latency, to be in steady state
    levels = [int(c) for c in args.concurrency.split(",")]
    cases = set(args.cases.split(","))
    began = time.monotonic()

    say(machine_line())
    say(
        f"run: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}Z, {duration:.0f} s per point "
        f"after {warmup:.0f} s warm-up ({slow_duration:.0f} s after {slow_warmup:.0f} s for "
        f"passphrase GET, PUT, myproxy-logon), proxyd --workers {args.workers}, C = {levels}"
    )
    root = Path(tempfile.mkdtemp(prefix="proxyd-bench-"))
    pairs: list[Pair] = []
    try:
        bench = prepare(root, args.workers, nkeys=8)
        with running(bench.proxyd, bench.real):
            seed(bench)
            sealing, argon_ms = argon2_cost_ms(bench.proxyd.config)
            say(
                f"proxyd sealing: argon2id t={sealing.argon2_time_cost} "
                f"m={sealing.argon2_memory_kib} KiB p={sealing.argon2_parallelism} "
                f"= {argon_ms:.0f} ms CPU per passphrase unseal (myproxy-server: OpenSSL PEM "
                f"encryption, negligible)"
            )
            alice_cert, alice_key = (str(p) for p in bench.pki.user("alice"))
            keys = bench.keys
            plan: list[Case] = [
                (
                    "cert",
                    "cert-auth GET",
                    lambda t: Get(t, str(bench.wms), "alice", "", keys),
                    levels,
                    duration,
                    warmup,
                ),
                (
                    "pass",
                    "passphrase GET",
                    lambda t: Get(t, None, "alice-pp", PASSPHRASE, keys),
                    levels,
                    slow_duration,
                    slow_warmup,
                ),
                (
                    "put",
                    "PUT",
                    lambda t: Put(t, str(bench.alice), alice_cert, alice_key),
                    levels,
                    slow_duration,
                    slow_warmup,
                ),
                (
                    "info",
                    "INFO",
                    lambda t: Info(t, str(bench.alice), "alice"),
                    [c for c in levels if c > 1] or levels,
                    duration,
                    warmup,
                ),
            ]
            for key, case, make, case_levels, seconds, warm in plan:
                if key not in cases:
                    continue
                heading(case)
                for c in case_levels:
                    # Alternate who goes first, so drift in the machine's other load does not
                    # always favour the same server.
                    pairs.append(
                        measure(
                            bench, case, c, make, seconds, warm, proxyd_first=len(pairs) % 2 == 0
                        )
                    )
            if "logon" in cases:
                heading("cert-auth GET with the real myproxy-logon -n (8 parallel processes)")
                out = root / "logon"
                out.mkdir()
                env = (
                    ("X509_CERT_DIR", str(bench.pki.cert_dir)),
                    ("X509_USER_CERT", str(bench.pki.host("wms")[0])),
                    ("X509_USER_KEY", str(bench.pki.host("wms")[1])),
                    ("HOME", str(root)),
                    ("PATH", "/usr/bin:/bin"),
                )
                pairs.append(
                    measure(
                        bench,
                        "myproxy-logon GET",
                        8,
                        lambda t: Logon(t, env, "alice", str(out)),
                        slow_duration,
                        slow_warmup,
                        proxyd_first=len(pairs) % 2 == 0,
                    )
                )
        summary(pairs)
        targets_report(pairs)
        say(f"\n(total {time.monotonic() - began:.0f} s; {machine_line('at the end')})")
        if args.keep:
            say(f"(kept {root}; proxyd log: {bench.proxyd.log})")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    head = next((p for p in pairs if p.case == "cert-auth GET" and p.concurrency == 8), None)
    if head is not None:
        say(
            f"cert-auth GET C=8: proxyd {head.proxyd.rate:.0f}/s, "
            f"myproxy-server {head.real.rate:.0f}/s, ratio={head.rate_ratio:.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
