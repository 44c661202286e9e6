"""A service's shared HTTP cache, as the routing table carries it, and the
release generation that keys it.

Values only: the embedded proxy builds its store from this (proxy/caching.py)
and the HAProxy and nginx drivers render it into their own cache sections.
What may be stored and for how long is the response's own Cache-Control
(RFC 9111; proxy/cache_policy.py).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Final

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from zerodown.routing import ServiceSpec

__all__ = [
    "DEFAULT_MAX_OBJECT_SIZE",
    "DEFAULT_MAX_SIZE",
    "CacheSpec",
    "generation",
    "generation_tag",
]

DEFAULT_MAX_SIZE: Final = 64 * 1024 * 1024  # bytes of responses kept per service
# A response larger than this streams through uncached, never held whole.
DEFAULT_MAX_OBJECT_SIZE: Final = 1024 * 1024


class CacheSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    max_size: int = Field(default=DEFAULT_MAX_SIZE, ge=1024)
    max_object_size: int = Field(default=DEFAULT_MAX_OBJECT_SIZE, ge=1)
    # Responses to requests with Authorization are stored only when they say
    # a shared cache may (public, s-maxage, must-revalidate: RFC 9111 §3.5);
    # True stores and serves them as any other (one user's page for all).
    authorized: bool = False

    @model_validator(mode="after")
    def _object_fits(self) -> CacheSpec:
        if self.max_object_size > self.max_size // 2:
            raise ValueError(
                f"max_object_size ({self.max_object_size} bytes) must be at most half of "
                f"max_size ({self.max_size} bytes), or one object would empty the cache"
            )
        return self


def generation(service: ServiceSpec) -> tuple[str, ...]:
    """The releases a service's new requests may reach: the versions of its
    targets that take traffic (an address stands for a target without one).

    A cached answer belongs to the generation in force when it was asked
    for; when a deploy changes it (a release starts or stops taking
    traffic), nothing cached before is served again. During a rolling or
    canary deploy the generation holds both releases, as the traffic does.
    """
    return tuple(
        sorted(
            {
                target.version or target.address
                for pool in (service.stable, service.canary)
                for target in pool.targets
                if target.state == "ready" and target.weight > 0
            }
        )
    )


def generation_tag(service: ServiceSpec) -> str:
    """The generation as a short token safe in any config file (hex)."""
    text = "\0".join(generation(service))
    return hashlib.sha256(text.encode()).hexdigest()[:12]
