"""`[redis]`: the shared store for the features that need one (the sessions
proof today; later, shared state between proxy nodes). Checked at start by
`zerodown serve` (store/redis.py): a URL that cannot be reached stops it there,
not at the first deploy that needs it."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator

from zerodown.config.fields import Table, Timeout

SCHEMES = ("redis", "rediss", "unix")  # as redis-py's Redis.from_url reads them
CONNECT_TIMEOUT = 2.0  # seconds for the start-up check's connect and PING


def _redis_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(
            f"{url!r} is not a Redis URL: use redis://host:port/db, rediss:// or unix://"
        )
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError(f"{url!r} names no host: redis://host:port/db")
    try:
        parts.port  # noqa: B018 - parsing it is the check
    except ValueError:
        raise ValueError(f"{url!r} has a bad port") from None
    return url


class RedisConfig(Table):
    """`[redis]`."""

    url: Annotated[str, AfterValidator(_redis_url)]
    connect_timeout: Timeout = CONNECT_TIMEOUT


def shown(url: str) -> str:
    """`url` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
