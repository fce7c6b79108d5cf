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
import types
from pathlib import Path

INSTRUMENTED = ["proxyd", "voms_ext", "pyasn1", "pyasn1_modules", "tomllib", "tests.fuzz"]
REPORT_EVERY = 50_000

# pyasn1 puts `%r` of the whole ASN.1 schema into the message of every decoding error
# ("<tag> not in asn1Spec: <repr>"). fuzz_voms_ext has no per-input setup; its time is
# pyasn1 DER decoding under instrumentation, and instrumented `__repr__`s cost a fifth of
# it (497 -> 599 inputs/s CPU, A/B on one corpus). These methods still run, the same code
# with the same messages, only without coverage feedback from formatting an error
# message. Everything else, pyasn1 included, stays instrumented.
UNINSTRUMENTED_PACKAGES = ("pyasn1", "pyasn1_modules")
UNINSTRUMENTED_METHODS = frozenset({"__repr__"})


def _plain_code(path: str) -> dict[tuple[str, int], types.CodeType]:
    """Every function's code object of a source file, compiled without instrumentation."""
    top = compile(Path(path).read_bytes(), path, "exec", dont_inherit=True)
    found: dict[tuple[str, int], types.CodeType] = {}
    pending = [top]
    while pending:
        for const in pending.pop().co_consts:
            if isinstance(const, types.CodeType):
                found[(const.co_name, const.co_firstlineno)] = const
                pending.append(const)
    return found


def uninstrument_methods(
    packages: tuple[str, ...] = UNINSTRUMENTED_PACKAGES,
    methods: frozenset[str] = UNINSTRUMENTED_METHODS,
) -> int:
    """Give these methods of the imported modules of PACKAGES their uninstrumented code back."""
    swapped = 0
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if not (name in packages or name.startswith(tuple(p + "." for p in packages))):
            continue
        if not path or not path.endswith(".py"):
            continue
        plain: dict[tuple[str, int], types.CodeType] | None = None
        for cls in list(vars(module).values()):
            if not isinstance(cls, type) or cls.__module__ != name:
                continue
            for method in methods & cls.__dict__.keys():
                fn = cls.__dict__[method]
                if not isinstance(fn, types.FunctionType):
                    continue
                plain = _plain_code(path) if plain is None else plain
                code = plain.get((fn.__code__.co_name, fn.__code__.co_firstlineno))
                if code is not None and code.co_freevars == fn.__code__.co_freevars:
                    fn.__code__ = code
                    swapped += 1
    return swapped


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
    swapped = uninstrument_methods()
    print(f"[{harness}] {swapped} pyasn1 __repr__ methods run uninstrumented", file=sys.stderr)

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
