"""Fixtures for every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness import release_reserved_ports


@pytest.fixture(autouse=True)
def _release_reserved_ports() -> Iterator[None]:
    """Ports a test reserved (harness.reserved_port) are free for others after it."""
    yield
    release_reserved_ports()
