"""The client side of the proxy: an asyncio Protocol around httptools' request
parser, one per client connection.

Requests are answered in the order they arrived (RFC 9112 §9.3.2): each
parsed head becomes an Exchange in a queue, and only the first one runs.
While a later one waits, reading stops, so a pipelining client cannot make
us buffer more than one read.

An upgrade request stops the parser: the bytes after it are held, not sent
upstream, until the target answers. On a 101 they open the tunnel; on any
other answer they are parsed as the client's next request (as nginx and
HAProxy do), so no byte ever reaches a target outside the request it framed.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import httptools

from zerodown.errors import BadRequest, NoRoute, ProxyError
from zerodown.proxy import http
from zerodown.proxy.exchange import Exchange
from zerodown.proxy.redirect import redirect_for
from zerodown.proxy.router import strip_prefix
from zerodown.proxy.timers import Deadline
from zerodown.proxy.watchdog import ReadWatchdog

if TYPE_CHECKING:
    from zerodown.proxy.server import ProxyServer


class ClientConnection(asyncio.Protocol):
    def __init__(self, server: ProxyServer, *, scheme: bytes = b"http") -> None:
        self.server = server
        self.scheme = scheme  # b"https" on a TLS listener: X-Forwarded-Proto
        self.settings = server.settings
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.client_ip = ""
        self.forwarded = http.Forwarded("")
        self.queue: collections.deque[Exchange] = collections.deque()
        self.reading: Exchange | None = None  # the exchange whose body is being parsed
        self.tunnel: Exchange | None = None
        # The exchange of an upgrade request awaiting its answer, and the bytes
        # that followed it (held until the target says 101 or not).
        self.upgrading: Exchange | None = None
        self._held = b""
        self._send_timer: asyncio.TimerHandle | None = None
        self.write_paused = False
        self.closing = False  # no more requests: answer what is queued, then close
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._in_head = True  # between a message's first byte and its headers' end
        self._head_bytes = 0
        self._request_line = b""  # the tail of a head with no field yet, for _check_partial_head
        self._pauses: set[str] = set()
        # Header, body and keep-alive timeouts take turns on one deadline;
        # the upstream read timeout of the exchange being answered has its own.
        self._deadline = Deadline(self.loop)
        self.watchdog = ReadWatchdog(self.loop, self.settings.read_timeout, self._write_paused)

    def __repr__(self) -> str:
        return f"<ClientConnection {self.client_ip} queue={len(self.queue)} closing={self.closing}>"

    # -- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if isinstance(peer, tuple) else "127.0.0.1"
        self.forwarded = http.Forwarded(
            self.client_ip, self.scheme, trusted=self.server.is_trusted(self.client_ip)
        )
        self.server.connections.add(self)
        self._arm(self.settings.header_timeout, self._header_timeout)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.tunnel_data(data)
            return
        if self.upgrading is not None:
            self._held += data  # reading is paused; this is what was already under way
            return
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
            if self._in_head:
                self._check_partial_head(data)
        except BadRequest as exc:
            self._protocol_error(exc)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgrade_requested(data[upgrade.args[0] :])
        except httptools.HttpParserCallbackError as exc:
            context = exc.__context__
            self._protocol_error(
                context if isinstance(context, BadRequest) else BadRequest(str(exc))
            )
        except httptools.HttpParserError as exc:
            self._protocol_error(BadRequest(f"malformed request: {exc}"))

    def _check_partial_head(self, data: bytes) -> None:
        """Checks on a head that is still arriving (a slow path)."""
        # httptools gathers a header that spans reads in Python before
        # on_header sees it: bound the head by raw bytes too, or one endless
        # header line would grow without limit.
        if self._head_bytes > self.settings.max_header_size:
            raise BadRequest("request header fields too large", status=431)
        if self._headers or not self._url:
            return
        # llhttp reads "GET /" + CRLF as an HTTP/0.9 request and waits for
        # headers that such a client never sends: answer now, not at
        # header_timeout. The tail of what arrived is kept while the request
        # line is all there is, bounded by the longest request line.
        tail = (self._request_line + data)[-(self.settings.max_uri_size + 32) :]
        self._request_line = tail
        if _ends_http09_line(tail, self._parser.get_method(), self._url):
            raise BadRequest("HTTP/0.9 is not supported")

    def eof_received(self) -> bool | None:
        if self.tunnel is not None:
            # A half-close inside a tunnel is the protocol's own (a WebSocket
            # or TLS peer done sending): pass it on and keep reading the
            # target's side; the tunnel ends when the target closes.
            self.tunnel.tunnel_eof()
            return True
        # A client may half-close after sending its request (HTTP/1.0 style):
        # keep the write side open until what it asked for is answered.
        self.closing = True
        return True if self.queue else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline.cancel()
        self.watchdog.cancel()
        self._stop_send_timer()
        self.server.connections.discard(self)
        self.closing = True
        for exchange in self.queue:
            exchange.client_lost()
        self.queue.clear()
        self.transport = None
        self.server.connection_closed()

    def _write_paused(self) -> bool:
        return self.write_paused

    def pause_writing(self) -> None:
        self.write_paused = True
        self._start_send_timer()
        if self.queue:
            self.queue[0].client_write_paused(True)

    def resume_writing(self) -> None:
        self.write_paused = False
        self._stop_send_timer()
        if self.queue:
            self.queue[0].client_write_paused(False)

    # -- httptools callbacks ---------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._head_size = 0
        self._in_head = True
        if not self.queue:  # from keep-alive idle to "a head is arriving"
            self._arm(self.settings.header_timeout, self._header_timeout)

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.settings.max_uri_size:
            raise BadRequest("request URI too long", status=414)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        if self._head_size + len(self._url) > self.settings.max_header_size:
            raise BadRequest("request header fields too large", status=431)
        if not self._in_head:
            # A trailer of a chunked body (RFC 9112 §7.1.2). It is dropped, as
            # nginx drops it: merged into the head it would reach the app as a
            # header that no check of ours has seen (Host, Authorization).
            return
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._request_line = b""
        parser = self._parser
        head = http.read_head(
            parser.get_method(),
            self._url,
            parser.get_http_version(),
            self._headers,
            parser.should_keep_alive(),
        )
        exchange = self._new_exchange(head)
        self.reading = exchange
        self.queue.append(exchange)
        if len(self.queue) == 1:
            self._disarm()
            exchange.start()
        else:
            self.pause_reading("pipeline")
        if head.has_body:
            self._arm(self.settings.body_timeout, self._body_timeout)

    def on_body(self, body: bytes) -> None:
        assert self.reading is not None
        self._touch_body_timer()
        self.reading.feed_body(body)

    def on_message_complete(self) -> None:
        exchange, self.reading = self.reading, None
        if exchange is not None:
            exchange.end_body()
        if self.queue and self.queue[0] is exchange:
            self._disarm()

    # -- building an exchange --------------------------------------------------

    def _new_exchange(self, head: http.RequestHead) -> Exchange:
        error: ProxyError | None = self._refusal(head)
        service = None
        path = head.url
        if error is None:
            host, path = _routing_host_path(head)
            if self.scheme == b"http":
                error = redirect_for(head, host, path, self.server.redirect_port)
        if error is None:
            service = self.server.router.match(host, path.partition(b"?")[0])
            if service is None:
                error = NoRoute()
            elif service.spec.strip_prefix:
                path = strip_prefix(service.prefix, path)
        if error is not None and head.has_body:
            self.closing = True  # the body will not be read: the connection ends here
        return Exchange(self, self.server, head, service, path, error)

    def _refusal(self, head: http.RequestHead) -> BadRequest | None:
        """Requests refused on their head alone, before any routing."""
        if head.method == b"CONNECT":
            return BadRequest("CONNECT is not supported", status=501)
        if head.upgrade is not None and head.has_body:
            # llhttp switches at the end of the head, so the body would pass as
            # tunnel bytes, unframed. WebSocket and h2c upgrades carry no body.
            return BadRequest("an upgrade request with a body is not supported")
        limit = self.settings.max_body_size
        if limit and head.content_length is not None and head.content_length > limit:
            return BadRequest("request body too large", status=413)
        return None

    # -- called by exchanges ---------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def write_lines(self, parts: list[bytes]) -> None:
        if self.transport is None:
            return
        if self.scheme == b"https":
            # uvloop's SSL transport would make each piece a TLS record of its own.
            self.transport.write(b"".join(parts))
        else:
            self.transport.writelines(parts)

    def real_client_ip(self, head: http.RequestHead) -> str:
        """The client a trusted peer forwards for (nginx's realip, `real_ip_recursive on`).

        Walks X-Forwarded-For from the right, past every trusted address: the
        first untrusted one is the client, as only the hops we trust could
        have appended what lies to its right; anything left of it is the
        client's own say and may be forged. When every hop is trusted, the
        leftmost is the client. A hop that is not an IP address ends the
        walk at the last trusted one: it vouched for nothing usable. Only
        called for a trusted peer, so an untrusted client never costs a parse.
        """
        client = self.client_ip
        for hop in reversed(http.forwarded_for(head)):
            if not self.server.is_trusted(client):
                break
            try:
                client = str(ipaddress.ip_address(hop))
            except ValueError:
                break
        return client

    def keep_alive_allowed(self, exchange: Exchange) -> bool:
        """May the connection stay open after `exchange`'s response?

        A half-close or a refused request ends the connection, but only after
        the requests read in full ahead of it are answered, in order.
        """
        if self.server.stopping:
            return False
        return not self.closing or any(waiting is not exchange for waiting in self.queue)

    def exchange_done(self, exchange: Exchange) -> None:
        if not self.queue or self.queue[0] is not exchange:
            return  # the connection was lost: queue already cleared
        self.queue.popleft()
        self.server.log_access(self, exchange)
        keep = exchange.keep_alive and exchange.body_done and self.keep_alive_allowed(exchange)
        if not keep:
            self._finish()
            return
        if exchange is self.upgrading:
            self._upgrade_declined()
            return
        if self.queue:
            self.queue[0].start()
            if self.write_paused:
                self.queue[0].client_write_paused(True)
        else:
            self._arm(self.settings.keepalive_timeout, self.close)
        self.resume_reading("pipeline")

    def _finish(self) -> None:
        """No more responses on this connection: flush what was written, then close."""
        self.closing = True
        if self.queue:  # pipelined requests after a closing response are not answered
            for waiting in self.queue:
                waiting.client_lost()
            self.queue.clear()
        self.close()

    def become_tunnel(self, exchange: Exchange) -> None:
        self.tunnel = exchange
        self.upgrading = None
        self._disarm()
        held, self._held = self._held, b""
        if held:
            exchange.tunnel_data(held)  # only now, after the target said 101
        for reason in ("pipeline", "body", "upgrade"):
            self.resume_reading(reason)

    def pause_reading(self, reason: str) -> None:
        if not self._pauses and self.transport is not None:
            self.transport.pause_reading()
        self._pauses.add(reason)

    def resume_reading(self, reason: str) -> None:
        if reason not in self._pauses:
            return
        self._pauses.discard(reason)
        if not self._pauses and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            if self.transport.get_write_buffer_size():
                self._start_send_timer()  # close waits for the flush: bound it
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def shutdown(self, idle_grace: float = 0.0) -> None:
        """Graceful stop: a busy connection closes after its response; an idle one
        after `idle_grace`, in which one more request is answered (with
        Connection: close). Closing an idle connection at once races with a
        request already on its way, which its client then sees fail."""
        self.closing = True
        if not self.queue and self.tunnel is None:
            if idle_grace > 0:
                self._arm(idle_grace, self.close)
            else:
                self.close()

    # -- errors and timers -----------------------------------------------------

    def _protocol_error(self, error: BadRequest) -> None:
        """Refuse the request in order: after what is queued, answer, then close."""
        self.closing = True
        self.pause_reading("error")
        if self.reading is not None:
            self.reading.body_error(error)  # mid-body: the upstream must not get the rest
            return
        exchange = Exchange(self, self.server, _placeholder_head(), None, b"/", error)
        self.queue.append(exchange)
        if len(self.queue) == 1:
            exchange.start()

    def _upgrade_requested(self, early: bytes) -> None:
        # llhttp stops at an upgrade for good. What follows belongs to the
        # tunnel if the target switches; else it is the client's next request,
        # for a new parser. Either way it waits for the answer.
        exchange = self.queue[-1] if self.queue else None
        self.pause_reading("upgrade")
        self._parser = httptools.HttpRequestParser(self)
        if exchange is None or exchange.error is not None:
            self.closing = True  # refused (CONNECT, a body): nothing after it is read
            return
        self.upgrading = exchange
        self._held = early

    def _upgrade_declined(self) -> None:
        """The target answered the upgrade request without switching: the held
        bytes are the client's next request."""
        self.upgrading = None
        held, self._held = self._held, b""
        self._arm(self.settings.keepalive_timeout, self.close)
        self.resume_reading("upgrade")
        self.resume_reading("pipeline")
        if held:
            self.data_received(held)

    def _header_timeout(self) -> None:
        if self.queue:
            return
        self.write(http.error_response(408))
        self.server.rejected[408] = self.server.rejected.get(408, 0) + 1
        self.close()

    def _body_timeout(self) -> None:
        if self._pauses:  # we stopped reading, not the client: not its delay
            self._arm(self.settings.body_timeout, self._body_timeout)
            return
        if self.reading is not None:
            self._protocol_error(BadRequest("request body timed out", status=408))

    def _touch_body_timer(self) -> None:
        if self._deadline.when:
            self._arm(self.settings.body_timeout, self._body_timeout)

    def _start_send_timer(self) -> None:
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(self.settings.send_timeout, self._send_timeout)

    def _stop_send_timer(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _send_timeout(self) -> None:
        """The client took no bytes for send_timeout: cut it, freeing its upstream."""
        self._send_timer = None
        self.abort()

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        self._deadline.set(self.loop.time() + delay, callback)

    def _disarm(self) -> None:
        self._deadline.clear()


def _ends_http09_line(tail: bytes, method: bytes, url: bytes) -> bool:
    """Does `tail` hold a request line that ends right after its target?"""
    line = method + b" " + url
    at = tail.rfind(line)
    if at < 0 or (at > 0 and tail[at - 1 : at] not in (b"\r", b"\n")):
        return False  # not at a line start: not (knowably) this request's line
    return tail[at + len(line) : at + len(line) + 1] in (b"\r", b"\n")


def _placeholder_head() -> http.RequestHead:
    return http.RequestHead(b"GET", b"/", b"1.1", [], keep_alive=False)


def _routing_host_path(head: http.RequestHead) -> tuple[str, bytes]:
    """Host and origin-form path; an absolute-form target (RFC 9112 §3.2.2) wins over Host."""
    url = head.url
    if url[:1] == b"/":
        return http.host_name(head.host), url
    if url == b"*":
        return http.host_name(head.host), b"*"
    try:
        parsed = httptools.parse_url(url)
    except httptools.HttpParserInvalidURLError:
        raise BadRequest("invalid request target") from None
    if parsed.schema not in (b"http", b"https") or not parsed.host:
        raise BadRequest("invalid request target")
    path = parsed.path or b"/"
    if parsed.query:
        path += b"?" + parsed.query
    # We route by this authority, so the target must see it as Host too: a
    # proxy replaces the client's Host (RFC 9112 §3.2.2), or an app would act
    # on a host the routing never checked.
    host = b"[" + parsed.host + b"]" if b":" in parsed.host else parsed.host
    http.replace_host(head, host if parsed.port is None else b"%s:%d" % (host, parsed.port))
    return parsed.host.decode("ascii", "replace").lower(), path


def is_trusted(address: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)
