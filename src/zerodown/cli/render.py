"""`zerodown render haproxy|nginx`: the proxy configuration zerodown would generate."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from zerodown.cli.exits import fail
from zerodown.cli.options import DEFAULT_CONFIG, ConfigOption
from zerodown.errors import ZerodownError


class Proxy(StrEnum):
    haproxy = "haproxy"
    nginx = "nginx"


def render(
    proxy: Annotated[Proxy, typer.Argument(help="Which proxy's configuration: haproxy or nginx.")],
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Print the configuration zerodown generates for PROXY from the config file,
    as it starts (services it runs have no instances yet), to read or to own."""
    from pathlib import Path

    from zerodown.config import load_config
    from zerodown.config.dataplane import DataPlaneName
    from zerodown.control.dataplanes import rendered

    try:
        loaded = load_config(config)
        name: DataPlaneName = "haproxy" if proxy is Proxy.haproxy else "nginx"
        typer.echo(rendered(name, loaded, Path(loaded.proxy.state_dir)), nl=False)
    except ZerodownError as exc:
        raise fail(exc) from None
