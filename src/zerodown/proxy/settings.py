"""Process-wide limits and timeouts of the embedded data plane.

Each has a named default; the config layer fills a ProxySettings from the
`[proxy]` table. Sizes are bytes, durations seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

HEADER_TIMEOUT = 10.0  # a client must send a whole request head within this
BODY_TIMEOUT = 60.0  # longest gap between two reads of a request body
KEEPALIVE_TIMEOUT = 75.0  # an idle client connection is closed after this
MAX_HEADER_SIZE = 16 * 1024  # request line + headers; beyond: 431
MAX_URI_SIZE = 8 * 1024  # beyond: 414
MAX_BODY_SIZE = 0  # 0: unlimited (bodies are streamed, never buffered whole)
CONNECT_TIMEOUT = 5.0  # opening an upstream connection; beyond: next target or 502/504
READ_TIMEOUT = 60.0  # longest wait for the next upstream byte; beyond: 504
# A client that takes no response bytes for this long is cut off (nginx's
# send_timeout): else a client that stops reading holds its exchange and an
# upstream connection for as long as it likes.
SEND_TIMEOUT = 60.0
# The upstream's status line and headers; beyond: 502 (nginx answers "upstream
# sent too big header" past proxy_buffer_size, HAProxy past tune.bufsize).
MAX_RESPONSE_HEADER_SIZE = 64 * 1024
# Shorter than the idle timeout of common app servers (uvicorn and node 5 s)
# so the proxy, not the app, closes idle upstream connections most of the time.
UPSTREAM_IDLE_TIMEOUT = 4.0
UPSTREAM_MAX_IDLE = 1024  # idle keep-alive connections kept per target
MAX_CONNS_PER_TARGET = 0  # 0: unlimited; else requests queue for a free slot
QUEUE_TIMEOUT = 5.0  # how long a request may wait for a slot before 503
SHUTDOWN_TIMEOUT = 30.0  # graceful stop: how long in-flight requests may finish
RETRY_BUDGET_RATIO = 0.2  # retries stay under this share of requests
RETRY_BUDGET_MIN = 10  # ...but this many retries per second are always allowed
DRAIN_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """`[proxy.tls]`: listeners that speak TLS and the certificates they offer."""

    listen: tuple[str, ...]
    # (cert, key) file pairs: the first is `cert`/`key`, offered when no other
    # matches the client's SNI; then each of `certs`, chosen by SNI (tls.py).
    certs: tuple[tuple[str, str], ...]
    redirect_http: bool = False  # plain-HTTP listeners answer 308 to https


@dataclass(frozen=True, slots=True)
class ProxySettings:
    header_timeout: float = HEADER_TIMEOUT
    body_timeout: float = BODY_TIMEOUT
    keepalive_timeout: float = KEEPALIVE_TIMEOUT
    max_header_size: int = MAX_HEADER_SIZE
    max_uri_size: int = MAX_URI_SIZE
    max_body_size: int = MAX_BODY_SIZE
    connect_timeout: float = CONNECT_TIMEOUT
    read_timeout: float = READ_TIMEOUT
    send_timeout: float = SEND_TIMEOUT
    max_response_header_size: int = MAX_RESPONSE_HEADER_SIZE
    upstream_idle_timeout: float = UPSTREAM_IDLE_TIMEOUT
    upstream_max_idle: int = UPSTREAM_MAX_IDLE
    max_conns_per_target: int = MAX_CONNS_PER_TARGET
    queue_timeout: float = QUEUE_TIMEOUT
    shutdown_timeout: float = SHUTDOWN_TIMEOUT
    retry_budget_ratio: float = RETRY_BUDGET_RATIO
    retry_budget_min: int = RETRY_BUDGET_MIN
    # Client addresses (CIDRs) whose X-Forwarded-* headers are kept and extended;
    # from anyone else they are replaced, so a client cannot spoof its address.
    trusted_proxies: tuple[str, ...] = ()
    access_log: str | None = None  # path, "-" for stdout, None for off
    # The key that signs sticky cookies (hex), one for every worker and kept
    # across restarts in state_dir; not a [proxy] key. "": one per process.
    sticky_key: str = ""
    # TLS listeners, handed to the data plane after the plain ones (proxy/tls.py).
    tls: TlsSettings | None = None

    @classmethod
    def from_document(cls, values: dict[str, Any]) -> ProxySettings:
        """Back from `dataclasses.asdict` as JSON carries it (lists for tuples)."""
        fields = {k: _tuples(v) for k, v in values.items() if k != "tls"}
        tls = values.get("tls")
        if tls is not None:
            fields["tls"] = TlsSettings(**{k: _tuples(v) for k, v in tls.items()})
        return cls(**fields)


def _tuples(value: Any) -> Any:
    # JSON has no tuples; the dataclass is frozen and wants hashable values.
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value
