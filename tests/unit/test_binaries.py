"""A proxy binary is found in /usr/sbin even when PATH lacks it (a non-root
shell on Debian), and a missing one names its package and key."""

from __future__ import annotations

import pytest

from zerodown.dataplane.binaries import find_binary
from zerodown.errors import DataPlaneError


def test_sbin_is_searched_when_path_lacks_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert find_binary("nginx", "nginx", "[proxy.nginx] binary") == "/usr/sbin/nginx"
    assert find_binary("haproxy", "haproxy", "[proxy.haproxy] binary") == "/usr/sbin/haproxy"


def test_a_missing_binary_names_the_package_and_the_key() -> None:
    with pytest.raises(DataPlaneError) as error:
        find_binary("no-such-haproxy", "haproxy", "[proxy.haproxy] binary")
    assert "apt-get install haproxy" in str(error.value)
    assert "[proxy.haproxy] binary" in str(error.value)
