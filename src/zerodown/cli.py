"""The `zerodown` command: parses, calls the library, prints. Nothing else.

Exit codes: 0 success, 1 failure at run time, 2 bad usage or bad config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import uvloop

from zerodown.errors import ConfigError, ZerodownError

EXIT_FAILURE = 1
EXIT_CONFIG = 2

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Deploy web services on your own servers without dropping a request.",
)

ConfigOption = Annotated[
    Path, typer.Option("-c", "--config", help="Config file.", show_default=True)
]


def _fail(exc: ZerodownError) -> typer.Exit:
    code = EXIT_CONFIG if isinstance(exc, ConfigError) else EXIT_FAILURE
    for line in str(exc).splitlines():  # several config problems: one prefixed line each
        typer.echo(f"zerodown: {line}", err=True)
    return typer.Exit(code)


@app.command()
def serve(config: ConfigOption = Path("zerodown.toml")) -> None:
    """Run the data plane and the control daemon in the foreground (stop: SIGTERM)."""
    from zerodown.config import load_config
    from zerodown.control.daemon import Daemon

    try:
        daemon = Daemon(load_config(config))
        uvloop.run(daemon.run_until_signalled())
    except ZerodownError as exc:
        raise _fail(exc) from None


@app.command()
def demo(
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (default: until Ctrl-C).")
    ] = None,
) -> None:
    """The whole story on one machine, no configuration."""
    from zerodown.demo.run import run_demo

    try:
        run_demo(duration=duration)
    except ZerodownError as exc:
        raise _fail(exc) from None


def main() -> None:
    app()
