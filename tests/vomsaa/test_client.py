"""The upstream client and authority against a loopback TLS stand-in for a VOMS server.

The stand-in speaks the answer shapes captured from the real tools
(PROTOCOLS.md §4) for the cases the real voms-server cannot be made to show
here (a working REST handler, HTTP/1.0, garbage, silence, a wrong DN, an
untrusted AC); tests/interop/test_upstream_aa.py runs against the real one.
"""

from __future__ import annotations

import datetime as dt
import socket
import time
from collections.abc import Callable

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from proxyd.devpki import DevPKI, host_dn
from proxyd.vomsaa import wire
from proxyd.vomsaa.client import REST_RETRY_AFTER, UpstreamRefusal, VomsAaClient
from proxyd.vomsaa.upstream import AC_REUSE, UpstreamAuthority, asked_end
from proxyd.vomsaa.vomses import UpstreamVoConfig, VomsesEntry
from tests.vomsaa.standin import (
    ALICE,
    HANG,
    NOW,
    Alice,
    Handler,
    StandIn,
    context_for,
    legacy_ok,
    make_ac,
    rest_ok,
    silent,
)
from voms_ext import (
    ProxyType,
    TrustStore,
    classify,
    load_credential_file,
)
from voms_ext.names import dn_to_slash

REQUEST = wire.AcRequest(("/dteam",), 3600)


def test_rest_answer_is_used_as_voms_proxy_init_would(
    dev_pki: DevPKI, stand_in: Callable[..., StandIn], alice: Alice
) -> None:
    der = make_ac(dev_pki, alice[0][0])
    s = stand_in(rest_ok(der))
    got = VomsAaClient(5).fetch([s.entry()], context_for(dev_pki), REQUEST)
    assert (got.protocol, got.fallback_reason, got.ac.der) == ("rest", None, der)
    assert s.requests == [wire.encode_rest_request(REQUEST, "127.0.0.1", s.port)]


@pytest.mark.parametrize(
    ("first", "reason"),
    [
        (silent, "closed the connection without answering"),
        (
            lambda r: wire.encode_rest_answer(b"AC").replace(b"HTTP/1.1", b"HTTP/1.0"),
            "HTTP/1.0 200",
        ),
        (lambda r: b"HTTP/1.1 404 Not Found\r\n\r\n", "HTTP/1.1 404"),
    ],
    ids=["debian-silence", "http-1.0", "not-found"],
)
def test_rest_falls_back_to_legacy(
    dev_pki: DevPKI, stand_in: Callable[..., StandIn], alice: Alice, first: Handler, reason: str
) -> None:
    der = make_ac(dev_pki, alice[0][0])
    s = stand_in(first, legacy_ok(der))
    got = VomsAaClient(5).fetch([s.entry()], context_for(dev_pki), REQUEST)
    assert got.protocol == "legacy" and got.ac.der == der
    assert got.fallback_reason is not None and reason in got.fallback_reason
    assert s.requests[1] == wire.encode_legacy_request(REQUEST)


def test_a_server_whose_rest_was_unusable_is_asked_legacy_first_for_a_while(
    dev_pki: DevPKI, stand_in: Callable[..., StandIn], alice: Alice
) -> None:
    der = make_ac(dev_pki, alice[0][0])
    legacy = wire.encode_legacy_request(REQUEST)
    rest = wire.encode_rest_request
    now = [1000.0]
    # Debian 12's voms-server: REST closes, legacy answers, every time.
    s = stand_in(silent, legacy_ok(der), legacy_ok(der), legacy_ok(der), silent, legacy_ok(der))
    client = VomsAaClient(5, clock=lambda: now[0])
    first = client.fetch([s.entry()], context_for(dev_pki), REQUEST)
    assert first.protocol == "legacy" and "closed the connection" in (first.fallback_reason or "")
    assert s.requests == [rest(REQUEST, "127.0.0.1", s.port), legacy]

    # The next AC costs one connection, not two, and says why.
    second = client.fetch([s.entry()], context_for(dev_pki), REQUEST)
    assert (second.protocol, second.ac.der) == ("legacy", der)
    assert "(remembered for this server)" in (second.fallback_reason or "")
    assert s.requests[2:] == [legacy]

    now[0] += REST_RETRY_AFTER - 1
    client.fetch([s.entry()], context_for(dev_pki), REQUEST)
    assert s.requests[3:] == [legacy]

    # Ten minutes on, REST is given another chance.
    now[0] += 2
    client.fetch([s.entry()], context_for(dev_pki), REQUEST)
    assert s.requests[4:] == [rest(REQUEST, "127.0.0.1", s.port), legacy]


