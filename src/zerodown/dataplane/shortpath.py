"""A unix socket's path must fit in sockaddr_un (108 bytes with its NUL on
Linux; HAProxy takes 97). A state_dir deep enough to pass that moves the
sockets to a short private directory named after it, so that an adopting
driver, started on the same state_dir, finds the same one."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Final

__all__ = ["UNIX_PATH_MAX", "socket_dir"]

UNIX_PATH_MAX: Final = 107  # bytes of sun_path, its NUL left out


def socket_dir(state_dir: Path, longest: str, limit: int = UNIX_PATH_MAX) -> Path:
    """state_dir if `state_dir/longest` fits in `limit` bytes, else
    $TMPDIR/zerodown-<uid>/<hash of state_dir>, private to this user."""
    if len(os.fsencode(state_dir.absolute() / longest)) <= limit:
        return state_dir
    digest = hashlib.sha256(str(state_dir.absolute()).encode()).hexdigest()[:16]
    short = Path(tempfile.gettempdir()) / f"zerodown-{os.getuid()}" / digest
    short.mkdir(mode=0o700, parents=True, exist_ok=True)
    short.parent.chmod(0o700)  # only this user may reach the sockets inside
    return short
