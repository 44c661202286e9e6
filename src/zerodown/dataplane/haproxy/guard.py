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

Each refusal first sets `txn.zd_refusal` to `<kind>,<index>,<client>` (the
rule's place in `refusal_rules`), then returns if it is set: the condition
is evaluated once, the first rule that matches wins as before, and the
per-request log line carries the word (latency.LOG_FORMAT), so the driver
counts the refusal per service and logs it with its rule. An index, not
the rule's text: a pattern may hold spaces, quotes or `%`, which a log
word and a log-format cannot carry as they are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final, NamedTuple

from zerodown.guardspec import GuardSpec, RateLimitSpec, rate_key_header
from zerodown.routing import ServiceSpec

__all__ = ["REFUSAL_VAR", "TRUSTED_HOPS", "guard_lines", "quoted", "refusal_rules"]

TRUSTED_HOPS: Final = 3
TABLE_SIZE: Final = "100k"  # entries; the oldest is dropped when full
_ADVICE: Final = {
    "denied": "this service does not accept requests from your address",
    "blocked": "this request matches a rule that blocks it; it was not sent on",
    "rate_limited": "too many requests; retry after the number of seconds in Retry-After",
}
_REASONS: Final = {403: "Forbidden", 429: "Too Many Requests"}
REFUSAL_VAR: Final = "txn.zd_refusal"


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
    for index, (refusal, condition) in enumerate(_refusals(guard)):
        if refusal.kind == "rate_limited" and guard.rate_limit is not None:
            # Counted only now: a request refused for its address or its path
            # takes no part of the window (as embedded: no token).
            lines += _tracking(guard.rate_limit)
        lines += _refuse(refusal, index, condition)
    return lines


def refusal_rules(spec: ServiceSpec) -> list[tuple[str, str]]:
    """(kind, rule) of each refusal of the service, by the index its log word carries."""
    guard = spec.guard
    if guard is None or guard.empty:
        return []
    return [(refusal.kind, refusal.rule) for refusal, _ in _refusals(guard)]


class _Refusal(NamedTuple):
    kind: str  # denied | blocked | rate_limited
    rule: str  # as the 403/429 body and the log name it
    status: int = 403
    retry_after: int = 0


def _refusals(guard: GuardSpec) -> list[tuple[_Refusal, str]]:
    """Each refusal with its condition, in the order they are tried."""
    found = _access(guard) + _block(guard)
    if guard.rate_limit is not None:
        found.append(_rate_limit(guard.rate_limit))
    return found


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


def _refuse(refusal: _Refusal, index: int, condition: str) -> list[str]:
    """Mark the request (kind, index, client: the log's word), then answer it."""
    status, kind = refusal.status, refusal.kind
    # Quoted lines joined by "\n" in weak quotes: single quotes cannot hold a newline.
    body = "".join(
        quoted(line) + '"\\n"'
        for line in (f"{status} {_REASONS[status]}: {refusal.rule}", _ADVICE[kind])
    )
    retry = f" hdr Retry-After {refusal.retry_after}" if refusal.retry_after else ""
    return [
        f"http-request set-var-fmt({REFUSAL_VAR}) {kind},{index},%[var(txn.zd_client)] "
        + condition,
        f"http-request return status {status} content-type text/plain "
        f"hdr X-Zerodown-Error {kind}{retry} string {body} if {{ var({REFUSAL_VAR}) -m found }}",
    ]


def _access(guard: GuardSpec) -> list[tuple[_Refusal, str]]:
    found = [
        (_Refusal("denied", f"deny {net}"), f"if {{ var(txn.zd_client) -m ip {net} }}")
        for net in guard.deny
    ]
    if guard.allow:
        nets = " ".join(guard.allow)
        rule = f"allow (not in {', '.join(guard.allow)})"
        found.append((_Refusal("denied", rule), f"unless {{ var(txn.zd_client) -m ip {nets} }}"))
    return found


def _block(guard: GuardSpec) -> list[tuple[_Refusal, str]]:
    block = guard.block
    if block is None:
        return []
    found = [
        (_Refusal("blocked", f"block.methods {method}"), f"if {{ method {method} }}")
        for method in block.methods
    ]
    for pattern in block.paths:
        regex = quoted(pattern)
        # As sent and percent-decoded: an app decodes /%2egit to /.git.
        condition = f"if {{ path -m reg {regex} }} || {{ path,url_dec -m reg {regex} }}"
        found.append((_Refusal("blocked", f"block.paths {pattern}"), condition))
    for pattern in block.user_agents:
        condition = f"if {{ req.fhdr(user-agent) -m reg -i {quoted(pattern)} }}"
        found.append((_Refusal("blocked", f"block.user_agents {pattern}"), condition))
    return found


def window(limit: RateLimitSpec) -> int:
    """Milliseconds of the sliding window that carries the bucket's burst and rate."""
    return max(1, math.ceil(limit.capacity / limit.rate * 1000))


def _tracking(limit: RateLimitSpec) -> list[str]:
    """The stick table and the key each request is counted under."""
    ms = window(limit)
    header = rate_key_header(limit)
    store = f"size {TABLE_SIZE} expire {2 * ms}ms store http_req_rate({ms}ms)"
    if header is None:
        return [f"stick-table type ip {store}", "http-request track-sc0 var(txn.zd_client)"]
    # Without the header a client is keyed by its address (as embedded).
    return [
        f"stick-table type string len 128 {store}",
        f"http-request set-var(txn.zd_key) req.fhdr({header})",
        "http-request set-var(txn.zd_key) var(txn.zd_client) unless { var(txn.zd_key) -m found }",
        "http-request track-sc0 var(txn.zd_key)",
    ]


def _rate_limit(limit: RateLimitSpec) -> tuple[_Refusal, str]:
    header = rate_key_header(limit)
    what = f"header {header}" if header else "address"
    rule = f"rate_limit ({limit.capacity} at once, {limit.rate:g}/s per {what})"
    refusal = _Refusal("rate_limited", rule, 429, limit.retry_after)
    return refusal, f"if {{ sc_http_req_rate(0) gt {limit.capacity} }}"
