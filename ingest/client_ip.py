"""The client's IP address: the peer's, or the forwarded one when the peer is a trusted proxy.

Forwarded headers are believed only from peers in TRUSTED_PROXIES, because anyone can send
them. The chain is walked from the right (the hop nearest to us) and the first address that is
not itself a trusted proxy is the client. IPv6 addresses are kept whole; brackets, ports and
zone ids are removed; IPv4-mapped IPv6 addresses become plain IPv4.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_FORWARDED_FOR = re.compile(r'for\s*=\s*("[^"]*"|[^;,\s]+)', re.IGNORECASE)


def parse_networks(spec: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Parse a comma-separated list of addresses and CIDR ranges; raise ValueError naming a bad one."""
    networks = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"invalid address or CIDR range {part!r} in TRUSTED_PROXIES") from None
    return tuple(networks)


@functools.lru_cache(maxsize=8192)
def parse_ip(text: str | None) -> IPAddress | None:
    """Parse one address as it appears in a header or a socket name; None when it is not an address.

    Cached: a connection's peer and a proxy's addresses repeat on every request.
    """
    if not text:
        return None
    text = text.strip().strip('"')
    if text.startswith("["):
        text, closed, _port = text[1:].partition("]")
        if not closed:
            return None
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    text = text.split("%", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@functools.lru_cache(maxsize=8192)
def address_text(text: str | None) -> str | None:
    """Return parse_ip(text) as a string. Cached, because str() of an address runs pure Python on every request."""
    address = parse_ip(text)
    return None if address is None else str(address)


def _is_trusted(address: IPAddress, trusted: Iterable) -> bool:
    return any(address.version == network.version and address in network for network in trusted)


def forwarded_chain(forwarded: str | None, x_forwarded_for: str | None) -> list[str]:
    """Return the client chain, leftmost first, from `Forwarded` or else `X-Forwarded-For`."""
    if forwarded:
        return _FORWARDED_FOR.findall(forwarded)
    if x_forwarded_for:
        return [part.strip() for part in x_forwarded_for.split(",") if part.strip()]
    return []


def client_ip(peer: str | None, forwarded: str | None, x_forwarded_for: str | None, trusted: tuple) -> str | None:
    """Return the client address as a string, or None when the peer is unknown."""
    if not trusted:
        return address_text(peer)
    address = parse_ip(peer)
    if address is None:
        return None
    if not _is_trusted(address, trusted):
        return address_text(peer)

    for hop in reversed(forwarded_chain(forwarded, x_forwarded_for)):
        hop_address = parse_ip(hop)
        if hop_address is None:
            # An unparsable hop (`unknown`, an obfuscated name) ends what we can believe.
            break
        address = hop_address
        if not _is_trusted(hop_address, trusted):
            break
    return str(address)
