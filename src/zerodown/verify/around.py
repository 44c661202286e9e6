"""What `zerodown verify` runs while its load flows: a deploy through the
admin API (waited for to its outcome), or any command."""

from __future__ import annotations

import asyncio
from typing import Any

from zerodown.cli.client import AdminClient
from zerodown.config.strategy import StrategyName

WAIT_STEP = 30.0  # seconds per long poll while a deploy runs


async def deploy_and_wait(
    client: AdminClient, service: str, version: str, strategy: StrategyName | None = None
) -> dict[str, Any]:
    """Start a deploy and return its DeployView once it has an outcome."""
    loop = asyncio.get_running_loop()
    # The admin client is blocking (stdlib http.client): keep it off the loop
    # that drives the load, or every poll would stall the measured requests.
    deploy_id = await loop.run_in_executor(None, client.deploy, service, version, strategy)
    while True:
        view = await loop.run_in_executor(None, client.wait, deploy_id, WAIT_STEP)
        if view.get("outcome") is not None:
            return view
