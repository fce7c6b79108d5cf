"""The fuzz targets of tests/fuzz, driven by hypothesis: a short, stable run in `make test`.

Each target gets mutated seeds (byte flips, inserts, deletions, splices and
dictionary tokens over valid inputs from the dev PKI), raw bytes, and for
the text formats inputs built from their grammar. A target may only raise
the exceptions its parser documents, and what it accepts must keep its
invariants (see tests/fuzz/targets.py). Known, reported bugs are tolerated
here and pinned in test_fuzz_regressions.py.

`derandomize=True` makes the examples the same on every run. PROXYD_FUZZ_EXAMPLES
raises the count (`make fuzz` uses this when atheris is not available).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxyd.devpki import DevPKI
from tests.fuzz import targets
from tests.fuzz.seeds import DICTIONARIES, Seeds, build_seeds
from tests.support.grid import trust_of

EXAMPLES = int(os.environ.get("PROXYD_FUZZ_EXAMPLES", "200"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
TOKENS = [t for tokens in DICTIONARIES.values() for t in tokens]


@pytest.fixture(scope="module")
def seeds(dev_pki: DevPKI) -> Iterator[Seeds]:
    targets.CONTEXT.trust = trust_of(dev_pki)
    try:
        yield build_seeds(dev_pki)
    finally:
        targets.CONTEXT.trust = None


@st.composite
def mutated(draw: st.DrawFn, pool: list[bytes]) -> bytes:
    """A seed with a few AFL-style mutations."""
    data = bytearray(draw(st.sampled_from(pool)))
    for _ in range(draw(st.integers(0, 6))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.integers(0, 6))
        if op == 0 and data:
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == 1:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == 2:
            del data[pos : pos + draw(st.integers(1, 64))]
        elif op == 3:
            data[pos:pos] = draw(st.sampled_from(TOKENS))
        elif op == 4:
            size = draw(st.integers(1, 32))
            data[pos:pos] = data[pos : pos + size]
        elif op == 5:
            del data[pos:]
        elif op == 6 and data:
            at = min(pos, len(data) - 1)
            data[at] ^= 1 << draw(st.integers(0, 7))
    return bytes(data)


# --- grammar-based inputs for the text formats ---------------------------------------------------

_LINE_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\x00"),
    max_size=24,
)
_REQUEST_VALUES = _LINE_TEXT | st.sampled_from(
    ["MYPROXYv2", "0", "1", "7", "8", "43200", "\u00b2", "\u0661\u0662", "-1", " 1", "1_0", ""]
)
_REQUEST_KEYS = st.sampled_from(
    [
        "COMMAND",
        "USERNAME",
        "PASSPHRASE",
        "LIFETIME",
        "VONAME",
        "VOMSES",
        "TRUSTED_CERTS",
        "CRED_NAME",
        "RETRIEVER_TRUSTED",
        "TRUSTED_RETRIEVERS",
        "NEW_PHRASE",
        "KEYRETRIEVERS",
        "X",
    ]
)


# sampled_from shrinks towards its first element, so these lean the way a valid input leans.
_MOSTLY_TRUE = st.sampled_from([True, True, True, True, False])


def _usually(
    good: st.SearchStrategy[str], hostile: st.SearchStrategy[str]
) -> st.SearchStrategy[str]:
    return _MOSTLY_TRUE.flatmap(lambda ok: good if ok else hostile)


@st.composite
def myproxy_requests(draw: st.DrawFn) -> bytes:
    """A request with the mandatory lines (each may go missing) and hostile extras anywhere."""
    pairs = [
        ("COMMAND", draw(_usually(st.sampled_from(["0", "1", "2", "5", "7"]), _REQUEST_VALUES))),
        ("USERNAME", draw(_LINE_TEXT)),
        ("PASSPHRASE", draw(_LINE_TEXT)),
        (
            "LIFETIME",
            draw(_usually(st.sampled_from(["43200", "0", "9999999999"]), _REQUEST_VALUES)),
        ),
    ]
    pairs = [pair for pair in pairs if draw(_MOSTLY_TRUE)]
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, len(pairs)))
        pairs.insert(at, (draw(_REQUEST_KEYS), draw(_REQUEST_VALUES)))
    head = "VERSION=MYPROXYv2\n" if draw(_MOSTLY_TRUE) else ""
    body = head + "".join(f"{k}={v}\n" for k, v in pairs)
    return body.encode() + (b"\0" if draw(st.booleans()) else b"")


def _toml_string(text: str) -> str:
    out = []
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        elif code > 0xFFFF:
            out.append(f"\\U{code:08x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    items = ", ".join(f"{_toml_string(k)} = {_toml_value(v)}" for k, v in value.items())
    return "{" + items + "}"


_SCALARS = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    st.floats(allow_nan=False),
    st.text(max_size=16),
    st.sampled_from(
        [
            "12h",
            "7d",
            "0s",
            " 5 m ",
            "99999999999999999999d",
            "off",
            "127.0.0.1:7512",
            "[::1]:0",
            "host:65536",
            "~nosuchuser/x",
            "~/x",
            "a\x00b",
            "sqlite:///x.db",
            "sqlite:///:memory:",
            "postgresql+psycopg://h/db",
            "mysql://h/db",
            "/dteam/Role=pilot",
            "1.2",
            "1.3",
            "voms.example.org:15000",
        ]
    ),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["vo", "uri", "aa_cert", "x", "/C=XX/CN=a"]), inner, max_size=3
        )
    ),
    max_leaves=6,
)
_SECTION_KEYS = {
    "server": [
        "host_cert",
        "host_key",
        "cert_dir",
        "voms_dir",
        "state_dir",
        "database",
        "master_key_file",
    ],
    "myproxy": ["listen", "tls_min_version", "tls_max_version"],
    "api": ["listen"],
    "policy": [
        "max_proxy_lifetime",
        "max_stored_lifetime",
        "trusted_retrievers",
        "authorized_retrievers",
        "pilot_fqans",
        "allow_self_authorization",
        "payload_lifetime_margin",
        "passphrase_attempts",
        "lockout_base",
        "lockout_max",
    ],
    "sealing": ["argon2_time_cost", "argon2_memory_kib", "argon2_parallelism"],
}


_PLAUSIBLE: dict[str, st.SearchStrategy[object]] = {
    "listen": st.sampled_from(["127.0.0.1:7512", "off", "[::1]:8443"]),
    "tls_min_version": st.just("1.2"),
    "tls_max_version": st.just("1.3"),
    "database": st.sampled_from(["sqlite:///state/x.db", "postgresql+psycopg://h/db"]),
    "allow_self_authorization": st.booleans(),
    "passphrase_attempts": st.integers(1, 10),
    "argon2_time_cost": st.integers(1, 4),
    "argon2_memory_kib": st.integers(8, 1024),
    "argon2_parallelism": st.integers(1, 4),
}
_DURATION_KEYS = {"max_proxy_lifetime", "max_stored_lifetime", "payload_lifetime_margin"}
_LIST_KEYS = {"trusted_retrievers", "authorized_retrievers", "pilot_fqans"}


def _plausible(key: str) -> st.SearchStrategy[object]:
    if key in _DURATION_KEYS or key.startswith("lockout"):
        return st.sampled_from(["12h", "30m", "7d", 3600])
    if key in _LIST_KEYS:
        return st.lists(st.sampled_from(["*", "/C=XX/*", "/*/Role=pilot"]), max_size=2)
    return _PLAUSIBLE.get(key, st.sampled_from(["file.pem", "dir"]))


@st.composite
def configs(draw: st.DrawFn) -> bytes:
    lines: list[str] = []
    if draw(st.booleans()):
        entries = draw(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "vo": st.sampled_from(["dteam", "ops", "a b", ""]),
                        "uri": st.sampled_from(["voms.localhost:15000", "x", "h:\u0661"]),
                        "aa_cert": st.just("aa.pem"),
                        "aa_key": st.just("aa.key"),
                    },
                    optional={
                        "max_lifetime": _SCALARS,
                        "members": st.dictionaries(
                            st.sampled_from(["/C=XX/CN=a", "x"]), _VALUES, max_size=2
                        ),
                    },
                )
                | _SCALARS,
                max_size=2,
            )
        )
        lines.append(f"voms = {_toml_value(entries)}")
    for section, keys in _SECTION_KEYS.items():
        table: dict[str, object] = {}
        if section == "server":
            table = {"host_cert": "host.pem", "host_key": "host.key"}
        for key in draw(st.lists(st.sampled_from([*keys, "unknown"]), max_size=4, unique=True)):
            table[key] = draw(_plausible(key) if draw(_MOSTLY_TRUE) else _VALUES)
        if table or draw(st.booleans()):
            lines.append(f"[{section}]")
            lines += [f"{_toml_string(k)} = {_toml_value(v)}" for k, v in table.items()]
    return ("\n".join(lines) + "\n").encode()


_DN_VALUE = st.text(alphabet="abcXY019 .-_é/=+\n\\", min_size=0, max_size=12)
_DN_KEY = st.sampled_from(
    [
        "C",
        "O",
        "OU",
        "CN",
        "DC",
        "emailAddress",
        "UID",
        "serialNumber",
        "2.5.4.3",
        "3.5",
        "1.2",
        "x",
    ]
)


@st.composite
def distinguished_names(draw: st.DrawFn) -> bytes:
    rdns = []
    for _ in range(draw(st.integers(0, 5))):
        avas = [f"{draw(_DN_KEY)}={draw(_DN_VALUE)}" for _ in range(draw(st.integers(1, 2)))]
        rdns.append("+".join(avas))
    prefix = "/" if draw(_MOSTLY_TRUE) else ""
    return (prefix + "/".join(rdns)).encode()


_FQAN_NAME = st.text(alphabet="dteamopsX0_.-*é \n", min_size=0, max_size=8)


@st.composite
def fqans(draw: st.DrawFn) -> bytes:
    parts = [draw(_FQAN_NAME) for _ in range(draw(st.integers(1, 4)))]
    if draw(st.booleans()):
        parts.append("Role=" + draw(_FQAN_NAME | st.just("NULL")))
    if draw(st.booleans()):
        parts.append("Capability=" + draw(_FQAN_NAME | st.just("NULL")))
    if not draw(_MOSTLY_TRUE):
        draw(st.randoms()).shuffle(parts)
    return ("/" + "/".join(parts)).encode()


STRUCTURED: dict[str, st.SearchStrategy[bytes]] = {
    "myproxy_codec.parse_request": myproxy_requests(),
    "config.parse_config": configs(),
    "voms_ext.slash_to_name": distinguished_names(),
    "voms_ext.parse_fqan": fqans(),
    "voms_ext.parse_lsc": st.lists(
        distinguished_names() | st.sampled_from([b"------ NEXT CHAIN ------", b"# c", b"  "]),
        max_size=6,
    ).map(b"\n".join),
}


@pytest.mark.parametrize("target_id", [t.id for t in targets.ALL_TARGETS])
def test_parser_refuses_hostile_input_cleanly(seeds: Seeds, target_id: str) -> None:
    t = targets.target(target_id)
    strategies = [mutated(seeds[target_id]), st.binary(max_size=600)]
    if target_id in STRUCTURED:
        strategies.insert(0, STRUCTURED[target_id])
    outcomes: dict[str, int] = {}

    @SETTINGS
    @given(data=st.one_of(strategies))
    def run(data: bytes) -> None:
        outcome = targets.call(t, data)  # raises on anything undocumented
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    run()
    # The run exercised the parser, not only its first length check.
    assert outcomes.get("accepted", 0) + outcomes.get("refused", 0) > 0, outcomes


def _accepted(target_id: str, strategy: st.SearchStrategy[bytes]) -> int:
    t = targets.target(target_id)
    count = [0]

    @settings(max_examples=60, derandomize=True, database=None, deadline=None)
    @given(data=strategy)
    def run(data: bytes) -> None:
        count[0] += targets.call(t, data) == "accepted"

    run()
    return count[0]


def test_grammar_strategies_reach_acceptance(seeds: Seeds) -> None:
    """The structured strategies are not all refused at the first check: they produce valid input."""
    accepted = {target_id: _accepted(target_id, s) for target_id, s in STRUCTURED.items()}
    assert all(accepted.values()), json.dumps(accepted)
