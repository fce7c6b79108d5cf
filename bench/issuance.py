"""HTTPS proxy issuance against this machine's RSA-2048 signing limit.

    .venv/bin/python -m bench.issuance [--quick]

The WMS host asks `POST /v1/credentials/{name}/proxy?username=...` for a
limited proxy of alice's stored credential with a dteam VOMS AC, over
keep-alive HTTPS connections (one per client thread), at several
concurrencies, with `proxyd serve --workers 1` and `--workers 2`. Alice's
credential is stored beforehand through the API delegation flow. Every
reply is checked: HTTP 200, the leaf carries our CSR's key, is signed by
the stored proxy, is limited and carries the VOMS AC extension.

In the same run, one process per core signs with RSA-2048 (PKCS#1 v1.5,
SHA-256) through `cryptography` for a fixed time: that total rate is the
signing limit. In steady state an issuance needs one such signature, the
proxy's: proxyd caches the AC per (holder, FQANs) and reuses it while it
covers the proxy (see AttributeAuthority.issue), so the AA signs about
once an hour per user. Issuance / signing limit could approach 1.0 if
everything else were free. The machine is shared, so the ratio is also
given by CPU cost (CPU per signature / server CPU per issuance, both from
the same run), which other load barely moves.

The last line printed is the headline: the best --workers 2 point.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import http.client
import json
import multiprocessing
import os
import shutil
import ssl
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from bench.common import (
    LOOPBACK,
    LoadResult,
    ProxydServer,
    bench_setup,
    heading,
    load_cert,
    load_key,
    machine_line,
    run_load,
    running,
    same_public_key,
    say,
)
from proxyd.devpki import WMS_HOST, DevPKI, user_dn
from voms_ext import ProxyBuilder, classify

CRED_NAME = "bench"
ALICE = user_dn("alice")
OID_VOMS_ACS = x509.ObjectIdentifier("1.3.6.1.4.1.8005.100.100.5")
# The proxy, signed with alice's key. The AC (AA key) is cached by proxyd and signed ~hourly.
SIGNATURES_PER_ISSUANCE = 1


class CheckFailed(Exception):
    """A reply that arrived but is wrong: counted as an error, never as a success."""


# --- HTTPS client ---------------------------------------------------------------------------------


def client_context(cert_dir: str, credential: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(capath=cert_dir)
    ctx.verify_flags |= ssl.VERIFY_ALLOW_PROXY_CERTS
    ctx.load_cert_chain(credential)
    return ctx


class Api:
    """One keep-alive HTTPS connection with a grid client certificate."""

    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        self.port = port
        self.ctx = ctx
        self.conn: http.client.HTTPSConnection | None = None

    def call(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, Any]:
        if self.conn is None:
            self.conn = http.client.HTTPSConnection(
                LOOPBACK, self.port, context=self.ctx, timeout=60
            )
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            self.conn.request(method, path, body=data, headers=headers)
            resp = self.conn.getresponse()
            payload = resp.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = None  # the next call reconnects; this one counts as an error
            raise
        if resp.will_close:
            self.conn.close()
            self.conn = None
        return resp.status, json.loads(payload) if payload else None


# --- what the load processes run ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Issue:
    port: int
    cert_dir: str
    credential: str  # the WMS host's cert + key
    keys: tuple[str, ...]
    voms: tuple[str, ...] = ("dteam",)

    def setup(self, slot: int) -> Callable[[], None]:
        api = Api(self.port, client_context(self.cert_dir, self.credential))
        key = load_key(Path(self.keys[slot % len(self.keys)]))
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "proxy")]))
            .sign(key, hashes.SHA256())
        )
        body = {
            "csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
            "voms": list(self.voms),
            "lifetime": 3600,
        }
        path = f"/v1/credentials/{CRED_NAME}/proxy?username={urllib.parse.quote(ALICE, safe='')}"

        def run() -> None:
            status, doc = api.call("POST", path, body)
            if status != 200:
                raise CheckFailed(f"HTTP {status}: {(doc or {}).get('detail', '')}"[:120])
            chain = x509.load_pem_x509_certificates(doc["chain"].encode())
            leaf = chain[0]
            if not same_public_key(leaf, key):
                raise CheckFailed("the issued proxy is not for our key")
            leaf.verify_directly_issued_by(chain[1])
            if not classify(leaf).type.is_limited or doc.get("limited") is not True:
                raise CheckFailed("the proxy is not limited")
            if self.voms:
                leaf.extensions.get_extension_for_oid(OID_VOMS_ACS)

        return run


# --- the signing limit ----------------------------------------------------------------------------


def _sign_for(seconds: float, pem: bytes, out: Any) -> None:
    key = serialization.load_pem_private_key(pem, None, unsafe_skip_rsa_key_validation=True)
    assert isinstance(key, rsa.RSAPrivateKey)
    data = os.urandom(256)
    n = 0
    cpu0 = time.process_time()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        n += 1
    out.put((n, time.process_time() - cpu0))


@dataclasses.dataclass(frozen=True)
class SigningRate:
    wall: float  # signatures per second, all cores, as measured (other load included)
    per_cpu_second: float  # signatures per CPU second of one core: what a free core does

    @property
    def cpu_ms(self) -> float:
        return 1000 / self.per_cpu_second

    @property
    def all_cores_if_idle(self) -> float:
        return self.per_cpu_second * (os.cpu_count() or 1)


def signing_limit(key_path: Path, seconds: float) -> SigningRate:
    """RSA-2048 signatures per second on all cores (one process per core)."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    pem = key_path.read_bytes()
    procs = [
        ctx.Process(target=_sign_for, args=(seconds, pem, out)) for _ in range(os.cpu_count() or 1)
    ]
    for p in procs:
        p.start()
    counts = [out.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join()
    n = sum(int(c[0]) for c in counts)
    cpu = sum(float(c[1]) for c in counts)
    return SigningRate(n / seconds, n / cpu)


# --- set-up ---------------------------------------------------------------------------------------


def delegate(pki: DevPKI, port: int, alice: Path) -> None:
    """Alice stores a credential for the WMS host through the API's two-step delegation."""
    api = Api(port, client_context(str(pki.cert_dir), str(alice)))
    status, doc = api.call(
        "POST",
        "/v1/delegations",
        {"name": CRED_NAME, "trusted_retrievers": [f"*/CN={WMS_HOST}"], "lifetime": 43200},
    )
    if status != 201:
        raise RuntimeError(f"delegation step 1: HTTP {status} {doc}")
    cert, key = load_cert(pki.user("alice")[0]), load_key(pki.user("alice")[1])
    csr = x509.load_pem_x509_csr(doc["csr"].encode())
    proxy = ProxyBuilder(cert, []).from_csr(csr).lifetime(dt.timedelta(days=2)).sign(key)
    chain = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in (proxy, cert))
    status, doc = api.call("PUT", f"/v1/delegations/{doc['id']}", {"chain": chain})
    if status != 201:
        raise RuntimeError(f"delegation step 2: HTTP {status} {doc}")


