"""What the verbs print: JSON for scripts and CI, rich on a terminal."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2))


def console() -> Console:
    # rich is imported when something is shown, not at every start of the CLI.
    from rich.console import Console

    return Console()
