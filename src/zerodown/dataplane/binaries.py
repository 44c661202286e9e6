"""Finding the proxy binary a driver runs (haproxy, nginx)."""

from __future__ import annotations

import os
import shutil
from typing import Final

from zerodown.errors import DataPlaneError

# Debian puts haproxy and nginx in /usr/sbin, which a non-root PATH often lacks.
SBIN: Final = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def find_binary(binary: str, package: str, key: str) -> str:
    """`binary` by path, or on PATH and the sbin directories; else an error
    that names the package to install and the key that sets the path."""
    search = os.pathsep.join([os.environ.get("PATH", os.defpath), *SBIN])
    found = shutil.which(binary, path=search)
    if found is None:
        raise DataPlaneError(
            f"{binary!r} not found on PATH or in {', '.join(SBIN)}: install it "
            f"(Debian/Ubuntu: `apt-get install {package}`) or set {key} to its path"
        )
    return found
