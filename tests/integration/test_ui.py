"""The dashboard's HTTP side on a real uvicorn, port 0: the page and its
guards (Host, CSP, framing), and the API it calls as a browser meets it
(401 without the token, no CORS, no cookie or form that can act).

The page's behaviour in a browser is tests/e2e/test_ui.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib.resources import files

import pytest

from harness import DEADLINE, run
from integration.test_admin_deploy import FakeControl, make_app
from zerodown.control.server import AdminServer
from zerodown.control.ui import ASSETS, host_allowed

TOKEN = "ui-token"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes


def request(
    port: int, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE)
    try:
        # skip_host: a test that sets Host sends exactly its own.
        conn.putrequest(method, path, skip_host="Host" in (headers or {}))
        sent = {"Host": f"127.0.0.1:{port}"} | (headers or {})
        for name, value in sent.items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return Reply(
            response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        )
    finally:
        conn.close()


@contextlib.asynccontextmanager
async def served(token: str | None = TOKEN) -> AsyncIterator[tuple[int, FakeControl]]:
    control = FakeControl()
    server = AdminServer(make_app(control, token), "127.0.0.1", 0)
    await server.start()
    try:
        yield server.port, control
    finally:
        await server.stop()


def ask(token: str | None, method: str, path: str, **kwargs: object) -> tuple[Reply, FakeControl]:
    async def go() -> tuple[Reply, FakeControl]:
        async with served(token) as (port, control):
            reply = await asyncio.to_thread(request, port, method, path, **kwargs)  # type: ignore[arg-type]
            return reply, control

    return run(go())


# -- the page ---------------------------------------------------------------------


@pytest.mark.parametrize("token", [TOKEN, None], ids=["token", "open"])
@pytest.mark.parametrize("path", sorted(ASSETS))
def test_the_page_loads_without_the_token_with_strict_headers(path: str, token: str | None) -> None:
    reply, _ = ask(token, "GET", path)
    assert reply.status == 200, reply.body
    assert reply.body == (files("zerodown.control") / "ui_assets" / ASSETS[path].file).read_bytes()
    assert reply.headers["content-type"] == ASSETS[path].media_type
    policy = reply.headers["content-security-policy"]
    csp = dict(part.partition(" ")[::2] for part in policy.split("; "))
    assert csp["default-src"] == "'none'"
    assert csp["script-src"] == "'self'"  # no inline script, nothing from elsewhere
    assert csp["connect-src"] == "'self'"
    assert csp["frame-ancestors"] == "'none'"
    assert reply.headers["x-frame-options"] == "DENY"
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert reply.headers["referrer-policy"] == "no-referrer"
    assert not [name for name in reply.headers if name.startswith("access-control-")]


def test_the_page_has_no_inline_script_and_nothing_from_the_internet() -> None:
    folder = files("zerodown.control") / "ui_assets"
    html = (folder / "index.html").read_text()
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S)
    assert scripts == [(' type="module" src="/ui/app.js"', "")]
    assert not re.search(r"\son[a-z]+=", html), "an inline handler needs 'unsafe-inline'"
    for asset in {asset.file for asset in ASSETS.values()}:
        text = (folder / asset).read_text()
        urls = [u for u in re.findall(r"https?://[^\s\"')]+", text) if "www.w3.org" not in u]
        assert urls == [], f"{asset} names {urls}"  # the SVG namespace is a name, not a fetch
    script = "".join((folder / name).read_text() for name in ("app.js", "views.js", "dom.js"))
    assert ".innerHTML" not in script  # what the API says never becomes markup
    assert "new EventSource" not in script  # it cannot send the token


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:9900", "rebind.127.0.0.1.nip.io:9900", "localhost.evil"]
)
def test_the_page_is_not_served_to_a_dns_name(host: str) -> None:
    reply, _ = ask(TOKEN, "GET", "/ui", headers={"Host": host})
    assert reply.status == 421
    assert b"Host" in reply.body
    assert b"<html" not in reply.body


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:9900",
        "localhost:9900",
        "LOCALHOST",
        "[::1]:9900",
        "10.1.2.3:9900",
        "app.localhost:9900",
        "localhost.:9900",
    ],
)
def test_the_page_is_served_to_an_address_or_localhost(host: str) -> None:
    assert host_allowed(host)
    reply, _ = ask(TOKEN, "GET", "/ui", headers={"Host": host})
    assert reply.status == 200


def test_without_a_token_a_dns_name_gets_neither_page_nor_api() -> None:
    for path in ("/ui", "/v1/status"):
        reply, _ = ask(None, "GET", path, headers={"Host": "evil.example"})
        assert reply.status in (403, 421), (path, reply)


@pytest.mark.parametrize(("method", "path", "status"), [
    ("POST", "/ui", 405), ("PUT", "/ui/app.js", 405), ("GET", "/ui/app.py", 404),
    ("GET", "/ui/../v1/status", 404),
])  # fmt: skip
def test_only_the_assets_are_served_and_only_read(method: str, path: str, status: int) -> None:
    reply, _ = ask(TOKEN, method, path)
    assert reply.status == status


def test_head_of_the_page() -> None:
    reply, _ = ask(TOKEN, "HEAD", "/ui/app.js")
    assert reply.status == 200
    assert int(reply.headers["content-length"]) > 1000
    assert reply.headers["x-frame-options"] == "DENY"


# -- the API as the page (or another page) meets it -----------------------------------


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/status"), ("GET", "/v1/stats"), ("GET", "/v1/events"),
    ("POST", "/v1/services/web/promote"), ("POST", "/v1/services/web/rollback"),
])  # fmt: skip
def test_the_api_the_page_calls_is_401_without_the_token(method: str, path: str) -> None:
    headers = {"Content-Type": "application/json"} if method == "POST" else {}
    reply, control = ask(TOKEN, method, path, headers=headers)
    assert reply.status == 401
    assert reply.headers["www-authenticate"] == "Bearer"
    assert [call for call in control.calls if call[0] != "status"] == []


def test_a_cookie_or_a_form_cannot_act() -> None:
    """Only the Authorization header carries the token: a browser attaches
    cookies to a cross-site form post by itself, so neither may count."""
    attempts = [
        {"Cookie": f"token={TOKEN}; Authorization=Bearer {TOKEN}",
         "Content-Type": "application/json"},
        {"Content-Type": "application/x-www-form-urlencoded"},
    ]  # fmt: skip
    for headers in attempts:
        body = f"token={TOKEN}&access_token={TOKEN}".encode()
        reply, control = ask(TOKEN, "POST", f"/v1/services/web/promote?access_token={TOKEN}",
                             headers=headers, body=body)  # fmt: skip
        assert reply.status == 401, headers
        assert control.calls == []
    # With the token but as a form: still refused (415), as a cross-site form would be.
    form = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/plain"}
    reply, control = ask(TOKEN, "POST", "/v1/services/web/promote", headers=form)
    assert reply.status == 415
    assert control.calls == []


@pytest.mark.parametrize(("method", "path"), [
    ("OPTIONS", "/v1/services/web/promote"), ("OPTIONS", "/v1/status"), ("GET", "/v1/status"),
    ("GET", "/ui"),
])  # fmt: skip
def test_no_cors_header_ever(method: str, path: str) -> None:
    headers = {
        "Origin": "https://evil.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
        "Authorization": f"Bearer {TOKEN}",
    }
    reply, control = ask(TOKEN, method, path, headers=headers)
    assert not [name for name in reply.headers if name.startswith("access-control-")], reply
    assert ("promote", "web") not in control.calls


def test_every_asset_file_is_served_and_every_served_file_exists() -> None:
    folder = files("zerodown.control") / "ui_assets"
    assert {entry.name for entry in folder.iterdir()} == {asset.file for asset in ASSETS.values()}
