"""The library's exception tree.

The library raises these; only the CLI turns them into exit codes and the
data plane turns the upstream ones into HTTP status codes (each carries the
status it maps to, as h11's protocol errors carry an error_status_hint).
"""

from __future__ import annotations

import errno


class ZerodownError(Exception):
    """Base of every error zerodown raises on purpose."""


class ConfigError(ZerodownError):
    """A config file, key or value is wrong. Names where and why."""

    def __init__(self, reason: str, *, file: str | None = None, key: str | None = None) -> None:
        self.reason = reason
        self.file = file
        self.key = key
        where = ": ".join(part for part in (file, key) if part)
        super().__init__(f"{where}: {reason}" if where else reason)


class StateDirBusy(ConfigError):
    """Another `zerodown serve` holds the state directory.

    Two daemons on one state_dir would adopt, and then stop, each other's
    instances. A ConfigError: this run's `proxy.state_dir` cannot be used.
    """

    def __init__(self, state_dir: str, pid: int | None) -> None:
        self.pid = pid
        holder = f"pid {pid}" if pid is not None else "a process whose pid it did not record"
        super().__init__(
            f"{state_dir} is in use by another `zerodown serve` ({holder}); "
            "stop that one, or give this one another state_dir",
            key="proxy.state_dir",
        )


class ListenError(ConfigError):
    """An address zerodown was told to listen on cannot be bound.

    A ConfigError, as StateDirBusy is: this run cannot use that address. The
    message names it and says why, in words (`errno` keeps the number).
    """

    def __init__(self, address: str, error: OSError) -> None:
        self.address = address
        self.errno = error.errno
        reason = _BIND_REASONS.get(error.errno or 0) or os_reason(error)
        super().__init__(f"cannot listen on {address}: {reason}")


# Why a bind fails, said so that the fix is plain.
_BIND_REASONS = {
    errno.EADDRINUSE: "address already in use (another process holds it)",
    errno.EADDRNOTAVAIL: "address not available (no interface of this machine has it)",
    errno.EACCES: "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
}


def os_reason(error: OSError) -> str:
    """An OSError in words, without Python's "[Errno N]" prefix."""
    text = (error.strerror or str(error) or type(error).__name__).lower()
    return f"{text}: {error.filename}" if error.filename else text


class IllegalTransition(ZerodownError):
    """A state machine was asked for a move its table does not allow."""


class DataPlaneError(ZerodownError):
    """The data plane could not do what it was asked."""


class DataPlaneDown(DataPlaneError):
    """The data plane's process is not there to ask: it died (its socket or
    channel is gone) and its watcher is starting it again, on the table in
    force. Worth asking again once it is back (dataplane/restarts.py); any
    other DataPlaneError is a refusal, and asking again changes nothing."""


class ProxyError(ZerodownError):
    """An error on the request path; `status` is the HTTP status the client gets.

    `kind` names the failure where an operator looks: the `X-Zerodown-Error`
    header of the proxy's own 5xx and the access log's `error` field (as
    HAProxy's termination states and Envoy's response flags do).
    """

    status = 502
    kind = "proxy_error"


class BadRequest(ProxyError):
    """The client's request is malformed or ambiguous; it never reaches an app."""

    kind = "bad_request"

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


class NoRoute(BadRequest):
    """No service matches the request's host and path (404)."""

    kind = "no_route"

    def __init__(self, reason: str = "no service for this host and path") -> None:
        super().__init__(reason, status=404)


class NoHealthyTarget(ProxyError):
    """No target of the service may take the request: none ready, or none at all.

    Health alone never causes it: with every ready target down by health the
    proxy routes to them anyway (panic, proxy/service.py).
    """

    status = 503
    kind = "no_healthy_target"


class HoldTimeout(NoHealthyTarget):
    """A request held for a target (a recreate deploy's gap) saw none in time."""

    kind = "hold_timeout"


class ShuttingDown(NoHealthyTarget):
    """The proxy is stopping: a held request will not get a target."""

    kind = "shutting_down"


class UpstreamConnectError(ProxyError):
    """Could not open (or reuse) a connection to a target before sending anything."""

    status = 502
    kind = "upstream_connect"


class UpstreamReset(UpstreamConnectError):
    """The target closed or reset the connection before the response was complete."""

    kind = "upstream_reset"


class UpstreamTimeout(ProxyError):
    status = 504
    kind = "upstream_timeout"


class UpstreamProtocolError(ProxyError):
    """The target answered with something that is not valid HTTP/1.x."""

    status = 502
    kind = "upstream_protocol"


class QueueTimeout(ProxyError):
    """Every target was at max connections for longer than the queue deadline."""

    status = 503
    kind = "queue_timeout"


class DeployError(ZerodownError):
    """A deploy could not finish."""


class HealthGateTimeout(DeployError):
    """Instances did not become healthy before their deadline."""


class NotListening(DeployError):
    """An instance's own processes do not listen on its port: another program
    holds it, or the app listens elsewhere (its `command` ignores `{port}`)."""


class DeployBusy(DeployError):
    """Another deploy of the same service holds the lock."""


class UnknownService(DeployError):
    """No service of that name is configured (or it has no `command` to deploy)."""


class UnknownRelease(UnknownService):
    """No release of that version is recorded for the service (`rollback --to`).

    A name the caller got wrong, as an unknown service is: the admin API answers
    404 and the CLI exits 2 (bad usage), not 1 as for a refusal of the moment."""


class NotDeployable(DeployError):
    """The request cannot be carried out now: nothing to promote, no release to roll back to, …"""


class DeployAborted(DeployError):
    """Stopped by `zerodown abort`."""


class CanaryBreach(DeployError):
    """The canary judge found the new release worse than the stable one."""