def test_when_the_remembered_legacy_protocol_fails_rest_is_tried_at_once(
    dev_pki: DevPKI, stand_in: Callable[..., StandIn], alice: Alice
) -> None:
    der = make_ac(dev_pki, alice[0][0])
    # Upgraded in between: legacy gone (the server closes), REST answers.
    s = stand_in(silent, legacy_ok(der), silent, rest_ok(der), rest_ok(der))
    client = VomsAaClient(5)
    assert client.fetch([s.entry()], context_for(dev_pki), REQUEST).protocol == "legacy"
    again = client.fetch([s.entry()], context_for(dev_pki), REQUEST)
    assert (again.protocol, again.fallback_reason) == ("rest", None)
    assert len(s.requests) == 4
    # Forgotten: the next AC is asked in REST first.
    assert client.fetch([s.entry()], context_for(dev_pki), REQUEST).protocol == "rest"
    assert s.requests[4] == wire.encode_rest_request(REQUEST, "127.0.0.1", s.port)


def test_a_rest_refusal_of_the_user_is_final(
    dev_pki: DevPKI, stand_in: Callable[..., StandIn]
) -> None:
    unknown = wire.AaError(wire.REST_NO_SUCH_USER, "dteam: User unknown to this VO.")
    s = stand_in(lambda r: wire.encode_rest_answer(unknown))
    with pytest.raises(UpstreamRefusal) as info:
        VomsAaClient(5).fetch([s.entry()], context_for(dev_pki), REQUEST)
    assert info.value.rule == "voms.upstream_unknown_user"
    assert "User unknown to this VO" in info.value.message
    assert len(s.requests) == 1  # no legacy retry, as voms-proxy-init


def test_failing_servers_are_followed_by_the_next_one(
    dev_pki: DevPKI, stand_in: Callable[..., StandIn], alice: Alice
) -> None:
    closed = socket.create_server(("127.0.0.1", 0))
    dead = VomsesEntry("dteam", "127.0.0.1", closed.getsockname()[1], host_dn("localhost"), "dteam")
    closed.close()
    db_error = wire.AaError(wire.LEGACY_WITH_DB, "dteam: Problems in DB communication.")
    broken = stand_in(silent, lambda r: wire.encode_legacy_answer(db_error))
    der = make_ac(dev_pki, alice[0][0])
    good = stand_in(silent, legacy_ok(der))
    got = VomsAaClient(5).fetch([dead, broken.entry(), good.entry()], context_for(dev_pki), REQUEST)
    assert got.server == good.entry() and got.ac.der == der

    with pytest.raises(UpstreamRefusal) as info:
        VomsAaClient(5).fetch([dead], context_for(dev_pki), REQUEST)
    assert info.value.rule == "voms.upstream_unreachable"
    assert f"127.0.0.1:{dead.port}: cannot connect" in info.value.message


def test_a_silent_server_times_out_within_the_bound(
    dev_pki: DevPKI, stand_in: Callable[..., StandIn]
) -> None:
    s = stand_in(lambda r: HANG)
    start = time.monotonic()
    with pytest.raises(UpstreamRefusal) as info:
        VomsAaClient(0.5).fetch([s.entry()], context_for(dev_pki), REQUEST)
    assert time.monotonic() - start < 3
    assert info.value.rule == "voms.upstream_timeout"
    assert "no complete answer within 0.5 s" in info.value.message


def test_garbage_and_wrong_dn(dev_pki: DevPKI, stand_in: Callable[..., StandIn]) -> None:
    s = stand_in(silent, lambda r: b"<html>hello</html>")
    with pytest.raises(UpstreamRefusal) as info:
        VomsAaClient(5).fetch([s.entry()], context_for(dev_pki), REQUEST)
    assert info.value.rule == "voms.upstream_error"
    assert "expected <vomsans>, found <html>" in info.value.message

    other = stand_in(silent)
    with pytest.raises(UpstreamRefusal) as info:
        VomsAaClient(5).fetch(
            [other.entry("/C=XX/O=elsewhere/CN=voms.example.org")], context_for(dev_pki), REQUEST
        )
    assert info.value.rule == "voms.upstream_unreachable"
    assert "not '/C=XX/O=elsewhere/CN=voms.example.org' as vomses says" in info.value.message


# --- the authority: authentication proxy, verification, cache -------------------------------------


def authority(pki: DevPKI, *servers: StandIn, timeout: float = 5) -> UpstreamAuthority:
    config = UpstreamVoConfig(
        "dteam", pki.vomses, tuple(s.entry() for s in servers), dt.timedelta(seconds=timeout)
    )
    trust = TrustStore.from_dirs(pki.cert_dir, pki.voms_dir)
    return UpstreamAuthority(config, lambda: trust)


