"""Requests a service blocks outright (`block`): paths, methods, user agents.

Pure. Each pattern is compiled once per table and kept with the words the
user wrote, so the log and the 403 name the rule that matched. A path is
matched as sent and, when it holds a percent escape, decoded as well: an app
decodes `/%2egit` to `/.git`, so a rule on one must catch the other (nginx
matches its decoded `$uri`).
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from zerodown.guardspec import BlockSpec

__all__ = ["BlockRules"]


class BlockRules:
    __slots__ = ("_agents", "_methods", "_paths")

    def __init__(self, spec: BlockSpec) -> None:
        self._paths = [(re.compile(p.encode("utf-8")), p) for p in spec.paths]
        self._methods = frozenset(m.encode("ascii") for m in spec.methods)
        self._agents = [(re.compile(p.encode("utf-8"), re.IGNORECASE), p) for p in spec.user_agents]

    def __repr__(self) -> str:
        return (
            f"<BlockRules paths={len(self._paths)} methods={len(self._methods)} "
            f"user_agents={len(self._agents)}>"
        )

    def refusal(self, method: bytes, path: bytes, user_agent: bytes | None) -> str | None:
        """The rule that blocks this request, as the config writes it; None to let it pass."""
        if method in self._methods:
            return f"block.methods {method.decode('ascii')}"
        if self._paths:
            path = path.partition(b"?")[0]
            decoded = unquote_to_bytes(path) if b"%" in path else None
            for pattern, source in self._paths:
                if pattern.search(path) or (decoded is not None and pattern.search(decoded)):
                    return f"block.paths {source}"
        if user_agent is not None:
            for pattern, source in self._agents:
                if pattern.search(user_agent):
                    return f"block.user_agents {source}"
        return None
