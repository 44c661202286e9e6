"""`[proxy] dataplane`: what each data plane carries is refused at load where
it is not carried, naming the key; `zerodown render` prints what the driver
would start with; the daemon builds the driver the config names."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from zerodown.cli.app import app
from zerodown.config import parse_config
from zerodown.config.support import FEATURES, Feature
from zerodown.control.dataplanes import managed_dataplane
from zerodown.dataplane.detached import DetachedDataPlane
from zerodown.dataplane.haproxy.driver import HaproxyDataPlane
from zerodown.errors import ConfigError

SERVICE = '[services.web]\ncommand = "app --port {port}"\n'

# One line of [services.web] per feature of config/support.py, in its order.
USES = [
    'balance = "least_time"',
    'slow_start = "5s"',
    'sticky = { cookie = "zd_route", ttl = "1h" }',
    'sticky = { cookie = "zd-route" }',
    'websocket_drain = "close"',
    'canary = { cohorts = [{ header = "X-Beta", values = ["1"], pool = "canary" }] }',
    'canary = { sticky_cookie = "pool" }',
    'blue_green = { preview_pause = "manual" }',
    'recreate = { max_pause = "5s" }',
    'recreate = { maintenance_page = "down.html" }',
    'allow = ["10.0.0.0/8"]',
    'deny = ["10.9.0.0/16"]',
    "block = { paths = ['^/\\.git'], methods = [\"TRACE\"] }",
    'rate_limit = { requests = 10, per = "1s", key = "header:X-Api-Key" }',
    'cache = { max_size = "64MB" }',
    "cache = { authorized = true }",
    'cache = { max_size = "5g" }',
    'mode = "tcp"\nlisten = "0.0.0.0:6432"',
]


def config(dataplane: str, line: str = "") -> str:
    return f'[proxy]\ndataplane = "{dataplane}"\n{SERVICE}{line}\n'


def test_every_feature_has_a_use_here() -> None:
    assert len(USES) == len(FEATURES)


@pytest.mark.parametrize(("feature", "line"), list(zip(FEATURES, USES, strict=True)))
@pytest.mark.parametrize("dataplane", ["embedded", "haproxy", "nginx"])
def test_a_feature_loads_only_where_it_is_carried(
    feature: Feature, line: str, dataplane: str
) -> None:
    if dataplane in feature.carried_by:
        parse_config(config(dataplane, line))
        return
    with pytest.raises(ConfigError, match=f"not carried by the {dataplane} data plane") as error:
        parse_config(config(dataplane, line))
    key = feature.key.split(" ")[0]
    assert f"services.web.{key}" in str(error.value)


@pytest.mark.parametrize("dataplane", ["haproxy", "nginx"])
def test_defaults_load_on_every_data_plane(dataplane: str) -> None:
    # The default canary cookie and recreate pause are not asked of a data
    # plane that does not carry them: a plain config must load.
    loaded = parse_config(config(dataplane, 'strategy = "canary"'))
    assert loaded.proxy.dataplane == dataplane


def test_the_daemon_builds_the_data_plane_the_config_names(tmp_path: Path) -> None:
    embedded = managed_dataplane(parse_config(config("embedded")), tmp_path)
    haproxy = managed_dataplane(parse_config(config("haproxy")), tmp_path)
    assert isinstance(embedded, DetachedDataPlane)
    assert isinstance(haproxy, HaproxyDataPlane)
    assert haproxy.settings.state_dir == tmp_path / "haproxy"
    assert haproxy.carries == frozenset({"hold"})


def test_render_prints_the_haproxy_configuration(tmp_path: Path) -> None:
    path = tmp_path / "zerodown.toml"
    path.write_text(
        '[proxy]\nlisten = ["127.0.0.1:8123"]\n'
        '[services.web]\nupstreams = ["127.0.0.1:9001"]\nroute = { path = "/api" }\n'
    )
    result = CliRunner().invoke(app, ["render", "haproxy", "-c", str(path)])
    assert result.exit_code == 0, result.output
    assert "bind 127.0.0.1:8123" in result.output
    assert "backend be_web" in result.output
    assert "127.0.0.1:9001" in result.output


def test_render_refuses_what_the_proxy_cannot_carry(tmp_path: Path) -> None:
    path = tmp_path / "zerodown.toml"
    path.write_text('[services.web]\nupstreams = ["127.0.0.1:9001"]\nbalance = "least_time"\n')
    result = CliRunner().invoke(app, ["render", "haproxy", "-c", str(path)])
    assert result.exit_code == 2
    assert "services.web.balance: not carried by the haproxy data plane" in result.output


def test_a_sticky_config_gives_each_driver_the_key_kept_in_state_dir(tmp_path: Path) -> None:
    line = "sticky = {}"
    embedded = managed_dataplane(parse_config(config("embedded", line)), tmp_path)
    haproxy = managed_dataplane(parse_config(config("haproxy", line)), tmp_path)
    assert isinstance(embedded, DetachedDataPlane)
    assert isinstance(haproxy, HaproxyDataPlane)
    key = (tmp_path / "sticky.key").read_text().strip()
    assert embedded.settings.sticky_key == haproxy.settings.sticky_key == key
    again = managed_dataplane(parse_config(config("embedded", line)), tmp_path)
    assert isinstance(again, DetachedDataPlane)
    assert again.settings == embedded.settings  # a new controller adopts the host
    # Without sticky services the embedded data plane gets the key all the
    # same: its workers' supervisor would make one up otherwise, and the next
    # controller's settings would differ and replace the host it should adopt.
    plain = managed_dataplane(parse_config(config("embedded")), tmp_path / "plain")
    assert isinstance(plain, DetachedDataPlane)
    assert plain.settings.sticky_key == (tmp_path / "plain" / "sticky.key").read_text().strip()
    next_one = managed_dataplane(parse_config(config("embedded")), tmp_path / "plain")
    assert isinstance(next_one, DetachedDataPlane)
    assert next_one.settings == plain.settings
