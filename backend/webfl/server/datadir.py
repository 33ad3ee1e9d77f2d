"""The data folder is private to the server's user: 0700, and 0600 for every file in it.

It holds the admin token, the session key and the database (with the update history's
metrics and every checkpoint), none of which other local users should read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["prepare_data_dir", "write_private"]

DIR_MODE = 0o700
FILE_MODE = 0o600


def prepare_data_dir(path: Path) -> None:
    """Create ``path`` (0700) or tighten an existing one and the files in it (0600)."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    path.chmod(DIR_MODE)
    for child in path.iterdir():
        if child.is_file() and not child.is_symlink() and stat.S_IMODE(child.stat().st_mode) & 0o077:
            child.chmod(FILE_MODE)


def write_private(path: Path, content: str) -> None:
    """Write ``content`` to ``path``, created (or truncated) with mode 0600 whatever the umask."""
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        os.write(fd, content.encode())
    finally:
        os.close(fd)
