"""The unit that per-peer limits count by: an IPv4 address, or an IPv6 /64.

A host or site is given a whole IPv6 /64 (SLAAC, privacy addresses), so an
attacker there can use a fresh address for every connection or guess;
counting IPv6 peers per address would give them 2**64 allowances. IPv4
addresses, and IPv6 addresses that carry one (IPv4-mapped), count one each.
"""

from __future__ import annotations

import ipaddress

__all__ = ["IPV6_PREFIX", "peer_group"]

IPV6_PREFIX = 64


def peer_group(host: str) -> str:
    """The group `host` counts in: '192.0.2.7', '2001:db8:1:2::/64'; other text as given."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])  # a zone (fe80::1%eth0) is local
    except ValueError:
        return host  # not an IP address (a UNIX socket path, an empty peer): itself
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
    return str(ip)
