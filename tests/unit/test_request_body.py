"""proxy/request_body.py: buffering, limits, framing and replay of a request body."""

from __future__ import annotations

import pytest

from zerodown.errors import BadRequest
from zerodown.proxy import http
from zerodown.proxy.request_body import BODY_HIGH_WATER, REPLAY_LIMIT, RequestBody


def head(
    method: bytes = b"PUT", *, chunked: bool = False, length: int | None = 5, expect: bool = False
) -> http.RequestHead:
    return http.RequestHead(
        method,
        b"/",
        b"1.1",
        [],
        keep_alive=True,
        content_length=None if chunked else length,
        chunked=chunked,
        expect_continue=expect,
    )


def test_pieces_are_sent_once_and_kept_for_a_replay() -> None:
    body = RequestBody(head(), limit=0)
    assert body.feed(b"ab") is False
    assert body.take() == [b"ab"]
    assert body.take() == []  # sent already
    body.feed(b"cde")
    body.end()
    assert body.take() == [b"cde"]
    assert body.replay() == [b"ab", b"cde"]
    assert body.replayable
    assert body.done
    assert body.received == 5


def test_chunked_body_is_chunked_again_and_ends_with_the_last_chunk() -> None:
    body = RequestBody(head(chunked=True), limit=0)
    body.feed(b"hello")
    assert body.take() == [b"5\r\n", b"hello", b"\r\n"]
    body.end()
    assert body.take() == [http.LAST_CHUNK]
    # A new attempt gets the whole body again, then the last chunk with take().
    assert body.replay() == [b"5\r\n", b"hello", b"\r\n"]
    assert body.take() == [http.LAST_CHUNK]


def test_high_water_asks_the_client_to_pause() -> None:
    body = RequestBody(head(length=BODY_HIGH_WATER + 1), limit=0)
    assert body.feed(b"x" * BODY_HIGH_WATER) is False
    assert body.feed(b"x") is True
    body.take()
    assert body.feed(b"y") is False  # sent: the buffer is empty again


def test_over_max_body_size_is_413() -> None:
    body = RequestBody(head(length=100), limit=10)
    body.feed(b"x" * 10)
    with pytest.raises(BadRequest) as caught:
        body.feed(b"x")
    assert caught.value.status == 413


def test_a_big_body_is_not_kept_so_it_is_not_replayable() -> None:
    body = RequestBody(head(length=REPLAY_LIMIT + 1), limit=0)
    body.feed(b"x" * REPLAY_LIMIT)
    body.take()
    assert body.replayable
    body.feed(b"x")
    body.take()
    assert not body.replayable
    assert body.replay() == []


def test_a_post_is_never_replayable() -> None:
    body = RequestBody(head(b"POST"), limit=0)
    body.feed(b"hello")
    body.take()
    assert not body.replayable


def test_100_continue_is_due_once_and_only_while_the_client_waits() -> None:
    body = RequestBody(head(expect=True), limit=0)
    assert body.continue_due() is True
    assert body.continue_due() is False
    done = RequestBody(head(expect=True), limit=0)
    done.end()
    assert done.continue_due() is False
    assert RequestBody(head(), limit=0).continue_due() is False


def test_discard_drops_what_was_not_sent() -> None:
    body = RequestBody(head(), limit=0)
    body.feed(b"abc")
    body.discard()
    assert body.take() == []
    assert not body.replayable
