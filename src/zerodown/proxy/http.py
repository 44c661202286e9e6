"""Sans-IO HTTP/1.1 pieces of the proxy: what a request head means, whether
it is safe to forward, and the bytes of the heads we write.

Framing ambiguities are where request smuggling lives (RFC 9112 §6.3, §11.2),
so anything llhttp lets through that could be read two ways is refused here
with a BadRequest, before a single byte reaches an app.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from itertools import count
from typing import Final

from zerodown.errors import BadRequest

# RFC 9110 §7.6.1: hop-by-hop fields, never forwarded; plus the ones a
# Connection header names. Proxy-Connection is not standard but common.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
# Set by the proxy itself from what it saw; incoming ones are kept only from
# trusted proxies (see Forwarded).
FORWARDED_HEADERS: Final = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-request-id"}
)
# Other fields by which some proxy tells an app who the client is or how it
# connected. Apps and frameworks believe them (Django's USE_X_FORWARDED_PORT,
# Rails' X-Real-IP, Express's trust proxy), so a client must not be able to
# send them itself: they pass only from `trusted_proxies`, else are dropped.
CLIENT_IDENTITY_HEADERS: Final = frozenset(
    {
        b"forwarded",  # RFC 7239
        b"x-real-ip",
        b"x-forwarded-port",
        b"x-forwarded-prefix",
        b"x-forwarded-server",
        b"x-forwarded-ssl",
        b"x-forwarded-scheme",
        b"x-forwarded-by",
        b"x-original-forwarded-for",
        b"x-url-scheme",
        b"front-end-https",
        b"true-client-ip",
        b"x-client-ip",
        b"x-cluster-client-ip",
        b"cf-connecting-ip",
        b"fastly-client-ip",
    }
)
# RFC 9110 §7.6.1 lets a Connection header name any field as hop-by-hop, but
# a name that frames the message or that the proxy itself sets is never
# removed that way: dropping Content-Length while forwarding the body turns
# the body into a second request on the upstream connection (a desync), and
# dropping Host or X-Forwarded-For would let a client pick what the app sees.
# nginx and HAProxy ignore such options too.
NEVER_NOMINATED: Final = (
    frozenset({b"host", b"content-length", b"transfer-encoding"})
    | FORWARDED_HEADERS
    | CLIENT_IDENTITY_HEADERS
)
# What these would become in a CGI/WSGI environ (HTTP_X_FORWARDED_FOR), where
# "X-Forwarded_For" lands on the same key: a client must not reach them by
# spelling a dash as an underscore (nginx drops such names by default).
ENVIRON_SPOOFABLE: Final = frozenset(
    name.replace(b"-", b"_") for name in HOP_BY_HOP | NEVER_NOMINATED | {b"expect"}
)
# RFC 9110 §9.2.2. A retry may repeat these; never the others once sent.
IDEMPOTENT_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

REASONS: Final[dict[int, bytes]] = {
    100: b"Continue",
    308: b"Permanent Redirect",
    400: b"Bad Request",
    403: b"Forbidden",
    404: b"Not Found",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    417: b"Expectation Failed",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}

CONTINUE_100: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
# On a 5xx the proxy answers itself: which failure it was (errors.ProxyError.kind).
ERROR_HEADER: Final = b"X-Zerodown-Error"

# RFC 3986 host: reg-name / IPv4 / [IPv6], optional :port. Anything else
# (spaces, '@', '/', control bytes) is refused: a Host an app would parse
# differently from the proxy is a routing bypass.
_HOST_RE: Final = re.compile(
    rb"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::[0-9]{1,5})?$"
)


@dataclass(slots=True)
class RequestHead:
    """What the proxy needs to know of one request, read in one pass."""

    method: bytes
    url: bytes
    version: bytes  # b"1.1" or b"1.0"
    headers: list[tuple[bytes, bytes]]
    keep_alive: bool
    host: bytes = b""
    content_length: int | None = None
    chunked: bool = False
    expect_continue: bool = False
    upgrade: bytes | None = None  # the Upgrade value when the client asked to switch
    request_id: bytes | None = None
    connection_tokens: frozenset[bytes] = field(default_factory=frozenset)
    # The header names in lower case, in the order of `headers`: read_head
    # lowers each once, and upstream_head reuses them.
    names: list[bytes] = field(default_factory=list)

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    @property
    def idempotent(self) -> bool:
        return self.method in IDEMPOTENT_METHODS

    def lower_names(self) -> list[bytes]:
        if len(self.names) != len(self.headers):  # a head not built by read_head
            self.names = [name.lower() for name, _ in self.headers]
        return self.names

    def header(self, name: bytes) -> bytes | None:
        """First value of a header (name in lower case); a slow path, not per header."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


