"""What both ends of the admin API agree on, defined once.

The daemon (control/) serves by these numbers and names; the client
(zerodown.cli.client) asks by them. Standard library only, so the CLI can
import it without loading the server's dependencies (FastAPI, uvicorn), and
nothing here may import the rest of zerodown.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "JSON_TYPE",
    "SSE_KEEPALIVE",
    "STATE_CHANGING",
    "TOKEN_ENV",
    "WAIT_DEFAULT",
    "WAIT_MAX",
]

# The environment variable holding the admin API's bearer token, on both sides.
TOKEN_ENV: Final = "ZERODOWN_TOKEN"
JSON_TYPE: Final = "application/json"
# Methods that change state (RFC 9110 §9.2.1: not "safe"). The server wants
# JSON_TYPE on each, even without a body (its guard against cross-site
# forms), so the client sends it on each.
STATE_CHANGING: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})

WAIT_DEFAULT: Final = 30.0  # seconds a long poll on a deploy waits unless told
# A long poll holds a connection and a task on the daemon; past this the
# server refuses the timeout (400) and a client that wants longer polls again.
WAIT_MAX: Final = 300.0
# Seconds between SSE comments on an idle event stream: proxies and load
# balancers close connections idle for ~60 s, and a client that went away is
# only noticed when a write to it fails. A reader that hears nothing for
# several of these knows the connection is dead, not quiet.
SSE_KEEPALIVE: Final = 15.0
