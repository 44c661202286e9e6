"""`cache = { max_size, max_object_size, authorized }` of `[services.NAME]`:
a shared HTTP cache in front of the service (cachespec.py has the meaning).

`cache = true` takes the defaults; sizes are written as everywhere else
("64MB", "512k": binary multiples). Without `max_object_size`, an object
may be up to DEFAULT_MAX_OBJECT_SIZE, or half of a smaller cache.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from zerodown.cachespec import DEFAULT_MAX_OBJECT_SIZE, CacheSpec
from zerodown.config.fields import Size, Table, problem, same_as

__all__ = ["CacheConfig"]


class CacheConfig(Table):
    max_size: Size = same_as(CacheSpec, "max_size")
    max_object_size: Size | None = Field(default=None, ge=1)
    authorized: bool = same_as(CacheSpec, "authorized")

    @model_validator(mode="after")
    def _object_fits(self) -> CacheConfig:
        if self.max_object_size is not None and self.max_object_size > self.max_size // 2:
            raise problem(
                f"{self.max_object_size} bytes is more than half of max_size "
                f"({self.max_size} bytes): one object would empty the cache",
                "max_object_size",
            )
        return self

    def spec(self) -> CacheSpec:
        largest = self.max_object_size or min(DEFAULT_MAX_OBJECT_SIZE, self.max_size // 2)
        return CacheSpec(
            max_size=self.max_size, max_object_size=largest, authorized=self.authorized
        )
