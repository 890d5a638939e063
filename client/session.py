"""The client's saved session: which proxy, which user, which token (mode 0600)."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from common.atomic import tighten, write_atomic
from common.errors import InvalidRequest

SESSION_FILE = "session.json"


@dataclass(frozen=True)
class SavedSession:
    proxy: str
    user: str
    token: str


def _path(home: Path) -> Path:
    return home / SESSION_FILE


def load(home: Path) -> SavedSession | None:
    """The saved session, if any.  A session file others may read (a chmod, a copy) is made private
    again first, with a warning: its token lets whoever read it act as the user until it ends."""
    try:
        _keep_private(_path(home))
        data = json.loads(_path(home).read_text())
        return SavedSession(str(data["proxy"]), str(data["user"]), str(data["token"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _keep_private(path: Path) -> None:
    if not os.stat(path).st_mode & 0o077:
        return
    tighten(path, 0o600)
    print(
        f"warning: {path} could be read by other users; it is private again (mode 0600). If someone "
        "may have read it, log out and in again: that ends the session it held",
        file=sys.stderr,
    )


def save(home: Path, session: SavedSession) -> None:
    """Write the session file (0600); a folder made for it is 0700, an existing one is left as it is."""
    data = {"proxy": session.proxy, "user": session.user, "token": session.token}
    try:
        if not home.is_dir():
            home.mkdir(mode=0o700, parents=True)
        write_atomic(_path(home), json.dumps(data).encode(), mode=0o600)
    except OSError as exc:
        raise InvalidRequest(
            f"cannot keep the session in {home} (FILECLUSTER_HOME): {exc.strerror or exc}"
        ) from None


def clear(home: Path) -> None:
    try:
        _path(home).unlink(missing_ok=True)
    except OSError as exc:
        raise InvalidRequest(
            f"cannot remove the session in {home} (FILECLUSTER_HOME): {exc.strerror or exc}"
        ) from None
