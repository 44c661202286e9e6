"""`zerodown serve`: the data plane and the control daemon, in the foreground."""

from __future__ import annotations

from typing import Annotated

import typer
import uvloop

from zerodown.cli.exits import fail
from zerodown.cli.options import DEFAULT_CONFIG, ConfigOption
from zerodown.errors import ConfigError, ZerodownError


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

    try:
        loaded = load_config(config)
        if loaded.redis is not None:
            from zerodown.store.redis import check_redis

            check_redis(loaded.redis)  # before anything binds: a clear stop, not a late failure
        keep = "--keep-instances" if keep_instances else "--stop-instances"
        daemon = Daemon(
            loaded, keep_instances=keep_instances, restart_argv=["serve", "-c", str(config), keep]
        )
        uvloop.run(daemon.run_until_signalled())
    except ZerodownError as exc:
        raise fail(exc) from None
    except OSError as exc:
        # The daemon has stopped (and closed what it had bound) by now.
        raise fail(_serve_error(exc)) from None


def _serve_error(exc: OSError) -> ZerodownError:
    """An OSError that stopped `serve` (a listener's bind says its address
    itself, as a ListenError), as one line."""
    from zerodown.errors import os_reason

    return ConfigError(f"cannot start: {os_reason(exc)}")