@given(st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2100, 1, 1)))
@example(
    dt.datetime(2026, 12, 7, 17, 58, 31)
)  # CI, stop 24: the proxy ended in the hour's last 2 min
@example(dt.datetime(2026, 12, 7, 17, 0, 0))
def test_acs_are_asked_to_end_a_minute_before_an_hour_after_the_proxy(naive: dt.datetime) -> None:
    limit = naive.replace(tzinfo=dt.UTC)
    end = asked_end(limit)
    assert (end.minute, end.second, end.microsecond) == (59, 0, 0)
    assert limit + dt.timedelta(minutes=1) <= end <= limit + dt.timedelta(minutes=61)


def test_obtain_authenticates_with_a_proxy_of_the_owner_and_caches(
    dev_pki: DevPKI, stand_in: Callable[..., StandIn], alice: Alice
) -> None:
    chain, key = alice
    der = make_ac(dev_pki, chain[0])
    s = stand_in(rest_ok(der), rest_ok(make_ac(dev_pki, chain[0], ("/dteam/analysis",))))
    aa = authority(dev_pki, s)
    ac = aa.obtain(chain, key, ("/dteam",), dt.timedelta(hours=1), NOW)
    assert ac.der == der
    # Asked to end a minute before the hour after the proxy: shared by the proxies of that hour.
    asked = wire.parse_rest_request(s.requests[0]).lifetime
    assert asked is not None
    end = NOW + dt.timedelta(seconds=asked)
    assert (end.minute, end.second) == (59, 0)
    assert end == asked_end(NOW + dt.timedelta(hours=1))
    leaf = s.peers[0]
    assert classify(leaf).type is ProxyType.RFC_IMPERSONATION
    assert leaf.issuer == chain[0].subject  # signed with the stored key, which stays here
    assert dn_to_slash(chain[0].subject) == ALICE

    # Warm: the same AC with no round trip, for a proxy it covers.
    assert aa.obtain(chain, key, ("/dteam",), dt.timedelta(minutes=90), NOW).der == der
    assert aa.fetches == 1
    # Other FQANs: a round trip, on the same authentication proxy.
    aa.obtain(chain, key, ("/dteam/analysis",), dt.timedelta(hours=1), NOW)
    assert aa.fetches == 2
    assert s.peers[1].serial_number == leaf.serial_number


def test_cache_never_serves_an_ac_too_short_or_too_old(
    dev_pki: DevPKI, stand_in: Callable[..., StandIn], alice: Alice
) -> None:
    chain, key = alice
    s = stand_in(*(rest_ok(make_ac(dev_pki, chain[0])) for _ in range(3)))
    aa = authority(dev_pki, s)
    aa.obtain(chain, key, ("/dteam",), dt.timedelta(hours=1), NOW)
    aa.obtain(chain, key, ("/dteam",), dt.timedelta(hours=5), NOW)  # longer than the AC
    assert aa.fetches == 2
    later = NOW + AC_REUSE + dt.timedelta(seconds=1)
    aa.obtain(chain, key, ("/dteam",), dt.timedelta(minutes=30), later)
    assert aa.fetches == 3


@pytest.mark.parametrize(
    ("signer", "holder_of", "match"),
    [
        ("wms", "alice", "does not match"),
        ("aa", "bob", "granted to a different certificate"),
    ],
)
def test_an_ac_that_does_not_verify_is_never_returned(
    dev_pki: DevPKI,
    stand_in: Callable[..., StandIn],
    alice: Alice,
    signer: str,
    holder_of: str,
    match: str,
) -> None:
    chain, key = alice
    holder = load_credential_file(dev_pki.user(holder_of)[0]).certificate
    s = stand_in(rest_ok(make_ac(dev_pki, holder, signer=signer)))
    with pytest.raises(UpstreamRefusal) as info:
        authority(dev_pki, s).obtain(chain, key, ("/dteam",), dt.timedelta(hours=1), NOW)
    assert info.value.rule == "voms.upstream_bad_ac"
    assert match in info.value.message


def test_client_vomses_lines_choose_the_server(
    dev_pki: DevPKI, stand_in: Callable[..., StandIn], alice: Alice
) -> None:
    chain, key = alice
    first = stand_in(rest_ok(make_ac(dev_pki, chain[0])))
    second = stand_in(rest_ok(make_ac(dev_pki, chain[0])))
    aa = authority(dev_pki, first, second)
    line = f'"dteam" "127.0.0.1" "{second.port}" "/CN=whatever" "dteam"'
    aa.obtain(chain, key, ("/dteam",), dt.timedelta(hours=1), NOW, [line])
    assert (len(first.requests), len(second.requests)) == (0, 1)
    assert aa.last_fetch is not None and aa.last_fetch.server == second.entry()
