"""Which service a request belongs to: by host, then longest path prefix.

Host patterns, most specific first: an exact name, then `*.example.com`
(longest suffix first), then `*`. Within a host, the longest path prefix
that matches on a segment boundary wins ("/api" takes "/api" and "/api/x",
never "/apix").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar


class Routed(Protocol):
    @property
    def host(self) -> str: ...
    @property
    def path(self) -> str: ...


S = TypeVar("S", bound=Routed)


def prefix_matches(prefix: bytes, path: bytes) -> bool:
    if prefix == b"/":
        return True
    stem = prefix.rstrip(b"/")
    return path == stem or path.startswith(stem + b"/")


def strip_prefix(prefix: bytes, path: bytes) -> bytes:
    """'/api/x?q' under '/api' becomes '/x?q'; '/api' becomes '/'."""
    rest = path[len(prefix.rstrip(b"/")) :]
    if not rest or rest[:1] == b"?":
        return b"/" + rest
    return rest


class Router(Generic[S]):
    def __init__(self, services: Sequence[S]) -> None:
        self._exact: dict[str, list[tuple[bytes, S]]] = {}
        self._wildcard: list[tuple[str, list[tuple[bytes, S]]]] = []
        self._any: list[tuple[bytes, S]] = []
        wild: dict[str, list[tuple[bytes, S]]] = {}
        for service in services:
            host = service.host.lower()
            entry = (service.path.encode(), service)
            if host == "*":
                self._any.append(entry)
            elif host.startswith("*."):
                wild.setdefault(host[1:], []).append(entry)
            else:
                self._exact.setdefault(host, []).append(entry)
        self._wildcard = sorted(wild.items(), key=lambda item: -len(item[0]))
        for routes in (*self._exact.values(), *wild.values(), self._any):
            routes.sort(key=lambda entry: -len(entry[0]))

    def match(self, host: str, path: bytes) -> S | None:
        routes = self._exact.get(host)
        if routes is not None:
            found = _longest_prefix(routes, path)
            if found is not None:
                return found
        for suffix, wild_routes in self._wildcard:
            if host.endswith(suffix):
                found = _longest_prefix(wild_routes, path)
                if found is not None:
                    return found
        return _longest_prefix(self._any, path)


def _longest_prefix(routes: list[tuple[bytes, S]], path: bytes) -> S | None:
    for prefix, service in routes:  # sorted longest first
        if prefix_matches(prefix, path):
            return service
    return None
