"""When to restart a crashed instance, and when to stop trying.

Pure: the caller passes the clock. The runtime only reports exits; restart
policy is the control plane's (deploy/supervision.py), which keeps one
Backoff per service: every crash of the service's current release counts.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    """Exponential restart delay and a crash-loop detector over a sliding window.

    The k-th crash within `crash_loop_window` seconds waits
    `base * factor**(k-1)` (at most `max`). Only crashes inside the window
    count, so a service that ran quietly for a window starts again from
    `base`. `crash_loop_count` crashes inside the window is a crash loop: the
    supervisor then retries only once per `crash_loop_window` until a restart
    stays up for a window (no rollback: that is the operator's call).
    """

    base: float = 0.5
    factor: float = 2.0
    max: float = 30.0
    crash_loop_count: int = 5
    crash_loop_window: float = 60.0
    _crashes: deque[float] = field(default_factory=deque, init=False, repr=False)

    def __post_init__(self) -> None:
        if not (0 <= self.base <= self.max and self.factor >= 1):
            raise ValueError("need 0 <= base <= max and factor >= 1")
        if self.crash_loop_count < 1 or self.crash_loop_window <= 0:
            raise ValueError("need crash_loop_count >= 1 and crash_loop_window > 0")

    def next_delay(self, now: float) -> float:
        """Record a crash at `now`; return how long to wait before restarting."""
        self._crashes.append(now)
        self._forget_before(now)
        try:
            delay = self.base * self.factor ** (len(self._crashes) - 1)
        except OverflowError:  # a huge factor to a high power: the cap applies anyway
            return self.max
        return min(self.max, delay)

    def crash_loop(self, now: float) -> bool:
        """True when `crash_loop_count` crashes fell within the window ending at `now`."""
        self._forget_before(now)
        return len(self._crashes) >= self.crash_loop_count

    def crashes(self, now: float) -> int:
        """Crashes within the window ending at `now`."""
        self._forget_before(now)
        return len(self._crashes)

    def reset(self) -> None:
        """Forget every crash (e.g. a new release took the slot)."""
        self._crashes.clear()

    def _forget_before(self, now: float) -> None:
        # Also bounds memory: at most the crashes of one window are kept.
        while self._crashes and self._crashes[0] <= now - self.crash_loop_window:
            self._crashes.popleft()
