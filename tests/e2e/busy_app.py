"""A tiny WSGI app for gunicorn's default sync worker: one request at a time.

    gunicorn -w 1 -b 127.0.0.1:PORT --chdir tests/e2e busy_app:app

`/health` answers at once, but only when the worker gets to it: behind slow
requests it waits its turn in the listen queue, as a real app's does.
`/slow?ms=200-400` sleeps a random time in that range (or `ms=300`, one
value). Every answer carries the release in `X-Version` (from
ZERODOWN_VERSION, which zerodown's runtime sets) so the load sees which
release served it.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterable
from urllib.parse import parse_qs

StartResponse = Callable[[str, list[tuple[str, str]]], object]

VERSION = os.environ.get("ZERODOWN_VERSION", "dev")


def app(environ: dict[str, object], start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "/")
    if path == "/slow":
        time.sleep(_delay_ms(str(environ.get("QUERY_STRING", ""))) / 1000)
    body = b"ok\n" if path == "/health" else f"{VERSION}\n".encode()
    start_response(
        "200 OK",
        [
            ("Content-Type", "text/plain"),
            ("Content-Length", str(len(body))),
            ("X-Version", VERSION),
        ],
    )
    return [body]


def _delay_ms(query: str) -> float:
    value = parse_qs(query).get("ms", ["0"])[0]
    low, _, high = value.partition("-")
    return random.uniform(float(low), float(high or low))
