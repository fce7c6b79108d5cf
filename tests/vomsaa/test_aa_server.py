"""proxyd's [aa] VOMS endpoint, driven with the wire codec as a client over real TLS.

Both protocols, their error shapes, and what malformed or unfinished input
gets: a precise error answer, the connection closed, the service intact.
(The real voms-proxy-init against the same edge: tests/interop/test_aa_endpoint.py.)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxyd.config import AaConfig, ConfigError, load_config, parse_config
from proxyd.devpki import DevPKI
from proxyd.vomsaa import server as aa_server
from proxyd.vomsaa import wire
from proxyd.vomsaa.client import UpstreamRefusal, VomsAaClient, client_context
from proxyd.vomsaa.vomses import VomsesEntry
from tests.support.server import RunningServer, running_server
from voms_ext import parse_attribute_certificate

ALICE = "/C=XX/O=proxyd dev/OU=Users/CN=alice"
CAROL = "/C=XX/O=proxyd dev/OU=Users/CN=carol"
DTEAM = "/dteam/Role=NULL/Capability=NULL"
ANALYSIS = "/dteam/analysis/Role=NULL/Capability=NULL"
PRODUCTION = "/dteam/Role=production/Capability=NULL"


class Aa:
    """A VOMS client made of the wire codec and a TLS socket, as a dev user (or nobody)."""

    def __init__(self, server: RunningServer, pki: DevPKI) -> None:
        self.server, self.pki = server, pki
        assert server.aa_port is not None
        self.port = server.aa_port

    def context(self, who: str | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        if who is not None:
            cert, key = self.pki.host(who) if who == "wms" else self.pki.user(who)
            ctx.load_cert_chain(cert, key)
        return ctx

    def raw(self, payload: bytes, who: str | None = "alice", *, zero: bool = True) -> bytes:
        """Send one request; everything the server sends until it closes."""
        with (
            socket.create_connection(("127.0.0.1", self.port), timeout=20) as sock,
            self.context(who).wrap_socket(sock, server_hostname="localhost") as tls,
        ):
            if zero:
                tls.sendall(wire.GSI_NO_DELEGATION)
            tls.sendall(payload)
            return _read_to_close(tls)

    def legacy(self, request: wire.AcRequest, who: str | None = "alice") -> wire.AaAnswer:
        return wire.parse_legacy_answer(self.raw(wire.encode_legacy_request(request), who))

    def rest(self, request: wire.AcRequest, who: str | None = "alice") -> wire.AaAnswer:
        head = wire.encode_rest_request(request, "localhost", self.port)
        return wire.parse_rest_answer(self.raw(head, who))

    def trail(self) -> list[tuple[str, str, str]]:
        events = self.server.repo.audit.query(operation="issue_ac", newest_first=False, limit=500)
        return [(e.event.decision, e.event.rule, e.event.actor_dn) for e in events]


def _read_to_close(tls: ssl.SSLSocket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = tls.recv(65536)
        except (ssl.SSLEOFError, ConnectionResetError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture(scope="module")
def aa(dev_pki: DevPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Aa]:
    with running_server(dev_pki, tmp_path_factory.mktemp("aa") / "state", aa=True) as server:
        yield Aa(server, dev_pki)


# --- what is asked, what is granted ------------------------------------------------------------


def test_legacy_request_gets_an_ac_bound_to_the_caller(aa: Aa) -> None:
    before = dt.datetime.now(dt.UTC)
    answer = aa.legacy(wire.AcRequest(("/dteam/Role=production",), lifetime=3600))
    assert answer.ok and not answer.warnings
    assert answer.ac is not None
    ac = parse_attribute_certificate(answer.ac)
    alice = x509.load_pem_x509_certificate(aa.pki.user("alice")[0].read_bytes())
    assert (ac.holder_issuer, ac.holder_serial) == (alice.issuer, alice.serial_number)
    assert ac.fqans == (PRODUCTION, DTEAM, ANALYSIS)
    assert ac.vo == "dteam" and ac.uri == "voms.localhost:15000"
    # The lifetime asked for, rounded up to the hour as proxyd's AA does (issuer.AC_ROUNDING).
    assert ac.not_after - before <= dt.timedelta(hours=2, minutes=1)


def test_rest_answer_is_what_voms_proxy_init_requires(aa: Aa) -> None:
    raw = aa.raw(wire.encode_rest_request(wire.AcRequest(("/dteam",)), "localhost", aa.port))
    assert raw.startswith(b"HTTP/1.1 200 ")
    body = raw.split(b"<ac>", 1)[1].split(b"</ac>", 1)[0]
    lines = body.split(b"\n")
    assert len(lines) > 2 and all(len(line) <= 64 for line in lines), "64-char base64 lines"
    answer = wire.parse_rest_answer(raw)
    assert (answer.status, answer.http_version) == (200, "1.1")
    assert parse_attribute_certificate(answer.ac or b"").fqans == (DTEAM, ANALYSIS)


def test_all_lists_every_fqan_held_and_order_comes_first(aa: Aa) -> None:
    ac = parse_attribute_certificate(aa.legacy(wire.AcRequest(wire.ALL)).ac or b"")
    assert ac.fqans == (DTEAM, ANALYSIS, PRODUCTION)
    ordered = aa.rest(wire.AcRequest(("/dteam",), order=("/dteam/analysis", "/dteam/nosuch")))
    assert parse_attribute_certificate(ordered.ac or b"").fqans == (ANALYSIS, DTEAM)


@pytest.mark.parametrize("protocol", ["legacy", "rest"])
def test_refusals_in_the_protocols_error_shapes(aa: Aa, protocol: str) -> None:
    ask = aa.legacy if protocol == "legacy" else aa.rest
    carol = ask(wire.AcRequest(("/dteam",)), "carol")
    bob = ask(wire.AcRequest(("/dteam/Role=production",)), "bob")
    assert carol.ac is None and bob.ac is None
    assert carol.rule == wire.RULE_UNKNOWN_USER, carol
    assert bob.rule == wire.RULE_ROLE_NOT_HELD, bob
    assert "(proxyd policy rule: voms.not_member)" in carol.message
    assert "(proxyd policy rule: voms.fqan_not_held)" in bob.message
    if protocol == "legacy":
        assert [e.code for e in carol.errors + bob.errors] == [1001, 1002]
    else:
        assert (carol.status, carol.errors[0].code) == (403, "NoSuchUser")
        assert (bob.status, bob.errors[0].code) == (400, "BadRequest")
    assert aa.trail()[-2:] == [
        ("deny", "voms.not_member", CAROL),
        ("deny", "voms.fqan_not_held", "/C=XX/O=proxyd dev/OU=Users/CN=bob"),
    ]


def test_a_peer_without_a_certificate_is_refused_and_audited(aa: Aa) -> None:
    answer = aa.legacy(wire.AcRequest(("/dteam",)), None)
    assert answer.rule == wire.RULE_UNKNOWN_USER
    assert "attribute certificates need a client certificate" in answer.message
    assert aa.trail()[-1] == ("deny", "voms.not_member", "<anonymous>")


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (wire.AcRequest(("/atlas",)), 'does not serve VO "atlas" (it serves: dteam, ops)'),
        (wire.AcRequest(("/dteam", "/ops")), "FQANs of several VOs (dteam, ops) in one request"),
        (wire.AcRequest(("/dteam",), targets=("ce.example.org",)), "targeted ACs"),
    ],
    ids=["unknown-vo", "two-vos", "targets"],
)
def test_requests_proxyd_cannot_serve_as_asked(
    aa: Aa, request_: wire.AcRequest, message: str
) -> None:
    before = len(aa.trail())
    for answer in (aa.legacy(request_), aa.rest(request_)):
        assert answer.ac is None and message in answer.message, answer
        assert answer.rule == wire.RULE_BAD_REQUEST
    assert len(aa.trail()) == before  # refused before any decision: nothing to audit


def test_all_picks_the_only_vo_the_caller_is_a_member_of(aa: Aa) -> None:
    """dteam and ops are both served; carol is a member of ops only."""
    ac = parse_attribute_certificate(aa.rest(wire.AcRequest(wire.ALL), "carol").ac or b"")
    assert (ac.vo, ac.fqans) == ("ops", ("/ops/Role=NULL/Capability=NULL",))
    # The WMS host is a member of neither: which VO it means cannot be told.
    answer = aa.rest(wire.AcRequest(wire.ALL), "wms")
    assert answer.rule == wire.RULE_BAD_REQUEST
    assert "serves several VOs (dteam, ops) and the request names none" in answer.message


def test_dev_pki_vomses_name_the_dev_aa(dev_pki: DevPKI) -> None:
    """What `voms-proxy-init --vomses certs-dev/vomses` reads, and the [aa] it points at."""
    lines = sorted(f.read_text() for f in dev_pki.vomses.iterdir())
    dn = "/C=XX/O=proxyd dev/OU=Hosts/CN=localhost"
    assert lines == [
        f'"dteam" "localhost" "15000" "{dn}" "dteam"\n',
        f'"ops" "localhost" "15000" "{dn}" "ops"\n',
    ]
    enabled = dev_pki.config.read_text().replace("# [aa]\n# listen", "[aa]\nlisten")
    assert str(parse_config(enabled, dev_pki.config).aa.listen) == "127.0.0.1:15000"


# --- malformed and unfinished input --------------------------------------------------------------

MALFORMED = [
    (b"<voms><command>X/dteam</command></voms>", "legacy", "is not one of A, G/group"),
    (b"<voms><lifetime>5</lifetime></voms>", "legacy", "no <command>"),
    (b"<voms><command>G/dteam</command><evil>1</evil></voms>", "legacy", "unknown element <evil>"),
    (b"<!DOCTYPE x><voms></voms>", "legacy", "unexpected markup"),
    (b"GET /admin HTTP/1.0\n\n", "rest", "unknown path '/admin'"),
    (b"GET /generate-ac?fqans=dteam HTTP/1.0\n\n", "rest", "fqans[0] 'dteam'"),
    (b"GET /generate-ac?lifetime=soon HTTP/1.0\n\n", "rest", "lifetime 'soon' is not a number"),
]


@pytest.mark.parametrize(("payload", "protocol", "message"), MALFORMED)
def test_malformed_requests_get_a_precise_error(
    aa: Aa, payload: bytes, protocol: str, message: str
) -> None:
    raw = aa.raw(payload)
    parse = wire.parse_legacy_answer if protocol == "legacy" else wire.parse_rest_answer
    answer = parse(raw)
    assert answer.ac is None and answer.rule == wire.RULE_BAD_REQUEST
    assert answer.message.startswith("malformed request: ") and message in answer.message, answer
    assert b"Traceback" not in raw
    assert aa.legacy(wire.AcRequest(("/dteam",))).ok  # and the service is intact


def test_an_oversized_request_is_cut_short(aa: Aa) -> None:
    answer = wire.parse_legacy_answer(aa.raw(b"<voms><command>" + b"G" * 40_000))
    assert f"more than {wire.MAX_REQUEST_BYTES} bytes" in answer.message
    assert aa.legacy(wire.AcRequest(("/dteam",))).ok


def test_the_zero_record_is_optional(aa: Aa) -> None:
    raw = aa.raw(wire.encode_legacy_request(wire.AcRequest(("/dteam",))), zero=False)
    assert wire.parse_legacy_answer(raw).ok


def test_an_unfinished_request_times_out_with_an_answer(
    aa: Aa, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aa_server, "REQUEST_TIMEOUT", 0.5)
    started = time.monotonic()
    answer = wire.parse_rest_answer(aa.raw(b"GET /generate-ac?fqans=/dteam HTTP/1.0\n"))
    assert time.monotonic() - started < 5
    assert answer.status == 400 and "incomplete after" in answer.message


def test_a_client_that_goes_away_leaves_the_service_intact(aa: Aa) -> None:
    for payload in (b"", b"0", b"0<voms><command>G/dte"):
        with (
            socket.create_connection(("127.0.0.1", aa.port), timeout=10) as sock,
            aa.context("alice").wrap_socket(sock, server_hostname="localhost") as tls,
        ):
            if payload:
                tls.sendall(payload)
    assert aa.rest(wire.AcRequest(("/dteam",))).ok


# Bytes after a request's end would be unread when the server closes, and the kernel would
# reset the connection (losing the answer): the fuzzed middle holds no end of either kind.
_MIDDLES = st.binary(max_size=300).filter(lambda b: b"\n" not in b and b"</voms>" not in b)
_HEADS = st.sampled_from([b"", b"GET ", b"GET /generate-ac?", b"<voms>", b"<voms><command>"])


@settings(
    max_examples=40,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
@given(head=_HEADS, middle=_MIDDLES)
def test_fuzzed_requests_get_an_answer_and_no_ac(aa: Aa, head: bytes, middle: bytes) -> None:
    body = head + middle
    payload = body + (b"\n\n" if wire.is_rest(body) else b"</voms>")
    raw = aa.raw(payload)
    parse = wire.parse_rest_answer if wire.is_rest(payload) else wire.parse_legacy_answer
    try:
        answer = parse(raw)
    except wire.WireError as exc:  # pragma: no cover - shown with the payload
        raise AssertionError(f"{payload!r} got an unparsable answer {raw[:200]!r}: {exc}") from None
    if answer.ac is not None:  # a fuzzed request that happens to be a valid one
        assert answer.ok
    else:
        assert answer.rule in (wire.RULE_BAD_REQUEST, wire.RULE_UNKNOWN_USER), answer


def test_still_serving_after_the_fuzz(aa: Aa) -> None:
    assert aa.legacy(wire.AcRequest(("/dteam",))).ok


# --- limits and configuration ----------------------------------------------------------------------


def test_connections_over_the_limit_are_closed_before_tls(dev_pki: DevPKI, tmp_path: Path) -> None:
    limits = AaConfig(max_connections=1, max_connections_per_peer=1)
    with running_server(dev_pki, tmp_path / "state", aa=limits) as server:
        client = Aa(server, dev_pki)
        with socket.create_connection(("127.0.0.1", client.port), timeout=10) as held:
            time.sleep(0.2)  # accepted and counted
            with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                client.raw(wire.encode_legacy_request(wire.AcRequest(("/dteam",))))
            held.close()
        deadline = time.monotonic() + 5
        while True:  # the slot comes back once the server has seen the close
            try:
                assert client.legacy(wire.AcRequest(("/dteam",))).ok
                break
            except (ssl.SSLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def _config(dev_pki: DevPKI, extra: str, *, drop_voms: bool = False) -> str:
    text = dev_pki.config.read_text()
    if drop_voms:
        text = text.split("[[voms]]", 1)[0]
    return text + extra


def test_aa_is_off_by_default_and_validated(dev_pki: DevPKI) -> None:
    source = dev_pki.config
    assert parse_config(_config(dev_pki, ""), source).aa.listen is None
    config = parse_config(
        _config(dev_pki, '\n[aa]\nlisten = "127.0.0.1:15000"\nmax_connections = 10\n'), source
    )
    assert (str(config.aa.listen), config.aa.max_connections) == ("127.0.0.1:15000", 10)
    with pytest.raises(ConfigError, match=r"\[aa\] listen: the AA endpoint serves the VOs"):
        parse_config(
            _config(dev_pki, '\n[aa]\nlisten = "127.0.0.1:15000"\n', drop_voms=True), source
        )
    with pytest.raises(ConfigError, match=r"\[aa\] listen must be \"HOST:PORT\""):
        parse_config(_config(dev_pki, '\n[aa]\nlisten = "15000"\n'), source)
    with pytest.raises(ConfigError, match=r"\[aa\] max_connections_per_peer \(9\) is larger"):
        parse_config(
            _config(dev_pki, "\n[aa]\nmax_connections = 5\nmax_connections_per_peer = 9\n"), source
        )
    with pytest.raises(ConfigError, match=r"\[aa\] has unknown key\(s\) port"):
        parse_config(_config(dev_pki, "\n[aa]\nport = 15000\n"), source)


def test_a_banned_user_is_suspended(dev_pki: DevPKI, tmp_path: Path) -> None:
    policy = dataclasses.replace(
        load_config(dev_pki.config).policy, banned_dns=("/C=XX/O=proxyd dev/OU=Users/CN=bob",)
    )
    with running_server(dev_pki, tmp_path / "state", aa=True, policy=policy) as server:
        client = Aa(server, dev_pki)
        legacy = client.legacy(wire.AcRequest(("/dteam",)), "bob")
        rest = client.rest(wire.AcRequest(("/dteam",)), "bob")
        assert [e.code for e in legacy.errors] == [wire.LEGACY_SUSPENDED]
        assert (rest.status, rest.errors[0].code) == (403, wire.REST_SUSPENDED_USER)
        assert "(proxyd policy rule: ban.peer)" in rest.message
        assert [t[:2] for t in client.trail()] == [("deny", "ban.peer")] * 2


def test_proxyds_own_upstream_client_against_the_aa(aa: Aa) -> None:
    """proxyd's VomsAaClient (the upstream path) and its [aa] edge understand each other."""
    cert_path, key_path = aa.pki.user("alice")
    context = client_context(
        aa.pki.cert_dir,
        [x509.load_pem_x509_certificate(cert_path.read_bytes())],
        serialization.load_pem_private_key(key_path.read_bytes(), password=None),
    )
    entry = VomsesEntry(
        "dteam", "localhost", aa.port, "/C=XX/O=proxyd dev/OU=Hosts/CN=localhost", "dteam"
    )
    fetched = VomsAaClient(timeout=10).fetch([entry], context, wire.AcRequest(("/dteam",), 3600))
    assert (fetched.protocol, fetched.fallback_reason) == ("rest", None)
    assert fetched.ac.fqans == (DTEAM, ANALYSIS)
    for fqan, rule in [
        ("/ops", wire.RULE_UNKNOWN_USER),  # served here, but alice is not a member
        ("/dteam/Role=pilot", wire.RULE_ROLE_NOT_HELD),
        ("/atlas", wire.RULE_BAD_REQUEST),  # not served here
    ]:
        with pytest.raises(UpstreamRefusal) as refused:
            VomsAaClient(timeout=10).fetch([entry], context, wire.AcRequest((fqan,)))
        assert refused.value.rule == rule, (fqan, refused.value.message)
