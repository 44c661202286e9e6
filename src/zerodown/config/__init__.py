"""The one place config is read, defaulted and validated: TOML → typed models.

    config = load_config("zerodown.toml")    # ConfigError names file, key and reason
    config.proxy_settings()                   # -> zerodown.proxy.settings.ProxySettings
    config.routing_table()                    # -> zerodown.routing.RoutingTable

Durations accept "500ms", "1s", "2m", "1h", "1m30s" or seconds; sizes accept
"16k", "8KiB", "1m", "1g" or bytes. docs/config.md lists every key.
"""

from __future__ import annotations

from zerodown.config.load import ConfigProblems, load_config, parse_config
from zerodown.config.model import Config
from zerodown.config.proxy import ProxyConfig
from zerodown.config.service import (
    HealthConfig,
    PassiveConfig,
    RouteConfig,
    ServiceConfig,
    UpstreamConfig,
)
from zerodown.config.strategy import (
    BlueGreenConfig,
    CanaryConfig,
    CanaryStep,
    CohortConfig,
    RecreateConfig,
    RollingConfig,
    StrategyName,
)
from zerodown.config.units import parse_duration, parse_size

__all__ = [
    "BlueGreenConfig",
    "CanaryConfig",
    "CanaryStep",
    "CohortConfig",
    "Config",
    "ConfigProblems",
    "HealthConfig",
    "PassiveConfig",
    "ProxyConfig",
    "RecreateConfig",
    "RollingConfig",
    "RouteConfig",
    "ServiceConfig",
    "StrategyName",
    "UpstreamConfig",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_size",
]
