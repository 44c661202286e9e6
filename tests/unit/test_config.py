"""Config: TOML → typed models, named defaults, errors naming file, key and reason."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from zerodown.config import (
    BlueGreenConfig,
    CanaryConfig,
    CanaryStep,
    CohortConfig,
    ConfigProblems,
    HealthConfig,
    PassiveConfig,
    ProxyConfig,
    RecreateConfig,
    RollingConfig,
    RouteConfig,
    ServiceConfig,
    UpstreamConfig,
    load_config,
    parse_config,
    parse_duration,
    parse_size,
)
from zerodown.config import defaults as d
from zerodown.config import proxy as proxy_config
from zerodown.config.dataplane import HaproxyConfig, NginxConfig
from zerodown.config.guard import BlockConfig, RateLimitConfig
from zerodown.config.operate import EventsConfig, NotifyConfig
from zerodown.config.redis import RedisConfig
from zerodown.config.service import StickyConfig
from zerodown.config.tls import CertConfig, TlsConfig
from zerodown.errors import ConfigError
from zerodown.proxy import settings as s
from zerodown.proxy.settings import ProxySettings
from zerodown.routing import (
    DEFAULT_RETRY_TIMEOUT,
    DEFAULT_TRIES,
    DEFAULT_WEIGHT,
    HealthSpec,
    PassiveHealthSpec,
    TargetSpec,
)

# The example of DESIGN.md's "User-facing contract", verbatim (one line is split
# in two string literals only to stay within the line length).
DESIGN_EXAMPLE = (
    """
[proxy]
listen = ["127.0.0.1:8080"]       # where clients connect
workers = 1                       # or "auto" = one per core
admin = "127.0.0.1:9900"          # admin API; token from ZERODOWN_TOKEN if set
state_dir = ".zerodown"

[services.web]
route = { host = "*", path = "/" }
balance = "round_robin"           # round_robin | least_conn | ip_hash | hash"""
    """ | random_two | least_time
strategy = "rolling"              # rolling | blue_green | canary | recreate
instances = 2
command = "python -m zerodown.demo --port {port} --version {version}"
cwd = "."                          # may contain {version}
env = { APP_ENV = "prod" }
health = { path = "/health", interval = "1s", timeout = "2s", rise = 2, fall = 3 }
drain_timeout = "30s"
rolling = { max_surge = 1, max_unavailable = 0 }
blue_green = { scale_down_delay = "10m" }
canary = { steps = [{ weight = 10, pause = "30s" }, { weight = 50, pause = "manual" }] }
# or, with no runtime, a plain proxy in front of fixed upstreams:
# upstreams = ["127.0.0.1:9001", "127.0.0.1:9002"]
"""
)

FIXED = """
[services.web]
upstreams = ["127.0.0.1:9001", { address = "127.0.0.1:9002", weight = 3 }]
"""


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, file="zerodown.toml")
    return caught.value


# --- the contract example and defaults ---------------------------------------


def test_design_example_parses() -> None:
    config = parse_config(DESIGN_EXAMPLE)
    web = config.services["web"]
    assert config.proxy.listen == ("127.0.0.1:8080",)
    assert (config.proxy.workers, config.proxy.admin) == (1, "127.0.0.1:9900")
    assert (web.instances, web.strategy, web.env) == (2, "rolling", {"APP_ENV": "prod"})
    assert web.command == "python -m zerodown.demo --port {port} --version {version}"
    assert web.health is not None
    assert (web.health.interval, web.health.timeout) == (1.0, 2.0)
    assert web.drain_timeout == 30.0
    assert web.blue_green.scale_down_delay == 600.0
    assert [(step.weight, step.pause) for step in web.canary.steps] == [(10, 30.0), (50, "manual")]


def test_design_example_with_upstreams_instead_of_command() -> None:
    text = DESIGN_EXAMPLE.replace("command =", "# command =").replace("# upstreams", "upstreams")
    table = parse_config(text).routing_table()
    assert [t.address for t in table.services[0].stable.targets] == [
        "127.0.0.1:9001",
        "127.0.0.1:9002",
    ]


