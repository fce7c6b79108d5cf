"""The common main of the atheris harnesses: instrument, seed the context, fuzz one harness.

Run through `make fuzz` (which writes the seed corpus and PKI first), or by
hand from the repository root:

    FUZZ_PKI=tests/.build/fuzz/pki .venv/bin/python -m tests.fuzz.fuzz_config \\
        -runs=50000 tests/.build/fuzz/corpus/config tests/.build/fuzz/seeds/config

Arguments are libFuzzer's. Without atheris (it needs a wheel or a clang
build), the hypothesis versions of the same targets run instead, with
`-runs=N` examples each.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

INSTRUMENTED = ["proxyd", "voms_ext", "pyasn1", "pyasn1_modules", "tomllib", "tests.fuzz"]
REPORT_EVERY = 50_000


def _runs(argv: list[str]) -> int:
    for arg in argv:
        if arg.startswith("-runs="):
            return int(arg.split("=", 1)[1])
    return 1_000_000


def _fallback(harness: str) -> None:
    """No atheris: run the hypothesis versions of this harness's targets, long."""
    runs = _runs(sys.argv[1:])
    print(
        f"atheris is not available: running the hypothesis targets of {harness} "
        f"with {runs} examples each instead",
        file=sys.stderr,
    )
    env = dict(os.environ, PROXYD_FUZZ_EXAMPLES=str(runs))
    sys.exit(
        subprocess.call(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "tests/reliability/test_parsers_hypothesis.py",
                "-k",
                harness,
            ],
            env=env,
        )
    )


def main(harness: str) -> None:
    try:
        import atheris
    except ImportError:
        _fallback(harness)
        return
    with atheris.instrument_imports(include=INSTRUMENTED):
        from tests.fuzz import targets
        from voms_ext import TrustStore

    pki = os.environ.get("FUZZ_PKI")
    if pki:
        targets.CONTEXT.trust = TrustStore.from_dirs(
            Path(pki) / "certificates", Path(pki) / "vomsdir"
        )
    seen: set[str] = set()
    count = [0]
    started = time.monotonic()

    def test_one_input(data: bytes) -> None:
        count[0] += 1
        before = dict(targets.TALLY.known)
        targets.one_input(harness, data)
        for bug, hits in targets.TALLY.known.items():
            if bug not in seen and hits > before.get(bug, 0):
                seen.add(bug)
                print(f"\n[{harness}] known bug {bug} reached by input {data!r}", file=sys.stderr)
        if count[0] % REPORT_EVERY == 0:
            rate = count[0] / (time.monotonic() - started)
            print(
                f"\n[{harness}] {count[0]} inputs ({rate:.0f}/s); known bugs hit: "
                f"{dict(targets.TALLY.known)}",
                file=sys.stderr,
            )

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
