"""One-input functions for every parser that reads untrusted bytes, and what each may raise.

A *target* takes bytes and runs one parser the way the service runs it on
hostile input, then checks invariants on what it accepted (round trips,
framing lengths that agree with themselves). Each target names the
exception types its parser documents; anything else it raises is a finding.

The atheris harnesses (`tests/fuzz/fuzz_*.py`, `make fuzz`) and the
hypothesis tests (`tests/reliability/test_parsers_hypothesis.py`) call the
same targets. A harness input is one selector byte (which target of the
harness) followed by the payload.

Bugs that are already reported are listed in KNOWN_BUGS, each with an
xfail(strict) regression test in tests/reliability/test_fuzz_regressions.py.
They are tolerated (and counted) so that a fuzzing run goes on looking for
new ones; FUZZ_STRICT=1 makes them crash like any other finding. When a bug
is fixed its regression test starts passing (XPASS fails the run): then
delete its KNOWN_BUGS entry.
"""

from __future__ import annotations

import os
import re
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from proxyd.config import ConfigError, parse_config
from proxyd.myproxy import protocol as p
from proxyd.myproxy.renewal import Challenge, ChallengeError, parse_challenge_reply, reply_length
from proxyd.repository import BadRequest, check_public_key
from voms_ext import (
    TrustStore,
    VomsExtError,
    classify,
    dn_to_slash,
    parse_attribute_certificate,
    parse_credential_pem,
    parse_fqan,
    parse_voms_extension,
    slash_to_name,
    validate_chain,
)
from voms_ext.trust import parse_lsc

STRICT = os.environ.get("FUZZ_STRICT") == "1"
# Where relative paths of fuzzed configs resolve; nothing is read or written there.
CONFIG_SOURCE = Path("/nonexistent/proxyd-fuzz/proxyd.toml")
# The renewal targets answer these fixed challenges (the seeds are signed over them).
CHALLENGES = (Challenge(2, "0f" * 16), Challenge(4, "a5" * 16))