def test_empty_file_gives_the_named_proxy_defaults() -> None:
    config = parse_config("")
    assert config.services == {}
    assert config.proxy.listen == d.LISTEN
    assert (config.proxy.workers, config.proxy.admin) == (d.WORKERS, d.ADMIN)
    assert config.proxy.state_dir == d.STATE_DIR
    settings = config.proxy_settings()
    assert settings == ProxySettings()
    assert settings.header_timeout == s.HEADER_TIMEOUT
    assert settings.max_header_size == s.MAX_HEADER_SIZE
    assert settings.upstream_idle_timeout == s.UPSTREAM_IDLE_TIMEOUT
    assert settings.max_body_size == s.MAX_BODY_SIZE


def test_service_defaults_are_the_named_constants() -> None:
    web = parse_config("[services.web]\ncommand = 'app {port}'").services["web"]
    assert (web.tries, web.retry_timeout) == (DEFAULT_TRIES, DEFAULT_RETRY_TIMEOUT)
    assert web.drain_timeout == s.DRAIN_TIMEOUT
    assert (web.strategy, web.instances, web.cwd) == (d.STRATEGY, d.INSTANCES, d.CWD)
    assert (web.stop_grace, web.deploy_timeout, web.ports) == (
        d.STOP_GRACE,
        d.DEPLOY_TIMEOUT,
        d.PORTS,
    )
    assert (web.rolling.max_surge, web.rolling.max_unavailable) == (d.MAX_SURGE, d.MAX_UNAVAILABLE)
    assert [(st.weight, st.pause) for st in web.canary.steps] == list(d.CANARY_STEPS)
    assert web.canary.sticky_cookie == d.STICKY_COOKIE
    assert web.recreate.max_pause == d.MAX_PAUSE
    spec = web.spec("web")
    assert (spec.health, spec.passive) == (HealthSpec(), PassiveHealthSpec())


def test_every_proxy_setting_is_a_proxy_key() -> None:
    # A new ProxySettings field without a [proxy] key would be unreachable from the file.
    keys = set(ProxyConfig.model_fields)
    # sticky_key is made and kept by zerodown (state_dir), never written by hand.
    assert {f.name for f in dataclasses.fields(ProxySettings)} - {"sticky_key"} <= keys


def test_proxy_keys_take_durations_sizes_and_cidrs() -> None:
    config = parse_config(
        """
        [proxy]
        workers = "auto"
        header_timeout = "1m30s"
        read_timeout = 2
        max_header_size = "32k"
        max_body_size = "1g"
        trusted_proxies = ["10.0.0.0/8", "::1"]
        access_log = "-"
        """
    )
    settings = config.proxy_settings()
    assert (settings.header_timeout, settings.read_timeout) == (90.0, 2.0)
    assert (settings.max_header_size, settings.max_body_size) == (32 * 1024, 1024**3)
    assert settings.trusted_proxies == ("10.0.0.0/8", "::1/128")
    assert settings.access_log == "-"
    assert config.proxy.worker_count() == len(os.sched_getaffinity(0))  # cores we may use


def test_workers_are_bounded_by_the_usable_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    # 1000 workers once spawned 338 processes (8 GB) on a 2-core machine.
    monkeypatch.setattr(proxy_config, "usable_cores", lambda: 2)
    assert d.MAX_WORKERS_PER_CORE == 4
    assert parse_config("[proxy]\nworkers = 8\n").proxy.worker_count() == 8
    assert parse_config("[proxy]\nworkers = 'auto'\n").proxy.worker_count() == 2
    for workers in (9, 1000, 2**64):
        error = error_of(f"[proxy]\nworkers = {workers}\n")
        assert error.key == "proxy.workers"
        assert error.reason == (
            f"{workers} is over the bound of 8 (4 per usable core, 2 here): "
            'more workers than cores only compete; "auto" is one per core'
        )
    monkeypatch.setattr(proxy_config, "usable_cores", lambda: 16)
    assert parse_config("[proxy]\nworkers = 64\n").proxy.worker_count() == 64
    assert error_of("[proxy]\nworkers = 65\n").key == "proxy.workers"


