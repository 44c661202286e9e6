"""`zerodown serve`: the data plane and the control daemon, in the foreground."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Annotated, Final

import typer
import uvloop

from zerodown.cli.exits import fail
from zerodown.cli.options import DEFAULT_CONFIG, ConfigOption
from zerodown.errors import ConfigError, ZerodownError

if TYPE_CHECKING:
    from zerodown.config import Config

# What a bind raises for an address that cannot be used (in use, not ours, privileged).
BIND_ERRNOS: Final = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})


def serve(
    config: ConfigOption = DEFAULT_CONFIG,
    keep_instances: Annotated[
        bool,
        typer.Option(
            "--keep-instances/--stop-instances",
            help="On SIGTERM, leave the apps running for the next `zerodown serve` to adopt "
            "(upgrading zerodown itself), or stop them (the default).",
        ),
    ] = False,
) -> None:
    """Run the data plane and the control daemon in the foreground.

    SIGTERM or Ctrl-C stops it; SIGUSR2 restarts it without refusing a
    connection (a new zerodown version or config takes over the sockets).
    """
    from zerodown.config import load_config
    from zerodown.control.daemon import Daemon

    loaded = None
    try:
        loaded = load_config(config)
        keep = "--keep-instances" if keep_instances else "--stop-instances"
        daemon = Daemon(
            loaded, keep_instances=keep_instances, restart_argv=["serve", "-c", str(config), keep]
        )
        uvloop.run(daemon.run_until_signalled())
    except ZerodownError as exc:
        raise fail(exc) from None
    except OSError as exc:
        # The daemon has stopped (and closed what it had bound) by now.
        raise fail(_serve_error(exc, loaded)) from None


def _serve_error(exc: OSError, config: Config | None) -> ZerodownError:
    """An OSError that stopped `serve`, as one line: which address, or which file, and why.

    The data plane's bind raises a bare OSError ("[Errno 98] Address already
    in use", no address), so a bind error is pinned on the configured listener
    that cannot be bound now; the admin listener raises ListenError itself.
    """
    from zerodown.errors import ListenError, os_reason

    if exc.errno in BIND_ERRNOS and config is not None:
        busy = [a for a in config.proxy.listen if _cannot_bind(a)]
        where = ", ".join(busy or config.proxy.listen)
        return ListenError(where if len(busy) == 1 else f"one of {where}", exc)
    return ConfigError(f"cannot start: {os_reason(exc)}")


def _cannot_bind(address: str) -> bool:
    """True when `address` ("host:port") cannot be bound now, as the proxy binds it."""
    import socket

    from zerodown.routing import parse_address

    try:
        host, port = parse_address(address)
    except ValueError:
        return False
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False