def read_head(
    method: bytes, url: bytes, version: str, headers: list[tuple[bytes, bytes]], keep_alive: bool
) -> RequestHead:
    """Build a RequestHead from parser output, refusing what is ambiguous."""
    if version not in ("1.1", "1.0"):
        raise BadRequest(f"unsupported protocol version {version}")
    head = RequestHead(method, url, version.encode(), headers, keep_alive)
    hosts = 0
    names = head.names
    for name, value in headers:
        key = name.lower()
        names.append(key)
        if key == b"host":
            hosts += 1
            head.host = value
        elif key == b"content-length":
            if head.content_length is not None:
                raise BadRequest("more than one Content-Length")
            head.content_length = _content_length(value)
        elif key == b"transfer-encoding":
            if head.chunked:
                raise BadRequest("chunked applied twice")  # RFC 9112 §6.1
            head.chunked = _chunked(value)
        elif key == b"connection":
            # Several Connection lines are one list (RFC 9110 §5.3).
            head.connection_tokens |= connection_options(value)
        elif key == b"expect" and version == "1.1":
            # RFC 9110 §10.1.1: an HTTP/1.0 expectation is ignored (and a 1.0
            # client must never be sent a 1xx, §15.2).
            head.expect_continue = _expect(value)
        elif key == b"upgrade":
            head.upgrade = value
        elif key == b"x-request-id":
            head.request_id = value
    if head.chunked and head.content_length is not None:
        # RFC 9112 §6.1: the classic smuggling pair. llhttp refuses it too, but
        # this is the one place that decides what may be forwarded.
        raise BadRequest("both Content-Length and Transfer-Encoding")
    _check_host(head, hosts)
    if head.chunked and head.version == b"1.0":
        # RFC 9112 §6.1: HTTP/1.0 has no Transfer-Encoding, so its framing is
        # suspect: serve this request, then close, whatever Connection says.
        head.keep_alive = False
    if head.upgrade is not None and b"upgrade" not in head.connection_tokens:
        head.upgrade = None  # RFC 9110 §7.8: Upgrade without Connection: upgrade is ignored
    return head


def _content_length(value: bytes) -> int:
    # llhttp already refuses two Content-Length lines; a comma list in one
    # line ("5, 5") is the other way to send two (RFC 9112 §6.3 item 5).
    if not value.isdigit():
        raise BadRequest("invalid Content-Length")
    return int(value)


def _chunked(value: bytes) -> bool:
    # Only "chunked" is understood; llhttp refuses chunked-not-last, we also
    # refuse any other coding rather than forward something we cannot frame.
    if value.strip().lower() != b"chunked":
        raise BadRequest("unsupported Transfer-Encoding", status=501)
    return True


def _expect(value: bytes) -> bool:
    if value.strip().lower() != b"100-continue":
        raise BadRequest("unsupported Expect", status=417)
    return True


def _check_host(head: RequestHead, hosts: int) -> None:
    # RFC 9112 §3.2: exactly one Host in HTTP/1.1; a second one is ambiguous.
    if hosts > 1:
        raise BadRequest("more than one Host header")
    if hosts == 0 and head.version == b"1.1":
        raise BadRequest("missing Host header")
    if not _HOST_RE.match(head.host):
        raise BadRequest("invalid Host header")


def forwarded_for(head: RequestHead) -> list[str]:
    """The addresses of every X-Forwarded-For field, in order (RFC 9110 §5.3: one list)."""
    return [
        hop.strip().decode("latin-1")
        for value, key in zip((v for _, v in head.headers), head.lower_names(), strict=True)
        if key == b"x-forwarded-for"
        for hop in value.split(b",")
        if hop.strip()
    ]