def orchestrated(instances: int, ports: str, extra: str = "") -> str:
    return (
        f"[services.web]\ncommand = 'app --port {{port}}'\n"
        f"instances = {instances}\nports = '{ports}'\n{extra}"
    )


def test_instances_must_fit_the_port_range_with_a_deploy_and_a_warm_set() -> None:
    # instances = 100000 with 5 ports once spawned 41,699 processes.
    error = error_of(orchestrated(100000, "20000-20004"))
    assert error.key == "services.web.instances"
    assert error.reason == (
        "instances = 100000 needs up to 300000 ports at once (100000 each for the serving "
        "set and a deploy's new one, and a blue-green set kept warm for "
        "blue_green.scale_down_delay); ports 20000-20004 has 5"
    )
    # 3 sets by default (blue-green keeps the old set warm while the next deploy may run)
    assert parse_config(orchestrated(3, "20000-20008")).services["web"].ports_needed() == 9
    assert error_of(orchestrated(3, "20000-20007")).key == "services.web.instances"
    # without a warm window, a deploy's two sets are the most
    no_warm = "blue_green = { scale_down_delay = 0 }\n"
    assert parse_config(orchestrated(3, "20000-20005", no_warm)).services["web"].instances == 3
    error = error_of(orchestrated(3, "20000-20004", no_warm))
    assert error.reason == (
        "instances = 3 needs up to 6 ports at once (3 each for the serving set and a "
        "deploy's new one); ports 20000-20004 has 5"
    )
    # a surge larger than the set adds nothing: new instances never exceed `instances`
    surge = "rolling = { max_surge = 10 }\n" + no_warm
    assert parse_config(orchestrated(2, "20000-20003", surge)).services["web"].instances == 2
    # fixed upstreams need no ports of zerodown's
    text = "[services.web]\nupstreams = ['a:1']\ninstances = 50\nports = '1-2'\n"
    assert parse_config(text).services["web"].instances == 50


def test_listeners_may_use_port_0_upstreams_may_not() -> None:
    config = parse_config("[proxy]\nlisten = ['127.0.0.1:0']\nadmin = '[::1]:0'\n")
    assert (config.proxy.listen, config.proxy.admin) == (("127.0.0.1:0",), "[::1]:0")
    error = error_of("[services.web]\nupstreams = ['127.0.0.1:0']\n")
    assert error.key == "services.web.upstreams[0].address"


def test_health_and_passive_can_be_turned_off() -> None:
    text = "[services.web]\nupstreams = ['a:1']\nhealth = false\npassive = false\n"
    spec = parse_config(text).routing_table().services[0]
    assert (spec.health, spec.passive) == (None, None)


def test_sticky_cookie_false_means_none() -> None:
    text = "[services.web]\ncommand = 'x'\ncanary = { sticky_cookie = false }\n"
    assert parse_config(text).services["web"].canary.sticky_cookie is None


# --- routing_table() -----------------------------------------------------------


def test_routing_table_builds_stable_pools_from_upstreams() -> None:
    config = parse_config(
        FIXED
        + """
        route = { host = "API.example.com", path = "/api", strip_prefix = true }
        balance = "hash"
        hash_key = "header:X-User"
        [services.app]
        command = "app --port {port}"
        """
    )
    web, app = config.routing_table().services
    assert web.stable.targets == (
        TargetSpec(address="127.0.0.1:9001", weight=DEFAULT_WEIGHT, state="ready"),
        TargetSpec(address="127.0.0.1:9002", weight=3, state="ready"),
    )
    assert (web.name, web.host, web.path, web.strip_prefix) == (
        "web",
        "api.example.com",
        "/api",
        True,
    )
    assert (web.balance, web.hash_key) == ("hash", "header:X-User")
    assert web.canary.targets == ()
    assert (app.name, app.stable.targets) == ("app", ())


# --- errors: file, dotted key, reason -------------------------------------------

