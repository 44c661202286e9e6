"""`[proxy]`: which data plane, its listeners and every limit of the embedded one."""

from __future__ import annotations

import dataclasses
import os
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from zerodown.config import defaults
from zerodown.config.dataplane import DataPlaneName, HaproxyConfig, NginxConfig
from zerodown.config.fields import Cidr, Listener, NotEmpty, Size, Table, Timeout, problem
from zerodown.config.tls import TlsConfig
from zerodown.proxy import settings as s
from zerodown.proxy.settings import ProxySettings


def usable_cores() -> int:
    """Cores this process may run on: the affinity mask, not the machine's count.

    Under `taskset` or a cpuset-limited container, the machine's count is a lie.
    """
    return len(os.sched_getaffinity(0)) or 1


def _workers(value: Any) -> Any:
    # Checked here rather than as a union so a bad value gets one message, not one per branch.
    if value == "auto":
        return value
    if type(value) is not int or value < 1:
        raise ValueError(f'expected a whole number >= 1 or "auto", got {value!r}')
    cores, per_core = usable_cores(), defaults.MAX_WORKERS_PER_CORE
    if value > per_core * cores:
        raise ValueError(
            f"{value} is over the bound of {per_core * cores} ({per_core} per usable core, "
            f'{cores} here): more workers than cores only compete; "auto" is one per core'
        )
    return value


class ProxyConfig(Table):
    dataplane: DataPlaneName = "embedded"
    haproxy: HaproxyConfig = HaproxyConfig()
    nginx: NginxConfig = NginxConfig()
    listen: Annotated[tuple[Listener, ...], NotEmpty] = Field(default=defaults.LISTEN, strict=False)
    workers: Annotated[int | Literal["auto"], BeforeValidator(_workers)] = defaults.WORKERS
    admin: Listener = defaults.ADMIN
    state_dir: str = defaults.STATE_DIR

    # One key per ProxySettings field, same name (a unit test holds them in step).
    header_timeout: Timeout = s.HEADER_TIMEOUT
    body_timeout: Timeout = s.BODY_TIMEOUT
    keepalive_timeout: Timeout = s.KEEPALIVE_TIMEOUT
    max_header_size: Size = Field(default=s.MAX_HEADER_SIZE, gt=0)
    max_uri_size: Size = Field(default=s.MAX_URI_SIZE, gt=0)
    max_body_size: Size = s.MAX_BODY_SIZE
    connect_timeout: Timeout = s.CONNECT_TIMEOUT
    read_timeout: Timeout = s.READ_TIMEOUT
    send_timeout: Timeout = s.SEND_TIMEOUT
    max_response_header_size: Size = Field(default=s.MAX_RESPONSE_HEADER_SIZE, gt=0)
    upstream_idle_timeout: Timeout = s.UPSTREAM_IDLE_TIMEOUT
    upstream_max_idle: int = Field(default=s.UPSTREAM_MAX_IDLE, ge=0)
    max_conns_per_target: int = Field(default=s.MAX_CONNS_PER_TARGET, ge=0)
    queue_timeout: Timeout = s.QUEUE_TIMEOUT
    shutdown_timeout: Timeout = s.SHUTDOWN_TIMEOUT
    retry_budget_ratio: float = Field(default=s.RETRY_BUDGET_RATIO, ge=0, le=1)
    retry_budget_min: int = Field(default=s.RETRY_BUDGET_MIN, ge=0)
    trusted_proxies: tuple[Cidr, ...] = Field(default=(), strict=False)
    access_log: str | None = None
    tls: TlsConfig | None = None

    @model_validator(mode="after")
    def _tls_apart(self) -> ProxyConfig:
        # One socket cannot speak both; a port 0 is a new port each time.
        plain = {a for a in self.listen if not a.endswith(":0")}
        for index, address in enumerate(self.tls.listen if self.tls else ()):
            if address in plain:
                raise problem(f"{address} is also in proxy.listen", "tls", "listen", index)
        return self

    def listeners(self) -> list[str]:
        """Every address the data plane listens on: `listen`, then `tls.listen` (in
        that order: the data plane tells TLS listeners by it, proxy/tls.py)."""
        return [*self.listen, *(self.tls.listen if self.tls else ())]

    def worker_count(self) -> int:
        """`workers`, with "auto" resolved to one per core this process may run on."""
        if self.workers == "auto":
            return usable_cores()
        return self.workers

    def settings(self) -> ProxySettings:
        # All but sticky_key, which zerodown keeps in state_dir (control/dataplanes.py),
        # and tls, which is a table of its own.
        fields = dataclasses.fields(ProxySettings)
        names = (f.name for f in fields if f.name in type(self).model_fields and f.name != "tls")
        values = {name: getattr(self, name) for name in names}
        return ProxySettings(**values, tls=self.tls.settings() if self.tls else None)
