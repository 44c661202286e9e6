"""proxy/http.py without sockets: what a request head means, whether it is
safe to forward, and the exact bytes of the heads and errors the proxy writes."""

from __future__ import annotations

import httptools
import pytest

from zerodown.errors import BadRequest
from zerodown.proxy import http
from zerodown.proxy.http import Forwarded, RequestHead, read_head

H = list[tuple[bytes, bytes]]


def head(
    headers: H, *, method: bytes = b"GET", version: str = "1.1", keep_alive: bool = True
) -> RequestHead:
    return read_head(method, b"/p?q=1", version, headers, keep_alive)


def refused(headers: H, *, version: str = "1.1") -> int:
    with pytest.raises(BadRequest) as info:
        head(headers, version=version)
    return info.value.status


def joined(parts: list[bytes]) -> bytes:
    return b"".join(parts)


def lines(raw: bytes) -> list[bytes]:
    """The header lines of a head (without the start line and the blank line)."""
    assert raw.endswith(b"\r\n\r\n"), raw
    return raw[:-4].split(b"\r\n")[1:]


# -- read_head -----------------------------------------------------------------


def test_read_head_reads_what_the_proxy_needs() -> None:
    got = head(
        [
            (b"Host", b"Example.test:8080"),
            (b"Content-Length", b"12"),
            (b"Connection", b"Keep-Alive, X-Secret"),
            (b"Expect", b"100-Continue"),
            (b"X-Request-ID", b"rid-1"),
        ],
        method=b"POST",
    )
    assert (got.method, got.url, got.version) == (b"POST", b"/p?q=1", b"1.1")
    assert (got.host, got.content_length, got.chunked) == (b"Example.test:8080", 12, False)
    assert got.connection_tokens == frozenset({b"keep-alive", b"x-secret"})
    assert (got.expect_continue, got.request_id, got.upgrade) == (True, b"rid-1", None)
    assert got.has_body
    assert not got.idempotent
    assert got.header(b"x-request-id") == b"rid-1"
    assert got.header(b"absent") is None


def test_chunked_body_and_idempotence() -> None:
    got = head([(b"Host", b"a"), (b"Transfer-Encoding", b" Chunked ")], method=b"PUT")
    assert (got.chunked, got.content_length, got.has_body, got.idempotent) == (
        True,
        None,
        True,
        True,
    )


@pytest.mark.parametrize(
    ("method", "idempotent"),
    [
        (b"GET", True),
        (b"HEAD", True),
        (b"OPTIONS", True),
        (b"TRACE", True),
        (b"PUT", True),
        (b"DELETE", True),
        (b"POST", False),
        (b"PATCH", False),
        (b"CONNECT", False),
    ],
)
def test_idempotent_methods_are_rfc_9110s(method: bytes, idempotent: bool) -> None:
    assert head([(b"Host", b"a")], method=method).idempotent is idempotent


def test_zero_content_length_is_no_body() -> None:
    got = head([(b"Host", b"a"), (b"Content-Length", b"0")])
    assert (got.content_length, got.has_body) == (0, False)


