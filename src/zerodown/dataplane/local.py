"""The data plane `zerodown serve` runs itself: one process, or a supervisor and workers."""

from __future__ import annotations

from zerodown.dataplane.base import ListeningDataPlane
from zerodown.dataplane.embedded import EmbeddedDataPlane
from zerodown.dataplane.supervisor import MultiWorkerDataPlane
from zerodown.proxy.settings import ProxySettings
from zerodown.routing import RoutingTable


def local_dataplane(
    settings: ProxySettings, table: RoutingTable | None, workers: int
) -> ListeningDataPlane:
    """`workers` = 1 serves in this process: no channel, no copy of the table."""
    if workers <= 1:
        return EmbeddedDataPlane(settings, table)
    return MultiWorkerDataPlane(settings, table, workers)
