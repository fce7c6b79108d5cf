"""A GET with an AC from the VO's own VOMS server (cache warm) vs one with proxyd's own AA.

    .venv/bin/python -m bench.upstream_aa [--quick]

Two `proxyd serve` processes on the dev PKI, in one run:

* LOCAL signs dteam's ACs itself (the dev configuration) and also answers
  on its `[aa]` endpoint, as dteam's VOMS server for the other one;
* UPSTREAM has no dteam key: its `[[voms]]` names LOCAL's `[aa]` endpoint
  in a vomses file, so it obtains alice's ACs from there, as alice, with a
  short-lived proxy of her stored credential, and verifies each against
  the vomsdir before embedding it.

Alice stores a credential in each; the WMS host then asks both for limited
proxies with a dteam AC (`POST /v1/credentials/{name}/proxy`, keep-alive
HTTPS, the same client code as bench.issuance, every reply checked). After
the warm-up, UPSTREAM serves the AC from its cache (per holder and FQANs,
re-verified on every use), so the GET costs no round trip. The points are
measured LOCAL, UPSTREAM, LOCAL, UPSTREAM and each side keeps its better
one, so a burst of someone else's load hurts neither side alone.

Printed per concurrency: the throughput and p50 ratios of each side's
better point, and the server CPU per GET over both points of each side.
The headline is UPSTREAM / LOCAL server CPU per GET at the highest
concurrency (target <= 1.2): on this shared 2-core machine other people's
load moves throughput by 2x between two identical points, CPU per GET
hardly at all.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import (
    LoadResult,
    ProxydServer,
    bench_setup,
    free_port,
    heading,
    machine_line,
    ratio,
    run_load,
    running,
    say,
    wait_for_port,
)
from bench.issuance import Issue, delegate
from proxyd.devpki import SERVICE_HOST, host_dn

TARGET = 1.2


def _with_aa(config: Path, aa_port: int) -> Path:
    """LOCAL: the dev configuration with its [aa] endpoint on `aa_port`."""
    text = config.read_text()
    commented = '# [aa]\n# listen = "127.0.0.1:15000"\n'
    if commented not in text:
        raise RuntimeError(f"{config} no longer has the commented [aa] table")
    path = config.with_name("bench-local.toml")
    path.write_text(text.replace(commented, f'[aa]\nlisten = "127.0.0.1:{aa_port}"\n'))
    return path


def _upstream(config: Path, mp_port: int, api_port: int, aa_port: int) -> Path:
    """UPSTREAM: its own ports and state, dteam's ACs from LOCAL's [aa] endpoint."""
    text = config.read_text()
    start = text.index('[[voms]]\nvo = "dteam"')
    end = text.index("[[voms]]", start + 1)
    vomses = config.with_name("vomses-upstream")
    vomses.write_text(f'"dteam" "127.0.0.1" "{aa_port}" "{host_dn(SERVICE_HOST)}" "dteam"\n')
    text = text[:start] + f'[[voms]]\nvo = "dteam"\nvomses = "{vomses.name}"\n\n' + text[end:]
    for old, new in (
        ('state_dir = "state"', 'state_dir = "state-upstream"'),
        ('master_key_file = "state/master.key"', 'master_key_file = "state-upstream/master.key"'),
    ):
        if old not in text:
            raise RuntimeError(f"{config} no longer has {old}")
        text = text.replace(old, new)

    listens = re.findall(r'^listen = "127\.0\.0\.1:(\d+)"', text, re.MULTILINE)
    if len(listens) != 2:
        raise RuntimeError(f"{config}: expected the myproxy and api listen lines, got {listens}")
    text = text.replace(f'127.0.0.1:{listens[0]}"', f'127.0.0.1:{mp_port}"', 1)
    text = text.replace(f'127.0.0.1:{listens[1]}"', f'127.0.0.1:{api_port}"', 1)
    path = config.with_name("bench-upstream.toml")
    path.write_text(text)
    return path


@dataclasses.dataclass
class Side:
    label: str
    op: Issue
    server: ProxydServer
    best: LoadResult | None = None
    runs: list[LoadResult] = dataclasses.field(default_factory=list)

    @property
    def cpu_ms_per_op(self) -> float:
        """Server CPU per GET over all this side's points at one concurrency."""
        ops = sum(r.ops for r in self.runs)
        cpu = sum(r.server_cpu or 0.0 for r in self.runs)
        return cpu / ops * 1000 if ops else float("nan")

    def measure(self, concurrency: int, duration: float, warmup: float) -> LoadResult:
        r = run_load(
            self.op,
            label=self.label,
            concurrency=concurrency,
            duration=duration,
            warmup=warmup,
            servers=[self.server.pid],
        )
        say("  " + r.line())
        for line in r.error_lines():
            say(line)
        if r.error_count:
            raise RuntimeError(f"{self.label}: {r.error_count} failed requests")
        if self.best is None or r.rate > self.best.rate:
            self.best = r
        self.runs.append(r)
        return r


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short windows (whole run < 2 minutes)")
    ap.add_argument("--duration", type=float, help="seconds measured per point")
    ap.add_argument("--concurrency", default="1,16", help="comma-separated C values")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args(argv)
    duration = args.duration or (4.0 if args.quick else 15.0)
    warmup = 1.0 if args.quick else 3.0
    levels = [int(c) for c in args.concurrency.split(",")]
    began = time.monotonic()
    say(machine_line())
    root = Path(tempfile.mkdtemp(prefix="proxyd-bench-upstream-"))
    headline: float | None = None
    try:
        pki, alice, wms, keys, mp_port, api_port, config = bench_setup(root)
        aa_port, up_mp, up_api = free_port(), free_port(), free_port()
        local_cfg = _with_aa(config, aa_port)
        upstream_cfg = _upstream(config, up_mp, up_api, aa_port)
        local = ProxydServer(
            local_cfg, workers=1, log=root / "local.log", ports=(mp_port, api_port, aa_port)
        )
        upstream = ProxydServer(
            upstream_cfg, workers=1, log=root / "upstream.log", ports=(up_mp, up_api)
        )
        with running(local, upstream):
            wait_for_port(aa_port, 10)
            delegate(pki, api_port, alice)
            delegate(pki, up_api, alice)
            sides = [
                Side(
                    "GET, proxyd's own AA",
                    Issue(api_port, str(pki.cert_dir), str(wms), keys),
                    local,
                ),
                Side(
                    "GET, upstream AC (cached)",
                    Issue(up_api, str(pki.cert_dir), str(wms), keys),
                    upstream,
                ),
            ]
            # One GET through UPSTREAM fetches the AC; the load's warm-up reuses it.
            sides[1].op.setup(0)()
            results: dict[int, dict[str, float]] = {}
            for c in levels:
                heading(f"concurrency {c}: {duration:.0f} s per point, LOCAL/UPSTREAM twice")
                for side in sides:
                    side.best, side.runs = None, []
                for _ in range(2):
                    for side in sides:
                        side.measure(c, duration, warmup)
                own, up = (s.best for s in sides)
                assert own is not None and up is not None
                results[c] = {
                    "rate": ratio(own.rate, up.rate),
                    "p50": ratio(up.p(50), own.p(50)),
                    "cpu": ratio(sides[1].cpu_ms_per_op, sides[0].cpu_ms_per_op),
                }
                say(
                    f"  best: own AA {own.rate:.1f} ops/s (p50 {own.p(50):.1f} ms), upstream "
                    f"{up.rate:.1f} ops/s (p50 {up.p(50):.1f} ms): own/upstream throughput "
                    f"{results[c]['rate']:.3f}x, upstream/own p50 {results[c]['p50']:.3f}x"
                )
                say(
                    f"  server CPU per GET over both points: own AA "
                    f"{sides[0].cpu_ms_per_op:.2f} ms, upstream {sides[1].cpu_ms_per_op:.2f} ms: "
                    f"upstream/own {results[c]['cpu']:.3f}x"
                )
        fetched = (root / "upstream.log").read_text().count("VOMS AC for VO dteam from")
        say(f"\nupstream round trips to the VO's server during the run: {fetched}")
        say(machine_line("at the end"))
        top = max(levels)
        # Other people's load moves throughput on this shared 2-core machine by 2x between
        # two identical points; CPU per GET, measured on the server's own process tree, is
        # what that load barely moves, so it is the headline (throughput is printed above).
        headline = results[top]["cpu"]
        say(f"(total {time.monotonic() - began:.0f} s)")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    verdict = "met" if headline is not None and headline <= TARGET else "MISSED"
    say(
        f"headline: GET with an upstream AC (cache warm) costs {headline:.3f}x the server CPU of "
        f"the GET with proxyd's own AA at C={max(levels)} (target <= {TARGET}): {verdict}"
    )
    return 0 if verdict == "met" else 1


if __name__ == "__main__":
    raise SystemExit(main())
