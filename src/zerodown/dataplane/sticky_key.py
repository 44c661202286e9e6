"""The key that signs sticky cookies, kept in state_dir.

Made once (mode 0600) and read by every later start, so a cookie set before
a restart of zerodown, a hot restart or an upgrade of the data plane still
names its instance after it; every data plane driver signs with it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from zerodown.errors import ConfigError
from zerodown.proxy.sticky import KEY_BYTES, new_key

KEY_FILE: Final = "sticky.key"


def sticky_key(state_dir: Path) -> str:
    """The key of `state_dir` (hex), made on first use."""
    path = state_dir / KEY_FILE
    if path.exists():
        return _read(path)
    state_dir.mkdir(parents=True, exist_ok=True)
    temp = state_dir / f".{KEY_FILE}.{os.getpid()}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(new_key() + "\n")
    try:
        # A link never replaces: of two starts racing, one key wins and both read it.
        os.link(temp, path)
    except FileExistsError:
        pass
    finally:
        temp.unlink()
    return _read(path)


def _read(path: Path) -> str:
    key = path.read_text().strip()
    try:
        if len(bytes.fromhex(key)) == KEY_BYTES:
            return key
    except ValueError:
        pass
    reason = f"{path} is not a sticky-cookie key; delete it to make a new one (clients rebind)"
    raise ConfigError(reason, key="proxy.state_dir")