ERRORS = [
    # unknown keys, with the close match
    ("[proxi]\n", "proxi", "unknown key; did you mean 'proxy'?"),
    ("[proxy]\nlistn = ['a:1']\n", "proxy.listn", "unknown key; did you mean 'listen'?"),
    (
        "[services.web]\nupstreams = ['a:1']\nhealth = { intervl = '1s' }\n",
        "services.web.health.intervl",
        "unknown key; did you mean 'interval'?",
    ),
    (
        "[services.web]\nupstream = ['a:1']\n",
        "services.web.upstream",
        "unknown key; did you mean 'upstreams'?",
    ),
    (
        "[services.web]\ncommand = 'x'\nrolling = { zzz = 1 }\n",
        "services.web.rolling.zzz",
        "unknown key; known keys: max_surge, max_unavailable",
    ),
    # wrong types and values
    (
        "[services.web]\ncommand = 'x'\ninstances = '2'\n",
        "services.web.instances",
        "must be a valid integer (got '2')",
    ),
    (
        "[services.web]\ncommand = 'x'\ninstances = 0\n",
        "services.web.instances",
        "must be greater than or equal to 1 (got 0)",
    ),
    (
        "[services.web]\nupstreams = ['a:1']\nbalance = 'round_robbin'\n",
        "services.web.balance",
        "(got 'round_robbin'); did you mean 'round_robin'?",
    ),
    (
        "[services.web]\nupstreams = ['a:1']\nhealth = { interval = 'fast' }\n",
        "services.web.health.interval",
        "'fast' is not a duration",
    ),
    ("[proxy]\nread_timeout = '-1s'\n", "proxy.read_timeout", "'-1s' is negative"),
    ("[proxy]\nheader_timeout = 0\n", "proxy.header_timeout", "must be greater than 0"),
    ("[proxy]\nmax_body_size = '1q'\n", "proxy.max_body_size", "'1q' is not a size"),
    ("[proxy]\nlisten = ['localhost']\n", "proxy.listen[0]", "'localhost' is not host:port"),
    ("[proxy]\nlisten = []\n", "proxy.listen", "must not be empty"),
    ("[proxy]\nadmin = 'a:70000'\n", "proxy.admin", "out of range"),
    ("[proxy]\nworkers = 0\n", "proxy.workers", 'expected a whole number >= 1 or "auto"'),
    ("[proxy]\naccess_log = false\n", "proxy.access_log", "must be a valid string (got false)"),
    (
        "[proxy]\ntrusted_proxies = ['10.0.0.1/8']\n",
        "proxy.trusted_proxies[0]",
        "10.0.0.1/8 has host bits set",
    ),
    (
        "[services.web]\nupstreams = ['a:1', 'a:1']\n",
        "services.web.upstreams[1].address",
        "a:1 is listed twice",
    ),
    (
        "[services.web]\nupstreams = ['a:1', 5]\n",
        "services.web.upstreams[1]",
        'expected "host:port" or { address, weight }, got 5',
    ),
    (
        "[services.web]\nupstreams = ['a:1']\nhealth = 'no'\n",
        "services.web.health",
        "expected a table or false",
    ),
    (
        "[services.web]\nupstreams = ['a:1']\nhash_key = 'header:'\n",
        "services.web.hash_key",
        "is not path, ip, header:NAME or cookie:NAME",
    ),
    (
        "[services.web]\nupstreams = ['a:1']\nroute = { path = 'api' }\n",
        "services.web.route.path",
        "must start with '/'",
    ),
    (
        "[services.web]\nupstreams = ['a:1']\nroute = { host = 'a*.com' }\n",
        "services.web.route.host",
        "is an exact name, '*.example.com' or '*'",
    ),
    ("[services.'a.b']\ncommand = 'x'\n", 'services."a.b"', "a service name is letters"),
    # orchestration keys
    (
        "[services.web]\ncommand = 'run {prot}'\n",
        "services.web.command",
        "placeholder {prot} in 'run {prot}': only {port}, {version} are filled in",
    ),
    (
        "[services.web]\ncommand = 'run {port:05d}'\n",
        "services.web.command",
        "placeholder {port:05d} in 'run {port:05d}'",
    ),
    (
        "[services.web]\ncommand = 'x'\ncwd = '/srv/{port}'\n",
        "services.web.cwd",
        "only {version} are filled in",
    ),
    (
        "[services.web]\ncommand = 'x'\nports = '3000-2000'\n",
        "services.web.ports",
        "must be within 1-65535, low end first",
    ),
    (
        "[services.web]\ncommand = 'x'\nrolling = { max_surge = 0 }\n",
        "services.web.rolling.max_surge",
        "max_surge and max_unavailable cannot both be 0",
    ),
    (
        "[services.web]\ncommand = 'x'\n"
        "canary = { steps = [{ weight = 50, pause = '1s' }, { weight = 10, pause = '1s' }] }\n",
        "services.web.canary.steps[1].weight",
        "weights must rise step by step: 50 then 10",
    ),
    (
        "[services.web]\ncommand = 'x'\ncanary = { steps = [{ weight = 10 }] }\n",
        "services.web.canary.steps[0].pause",
        "required key is missing",
    ),
    (
        "[services.web]\ncommand = 'x'\n"
        "canary = { cohorts = [{ header='X', cookie='c', values=['1'], pool='canary' }] }\n",
        "services.web.canary.cohorts[0]",
        "a cohort names exactly one of header or cookie",
    ),
    (
        "[services.web]\ncommand = 'x'\nstrategy = 'blue-green'\n",
        "services.web.strategy",
        "did you mean 'blue_green'?",
    ),
    # a service runs its own instances or proxies fixed ones, never both
    (
        "[services.web]\nupstreams = ['a:1']\ncommand = 'x'\n",
        "services.web",
        "`upstreams` and `command` are both set; a service has exactly one",
    ),
    ("[services.web]\n", "services.web", "`upstreams` and `command` are both missing"),
    (
        "[services.web]\ncommand = 'x'\n[services.api]\ncommand = 'y'\n",
        "services.api.route",
        "same route (host '*', path '/') as service 'web'",
    ),
]


