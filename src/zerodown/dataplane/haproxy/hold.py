"""Recreate's hold on HAProxy: a request that finds no usable server waits
for one, up to the hold timeout, instead of getting a 503 at once.

HAProxy queues a request only when its servers are all busy (maxconn); with
none usable at all it answers 503 "no server available" straight away
(backend.c: tot_weight 0 is SRV_STATUS_NOSRV, never queued). So the wait is
a small Lua action, run only when `nbsrv(backend)` is 0: it sleeps in steps
of HOLD_POLL_MS (core.msleep yields, so the worker serves on meanwhile)
until a server is usable, which a runtime `add server` / `set server ...
state ready` makes true at once, or until the timeout, when HAProxy goes on
and answers 503 with the reason. The rules are in the config only while the
table asks for a hold (a recreate deploy turns it on and off, one reload
each), so a service outside a recreate answers 503 at once as before.
"""

from __future__ import annotations

from typing import Final

from zerodown.routing import ServiceSpec

__all__ = ["HOLD_ACTION", "HOLD_SCRIPT", "hold_rules"]

HOLD_ACTION: Final = "zerodown_hold"
HOLD_POLL_MS: Final = 10
HOLD_SCRIPT: Final = f"""\
-- Written by zerodown: hold a request while its backend has no usable
-- server (a recreate deploy's gap), up to timeout_ms, then let it go on.
core.register_action("{HOLD_ACTION}", {{"http-req"}}, function(txn, backend, timeout_ms)
  local function now_ms()
    local t = core.now()
    return t.sec * 1000 + t.usec / 1000
  end
  -- A boolean fetch comes back as 0 or 1 here, and 0 is true in Lua.
  local function stopping()
    local value = txn.f:stopping()
    return value == true or value == 1
  end
  local deadline = now_ms() + tonumber(timeout_ms)
  while txn.f:nbsrv(backend) == 0 and not stopping() and now_ms() < deadline do
    core.msleep({HOLD_POLL_MS})
  end
end, 2)
"""


def hold_rules(spec: ServiceSpec, backend: str) -> list[str]:
    """The backend's `http-request` lines for `spec.hold`; none without one."""
    if spec.hold is None:
        return []
    timeout_ms = max(1, round(spec.hold.timeout * 1000))
    # Not in a worker a reload is stopping: it reads nbsrv 0 for a backend it
    # stopped, servers or not, and would hold the last requests of its
    # keep-alive connections to the timeout; they go to the servers it has.
    none = f"{{ nbsrv({backend}) eq 0 }} !{{ stopping }}"
    name = "".join(c for c in spec.name if c.isalnum() or c in "-_.")
    reason = (
        f"503 Service Unavailable: no target for {name} "
        f"within the hold timeout ({spec.hold.timeout:g}s)"
    )
    return [
        f"http-request lua.{HOLD_ACTION} {backend} {timeout_ms} if {none}",
        # Still none: say which 503 this is, as the embedded proxy does.
        "http-request return status 503 content-type text/plain "
        f'string "{reason}\\n" hdr X-Zerodown-Error hold_timeout if {none}',
    ]
