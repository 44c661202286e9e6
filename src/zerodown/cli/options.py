"""The options and arguments the verbs share, and what `-c/--config` leads to."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final

import typer

from zerodown.config.strategy import StrategyName

if TYPE_CHECKING:
    from zerodown.cli.client import AdminClient

DEFAULT_CONFIG: Final = Path("zerodown.toml")

ConfigOption = Annotated[
    Path, typer.Option("-c", "--config", help="Config file.", show_default=True)
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts and CI.")]
WaitOption = Annotated[
    bool,
    typer.Option(
        "--wait/--no-wait", help="Follow the deploy to its outcome (exit code tells which)."
    ),
]
TimeoutOption = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        min=0,
        help="Stop waiting after this many seconds (exit 6; the deploy runs on). "
        "Default: until it ends.",
    ),
]
ServiceArgument = Annotated[str, typer.Argument(help="The service, as named in the config.")]
StrategyOption = Annotated[
    StrategyName | None,
    typer.Option("--strategy", help="Override the service's configured strategy for this deploy."),
]


def connect(config: Path) -> AdminClient:
    """The client of the daemon `config` describes: every verb finds the admin
    listener there, and the token in ZERODOWN_TOKEN."""
    from zerodown.cli.client import AdminClient
    from zerodown.config import load_config

    return AdminClient.from_config(load_config(config))
