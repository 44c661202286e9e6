"""A size-bounded LRU store of whole responses, one per cached service. Pure.

Keys are (primary, secondary): the primary is what the request asks for
(method-independent: a HEAD is answered from a stored GET), the secondary
the request's values of the fields the stored response varies by
(cache_policy.secondary_key). Which fields those are is learned from the
responses stored under a primary key, so a lookup knows what to compare
before it finds anything. Sizes count the body and the header bytes plus a
fixed overhead, so many tiny responses cannot grow the store past its bound.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

__all__ = ["ENTRY_OVERHEAD", "CacheStore", "Entry"]

# Bytes counted per entry beyond its headers and body: the key, the objects.
ENTRY_OVERHEAD: Final = 256

Primary = bytes
Secondary = tuple[bytes | None, ...]


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored response: what the origin sent (end-to-end fields only) and
    when, by the monotonic clock, minus the age it already had."""

    status: int
    reason: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    vary: tuple[bytes, ...]
    born: float  # monotonic time the response was made (stored_at - initial age)
    lifetime: float

    @property
    def size(self) -> int:
        return ENTRY_OVERHEAD + len(self.body) + sum(len(n) + len(v) for n, v in self.headers)

    def age(self, now: float) -> float:
        return max(0.0, now - self.born)

    def fresh(self, now: float) -> bool:
        return now - self.born < self.lifetime


class CacheStore:
    """Entries by key, least recently used first; `max_size` bytes at most."""

    __slots__ = ("_entries", "_vary", "closed", "evicted", "max_size", "size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.size = 0
        self.evicted = 0
        self.closed = False  # purged: late stores are dropped
        self._entries: OrderedDict[tuple[Primary, Secondary], Entry] = OrderedDict()
        # Per primary key: the Vary of its stored responses, and how many there are.
        self._vary: dict[Primary, tuple[tuple[bytes, ...], int]] = {}

    def __repr__(self) -> str:
        return f"<CacheStore {len(self._entries)} entries {self.size}/{self.max_size} bytes>"

    def __len__(self) -> int:
        return len(self._entries)

    def vary(self, primary: Primary) -> tuple[bytes, ...] | None:
        """The fields a lookup of `primary` must compare; None: nothing stored."""
        known = self._vary.get(primary)
        return known[0] if known is not None else None

    def get(self, primary: Primary, secondary: Secondary, now: float) -> Entry | None:
        key = (primary, secondary)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if not entry.fresh(now):
            self._remove(key, entry)  # never revalidated: a stale entry is only space
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, primary: Primary, secondary: Secondary, entry: Entry) -> None:
        if self.closed or entry.size > self.max_size:
            return
        key = (primary, secondary)
        known = self._vary.get(primary)
        if known is not None and known[0] != entry.vary:
            self._drop_primary(primary)  # the response now varies by other fields
        old = self._entries.pop(key, None)
        if old is not None:
            self._uncount(key, old)
        self._entries[key] = entry
        self.size += entry.size
        names, count = self._vary.get(primary, (entry.vary, 0))
        self._vary[primary] = (names, count + 1)
        while self.size > self.max_size:
            oldest, evicted = next(iter(self._entries.items()))
            self._remove(oldest, evicted)
            self.evicted += 1

    def clear(self) -> None:
        """Forget everything, and refuse what fills still in flight bring."""
        self.closed = True
        self._entries.clear()
        self._vary.clear()
        self.size = 0

    def _drop_primary(self, primary: Primary) -> None:
        for key in [k for k in self._entries if k[0] == primary]:
            self._remove(key, self._entries[key])

    def _remove(self, key: tuple[Primary, Secondary], entry: Entry) -> None:
        del self._entries[key]
        self._uncount(key, entry)

    def _uncount(self, key: tuple[Primary, Secondary], entry: Entry) -> None:
        self.size -= entry.size
        names, count = self._vary[key[0]]
        if count <= 1:
            del self._vary[key[0]]
        else:
            self._vary[key[0]] = (names, count - 1)
