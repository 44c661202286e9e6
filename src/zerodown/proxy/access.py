"""Who may reach a service: `allow` and `deny` networks, compiled once per table.

Pure. A client is refused when it is in a `deny` network, or when `allow`
is given and it is in none of them: deny wins over allow, so a team can
allow 10.0.0.0/8 and still shut out one subnet inside it. The address is
the one the proxy computed for the request (exchange.client_ip: the peer,
or whom a trusted proxy forwards for), never a header taken on faith.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Final

__all__ = ["AccessList"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# Verdicts remembered per address: a client sends many requests, and a parse
# plus a walk of the networks costs more than a dict lookup. Bounded so that
# a spray of addresses cannot grow it; past the bound, verdicts are computed.
_CACHE_MAX: Final = 65536


class AccessList:
    __slots__ = ("_allow", "_cache", "_deny")

    def __init__(self, allow: Sequence[str], deny: Sequence[str]) -> None:
        self._allow: tuple[Network, ...] = tuple(ipaddress.ip_network(n) for n in allow)
        self._deny: tuple[Network, ...] = tuple(ipaddress.ip_network(n) for n in deny)
        self._cache: dict[str, str | None] = {}

    def __repr__(self) -> str:
        return f"<AccessList allow={len(self._allow)} deny={len(self._deny)}>"

    @property
    def empty(self) -> bool:
        return not (self._allow or self._deny)

    def refusal(self, address: str) -> str | None:
        """The rule that refuses `address`, for the log and the 403; None to let it in."""
        cache = self._cache
        if address in cache:
            return cache[address]
        verdict = self._judge(address)
        if len(cache) < _CACHE_MAX:
            cache[address] = verdict
        return verdict

    def _judge(self, address: str) -> str | None:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            # Not an address (a unix socket peer): only an allow list can refuse it.
            return "allow (client address unknown)" if self._allow else None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:10.1.2.3 on a dual-stack socket is 10.1.2.3
        for net in self._deny:
            if ip.version == net.version and ip in net:
                return f"deny {net}"
        if self._allow and not any(ip.version == n.version and ip in n for n in self._allow):
            return "allow (not in " + ", ".join(str(n) for n in self._allow) + ")"
        return None
