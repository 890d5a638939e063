"""Atomic file writes: temp file in the same folder, fsync, rename, fsync the folder."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that a reader sees the old or the new file, never a mix."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def make_private_dir(path: Path) -> None:
    """Make sure ``path`` is a folder only its owner can enter (0700, whatever the umask).

    Missing folders on the way are created 0700 too; an existing ``path`` with looser permissions
    is tightened (a folder made by an older version); existing parents are left alone."""
    missing = []
    at = Path(path)
    while not at.exists() and at != at.parent:
        missing.append(at)
        at = at.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            continue
        os.chmod(folder, PRIVATE_DIR)
    tighten(path, PRIVATE_DIR)


def tighten(path: Path, mode: int) -> None:
    """Take away any permission ``path`` has beyond ``mode`` (no-op when it has none more)."""
    current = os.stat(path).st_mode & 0o777
    if current & ~mode:
        os.chmod(path, current & mode)


def open_private(path: str | os.PathLike[str], flags: int) -> int:
    """An ``opener`` for :func:`open` that creates files 0600, whatever the umask."""
    return os.open(path, flags, PRIVATE_FILE)
