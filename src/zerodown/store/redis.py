"""The `[redis]` store's start-up check: `zerodown serve` stops at once, with
the URL, what failed and what to do, when Redis cannot be reached, instead of
starting and failing later at the first feature that needs it."""

from __future__ import annotations

import re

from zerodown.config.redis import RedisConfig, shown
from zerodown.errors import ConfigError


class RedisUnavailable(ConfigError):
    """`[redis] url` names a Redis this process cannot use."""

    def __init__(self, url: str, what: str, todo: str) -> None:
        super().__init__(f"cannot use Redis at {shown(url)}: {what}; {todo}", key="redis.url")


def check_redis(config: RedisConfig) -> None:
    """Connect and PING within `connect_timeout`; raise RedisUnavailable saying why not."""
    try:
        import redis
    except ImportError:
        raise RedisUnavailable(
            config.url, "the redis client library is not installed", "pip install 'zerodown[redis]'"
        ) from None
    client = redis.Redis.from_url(
        config.url,
        socket_connect_timeout=config.connect_timeout,
        socket_timeout=config.connect_timeout,
        retry_on_timeout=False,
    )
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise RedisUnavailable(config.url, f"authentication failed ({exc})", _FIX_AUTH) from None
    except redis.ResponseError as exc:  # e.g. NOAUTH, or a db index out of range
        raise RedisUnavailable(config.url, f"Redis refused: {exc}", _FIX_AUTH) from None
    except (redis.RedisError, OSError) as exc:
        raise RedisUnavailable(config.url, redis_reason(exc), _FIX_REACH) from None
    finally:
        client.close()


_ERRNO = re.compile(r"^Error \d+ ")  # redis-py's "Error 111 connecting to h:p. Connection refused."
_FIX_REACH = "start redis-server there, or point [redis] url at a Redis that runs"
_FIX_AUTH = "put the right user and password in [redis] url (redis://user:password@host:port/db)"


def redis_reason(exc: BaseException) -> str:
    """The innermost cause in words (redis-py wraps the socket error in its own)."""
    text = _ERRNO.sub("", str(exc).strip()).rstrip(".").replace(". ", ": ", 1)
    text = text or type(exc).__name__
    if isinstance(exc, TimeoutError) or "timeout" in text.lower() or "timed out" in text.lower():
        return f"no answer within the connect timeout ({text})"
    return text
