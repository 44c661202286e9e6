"""The fleet's view of traffic, as `zerodown status` shows it."""

from __future__ import annotations

from zerodown.config.service import ServiceConfig
from zerodown.deploy.fleet import Fleet
from zerodown.release import Instance
from zerodown.routing import ServiceSpec


def fleet_with(old: int, new: int) -> tuple[Fleet, list[Instance], list[Instance]]:
    config = ServiceConfig.model_validate({"command": "app --port {port}", "instances": old})
    fleet = Fleet("web", config)
    olds = [Instance(f"o{i}", "web", "v1", 20000 + i, state="ready") for i in range(old)]
    news = [Instance(f"n{i}", "web", "v2", 21000 + i, state="ready") for i in range(new)]
    fleet.instances = [*olds, *news]
    return fleet, olds, news


def test_a_preview_takes_no_share_of_ordinary_traffic() -> None:
    fleet, olds, news = fleet_with(2, 2)
    fleet.route(olds + news)
    fleet.preview_version = "v2"  # green reachable by the preview header only
    assert fleet.traffic() == {"v1": 100.0}
    assert [t.address for t in fleet.spec().canary.targets] == [n.address for n in news]


def test_a_canary_weight_is_its_share_and_the_rest_is_stable() -> None:
    fleet, olds, news = fleet_with(2, 2)
    fleet.route(olds + news)
    fleet.canary_version, fleet.canary_weight = "v2", 20.0
    assert fleet.traffic() == {"v1": 80.0, "v2": 20.0}
    assert fleet.spec().split.canary_weight == 20.0


def test_draining_instances_take_no_new_traffic() -> None:
    fleet, olds, news = fleet_with(2, 2)
    fleet.route(olds + news)
    fleet.start_draining(olds)
    assert fleet.traffic() == {"v2": 100.0}
    states = {t.address: t.state for t in fleet.spec().stable.targets}
    assert [states[o.address] for o in olds] == ["draining", "draining"]


# What a Fleet decides for a service zerodown runs; every other ServiceSpec
# field comes from the config, through ServiceConfig.spec (the one mapping).
FLEET_OWNED = {"name", "stable", "canary", "split", "hold"}
# For each of those others: a config that sets it to something not the default.
NOT_DEFAULT: dict[str, dict[str, object]] = {
    "host": {"route": {"host": "api.example.com"}},
    "path": {"route": {"path": "/api"}},
    "strip_prefix": {"route": {"path": "/api", "strip_prefix": True}},
    "balance": {"balance": "least_conn"},
    "hash_key": {"hash_key": "header:X-User"},
    "health": {"health": {"path": "/ready", "rise": 3}},
    "passive": {"passive": False},
    "slow_start": {"slow_start": "5s"},
    "tries": {"tries": 4},
    "retry_timeout": {"retry_timeout": "7s"},
    "websocket_drain": {"websocket_drain": "close"},
    "sticky": {"sticky": {"cookie": "sid", "ttl": "2h"}},
    "guard": {"deny": ["10.9.0.0/16"]},
    "cache": {"cache": {"max_size": "8m"}},
    "mode": {"mode": "tcp", "listen": "0.0.0.0:6432"},
    "listen": {"mode": "tcp", "listen": "0.0.0.0:6432"},
}


def test_every_service_spec_field_reaches_a_service_zerodown_runs() -> None:
    """A new per-service key must not be lost for services zerodown runs: a
    ServiceSpec field is the fleet's, or set from the config (NOT_DEFAULT
    must name it, and the fleet's spec must show the value)."""
    assert ServiceSpec.model_fields.keys() - FLEET_OWNED == NOT_DEFAULT.keys()
    default = ServiceSpec(name="web")
    for name, table in NOT_DEFAULT.items():
        config = ServiceConfig.model_validate({"command": "app --port {port}", **table})
        carried = getattr(Fleet("web", config).spec(), name)
        assert carried != getattr(default, name), f"ServiceSpec.{name} is lost for a fleet"
        assert carried == getattr(config.spec("web"), name)