@pytest.mark.parametrize(("text", "key", "reason"), ERRORS, ids=[e[1] for e in ERRORS])
def test_error_names_file_key_and_reason(text: str, key: str, reason: str) -> None:
    error = error_of(text)
    assert (error.file, error.key) == ("zerodown.toml", key)
    assert reason in error.reason
    assert str(error).startswith(f"zerodown.toml: {key}: ")
    assert "\n" not in str(error)


def test_toml_syntax_error_names_the_line() -> None:
    error = error_of("[proxy]\nworkers = \n")
    assert error.key is None
    assert str(error).startswith("zerodown.toml: TOML syntax error: ")
    assert "line 2" in str(error)


def test_several_problems_one_line_each_first_in_attributes() -> None:
    error = error_of("[proxy]\nworkers = 0\nlisten = ['x']\n")
    assert isinstance(error, ConfigProblems)
    lines = str(error).splitlines()
    assert len(lines) == len(error.problems) == 2
    assert {line.split(": ")[1] for line in lines} == {"proxy.workers", "proxy.listen[0]"}
    assert (error.key, error.reason) == (error.problems[0].key, error.problems[0].reason)


def test_load_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: file not found"


def test_load_config_reads_the_file_and_names_it(tmp_path: Path) -> None:
    path = tmp_path / "zerodown.toml"
    path.write_text(FIXED)
    assert load_config(str(path)).services["web"].upstreams is not None
    path.write_text("[proxy]\nworkerz = 2\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: proxy.workerz: unknown key; did you mean 'workers'?"


def test_load_config_refuses_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "zerodown.toml"
    path.write_bytes(b"[proxy]\nstate_dir = '\xff'\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


# --- docs/config.md stays in step with the models ------------------------------

DOCS = Path(__file__).parents[2] / "docs" / "config.md"

# Where each model's keys appear in the reference, and with which prefix.
DOCUMENTED: dict[str, list[tuple[str, type[BaseModel]]]] = {
    "[proxy]": [
        ("", ProxyConfig),
        ("haproxy.", HaproxyConfig),
        ("nginx.", NginxConfig),
        ("tls.", TlsConfig),
        ("tls.certs[].", CertConfig),
    ],
    "[services.NAME]": [
        ("", ServiceConfig),
        ("route.", RouteConfig),
        ("upstreams[].", UpstreamConfig),
        ("health.", HealthConfig),
        ("passive.", PassiveConfig),
        ("rate_limit.", RateLimitConfig),
        ("block.", BlockConfig),
        ("rolling.", RollingConfig),
        ("blue_green.", BlueGreenConfig),
        ("canary.", CanaryConfig),
        ("canary.steps[].", CanaryStep),
        ("canary.cohorts[].", CohortConfig),
        ("recreate.", RecreateConfig),
        ("sticky.", StickyConfig),
    ],
    "[notify]": [("", NotifyConfig)],
    "[events]": [("", EventsConfig)],
    "[redis]": [("", RedisConfig)],
}


def documented_keys() -> dict[str, set[str]]:
    """The first cell of every table row, by the `## ` section it is in."""
    keys: dict[str, set[str]] = {}
    section = ""
    for line in DOCS.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip("` ")
        elif match := re.match(r"\| `([^`]+)` \|", line):
            keys.setdefault(section, set()).add(match[1])
    return keys


def test_docs_list_every_key_and_no_other() -> None:
    expected = {
        section: {prefix + name for prefix, model in models for name in model.model_fields}
        for section, models in DOCUMENTED.items()
    }
    found = documented_keys()
    assert set(found) == set(expected)
    for section, keys in found.items():
        assert keys <= expected[section], f"documented but not a key, in {section}"
        # A table such as `rolling` counts as documented through its own keys.
        missing = {
            key
            for key in expected[section] - keys
            if not any(k.startswith((f"{key}.", f"{key}[].")) for k in keys)
        }
        assert not missing, f"undocumented keys in {section}"


def test_docs_full_example_parses() -> None:
    example = DOCS.read_text().split("## Full example", 1)[1]
    toml = re.search(r"```toml\n(.*?)```", example, re.S)
    assert toml is not None
    config = parse_config(toml[1])
    assert set(config.services) == {"web", "api"}
    assert dataclasses.replace(config.proxy_settings(), tls=None) == dataclasses.replace(
        ProxySettings(), trusted_proxies=("10.0.0.0/8",), access_log="-"
    )
    assert config.proxy.tls is not None
    assert len(config.proxy.tls.certs) == 1


# --- durations and sizes ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1s", 1.0),
        ("500ms", 0.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("1.5s", 1.5),
        (" 10s ", 10.0),
        ("30", 30.0),
        (0, 0.0),
        (2, 2.0),
        (0.25, 0.25),
    ],
)
def test_parse_duration(value: str | int | float, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("-1s", "is negative"),
        (-1, "is negative"),
        ("fast", "is not a duration"),
        ("1 s", "is not a duration"),
        ("1d", "is not a duration"),
        ("s", "is not a duration"),
        ("", "is not a duration"),
        (math.inf, "is not finite"),
        ("nan", "is not finite"),
        (True, "true is not a duration"),
    ],
)
def test_parse_duration_rejects(value: str | int | float, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("16k", 16 * 1024),
        ("8KiB", 8 * 1024),
        ("1m", 1024**2),
        ("1MB", 1024**2),
        ("1g", 1024**3),
        ("512", 512),
        ("100b", 100),
        ("1.5k", 1536),
        (0, 0),
        (4096, 4096),
    ],
)
def test_parse_size(value: str | int, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("-1k", "is negative"),
        (-1, "is negative"),
        ("1q", "is not a size"),
        ("k", "is not a size"),
        ("1.1", "is not a whole number of bytes"),
        (1.5, "is not a whole number of bytes"),
        (True, "is not a size"),
    ],
)
def test_parse_size_rejects(value: str | int | float, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_size(value)