def replace_host(head: RequestHead, authority: bytes) -> None:
    """Make `authority` the request's one Host (for an absolute-form target)."""
    head.headers = [(b"Host", authority)] + [
        (name, value) for name, value in head.headers if name.lower() != b"host"
    ]
    head.names = [name.lower() for name, _ in head.headers]
    head.host = authority


def host_name(host: bytes) -> str:
    """The Host header without its port, lower case, for routing.

    A fully qualified name's trailing dot ("example.com.") names the same
    host (RFC 1034 §3.1), so it routes as "example.com" does.
    """
    if host.startswith(b"["):
        return host[: host.find(b"]") + 1].decode("ascii").lower()
    name = host.rpartition(b":")[0] if b":" in host else host
    if name.endswith(b"."):
        name = name[:-1]
    return name.decode("ascii").lower()


@dataclass(frozen=True, slots=True)
class Forwarded:
    """What the proxy adds about the client hop."""

    client_ip: str
    proto: bytes = b"http"
    trusted: bool = False  # keep and extend incoming X-Forwarded-* from this peer


# Request fields never forwarded, from a trusted proxy and from anyone else.
_TRUSTED_DROP: Final = HOP_BY_HOP
_UNTRUSTED_DROP: Final = HOP_BY_HOP | CLIENT_IDENTITY_HEADERS


def connection_options(value: bytes) -> frozenset[bytes]:
    """The options of one Connection field value, lower case (RFC 9110 §7.6.1)."""
    return frozenset(t.strip().lower() for t in value.split(b","))


def nominated(tokens: frozenset[bytes]) -> frozenset[bytes]:
    """The fields that Connection options may remove: all but NEVER_NOMINATED."""
    return tokens - NEVER_NOMINATED if tokens & NEVER_NOMINATED else tokens


def upstream_head(
    head: RequestHead, path: bytes, forwarded: Forwarded, request_id: bytes
) -> list[bytes]:
    """The request head sent to a target, as pieces for writelines()."""
    drop = _TRUSTED_DROP if forwarded.trusted else _UNTRUSTED_DROP
    if head.connection_tokens:
        drop = drop | nominated(head.connection_tokens)
    incoming_xff = None
    incoming: dict[bytes, bytes] = {}
    parts = [head.method, b" ", path, b" HTTP/1.1\r\n"]
    for (name, value), key in zip(head.headers, head.lower_names(), strict=True):
        if key in drop or key == b"expect":
            continue  # the proxy answers 100-continue itself
        if b"_" in key and key.replace(b"-", b"_") in ENVIRON_SPOOFABLE:
            continue
        if key in FORWARDED_HEADERS:
            if key == b"x-forwarded-for":
                incoming_xff = value if incoming_xff is None else incoming_xff + b", " + value
            else:
                incoming[key] = value
            continue
        parts += (name, b": ", value, b"\r\n")
    parts += _forwarded_lines(head, forwarded, incoming_xff, incoming, request_id)
    if head.chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    if head.upgrade is not None:
        parts += (b"Connection: upgrade\r\nUpgrade: ", head.upgrade, b"\r\n")
    parts.append(b"\r\n")
    return parts


def _forwarded_lines(
    head: RequestHead,
    forwarded: Forwarded,
    incoming_xff: bytes | None,
    incoming: dict[bytes, bytes],
    request_id: bytes,
) -> list[bytes]:
    ip = forwarded.client_ip.encode()
    if forwarded.trusted:
        xff = ip if incoming_xff is None else incoming_xff + b", " + ip
        proto = incoming.get(b"x-forwarded-proto", forwarded.proto)
        fhost = incoming.get(b"x-forwarded-host", head.host)
    else:
        xff, proto, fhost = ip, forwarded.proto, head.host
    lines = [b"X-Forwarded-For: ", xff, b"\r\nX-Forwarded-Proto: ", proto, b"\r\n"]
    if fhost:
        lines += (b"X-Forwarded-Host: ", fhost, b"\r\n")
    lines += (b"X-Request-ID: ", request_id, b"\r\n")
    return lines


