"""`cache` as nginx and HAProxy configuration text: the choices the real-proxy
tests cannot see one by one (the size regex, the generation in the key, the
map moves around a switch, the X-Request-ID repeated beside X-Cache), pure."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from zerodown.cachespec import CacheSpec, generation_tag
from zerodown.dataplane.haproxy.cache import (
    cache_backend,
    cache_map,
    cache_sections,
    switching,
)
from zerodown.dataplane.haproxy.render import unsupported
from zerodown.dataplane.nginx.cache import cache_http, cache_location, greater_than
from zerodown.dataplane.nginx.render import render
from zerodown.dataplane.nginx.settings import NginxSettings
from zerodown.routing import PoolSpec, RoutingTable, ServiceSpec, StickySpec, TargetSpec

MAP = Path("/state/haproxy-cache.map")


def spec(version: str = "v1", cache: CacheSpec | None = None, **extra: Any) -> ServiceSpec:
    target = TargetSpec(address="127.0.0.1:9001", version=version)
    return ServiceSpec(
        name="web", stable=PoolSpec(targets=(target,)), cache=cache or CacheSpec(), **extra
    )


@pytest.mark.parametrize("limit", [1, 9, 10, 400, 409600, 1048576, 999])
def test_the_size_regex_matches_exactly_the_numbers_above_the_limit(limit: int) -> None:
    pattern = re.compile(greater_than(limit))
    for n in [*range(max(0, limit - 30), limit + 30), limit * 10, limit * 10 + 7, 10**8]:
        assert bool(pattern.match(str(n))) == (n > limit), n


def test_nothing_is_rendered_for_a_service_without_cache() -> None:
    plain = ServiceSpec(name="web")
    assert cache_http([plain], Path("/c")) == []
    assert cache_location(plain) == []
    assert cache_backend(plain, MAP) == []
    assert cache_sections(RoutingTable(services=(plain,))) == []
    assert cache_map(RoutingTable(services=(plain,))) == ""


def test_nginx_keys_by_the_generation_and_keeps_authorization_private() -> None:
    lines = cache_location(spec())
    assert f'proxy_cache_key "{generation_tag(spec())}|$scheme://$host$request_uri";' in lines
    assert "proxy_cache_bypass $http_authorization;" in lines
    assert any(line.startswith("proxy_no_cache ") and "$zd_cache_private" in line for line in lines)
    shared = cache_location(spec(cache=CacheSpec(authorized=True)))
    assert not any("authorization" in line or "private" in line for line in shared)
    assert cache_location(spec("v2"))[1] != lines[1]  # another release, another key


def test_nginx_sizes_the_zone_and_the_path_per_service() -> None:
    lines = cache_http([spec(cache=CacheSpec(max_size=64 * 1024 * 1024))], Path("/s/cache"))
    path = next(line for line in lines if line.startswith("proxy_cache_path"))
    assert path.startswith("proxy_cache_path /s/cache/web levels=1:2 keys_zone=zd_cache_web_")
    assert "max_size=67108864 " in path


@pytest.mark.parametrize("sticky", [None, StickySpec()])
def test_nginx_repeats_the_request_id_header_once_beside_x_cache(
    sticky: StickySpec | None, tmp_path: Path
) -> None:
    text = render([spec(sticky=sticky)], ["127.0.0.1:8080"], NginxSettings(state_dir=tmp_path), 1)
    location = text[text.index("location ^~ / {") :]
    location = location[: location.index("\n    }")]
    assert location.count("add_header X-Request-ID") == 1
    assert location.count("add_header X-Cache $zd_x_cache always;") == 1


def test_haproxy_puts_the_generation_in_front_of_the_host_for_cache_use_only() -> None:
    lines = cache_backend(spec(), MAP)
    use = lines.index("http-request cache-use zd_web")
    assert f"map({MAP})" in lines[use - 1]
    assert lines[use - 1].startswith("http-request set-header Host ")
    assert lines[use + 1].startswith("http-request set-header Host %[var(txn.zd_host)]")
    assert cache_map(RoutingTable(services=(spec(),))) == f"web {generation_tag(spec())}\n"


def test_haproxy_sections_count_whole_megabytes() -> None:
    small = CacheSpec(max_size=1536 * 1024, max_object_size=4096)
    (section,) = cache_sections(RoutingTable(services=(spec(cache=small),)))
    assert "total-max-size 2\n" in section
    assert "max-object-size 4096\n" in section
    assert "process-vary on\n" in section


def test_haproxy_moves_the_map_around_the_server_commands_of_a_switch() -> None:
    old, new = RoutingTable(services=(spec("v1"),)), RoutingTable(services=(spec("v2"),))
    moves = switching(old, new, MAP, ("add server x", "del server y"), "once")
    tag = generation_tag(spec("v2"))
    assert moves == (
        f"set map {MAP} web {tag}-once",
        "add server x",
        "del server y",
        f"set map {MAP} web {tag}",
    )
    assert switching(old, old, MAP, ("set server x weight 2",), "once") == (
        "set server x weight 2",
    )


def test_haproxy_refuses_to_share_answers_to_authorization() -> None:
    table = RoutingTable(services=(spec(cache=CacheSpec(authorized=True)),))
    assert unsupported(table) == [
        "services.web.cache.authorized: HAProxy never answers a request with "
        "Authorization from its cache"
    ]
