"""`zerodown status`'s edge column: refusals and cache hits from /v1/stats. Pure."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from integration.test_admin_deploy import STATUS
from zerodown.cli.edge import edge_text
from zerodown.cli.progress import status_table


def rendered(renderable: Any) -> str:
    console = Console(record=True, width=160, force_terminal=False)
    console.print(renderable)
    return console.export_text()


def test_the_edge_says_refusals_by_kind_and_cache_hits_out_of_requests() -> None:
    web = {"denied": 2, "blocked": 3, "rate_limited": 0, "cache_hits": 4, "cache_misses": 2}
    assert edge_text(web) == "refused 5 (2 denied, 3 blocked)\ncache 4/6 hit"
    assert edge_text({"rate_limited": 7}) == "refused 7 (7 rate-limited)"
    assert edge_text({"denied": 0, "cache_hits": 0, "cache_misses": 0}) == ""
    assert edge_text(None) == ""


def test_status_has_an_edge_column_only_when_a_service_has_one() -> None:
    quiet = {"services": {"web": {"denied": 0, "cache_hits": 0}}}
    assert "edge" not in rendered(status_table([STATUS], quiet))
    assert "edge" not in rendered(status_table([STATUS]))  # no stats to be had
    busy = {"services": {"web": {"blocked": 1, "cache_hits": 9, "cache_misses": 1}}}
    text = rendered(status_table([STATUS], busy))
    assert "edge" in text
    assert "refused 1 (1 blocked)" in text
    assert "cache 9/10 hit" in text
