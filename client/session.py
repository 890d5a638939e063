"""The client's saved session: which proxy, which user, which token (mode 0600)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from common.atomic import write_atomic

SESSION_FILE = "session.json"


@dataclass(frozen=True)
class SavedSession:
    proxy: str
    user: str
    token: str


def _path(home: Path) -> Path:
    return home / SESSION_FILE


def load(home: Path) -> SavedSession | None:
    try:
        data = json.loads(_path(home).read_text())
        return SavedSession(str(data["proxy"]), str(data["user"]), str(data["token"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(home: Path, session: SavedSession) -> None:
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    data = {"proxy": session.proxy, "user": session.user, "token": session.token}
    write_atomic(_path(home), json.dumps(data).encode(), mode=0o600)


def clear(home: Path) -> None:
    _path(home).unlink(missing_ok=True)
