"""`[notify]` and `[events]`: what the daemon tells others, and how much history it keeps."""

from __future__ import annotations

import urllib.parse
from typing import Annotated, Final

from pydantic import AfterValidator, Field

from zerodown.config.fields import Table, Timeout

# [notify]
NOTIFY_TIMEOUT: Final = 5.0  # one POST to a receiver
NOTIFY_RETRIES: Final = 5  # after the first try: 1 + 2 + 4 + 8 + 16 s of back-off
NOTIFY_BACKOFF: Final = 1.0  # the first wait; each next one doubles
NOTIFY_BACKOFF_MAX: Final = 60.0
NOTIFY_QUEUE: Final = 1000  # notifications waiting per receiver; then the oldest go

# [events]: enough history for a month of post-mortems, bounded on a busy host.
EVENTS_MAX_AGE: Final = 30 * 24 * 3600.0
EVENTS_MAX_COUNT: Final = 100_000


def check_url(value: str) -> str:
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http:// or https:// URL with a host")
    return value


WebhookUrl = Annotated[str, AfterValidator(check_url)]


class NotifyConfig(Table):
    webhooks: tuple[WebhookUrl, ...] = Field(default=(), strict=False)
    timeout: Timeout = NOTIFY_TIMEOUT
    retries: int = Field(default=NOTIFY_RETRIES, ge=0, le=20)
    backoff: Timeout = NOTIFY_BACKOFF
    queue: int = Field(default=NOTIFY_QUEUE, ge=1)


class EventsConfig(Table):
    max_age: Timeout = EVENTS_MAX_AGE
    max_count: int = Field(default=EVENTS_MAX_COUNT, ge=1)
