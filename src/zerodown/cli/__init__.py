"""The `zerodown` command: parses, calls the admin API or the library, prints. Nothing else.

    app.py       the typer app: every verb, registered in the order `--help` lists them
    options.py   the options verbs share (-c/--config, --json, --wait, --timeout, ...)
    exits.py     exit codes, and the one place errors become a message and a code
    output.py    JSON and terminal output
    serve.py     `serve`: the daemon in the foreground
    demo.py      `demo`
    deploys.py   `deploy`, `rollback`, `promote`, `abort`, `pause`, `resume`
    state.py     `status`, `releases`
    verify.py    `verify`
    client.py    the admin API client (also used by zerodown.demo and zerodown.verify)
    progress.py  how deploys and services look on a terminal (rich)

This side talks to the daemon only through the admin API (client.py); the
daemon side (zerodown.control) never imports it. This module stays light:
importing `zerodown.cli.client` must not load typer and every verb.
"""

from __future__ import annotations

__all__ = ["main"]


def main() -> None:
    """The `zerodown` console script and `python -m zerodown`."""
    from zerodown.cli.app import app

    app()
