"""The verbs that show what the daemon runs: `status` and `releases`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from zerodown.cli.exits import errors
from zerodown.cli.options import DEFAULT_CONFIG, ConfigOption, JsonOption, ServiceArgument, connect
from zerodown.cli.output import console, print_json

if TYPE_CHECKING:
    from zerodown.cli.client import AdminClient
    from zerodown.deploy.contract import JsonView as View


def status(
    service: Annotated[str | None, typer.Argument(help="One service (default: all).")] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: JsonOption = False,
) -> None:
    """Each service's current version, instances, traffic split and running deploy."""
    from zerodown.cli.progress import status_table

    with errors():
        client = connect(config)
        views = client.status(service)
    if as_json:
        print_json(views[0] if service is not None else views)
        return
    console().print(status_table(views, _stats(client)))


def _stats(client: AdminClient) -> View | None:
    """The data plane's counters for the edge column; None when they cannot
    be had (a data plane that does not answer): the rest still shows."""
    from zerodown.cli.client import AdminError

    try:
        return client.stats()
    except AdminError:
        return None


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
