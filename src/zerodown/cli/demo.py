"""`zerodown demo`: the whole story on one machine, no configuration."""

from __future__ import annotations

from typing import Annotated

import typer

from zerodown.cli.exits import errors


def demo(
    duration: Annotated[
        float | None,
        typer.Option(help="After the story, serve this many seconds (default: until Ctrl-C)."),
    ] = None,
    listen: Annotated[str, typer.Option(help="The proxy's address.")] = "127.0.0.1:8080",
    admin: Annotated[str, typer.Option(help="The admin API's address.")] = "127.0.0.1:9900",
) -> None:
    """The whole story on one machine: v1, then rolling, blue-green, canary, and a rollback."""
    from zerodown.demo.run import run_demo

    with errors():
        run_demo(duration=duration, listen=listen, admin=admin)
