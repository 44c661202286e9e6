"""A service's edge rules (guardspec.py) as HAProxy backend rules. Pure.

Rendered into the service's backend, so they see only its requests, in the
embedded proxy's order: deny/allow, block, then the rate limit, each
refusal an `http-request return` whose body names the rule, as the
embedded proxy's does. The client is `txn.zd_client`: the peer, or, from a
trusted proxy, the X-Forwarded-For hop it names, walked from the right past
trusted hops (up to TRUSTED_HOPS of them; the frontend already dropped the
header of an untrusted peer).

The rate limit is a stick table counting requests over a sliding window,
HAProxy's own tool, not a token bucket: `requests + burst` requests per
window of `(requests + burst) / rate` seconds gives the same burst at once
and the same rate sustained; a refused request counts in the window too.
The table is shared by HAProxy's threads (one process).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

from zerodown.guardspec import GuardSpec, RateLimitSpec, rate_key_header
from zerodown.routing import ServiceSpec

__all__ = ["TRUSTED_HOPS", "guard_lines", "quoted"]

TRUSTED_HOPS: Final = 3
TABLE_SIZE: Final = "100k"  # entries; the oldest is dropped when full
_ADVICE: Final = {
    "denied": "this service does not accept requests from your address",
    "blocked": "this request matches a rule that blocks it; it was not sent on",
    "rate_limited": "too many requests; retry after the number of seconds in Retry-After",
}
_REASONS: Final = {403: "Forbidden", 429: "Too Many Requests"}


def quoted(text: str) -> str:
    """One HAProxy config word holding `text` as is: single quotes keep
    backslashes and `$` literal; a quote itself is closed, escaped, reopened."""
    return "'" + text.replace("'", "'\\''") + "'"


def guard_lines(spec: ServiceSpec, trusted: Sequence[str]) -> list[str]:
    """The backend's `http-request` rules for `spec.guard`; none without one."""
    guard = spec.guard
    if guard is None or guard.empty:
        return []
    lines = _client(trusted)
    lines += _access(guard)
    lines += _block(guard)
    if guard.rate_limit is not None:
        lines += _rate_limit(guard.rate_limit)
    return lines


def _client(trusted: Sequence[str]) -> list[str]:
    lines = ["http-request set-var(txn.zd_client) src"]
    if not trusted:
        return lines
    nets = " ".join(trusted)
    for hop in range(1, TRUSTED_HOPS + 1):
        # Step on only while what we hold is trusted: the peer, then each hop.
        holder = "src" if hop == 1 else "var(txn.zd_client)"
        lines.append(
            f"http-request set-var(txn.zd_client) req.hdr_ip(x-forwarded-for,-{hop}) "
            f"if {{ {holder} -m ip {nets} }} {{ req.hdr_ip(x-forwarded-for,-{hop}) -m found }}"
            + (f" {{ src -m ip {nets} }}" if hop > 1 else "")
        )
    return lines


def _refuse(kind: str, rule: str, status: int = 403, retry_after: int = 0) -> str:
    # Quoted lines joined by "\n" in weak quotes: single quotes cannot hold a newline.
    body = "".join(
        quoted(line) + '"\\n"' for line in (f"{status} {_REASONS[status]}: {rule}", _ADVICE[kind])
    )
    retry = f" hdr Retry-After {retry_after}" if retry_after else ""
    return (
        f"http-request return status {status} content-type text/plain "
        f"hdr X-Zerodown-Error {kind}{retry} string {body}"
    )


def _access(guard: GuardSpec) -> list[str]:
    lines = [
        f"{_refuse('denied', f'deny {net}')} if {{ var(txn.zd_client) -m ip {net} }}"
        for net in guard.deny
    ]
    if guard.allow:
        nets = " ".join(guard.allow)
        rule = f"allow (not in {', '.join(guard.allow)})"
        lines.append(f"{_refuse('denied', rule)} unless {{ var(txn.zd_client) -m ip {nets} }}")
    return lines


def _block(guard: GuardSpec) -> list[str]:
    block = guard.block
    if block is None:
        return []
    lines = [
        f"{_refuse('blocked', f'block.methods {method}')} if {{ method {method} }}"
        for method in block.methods
    ]
    for pattern in block.paths:
        regex = quoted(pattern)
        # As sent and percent-decoded: an app decodes /%2egit to /.git.
        condition = f"{{ path -m reg {regex} }} || {{ path,url_dec -m reg {regex} }}"
        lines.append(f"{_refuse('blocked', f'block.paths {pattern}')} if {condition}")
    for pattern in block.user_agents:
        condition = f"{{ req.fhdr(user-agent) -m reg -i {quoted(pattern)} }}"
        lines.append(f"{_refuse('blocked', f'block.user_agents {pattern}')} if {condition}")
    return lines


def window(limit: RateLimitSpec) -> int:
    """Milliseconds of the sliding window that carries the bucket's burst and rate."""
    return max(1, math.ceil(limit.capacity / limit.rate * 1000))


def _rate_limit(limit: RateLimitSpec) -> list[str]:
    ms = window(limit)
    header = rate_key_header(limit)
    store = f"size {TABLE_SIZE} expire {2 * ms}ms store http_req_rate({ms}ms)"
    if header is None:
        lines = [f"stick-table type ip {store}", "http-request track-sc0 var(txn.zd_client)"]
    else:
        # Without the header a client is keyed by its address (as embedded).
        lines = [
            f"stick-table type string len 128 {store}",
            f"http-request set-var(txn.zd_key) req.fhdr({header})",
            "http-request set-var(txn.zd_key) var(txn.zd_client) "
            "unless { var(txn.zd_key) -m found }",
            "http-request track-sc0 var(txn.zd_key)",
        ]
    what = f"header {header}" if header else "address"
    rule = f"rate_limit ({limit.capacity} at once, {limit.rate:g}/s per {what})"
    refuse = _refuse("rate_limited", rule, 429, limit.retry_after)
    return [*lines, f"{refuse} if {{ sc_http_req_rate(0) gt {limit.capacity} }}"]