# Never passed on from a response: hop-by-hop fields, and the upstream's own
# X-Request-ID (ours, the one the upstream was sent, replaces it).
_RESPONSE_DROP: Final = HOP_BY_HOP | {b"x-request-id"}
# Fields a response's Connection options may not remove (see NEVER_NOMINATED).
_RESPONSE_KEPT: Final = frozenset({b"content-length"})


def response_head(
    status: int,
    reason: bytes,
    headers: list[tuple[bytes, bytes]],
    *,
    version: bytes,
    framing: bytes,
    keep_alive: bool,
    request_id: bytes,
    extra: list[bytes] | None = None,
    names: list[bytes] | None = None,
) -> list[bytes]:
    """The response head sent to the client, as pieces for writelines().

    `framing` is the header line that frames the body as the proxy sends it
    (b"" when the upstream's Content-Length is passed through or there is no body).
    `names` are the header names in lower case, if the caller has them already.
    """
    if names is None:
        names = [name.lower() for name, _ in headers]
    drop = _RESPONSE_DROP
    if b"connection" in names:
        # Never the framing: `framing` was decided from these very fields.
        drop = drop | (_connection_tokens(headers, names) - _RESPONSE_KEPT)
    # Always our own version in the status line (RFC 9110 §6.2); `version`
    # is the client's, which decides how keep-alive is spelled.
    parts = [b"HTTP/1.1 %d " % status, reason, b"\r\n"]
    for (name, value), key in zip(headers, names, strict=True):
        if key not in drop:
            parts += (name, b": ", value, b"\r\n")
    parts += (b"X-Request-ID: ", request_id, b"\r\n", framing)
    if extra:
        parts += extra
    if status == 101:
        parts.append(b"Connection: upgrade\r\n")
        upgrade = next((v for n, v in headers if n.lower() == b"upgrade"), None)
        if upgrade is not None:
            parts += (b"Upgrade: ", upgrade, b"\r\n")
    elif keep_alive:
        if version == b"1.0":
            parts.append(b"Connection: keep-alive\r\n")
    else:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    return parts


def _connection_tokens(headers: list[tuple[bytes, bytes]], names: list[bytes]) -> frozenset[bytes]:
    tokens: set[bytes] = set()
    for (_, value), key in zip(headers, names, strict=True):
        if key == b"connection":
            tokens |= connection_options(value)
    return frozenset(tokens)


def error_response(
    status: int,
    *,
    request_id: bytes | None = None,
    close: bool = True,
    extra: bytes = b"",
    body: bytes | None = None,
    head_only: bool = False,
    kind: bytes | None = None,
    detail: str | None = None,
) -> bytes:
    """A short response the proxy writes itself (text/plain unless `extra` says otherwise).

    `head_only` for an answer to HEAD: the same head, no body (RFC 9110 §9.3.2),
    or a client reads our body as the start of its next response. `kind`
    goes in ERROR_HEADER; `detail` follows the status on the body's one line.
    """
    reason = REASONS.get(status, b"Error")
    if body is None:
        line = b"%d %s" % (status, reason)
        body = line + b"\n" if detail is None else line + b": " + one_line(detail) + b"\n"
        extra = b"Content-Type: text/plain\r\n" + extra
    head = b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\n" % (status, reason, len(body))
    if request_id is not None:
        head += b"X-Request-ID: " + request_id + b"\r\n"
    if kind is not None:
        head += ERROR_HEADER + b": " + kind + b"\r\n"
    if close:
        head += b"Connection: close\r\n"
    return head + extra + b"\r\n" + (b"" if head_only else body)


def one_line(text: str) -> bytes:
    """`text` as printable ASCII on one line: safe in a body line or a header."""
    return bytes(c if 0x20 <= c < 0x7F else 0x3F for c in text.encode("ascii", "replace"))


def chunk(data: bytes) -> list[bytes]:
    """One chunk of a chunked body (RFC 9112 §7.1)."""
    return [b"%x\r\n" % len(data), data, b"\r\n"]


LAST_CHUNK: Final = b"0\r\n\r\n"


_ID_PREFIX: Final = os.urandom(6).hex().encode()
_ids = count(1)


def new_request_id() -> bytes:
    """An X-Request-ID unique per process run: a random prefix and a counter
    (cheaper than uuid4)."""
    return b"%s-%x" % (_ID_PREFIX, next(_ids))
