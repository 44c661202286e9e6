"""`[proxy] proxy_protocol` as nginx configuration. Pure.

nginx can only demand the header of a whole listener (`listen …
proxy_protocol`): every connection, from any peer, must then send one, and a
connection without it is closed ("broken header" in the error log). So on
nginx, unlike embedded and HAProxy, nobody can reach the proxy without
going through a balancer that sends it.

Whose header counts is realip's: `set_real_ip_from` the trusted proxies with
`real_ip_header proxy_protocol` makes `$remote_addr` the client a trusted
peer's header names (allow/deny, rate limits, `ip_hash`, the log); the peer
stays `$realip_remote_addr`. A header from any other peer names nobody and
its connection is refused (444, closed without an answer), as the embedded
proxy refuses it. X-Forwarded-For is then not walked (realip reads one
source): the header's client is the hop trust is judged on, as if it had
connected itself.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

__all__ = ["PEER_TRUSTED", "proxied_server", "realip"]

PEER_TRUSTED: Final = "zd_pp_peer"  # 1 when the connection's own peer is a trusted proxy
# A TCP listener of a server block (the control server's unix: socket is not one).
_LISTEN: Final = re.compile(r"^([ \t]*listen (?!unix:)[^;\n]*?)( default_server)?;$", re.M)


def realip(trusted: Sequence[str]) -> list[str]:
    """http-level lines: the client from a trusted peer's header, and who that peer is."""
    entries = " ".join(f"{cidr} 1;" for cidr in trusted)
    return [
        *(f"set_real_ip_from {cidr};" for cidr in trusted),
        "real_ip_header proxy_protocol;",
        f"geo $realip_remote_addr ${PEER_TRUSTED} {{ default 0; {entries} }}",
    ]


def proxied_server(block: str) -> str:
    """A `server {}` block whose listeners expect the header, refusing untrusted peers."""
    marked = _LISTEN.sub(lambda m: f"{m[1]} proxy_protocol{m[2] or ''};", block)
    if marked == block:
        return block
    last = list(_LISTEN.finditer(marked))[-1]
    indent = last[0][: len(last[0]) - len(last[0].lstrip())]
    refuse = f"\n{indent}if (${PEER_TRUSTED} = 0) {{ return 444; }}"
    return marked[: last.end()] + refuse + marked[last.end() :]
