"""`[proxy.tls] redirect_http`: a plain-HTTP request answered with a 308 to
the same host and path over https.

308, not 301: a client must repeat the same method and body (RFC 9110
§15.4.9), so a POST is not turned into a GET on the way.
"""

from __future__ import annotations

import re
from typing import Final

from zerodown.errors import BadRequest, ProxyError
from zerodown.proxy import http
from zerodown.proxy.response import LocalAnswer

HTTPS_PORT: Final = 443
# A name or an IP literal: anything else must not reach a Location header.
_HOST: Final = re.compile(r"[a-z0-9.-]+|\[[0-9a-f:.]+\]")


def redirect_for(
    head: http.RequestHead, host: str, path: bytes, https_port: int | None
) -> ProxyError | None:
    """The 308 for a plain-HTTP request (None when `redirect_http` is off:
    `https_port` None); a 400 when its Host cannot make a URL."""
    if https_port is None:
        return None
    try:
        url = location(host, path, https_port)
    except BadRequest as exc:
        return exc
    return HttpsRedirect(url, close=head.has_body or not head.keep_alive)


def location(host: str, path: bytes, https_port: int) -> bytes:
    """The https URL for `host` (no port, lower case) and origin-form `path`;
    BadRequest when the host cannot be written into one."""
    if not _HOST.fullmatch(host):
        raise BadRequest("no valid Host to redirect to https")
    port = "" if https_port == HTTPS_PORT else f":{https_port}"
    return f"https://{host}{port}".encode() + (path if path[:1] == b"/" else b"/")


class HttpsRedirect(LocalAnswer):
    status = 308
    kind = "https_redirect"

    def __init__(self, url: bytes, *, close: bool) -> None:
        super().__init__("redirect to https")
        self.url = url
        self.close = close  # a body we will not read, or the client asked to close

    def response(self, request_id: bytes, *, head_only: bool = False) -> bytes:
        return http.error_response(
            308,
            request_id=request_id,
            close=self.close,
            extra=b"Location: " + self.url + b"\r\n",
            body=b"",
            head_only=head_only,
        )
