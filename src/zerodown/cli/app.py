"""The typer app: every verb, registered here in the order `zerodown --help` lists them.

The verbs are plain functions in the modules of their job (serve.py,
deploys.py, state.py, verify.py, demo.py); this module is the one place
that turns them into commands, so a new verb is one line here.
"""

from __future__ import annotations

from typing import Annotated

import typer

from zerodown.cli.demo import demo
from zerodown.cli.deploys import abort, deploy, pause, promote, resume, rollback
from zerodown.cli.exits import EXIT_CODES
from zerodown.cli.render import render
from zerodown.cli.serve import serve
from zerodown.cli.state import releases, status
from zerodown.cli.verify import VERIFY_SETTINGS, verify

__all__ = ["app"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Deploy web services on your own servers without dropping a request.",
)


def _version(value: bool) -> None:
    if value:
        from zerodown import __version__

        typer.echo(f"zerodown {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Deploy web services on your own servers without dropping a request."""


app.command()(serve)
app.command()(demo)
# deploy and rollback follow the deploy by default: their help lists the exit codes.
app.command(epilog=EXIT_CODES)(deploy)
app.command(epilog=EXIT_CODES)(rollback)
app.command()(promote)
app.command()(abort)
app.command()(pause)
app.command()(resume)
app.command()(status)
app.command()(releases)
app.command(**VERIFY_SETTINGS)(verify)
app.command()(render)
