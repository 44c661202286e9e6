"""proxy/response.py: how a response body is framed towards the client
(RFC 9112 §6.3) and gathered into one write per upstream read."""

from __future__ import annotations

import pytest

from zerodown.errors import NoHealthyTarget
from zerodown.proxy import http
from zerodown.proxy.response import (
    AS_IS,
    Framing,
    Maintenance,
    ResponseStream,
    error_answer,
    framing,
)

Headers = list[tuple[bytes, bytes]]


def frame(
    headers: Headers, *, method: bytes = b"GET", version: bytes = b"1.1", status: int = 200
) -> Framing:
    return framing(method, version, status, headers, [n.lower() for n, _ in headers])


@pytest.mark.parametrize(
    ("method", "status", "headers"),
    [
        (b"GET", 200, [(b"Content-Length", b"3")]),
        (b"HEAD", 200, [(b"Transfer-Encoding", b"chunked")]),
        (b"GET", 204, []),
        (b"GET", 304, []),
        (b"GET", 101, [(b"Upgrade", b"websocket")]),
    ],
)
def test_length_or_no_body_passes_as_is(method: bytes, status: int, headers: Headers) -> None:
    assert frame(headers, method=method, status=status) is AS_IS


def test_chunked_is_undone_and_redone_for_a_11_client() -> None:
    framed = frame([(b"Transfer-Encoding", b"chunked")])
    assert framed == Framing(b"Transfer-Encoding: chunked\r\n", True, False, False)


def test_other_codings_are_kept_and_chunked_comes_last() -> None:
    framed = frame([(b"transfer-encoding", b"gzip"), (b"Transfer-Encoding", b" chunked ")])
    assert framed.header == b"Transfer-Encoding: gzip, chunked\r\n"
    assert framed.rechunk
    assert not framed.upstream_close


def test_no_length_means_the_body_ends_with_the_upstream_close() -> None:
    # RFC 9112 §6.3 item 7: chunked not last (or no framing at all) reads to the close.
    for headers in ([], [(b"Transfer-Encoding", b"chunked, gzip")]):
        framed = frame(headers)
        assert framed.upstream_close
        assert framed.rechunk
        assert not framed.client_close


def test_a_10_client_learns_the_end_by_the_close() -> None:
    framed = frame([(b"Transfer-Encoding", b"chunked")], version=b"1.0")
    assert framed == Framing(b"", rechunk=False, upstream_close=False, client_close=True)


class Writes:
    def __init__(self) -> None:
        self.calls: list[list[bytes]] = []

    def write_lines(self, parts: list[bytes]) -> None:
        self.calls.append(parts)


def test_one_write_per_read_and_rechunked_body() -> None:
    writes = Writes()
    stream = ResponseStream(writes)
    stream.head([b"HEAD\r\n\r\n"], frame([(b"Transfer-Encoding", b"chunked")]), True)
    stream.body(b"abc")
    stream.flush()
    stream.flush()  # nothing new: no empty write
    stream.body(b"de")
    stream.end()
    assert writes.calls == [
        [b"HEAD\r\n\r\n", b"3\r\n", b"abc", b"\r\n"],
        [b"2\r\n", b"de", b"\r\n", http.LAST_CHUNK],
    ]
    assert stream.upstream_keep_alive


def test_error_answer_names_the_failure_and_maintenance_serves_its_page() -> None:
    answer = error_answer(
        NoHealthyTarget("no healthy target for web"), b"id-1", close=True, head_only=False
    )
    assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"X-Zerodown-Error: no_healthy_target\r\n" in answer
    assert b"X-Request-ID: id-1\r\n" in answer
    assert b"Connection: close\r\n" in answer
    assert answer.endswith(b"\r\n\r\n503 Service Unavailable: no healthy target for web\n")
    page = error_answer(Maintenance("<p>soon</p>", 30), b"id-2", close=False, head_only=False)
    assert b"Retry-After: 30\r\n" in page
    assert page.endswith(b"<p>soon</p>")
