"""How one attempt at a target ended, as the exchange's retry loop sees it."""

from __future__ import annotations

from enum import Enum
from typing import Final

from zerodown.errors import (
    ProxyError,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamReset,
    UpstreamTimeout,
)
from zerodown.proxy.retry import Attempt

# An attempt that ended before a byte of the request was written.
NOT_SENT: Final = Attempt(sent=False, responded=False, reused=False)


class Cut(Enum):
    """Why an exchange was ended from outside; it is then never retried."""

    DRAIN = "drain"  # its target's drain deadline passed (a 504, or a cut tunnel)
    CLIENT = "client"  # the client broke protocol mid-body (answered with its error)


class AttemptFailed(Exception):
    def __init__(self, error: ProxyError, attempt: Attempt, target_fault: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.attempt = attempt
        self.target_fault = target_fault  # counts against the target's passive health


def as_proxy_error(exc: BaseException) -> ProxyError:
    """A socket error in the proxy's terms (the client's 502 says `reset`)."""
    if isinstance(exc, ProxyError):
        return exc
    return UpstreamReset(f"upstream connection lost: {exc}")


def failure_kind(exc: ProxyError) -> str:
    """The target's failure counter an error counts in."""
    if isinstance(exc, UpstreamTimeout):
        return "timeout"
    if isinstance(exc, UpstreamProtocolError):
        return "protocol"
    if isinstance(exc, UpstreamReset):
        return "reset"
    if isinstance(exc, UpstreamConnectError):
        return "connect"
    return "other"
