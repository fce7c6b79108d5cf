"""Per-peer limits count IPv4 addresses one by one and IPv6 addresses by /64."""

from __future__ import annotations

import pytest

from proxyd.connlimit import PER_PEER, ConnectionGate, peer_key
from proxyd.peers import peer_group


@pytest.mark.parametrize(
    ("host", "group"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),  # a dual-stack listener's view of an IPv4 client
        ("2001:db8:1:2:a:b:c:d", "2001:db8:1:2::/64"),
        ("2001:DB8:1:2::1", "2001:db8:1:2::/64"),
        ("::1", "::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("", ""),  # no address (a test principal, a UNIX socket): itself
        ("local", "local"),
    ],
)
def test_peer_group(host: str, group: str) -> None:
    assert peer_group(host) == group


def test_peer_key_takes_the_host_of_a_socket_address() -> None:
    assert peer_key(("2001:db8::5", 7512, 0, 0)) == "2001:db8::/64"
    assert peer_key(("192.0.2.1", 7512)) == "192.0.2.1"


def test_addresses_of_one_ipv6_64_share_one_per_peer_allowance() -> None:
    """A host with a /64 cannot multiply max_connections_per_peer by changing address."""
    gate = ConnectionGate("myproxy", 10, 2)
    first, second, third = (peer_key((f"2001:db8:0:1::{i}", 7512)) for i in (1, 2, 3))
    assert gate.admit(first) is None and gate.admit(second) is None
    assert gate.admit(third) == PER_PEER
    assert gate.admit(peer_key(("2001:db8:0:2::1", 7512))) is None  # the next /64 is another peer
    assert gate.admit(peer_key(("192.0.2.1", 7512))) is None
    assert gate.admit(peer_key(("192.0.2.2", 7512))) is None  # IPv4: every address its own
    gate.close()
