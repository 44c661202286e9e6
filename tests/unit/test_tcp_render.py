"""tcp services rendered for HAProxy and nginx (issue 13): pure text checks;
the real processes are driven in tests/integration/test_tcp_drivers.py."""

from __future__ import annotations

from pathlib import Path

from zerodown.dataplane.haproxy.render import render as render_haproxy
from zerodown.dataplane.haproxy.settings import HaproxySettings
from zerodown.dataplane.nginx.render import render as render_nginx
from zerodown.dataplane.nginx.settings import NginxSettings
from zerodown.dataplane.nginx.stream import load_stream
from zerodown.guardspec import GuardSpec
from zerodown.routing import (
    HealthSpec,
    PoolSpec,
    RoutingTable,
    ServiceSpec,
    TargetSpec,
    TargetState,
)


def tcp(state: TargetState = "ready") -> ServiceSpec:
    return ServiceSpec(
        name="db",
        mode="tcp",
        listen="0.0.0.0:6432",
        balance="least_conn",
        health=HealthSpec(path=None),
        stable=PoolSpec(
            targets=(
                TargetSpec(address="127.0.0.1:9001"),
                TargetSpec(address="127.0.0.1:9002", state=state),
            )
        ),
    )


WEB = ServiceSpec(name="web", stable=PoolSpec(targets=(TargetSpec(address="127.0.0.1:8001"),)))


def test_haproxy_has_a_tcp_frontend_and_backend_and_no_route_for_it(tmp_path: Path) -> None:
    text = render_haproxy(
        RoutingTable(services=(WEB, tcp())), ["127.0.0.1:8080"], HaproxySettings(tmp_path)
    )
    frontend = text.split("frontend ft_db\n")[1].split("\n\n")[0]
    lines = frontend.split("\n")
    assert lines[:3] == ["    mode tcp", "    bind 0.0.0.0:6432", "    no log"]
    assert lines[-1] == "    default_backend be_db"
    backend = text.split("\nbackend be_db\n")[1].split("\n\n")[0]
    assert "    mode tcp" in backend
    assert "    balance leastconn" in backend
    assert "    option tcp-check" in backend
    assert "httpchk" not in backend
    assert backend.count(" check inter ") == 2
    assert "observe layer4" in backend
    assert "use_backend be_db" not in text  # reached by its listener only


def test_nginx_renders_a_stream_block_outside_http(tmp_path: Path) -> None:
    text = render_nginx([WEB, tcp("draining")], ["127.0.0.1:8080"], NginxSettings(tmp_path), 1)
    stream = text.split("\nstream {\n")[1]
    assert "upstream zd_tcp_db {" in stream
    assert "least_conn;" in stream
    assert "server 127.0.0.1:9001 weight=1" in stream
    assert "server 127.0.0.1:9002 down;" in stream  # draining: no new connection
    assert "listen 0.0.0.0:6432;" in stream
    assert "proxy_pass zd_tcp_db;" in stream
    assert "proxy_half_close on;" in stream
    http = text.split("\nhttp {\n")[1].split("\nstream {\n")[0]
    assert "zd_db" not in http  # no HTTP upstream or route for it


def test_nginx_loads_the_stream_module_only_for_a_tcp_service(tmp_path: Path) -> None:
    module = tmp_path / "ngx_stream_module.so"
    assert load_stream([tcp()], module) == []  # not installed there: built in, or nginx -t says
    module.touch()
    assert load_stream([tcp()], module) == [f"load_module {module};"]
    assert load_stream([WEB], module) == []


def guarded() -> ServiceSpec:
    guard = GuardSpec(allow=("10.0.0.0/8",), deny=("10.9.0.0/16",))
    return tcp().model_copy(update={"guard": guard})


def test_haproxy_refuses_by_address_at_connect(tmp_path: Path) -> None:
    text = render_haproxy(RoutingTable(services=(guarded(),)), [], HaproxySettings(tmp_path))
    frontend = text.split("frontend ft_db\n")[1].split("\n\n")[0]
    assert "tcp-request connection reject unless { src 10.0.0.0/8 }" in frontend
    assert "tcp-request connection reject if { src 10.9.0.0/16 }" in frontend


def test_nginx_denies_first_then_allows_then_denies_the_rest(tmp_path: Path) -> None:
    text = render_nginx([guarded()], ["127.0.0.1:8080"], NginxSettings(tmp_path), 1)
    stream = text.split("\nstream {\n")[1]
    rules = [
        line.strip() for line in stream.splitlines() if line.strip().startswith(("allow", "deny"))
    ]
    assert rules == ["deny 10.9.0.0/16;", "allow 10.0.0.0/8;", "deny all;"]
