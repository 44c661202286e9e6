"""Fixtures for every test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import release_reserved_ports
from redis_harness import RedisServer, running_redis


@pytest.fixture(autouse=True)
def _release_reserved_ports() -> Iterator[None]:
    """Ports a test reserved (harness.reserved_port) are free for others after it."""
    yield
    release_reserved_ports()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, on a reserved port (tests/redis_harness.py)."""
    root = tmp_path / "redis"
    root.mkdir()
    with running_redis(root) as server:
        yield server
