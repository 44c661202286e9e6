"""`[redis]` in zerodown.toml: a bad URL is refused at load, and `zerodown serve`
checks at start that the Redis it names answers (a real redis-server), stopping
with the URL, what failed and what to do when it does not."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from redis_harness import RedisServer
from zerodown.config import parse_config
from zerodown.config.redis import RedisConfig, shown
from zerodown.errors import ConfigError
from zerodown.store.redis import RedisUnavailable, check_redis


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("http://127.0.0.1:6379", "is not a Redis URL"),
        ("redis://:6379/0", "names no host"),
        ("redis://127.0.0.1:port/0", "bad port"),
    ],
)
def test_a_bad_url_is_refused_at_load_naming_the_key(url: str, said: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f'[redis]\nurl = "{url}"\n')
    assert "redis.url" in str(caught.value)
    assert said in str(caught.value)


def test_no_redis_table_means_no_store() -> None:
    assert parse_config("").redis is None
    loaded = parse_config('[redis]\nurl = "redis://127.0.0.1:6379/2"\nconnect_timeout = "500ms"\n')
    assert loaded.redis == RedisConfig(url="redis://127.0.0.1:6379/2", connect_timeout=0.5)


def test_the_password_is_never_shown() -> None:
    assert shown("redis://app:s3cret@db:6379/0") == "redis://app:***@db:6379/0"
    assert shown("redis://db:6379/0") == "redis://db:6379/0"


def test_a_running_redis_passes_the_check(redis_server: RedisServer) -> None:
    check_redis(RedisConfig(url=redis_server.url))


def test_a_redis_that_never_answers_fails_within_the_timeout() -> None:
    with socket.socket() as silent:  # accepts (the kernel does) but never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        with pytest.raises(RedisUnavailable) as caught:
            check_redis(RedisConfig(url=url, connect_timeout=0.2))
    assert "no answer within the connect timeout" in str(caught.value)


def test_serve_stops_at_start_naming_the_url_the_failure_and_the_fix(tmp_path: Path) -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    config = tmp_path / "zerodown.toml"
    config.write_text(
        '[proxy]\nlisten = ["127.0.0.1:0"]\nadmin = "127.0.0.1:0"\n'
        f'state_dir = "{tmp_path / "state"}"\n'
        f'[redis]\nurl = "redis://app:s3cret@127.0.0.1:{port}/0"\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "zerodown", "serve", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    said = done.stderr.strip()
    assert said.startswith("zerodown: redis.url: cannot use Redis at"), said
    assert f"redis://app:***@127.0.0.1:{port}/0" in said, said
    assert "s3cret" not in said
    assert "Connection refused" in said, said
    assert "start redis-server there" in said, said
    assert not (tmp_path / "state").exists(), "serve went on after the failed check"
