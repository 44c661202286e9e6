"""What `zerodown status` says of a service's edge: the requests its rules
refused and how often its cache answered, from `/v1/stats`. Pure.

A column only when some service has something to say: a plain deploy setup
(no rules, no cache) keeps the table it always had.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["edge_text"]

_REFUSALS = (("denied", "denied"), ("blocked", "blocked"), ("rate_limited", "rate-limited"))


def edge_text(service: Mapping[str, Any] | None) -> str:
    """`refused 5 (2 denied, 3 blocked)` and `cache 4/6 hit`, one a line; "" for none."""
    if not service:
        return ""
    lines = []
    counts = [(label, _int(service.get(name))) for name, label in _REFUSALS]
    refused = sum(n for _, n in counts)
    if refused:
        kinds = ", ".join(f"{n} {label}" for label, n in counts if n)
        lines.append(f"refused {refused} ({kinds})")
    hits, misses = _int(service.get("cache_hits")), _int(service.get("cache_misses"))
    if hits + misses:
        lines.append(f"cache {hits}/{hits + misses} hit")
    return "\n".join(lines)


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0
