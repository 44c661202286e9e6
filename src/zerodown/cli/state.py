"""The verbs that show what the daemon runs: `status` and `releases`."""

from __future__ import annotations

from typing import Annotated

import typer

from zerodown.cli.exits import errors
from zerodown.cli.options import DEFAULT_CONFIG, ConfigOption, JsonOption, ServiceArgument, connect
from zerodown.cli.output import console, print_json


def status(
    service: Annotated[str | None, typer.Argument(help="One service (default: all).")] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: JsonOption = False,
) -> None:
    """Each service's current version, instances, traffic split and running deploy."""
    from zerodown.cli.progress import status_table

    with errors():
        views = connect(config).status(service)
    if as_json:
        print_json(views[0] if service is not None else views)
    else:
        console().print(status_table(views))


def releases(
    service: ServiceArgument,
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: JsonOption = False,
) -> None:
    """The releases of SERVICE the daemon keeps, and which one is current."""
    from zerodown.cli.progress import releases_table

    with errors():
        views = connect(config).releases(service)
    if as_json:
        print_json(views)
    else:
        console().print(releases_table(views))