def test_upgrade_counts_only_with_connection_upgrade() -> None:
    # RFC 9110 §7.8: an Upgrade the Connection header does not name is ignored.
    plain = head([(b"Host", b"a"), (b"Upgrade", b"websocket")])
    asked = head([(b"Host", b"a"), (b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")])
    assert (plain.upgrade, asked.upgrade) == (None, b"websocket")


def test_http10_needs_no_host() -> None:
    got = head([], version="1.0", keep_alive=False)
    assert (got.version, got.host, got.keep_alive) == (b"1.0", b"", False)


@pytest.mark.parametrize("version", ["0.9", "2.0", "1.2"])
def test_other_versions_are_refused(version: str) -> None:
    assert refused([(b"Host", b"a")], version=version) == 400


@pytest.mark.parametrize(
    "value", [b"5, 5", b"5,6", b"-1", b"+5", b"0x10", b"", b" 5", b"1e3", b"\xd9\xa3"]
)
def test_content_length_must_be_one_plain_number(value: bytes) -> None:
    assert refused([(b"Host", b"a"), (b"Content-Length", value)]) == 400


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([(b"Host", b"a")], 200),
        ([], 400),  # HTTP/1.1 without Host
        ([(b"Host", b"a"), (b"host", b"a")], 400),  # two, even equal
        ([(b"Host", b"a b")], 400),
        ([(b"Host", b"user@a")], 400),
        ([(b"Host", b"a/b")], 400),
        ([(b"Host", b"a\\b")], 400),
        ([(b"Host", b"a:80:80")], 400),
        ([(b"Host", b"a:123456")], 400),
        ([(b"Host", b"[::1]:8080")], 200),
        ([(b"Host", b"[::1")], 400),
        ([(b"Host", b"127.0.0.1:80")], 200),
        ([(b"Host", b"xn--bcher-kva.example")], 200),
        ([(b"Host", b"a\tb")], 400),
    ],
)
def test_host_must_be_exactly_one_valid_authority(headers: H, status: int) -> None:
    if status == 200:
        assert head(headers).host == headers[0][1]
    else:
        assert refused(headers) == status


@pytest.mark.parametrize(
    ("value", "status"),
    [
        (b"gzip", 501),
        (b"gzip, chunked", 501),
        (b"xchunked", 501),
        (b"chunked, chunked", 501),
        (b"identity", 501),
    ],
)
def test_transfer_codings_other_than_chunked_are_not_implemented(value: bytes, status: int) -> None:
    assert refused([(b"Host", b"a"), (b"Transfer-Encoding", value)]) == status


def test_expect_other_than_100_continue_is_417() -> None:
    assert refused([(b"Host", b"a"), (b"Expect", b"200-ok")]) == 417


def test_http10_expectations_are_ignored() -> None:
    # RFC 9110 §10.1.1: no 100 Continue for a 1.0 client (it must never get a
    # 1xx), and no 417 for an expectation it cannot have meant.
    for value in (b"100-continue", b"200-ok"):
        got = head([(b"Expect", value), (b"Content-Length", b"1")], version="1.0")
        assert got.expect_continue is False


def test_content_length_and_transfer_encoding_together_are_refused() -> None:
    # llhttp refuses this first; the sans-IO layer must not rely on it
    # (RFC 9112 §6.1: a request with both is a smuggling attempt).
    for headers in (
        [(b"Host", b"a"), (b"Content-Length", b"5"), (b"Transfer-Encoding", b"chunked")],
        [(b"Host", b"a"), (b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"5")],
    ):
        assert refused(headers) == 400


def test_two_content_length_lines_are_refused() -> None:
    # RFC 9112 §6.3 item 5: differing lengths are unrecoverable; llhttp refuses
    # any repeat, and so must the layer that decides what is forwarded.
    assert refused([(b"Host", b"a"), (b"Content-Length", b"5"), (b"Content-Length", b"6")]) == 400


def test_chunked_twice_in_two_lines_is_refused() -> None:
    # RFC 9112 §6.1: chunked is applied once; two lines mean "chunked, chunked".
    assert refused([(b"Host", b"a")] + [(b"Transfer-Encoding", b"chunked")] * 2) == 400


@pytest.mark.parametrize(
    ("host", "name"),
    [
        (b"Example.TEST", "example.test"),
        (b"example.test:8080", "example.test"),
        (b"[::1]:8080", "[::1]"),
        (b"[::1]", "[::1]"),
        (b"", ""),
        (b"Example.TEST.", "example.test"),
        (b"example.test.:8080", "example.test"),
    ],
)
def test_host_name_is_lower_case_without_port_or_trailing_dot(host: bytes, name: str) -> None:
    assert http.host_name(host) == name


@pytest.mark.parametrize(
    "option",
    [b"content-length", b"host", b"transfer-encoding", b"x-forwarded-for", b"x-request-id"],
)
def test_connection_options_never_nominate_framing_or_the_proxys_own_fields(option: bytes) -> None:
    tokens = http.connection_options(b"close, " + option.upper() + b", X-Custom")
    assert http.nominated(tokens) == {b"close", b"x-custom"}


# -- upstream_head --------------------------------------------------------------


def upstream(
    headers: H, forwarded: Forwarded, *, method: bytes = b"GET", path: bytes = b"/p?q=1"
) -> bytes:
    return joined(http.upstream_head(head(headers, method=method), path, forwarded, b"rid-9"))


UNTRUSTED = Forwarded("10.0.0.7")
TRUSTED = Forwarded("10.0.0.7", proto=b"http", trusted=True)


def test_upstream_head_is_http11_origin_form_with_the_given_path() -> None:
    raw = upstream([(b"Host", b"a.test")], UNTRUSTED, path=b"/stripped")
    assert raw.startswith(b"GET /stripped HTTP/1.1\r\n")
    assert lines(raw) == [
        b"Host: a.test",
        b"X-Forwarded-For: 10.0.0.7",
        b"X-Forwarded-Proto: http",
        b"X-Forwarded-Host: a.test",
        b"X-Request-ID: rid-9",
    ]


def test_upstream_head_drops_hop_by_hop_and_connection_named_headers() -> None:
    raw = upstream(
        [
            (b"Host", b"a"),
            (b"Connection", b"close, X-Secret"),
            (b"X-Secret", b"s"),
            (b"Keep-Alive", b"300"),
            (b"TE", b"trailers"),
            (b"Trailer", b"X"),
            (b"Upgrade", b"h2c"),
            (b"Proxy-Connection", b"keep-alive"),
            (b"Proxy-Authorization", b"Basic x"),
            (b"Expect", b"100-continue"),
            (b"X-Kept", b"k"),
        ],
        UNTRUSTED,
    )
    names = [line.split(b":")[0].lower() for line in lines(raw)]
    assert names == [
        b"host",
        b"x-kept",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-request-id",
    ]


def test_upstream_head_keeps_content_length_and_reframes_chunked() -> None:
    with_length = upstream([(b"Host", b"a"), (b"Content-Length", b"3")], UNTRUSTED, method=b"POST")
    chunked = upstream(
        [(b"Host", b"a"), (b"Transfer-Encoding", b"chunked")], UNTRUSTED, method=b"POST"
    )
    assert b"Content-Length: 3" in lines(with_length)
    assert [x for x in lines(chunked) if x.lower().startswith(b"transfer-encoding")] == [
        b"Transfer-Encoding: chunked"
    ]


def test_upstream_head_asks_for_an_upgrade_only_when_the_client_did() -> None:
    raw = upstream(
        [(b"Host", b"a"), (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")], UNTRUSTED
    )
    assert lines(raw)[-2:] == [b"Connection: upgrade", b"Upgrade: websocket"]


def test_spoofed_forwarded_headers_from_an_untrusted_client_are_replaced() -> None:
    raw = upstream(
        [
            (b"Host", b"a"),
            (b"X-Forwarded-For", b"6.6.6.6"),
            (b"X-Forwarded-Proto", b"https"),
            (b"X-Forwarded-Host", b"evil"),
            (b"X-Request-ID", b"client-id"),
        ],
        UNTRUSTED,
    )
    assert lines(raw) == [
        b"Host: a",
        b"X-Forwarded-For: 10.0.0.7",
        b"X-Forwarded-Proto: http",
        b"X-Forwarded-Host: a",
        b"X-Request-ID: rid-9",
    ]


@pytest.mark.parametrize("forwarded", [UNTRUSTED, TRUSTED])
def test_underscore_spellings_of_headers_the_proxy_owns_are_dropped(forwarded: Forwarded) -> None:
    # A WSGI/CGI environ maps "X-Forwarded_For" and "X-Forwarded-For" to the same
    # HTTP_X_FORWARDED_FOR: the underscore spelling would spoof what we set.
    raw = upstream(
        [
            (b"Host", b"a"),
            (b"X-Forwarded_For", b"6.6.6.6"),
            (b"X_Forwarded_Proto", b"https"),
            (b"X-Forwarded_Host", b"evil"),
            (b"X-Request_ID", b"evil-id"),
            (b"Transfer_Encoding", b"chunked"),
            (b"Content_Length", b"5"),
            (b"Proxy_Authorization", b"Basic x"),
            (b"X-Kept", b"k"),
        ],
        forwarded,
    )
    assert lines(raw) == [
        b"Host: a",
        b"X-Kept: k",
        b"X-Forwarded-For: 10.0.0.7",
        b"X-Forwarded-Proto: http",
        b"X-Forwarded-Host: a",
        b"X-Request-ID: rid-9",
    ]


def test_forwarded_headers_from_a_trusted_proxy_are_kept_and_extended() -> None:
    raw = upstream(
        [
            (b"Host", b"a"),
            (b"X-Forwarded-For", b"1.1.1.1"),
            (b"X-Forwarded-For", b"2.2.2.2, 3.3.3.3"),
            (b"X-Forwarded-Proto", b"https"),
            (b"X-Forwarded-Host", b"public.test"),
        ],
        TRUSTED,
    )
    assert lines(raw)[1:4] == [
        b"X-Forwarded-For: 1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.7",
        b"X-Forwarded-Proto: https",
        b"X-Forwarded-Host: public.test",
    ]


def test_trusted_proxy_without_incoming_forwarded_headers_gets_ours() -> None:
    assert lines(upstream([(b"Host", b"a")], TRUSTED))[1:4] == [
        b"X-Forwarded-For: 10.0.0.7",
        b"X-Forwarded-Proto: http",
        b"X-Forwarded-Host: a",
    ]


def test_no_forwarded_host_without_a_host() -> None:
    raw = joined(http.upstream_head(head([], version="1.0"), b"/", UNTRUSTED, b"rid"))
    assert not any(x.lower().startswith(b"x-forwarded-host") for x in lines(raw))


def test_upstream_head_parses_back_to_the_same_request() -> None:
    # What we write must be read by an HTTP/1.1 parser exactly as we meant it.
    raw = upstream(
        [(b"Host", b"a"), (b"Content-Length", b"2"), (b"X-A", b"1")], UNTRUSTED, method=b"POST"
    )
    seen: dict[str, object] = {"headers": []}

    class Sink:
        def on_url(self, url: bytes) -> None:
            seen["url"] = url

        def on_header(self, name: bytes, value: bytes) -> None:
            seen["headers"].append((name, value))  # type: ignore[attr-defined]

        def on_body(self, body: bytes) -> None:
            seen["body"] = body

    parser = httptools.HttpRequestParser(Sink())
    parser.feed_data(raw + b"ok")
    assert seen["url"] == b"/p?q=1"
    assert seen["body"] == b"ok"
    assert (b"Content-Length", b"2") in seen["headers"]  # type: ignore[operator]


# -- response_head ------------------------------------------------------------------


def response(
    headers: H,
    *,
    status: int = 200,
    version: bytes = b"1.1",
    framing: bytes = b"",
    keep_alive: bool = True,
    extra: list[bytes] | None = None,
) -> bytes:
    return joined(
        http.response_head(
            status,
            b"OK",
            headers,
            version=version,
            framing=framing,
            keep_alive=keep_alive,
            request_id=b"rid-1",
            extra=extra,
        )
    )


def test_response_head_drops_hop_by_hop_and_upstream_request_id() -> None:
    raw = response(
        [
            (b"Content-Length", b"2"),
            (b"Connection", b"keep-alive, X-Internal"),
            (b"X-Internal", b"secret"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Proxy-Authenticate", b"Basic"),
            (b"Upgrade", b"h2c"),
            (b"X-Request-ID", b"backend-id"),
            (b"X-App", b"1"),
        ]
    )
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert lines(raw) == [b"Content-Length: 2", b"X-App: 1", b"X-Request-ID: rid-1"]


def test_response_head_framing_and_extra_lines_are_added() -> None:
    raw = response([], framing=b"Transfer-Encoding: chunked\r\n", extra=[b"Set-Cookie: a=b\r\n"])
    assert lines(raw) == [b"X-Request-ID: rid-1", b"Transfer-Encoding: chunked", b"Set-Cookie: a=b"]


@pytest.mark.parametrize(
    ("version", "keep_alive", "connection"),
    [
        (b"1.1", True, []),
        (b"1.1", False, [b"Connection: close"]),
        (b"1.0", True, [b"Connection: keep-alive"]),
        (b"1.0", False, [b"Connection: close"]),
    ],
)
def test_response_head_spells_keep_alive_for_the_clients_version(
    version: bytes, keep_alive: bool, connection: list[bytes]
) -> None:
    raw = response([(b"Content-Length", b"0")], version=version, keep_alive=keep_alive)
    assert raw.startswith(b"HTTP/1.1 200 ")  # always our own version (RFC 9110 §6.2)
    assert [x for x in lines(raw) if x.startswith(b"Connection")] == connection


def test_101_response_keeps_the_upgrade() -> None:
    raw = response([(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")], status=101)
    assert lines(raw) == [b"X-Request-ID: rid-1", b"Connection: upgrade", b"Upgrade: websocket"]


# -- error_response, chunk -----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (400, b"Bad Request"),
        (404, b"Not Found"),
        (408, b"Request Timeout"),
        (413, b"Content Too Large"),
        (414, b"URI Too Long"),
        (417, b"Expectation Failed"),
        (431, b"Request Header Fields Too Large"),
        (501, b"Not Implemented"),
        (502, b"Bad Gateway"),
        (503, b"Service Unavailable"),
        (504, b"Gateway Timeout"),
    ],
)
def test_error_responses_carry_the_rfc_9110_reason(status: int, reason: bytes) -> None:
    assert http.error_response(status).startswith(b"HTTP/1.1 %d %s\r\n" % (status, reason))


@pytest.mark.parametrize("status", [400, 404, 408, 413, 414, 417, 431, 501, 502, 503, 504])
def test_error_response_is_a_complete_closing_response(status: int) -> None:
    raw = http.error_response(status, request_id=b"rid-5")
    head_part, body = raw.split(b"\r\n\r\n", 1)
    status_line, *header_lines = head_part.split(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 %d " % status)
    assert len(status_line) > len(b"HTTP/1.1 000 ")  # a reason phrase
    assert b"Content-Length: %d" % len(body) in header_lines
    assert b"X-Request-ID: rid-5" in header_lines
    assert b"Connection: close" in header_lines
    assert body.startswith(b"%d " % status)


def test_error_response_keep_alive_and_extra() -> None:
    raw = http.error_response(503, close=False, extra=b"Retry-After: 1\r\n")
    assert b"Connection" not in raw
    assert b"X-Request-ID" not in raw
    assert b"Retry-After: 1\r\n\r\n503 " in raw


def test_chunk_framing() -> None:
    assert joined(http.chunk(b"hello")) == b"5\r\nhello\r\n"
    assert joined(http.chunk(b"x" * 255)) == b"ff\r\n" + b"x" * 255 + b"\r\n"
    assert http.LAST_CHUNK == b"0\r\n\r\n"
