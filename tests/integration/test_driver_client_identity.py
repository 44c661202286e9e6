"""Client-identity fields through a real HAProxy and a real nginx, as the
embedded proxy treats them (test_proxy_security.py): X-Real-IP, Forwarded,
True-Client-IP and the like pass only from `trusted_proxies`, and the
spellings with an underscore for a dash (X_Forwarded_For lands on a WSGI
app's HTTP_X_FORWARDED_FOR) pass from nobody.

127.0.0.1 is the trusted proxy; 127.0.0.2 (loopback too, on Linux) is a
client that is not.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from haproxy_harness import haproxy
from haproxy_harness import port_of as haproxy_port
from harness import Request, backends, run, service
from nginx_harness import nginx, port_of
from proxy_protocol_harness import BALANCER, STRANGER, send, status

TRUSTED = (f"{BALANCER}/32",)
CLAIMS = {
    "X-Real-IP": "6.6.6.6",
    "Forwarded": "for=6.6.6.6;proto=https",
    "True-Client-IP": "6.6.6.6",
    "X-Forwarded-Port": "443",
}
SPELLINGS = {"X_Forwarded_For": "6.6.6.6", "X-Forwarded_Proto": "https", "X_Real_IP": "6.6.6.6"}
# Fields the proxy sets itself: a client's own is replaced, never passed beside ours.
OURS = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.test", "X-Request-ID": "mine"}
Plane = Callable[[Path, str, tuple[str, ...]], AbstractAsyncContextManager[int]]


@contextlib.asynccontextmanager
async def haproxy_plane(
    tmp_path: Path, address: str, trusted: tuple[str, ...]
) -> AsyncIterator[int]:
    async with haproxy(tmp_path, service(address), trusted_proxies=trusted) as plane:
        yield haproxy_port(plane)


@contextlib.asynccontextmanager
async def nginx_plane(tmp_path: Path, address: str, trusted: tuple[str, ...]) -> AsyncIterator[int]:
    async with nginx(tmp_path, service(address), trusted_proxies=trusted) as plane:
        yield port_of(plane)


PLANES = [pytest.param(haproxy_plane, id="haproxy"), pytest.param(nginx_plane, id="nginx")]


def get(headers: dict[str, str]) -> bytes:
    lines = ["GET / HTTP/1.1", "Host: example.test", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def seen(request: Request, names: dict[str, str]) -> dict[str, str | None]:
    return {name: request.header(name) for name in names}


@pytest.mark.parametrize("plane", PLANES)
def test_no_client_names_itself_without_trusted_proxies(tmp_path: Path, plane: Plane) -> None:
    async def main() -> None:
        async with backends("a") as (a,), plane(tmp_path, a.address, ()) as port:
            sent_by_client = CLAIMS | SPELLINGS | OURS | {"X-Forwarded-For": "6.6.6.6"}
            assert status(await send(port, get(sent_by_client), source=STRANGER)) == 200
            (sent,) = a.requests
            assert seen(sent, CLAIMS | SPELLINGS) == dict.fromkeys(CLAIMS | SPELLINGS)
            assert sent.all("x-forwarded-for") == [STRANGER]
            assert sent.all("x-forwarded-proto") == ["http"]
            assert sent.all("x-forwarded-host") == ["example.test"]
            (request_id,) = sent.all("x-request-id")
            assert request_id != "mine"

    run(main())


@pytest.mark.parametrize("plane", PLANES)
def test_a_trusted_proxy_names_the_client_and_a_stranger_does_not(
    tmp_path: Path, plane: Plane
) -> None:
    async def main() -> None:
        async with backends("a") as (a,), plane(tmp_path, a.address, TRUSTED) as port:
            for source in (BALANCER, STRANGER):
                assert status(await send(port, get(CLAIMS | SPELLINGS), source=source)) == 200
            from_balancer, from_stranger = a.requests
            assert seen(from_balancer, CLAIMS) == CLAIMS
            assert seen(from_stranger, CLAIMS) == dict.fromkeys(CLAIMS)
            # An underscore spelling passes from nobody, a trusted proxy included.
            for sent in (from_balancer, from_stranger):
                assert seen(sent, SPELLINGS) == dict.fromkeys(SPELLINGS)

    run(main())