@dataclasses.dataclass
class Point:
    workers: int
    result: LoadResult


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short windows (whole run < 3 minutes)")
    ap.add_argument("--duration", type=float, help="seconds measured per point")
    ap.add_argument("--concurrency", default="1,4,16,64", help="comma-separated C values")
    ap.add_argument("--workers", default="1,2", help="proxyd --workers values to run")
    ap.add_argument("--no-voms", action="store_true", help="plain limited proxies, no AC")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args(argv)
    duration = args.duration or (4.0 if args.quick else 20.0)
    warmup = 1.0 if args.quick else 3.0
    sign_seconds = 3.0 if args.quick else 10.0
    levels = [int(c) for c in args.concurrency.split(",")]
    worker_counts = [int(w) for w in args.workers.split(",")]
    voms: tuple[str, ...] = () if args.no_voms else ("dteam",)
    began = time.monotonic()

    say(machine_line())
    say(
        f"run: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}Z, {duration:.0f} s per point after "
        f"{warmup:.0f} s warm-up; limited proxy + VOMS AC {list(voms)}; keep-alive HTTPS"
    )
    root = Path(tempfile.mkdtemp(prefix="proxyd-bench-issuance-"))
    points: list[Point] = []
    try:
        pki, alice, wms, keys, mp_port, api_port, config = bench_setup(root)

        before = signing_limit(Path(keys[0]), sign_seconds)
        say(
            f"RSA-2048 signing limit (cryptography, {os.cpu_count()} processes): "
            f"{before.wall:.0f} signatures/s; {before.cpu_ms:.3f} ms CPU per signature, "
            f"so {before.all_cores_if_idle:.0f}/s if the cores were ours alone"
        )
        op = Issue(api_port, str(pki.cert_dir), str(wms), keys, voms)
        delegated = False
        for workers in worker_counts:
            server = ProxydServer(
                config,
                workers=workers,
                log=root / "proxyd.log",
                ports=(mp_port, api_port),
            )
            heading(f"proxyd serve --workers {workers}")
            with running(server):
                if not delegated:
                    delegate(pki, api_port, alice)
                    delegated = True
                for c in levels:
                    r = run_load(
                        op,
                        label=f"issue w={workers}",
                        concurrency=c,
                        duration=duration,
                        warmup=warmup,
                        servers=[server.pid],
                    )
                    say("  " + r.line())
                    for line in r.error_lines():
                        say(line)
                    points.append(Point(workers, r))
        after = signing_limit(Path(keys[0]), sign_seconds)
        limit = max(before.wall, after.wall)
        sign_ms = min(before.cpu_ms, after.cpu_ms)
        say(
            f"\nRSA-2048 signing limit again at the end: {after.wall:.0f}/s "
            f"({after.cpu_ms:.3f} ms CPU per signature); using the higher rate, {limit:.0f}/s, "
            f"and the lower CPU cost, {sign_ms:.3f} ms"
        )
        say(machine_line("at the end"))
        heading(
            f"issuance / signing limit ({limit:.0f} signatures/s; "
            f"{SIGNATURES_PER_ISSUANCE} signature per issuance in steady state)"
        )
        say(
            f"{'workers':>7}{'C':>4}{'issued/s':>10}{'p50 ms':>8}{'p99 ms':>8}"
            f"{'/limit':>8}{'CPU ms/op':>10}{'sign/op CPU':>12}{'client ms/op':>13}"
            f"{'errors':>7}"
        )
        for pt in points:
            r = pt.result
            say(
                f"{pt.workers:>7}{r.concurrency:>4}{r.rate:>10.1f}{r.p(50):>8.0f}{r.p(99):>8.0f}"
                f"{r.rate / limit:>8.3f}{r.server_cpu_ms_per_op:>10.1f}"
                f"{sign_ms / r.server_cpu_ms_per_op:>12.3f}"
                f"{r.client_cpu_ms_per_op:>13.1f}{r.error_count:>7}"
            )
        say(f"\n(total {time.monotonic() - began:.0f} s)")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    best = max((p for p in points if p.workers == 2), key=lambda p: p.result.rate, default=None)
    if best is not None:
        r = best.result
        verdict = "met" if r.rate / limit >= 0.5 else "MISSED"
        say(
            f"HTTPS issuance --workers 2 C={r.concurrency}: {r.rate:.0f}/s = "
            f"{r.rate / limit * 100:.1f}% of the RSA-2048 signing limit ({limit:.0f}/s; "
            f"by CPU cost {sign_ms / r.server_cpu_ms_per_op * 100:.1f}%); target 50% {verdict}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