class InvariantError(AssertionError):
    """A parser accepted input and then broke one of its own promises."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise InvariantError(message)


@dataclass
class Context:
    """What some targets need beyond the bytes: the trust store of the seed PKI."""

    trust: TrustStore | None = None


CONTEXT = Context()


@dataclass(frozen=True)
class Target:
    harness: str
    name: str
    run: Callable[[bytes], None]
    allowed: tuple[type[BaseException], ...]

    @property
    def id(self) -> str:
        return f"{self.harness}.{self.name}"


@dataclass(frozen=True)
class KnownBug:
    """A reported bug: which target, which exception (type and message pattern)."""

    id: str
    targets: tuple[str, ...]  # Target.id of every target that reaches the bug
    exc_types: tuple[type[BaseException], ...]
    pattern: str  # re.search on str(exc)
    summary: str
    regression: str  # the xfail test that pins it
    where: str = ""  # if set: a source line of the traceback must contain it

    def matches(self, target: Target, exc: BaseException) -> bool:
        if target.id not in self.targets or not isinstance(exc, self.exc_types):
            return False
        if re.search(self.pattern, str(exc)) is None:
            return False
        lines = [frame.line or "" for frame in traceback.extract_tb(exc.__traceback__)]
        return not self.where or any(self.where in line for line in lines)


@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    known: Counter[str] = field(default_factory=Counter)


TALLY = Tally()


# --- myproxy codec --------------------------------------------------------------------------


def _request(data: bytes) -> None:
    request = p.parse_request(data)
    try:
        again = p.parse_request(p.encode_request(request))
    except p.ProtocolError as exc:
        raise InvariantError(f"a parsed request does not re-encode: {exc}") from None
    check(again == request, f"request does not survive encode/parse: {request!r} -> {again!r}")


def _response(data: bytes) -> None:
    response = p.parse_response(data)
    try:
        again = p.parse_response(p.encode_response(response))
    except p.ProtocolError as exc:
        raise InvariantError(f"a parsed response does not re-encode: {exc}") from None
    check(again == response, f"response does not survive encode/parse: {response!r}")


def _framing(fn: Callable[[bytes], int | None], data: bytes) -> None:
    size = fn(data)
    if size is None:
        return
    check(0 < size <= len(data), f"{fn.__name__} returned {size} for {len(data)} bytes")
    check(fn(data[:size]) == size, f"{fn.__name__} disagrees with itself on its own prefix")
    check(fn(data + b"\x00\xff" * 8) == size, f"{fn.__name__} depends on bytes past the end")


def _der_length(data: bytes) -> None:
    _framing(p.der_length, data)


def _chain_length(data: bytes) -> None:
    _framing(p.chain_length, data)


def _certificates(data: bytes) -> None:
    certs = p.parse_certificates(data)
    check(len(certs) == data[0], "parse_certificates returned a different count than announced")
    check(p.encode_certificates(certs) == data, "certificate chain does not re-encode identically")


def _csr(data: bytes) -> None:
    # What the server does with the client's request bytes during a GET: parse, then
    # check the key before it signs anything (MyProxy and API alike).
    check_public_key(p.parse_csr(data))


# --- voms_ext -----------------------------------------------------------------------------------

_FQAN_PART = re.compile(r"[A-Za-z0-9_.\-]+")


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _attribute_certificate(data: bytes) -> None:
    ac = parse_attribute_certificate(data)
    check(ac.der == data, "parsed AC does not keep its DER")
    for fqan in ac.fqans:
        check(parse_fqan(fqan).vo == ac.vo, f"AC for {ac.vo} carries FQAN {fqan!r} of another VO")


def _voms_extension(data: bytes) -> None:
    check(len(parse_voms_extension(data)) > 0, "empty VOMS extension accepted")


def _credential_pem(data: bytes) -> None:
    check(bool(parse_credential_pem(data).certificates), "credential without a certificate")


def _classify(data: bytes) -> None:
    try:
        cert = x509.load_der_x509_certificate(data)
    except (ValueError, x509.InvalidVersion):
        return  # `cryptography` refuses it before voms_ext sees it
    classify(cert)


def _lsc(data: bytes) -> None:
    for chain in parse_lsc(_text(data)):
        check(bool(chain), "parse_lsc returned an empty chain")
        for line in chain:
            check(line == line.strip() and bool(line), f"parse_lsc kept line {line!r}")


def _slash_to_name(data: bytes) -> None:
    name = slash_to_name(_text(data))
    again = slash_to_name(dn_to_slash(name))
    check(again == name, f"DN does not survive dn_to_slash/slash_to_name: {name!r} -> {again!r}")


def _fqan(data: bytes) -> None:
    fqan = parse_fqan(_text(data))
    parts = [fqan.vo, *fqan.groups, fqan.role or "x", fqan.capability or "x"]
    for part in parts:
        check(
            _FQAN_PART.fullmatch(part) is not None,
            f"parse_fqan accepted the name {part!r}, which is not letters, digits, '_', '.', '-'",
        )
    check(parse_fqan(str(fqan)) == fqan, "short form does not parse back")
    check(parse_fqan(fqan.long) == fqan, "long form does not parse back")


# --- config ---------------------------------------------------------------------------------------


def _config(data: bytes) -> None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return  # load_config refuses non-UTF-8 files with a ConfigError before parsing
    config = parse_config(text, CONFIG_SOURCE)
    policy = config.policy
    for name in ("max_proxy_lifetime", "max_stored_lifetime", "lockout_base", "lockout_max"):
        check(getattr(policy, name).total_seconds() > 0, f"[policy] {name} is not positive")
    for listen in (config.myproxy.listen, config.api.listen):
        check(listen is None or 0 < listen.port < 65536, f"listen port {listen} out of range")
    check(policy.passphrase_attempts >= 1, "passphrase_attempts below 1")


# --- renewal --------------------------------------------------------------------------------------


def _reply_length(data: bytes) -> None:
    _framing(reply_length, data)


def _challenge_reply(data: bytes) -> None:
    chain = parse_challenge_reply(data, CHALLENGES)
    check(bool(chain), "challenge reply without a certificate accepted")
    if CONTEXT.trust is not None:
        # What the server does next with the proof (myproxy/server.py `_renewal_proof`).
        validate_chain(chain, CONTEXT.trust)


def _challenge_pipeline(data: bytes) -> None:
    size = reply_length(data)
    if size is not None:
        _challenge_reply(data[:size])


HARNESSES: dict[str, tuple[Target, ...]] = {
    "myproxy_codec": (
        Target("myproxy_codec", "parse_request", _request, (p.ProtocolError,)),
        Target("myproxy_codec", "parse_response", _response, (p.ProtocolError,)),
        Target("myproxy_codec", "parse_certificates", _certificates, (p.ProtocolError,)),
        Target("myproxy_codec", "der_length", _der_length, (p.ProtocolError,)),
        Target("myproxy_codec", "chain_length", _chain_length, (p.ProtocolError,)),
        Target("myproxy_codec", "parse_csr", _csr, (p.ProtocolError, BadRequest)),
    ),
    "voms_ext": (
        Target("voms_ext", "parse_attribute_certificate", _attribute_certificate, (VomsExtError,)),
        Target("voms_ext", "parse_voms_extension", _voms_extension, (VomsExtError,)),
        Target("voms_ext", "parse_credential_pem", _credential_pem, (VomsExtError,)),
        Target("voms_ext", "classify", _classify, (VomsExtError,)),
        Target("voms_ext", "parse_lsc", _lsc, ()),
        Target("voms_ext", "slash_to_name", _slash_to_name, (VomsExtError,)),
        Target("voms_ext", "parse_fqan", _fqan, (VomsExtError,)),
    ),
    "config": (Target("config", "parse_config", _config, (ConfigError,)),),
    "renewal": (
        Target("renewal", "reply_length", _reply_length, (p.ProtocolError,)),
        Target(
            "renewal", "parse_challenge_reply", _challenge_reply, (ChallengeError, VomsExtError)
        ),
        Target(
            "renewal",
            "pipeline",
            _challenge_pipeline,
            (p.ProtocolError, ChallengeError, VomsExtError),
        ),
    ),
}

ALL_TARGETS: tuple[Target, ...] = tuple(t for ts in HARNESSES.values() for t in ts)


def target(target_id: str) -> Target:
    return next(t for t in ALL_TARGETS if t.id == target_id)


_REG = "tests/reliability/test_fuzz_regressions.py::"

# Every bug the fuzzers found so far is fixed; list new ones here while they are open.
KNOWN_BUGS: tuple[KnownBug, ...] = ()


def known_bug(t: Target, exc: BaseException) -> KnownBug | None:
    return next((bug for bug in KNOWN_BUGS if bug.matches(t, exc)), None)


def call(t: Target, data: bytes) -> str:
    """Run one target; 'accepted', 'refused' or 'known:<bug>'. Anything else raises."""
    try:
        t.run(data)
    except t.allowed:
        TALLY.outcomes[f"{t.id} refused"] += 1
        return "refused"
    except Exception as exc:
        bug = known_bug(t, exc)
        if bug is None or STRICT:
            raise
        TALLY.known[bug.id] += 1
        return f"known:{bug.id}"
    TALLY.outcomes[f"{t.id} accepted"] += 1
    return "accepted"


def one_input(harness: str, data: bytes) -> None:
    """A harness input: selector byte, then the payload for that target."""
    targets = HARNESSES[harness]
    if not data:
        return
    call(targets[data[0] % len(targets)], data[1:])
