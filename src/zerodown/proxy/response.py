"""A response on its way to the client: how its body is framed (RFC 9112
§6.3), and its bytes gathered so that one upstream read is one client write.

The exchange is what the upstream connection reports to (its phase moves on
those events); this module is the client-facing half: which framing header
the head carries, re-chunking, the end of a body that ends with the
upstream's close, and the proxy's own maintenance page.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Final, Protocol

from zerodown.errors import ProxyError
from zerodown.proxy import http
from zerodown.proxy.guard import Refusal

# Statuses whose response never has a body, whatever its fields say.
_NO_BODY: Final = frozenset({101, 204, 304})


@dataclass(frozen=True, slots=True)
class Framing:
    """How the proxy frames a response body towards the client."""

    header: bytes  # a Transfer-Encoding line the proxy adds, or b""
    rechunk: bool  # the body is chunked again as it is forwarded
    upstream_close: bool  # the upstream's body ends when it closes (no length, not chunked)
    client_close: bool  # the client learns the end by our close (an HTTP/1.0 client)


# Content-Length passed through, or no body: the common case, allocated once.
AS_IS: Final = Framing(b"", rechunk=False, upstream_close=False, client_close=False)


def framing(
    method: bytes,
    version: bytes,
    status: int,
    headers: list[tuple[bytes, bytes]],
    names: list[bytes],
) -> Framing:
    """Decide how the body is framed towards the client (RFC 9112 §6.3).

    `method` and `version` are the request's; `names` are the response's
    header names in lower case, in the order of `headers`.
    """
    if method == b"HEAD" or status in _NO_BODY or b"content-length" in names:
        return AS_IS
    codings = transfer_codings(headers, names)
    # RFC 9112 §6.3 item 7: unless chunked is the last coding, the body
    # runs to the close, whatever else Transfer-Encoding says.
    upstream_close = not codings or codings[-1] != b"chunked"
    if version != b"1.1":
        return Framing(b"", rechunk=False, upstream_close=upstream_close, client_close=True)
    # We undo only the chunking; any other coding is the client's to undo.
    kept = [coding for coding in codings if coding != b"chunked"]
    header = b"Transfer-Encoding: " + b", ".join([*kept, b"chunked"]) + b"\r\n"
    return Framing(header, rechunk=True, upstream_close=upstream_close, client_close=False)


def transfer_codings(headers: list[tuple[bytes, bytes]], names: list[bytes]) -> list[bytes]:
    """The transfer codings of a response, in the order they were applied."""
    return [
        coding.strip().lower()
        for (_, value), name in zip(headers, names, strict=True)
        if name == b"transfer-encoding"
        for coding in value.split(b",")
        if coding.strip()
    ]


def client_head(
    version: bytes,
    status: int,
    reason: bytes,
    headers: list[tuple[bytes, bytes]],
    names: list[bytes],
    framed: Framing,
    *,
    keep_alive: bool,
    request_id: bytes,
    set_cookie: bytes | None,
) -> list[bytes]:
    """The head of the target's response as the client gets it, in pieces."""
    extra = [b"Set-Cookie: ", set_cookie, b"\r\n"] if set_cookie else None
    return http.response_head(
        status,
        reason,
        headers,
        version=version,
        framing=framed.header,
        keep_alive=keep_alive,
        request_id=request_id,
        extra=extra,
        names=names,
    )


def error_answer(exc: ProxyError, request_id: bytes, *, close: bool, head_only: bool) -> bytes:
    """The proxy's own answer to a request it could not forward."""
    if isinstance(exc, LocalAnswer):
        return exc.response(request_id, head_only=head_only)
    if isinstance(exc, Refusal):  # 403/429 of the service's rules: the body says which
        return exc.response(request_id, close=close, head_only=head_only)
    # Our own 5xx say which failure they are; a 503's body also says why
    # (its reasons name services, never an address of the network behind).
    return http.error_response(
        exc.status,
        request_id=request_id,
        close=close,
        head_only=head_only,
        kind=exc.kind.encode() if exc.status >= 500 else None,
        detail=str(exc) if exc.status == 503 else None,
    )


class LineWriter(Protocol):
    """Where a response goes: the client connection (ClientSide has it)."""

    def write_lines(self, parts: list[bytes]) -> None: ...


class ResponseStream:
    """The bytes of one response for the client, written once per upstream read.

    The upstream connection parses a read into head, body pieces and the end;
    they gather here and `flush` writes them in one writelines() (one syscall
    for head + body + end of a small response).
    """

    __slots__ = ("_client", "_out", "framing", "upstream_keep_alive")

    def __init__(self, client: LineWriter) -> None:
        self._client = client
        self._out: list[bytes] = []
        self.framing = AS_IS
        self.upstream_keep_alive = True  # may the upstream connection carry another request

    def __repr__(self) -> str:
        return f"<ResponseStream {self.framing} queued={len(self._out)}>"

    def head(
        self,
        parts: list[bytes],
        framing_: Framing,
        upstream_keep_alive: bool,
        status: int = 0,
        reason: bytes = b"",
        headers: list[tuple[bytes, bytes]] | None = None,
        names: list[bytes] | None = None,
    ) -> None:
        """Queue the client head `parts`; the upstream's own head (status to
        names) is for a stream that keeps a copy (caching.CacheFill)."""
        self.framing = framing_
        self.upstream_keep_alive = upstream_keep_alive
        self._out += parts

    def body(self, data: bytes) -> None:
        if self.framing.rechunk:
            self._out += http.chunk(data)
        else:
            self._out.append(data)

    def end(self) -> None:
        if self.framing.rechunk:
            self._out.append(http.LAST_CHUNK)
        self.flush()

    def flush(self) -> None:
        """Write what this upstream read produced."""
        if self._out:
            out, self._out = self._out, []
            self._client.write_lines(out)


class LocalAnswer(ProxyError, abc.ABC):
    """A response the proxy gives itself on purpose (not a failure): the stream is fine."""

    @abc.abstractmethod
    def response(self, request_id: bytes, *, head_only: bool = False) -> bytes:
        """The whole answer, head and (unless `head_only`) body."""


class Maintenance(LocalAnswer):
    """The service is being recreated and shows a maintenance page."""

    status = 503
    kind = "maintenance"

    def __init__(self, html: str, retry_after: int) -> None:
        super().__init__("maintenance")
        self.html = html.encode()
        self.retry_after = retry_after

    def response(self, request_id: bytes, *, head_only: bool = False) -> bytes:
        extra = b"Retry-After: %d\r\nContent-Type: text/html; charset=utf-8\r\n" % self.retry_after
        return http.error_response(
            503,
            request_id=request_id,
            close=False,
            extra=extra,
            body=self.html,
            head_only=head_only,
            kind=self.kind.encode(),
        )
