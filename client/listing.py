"""What ``list`` shows: a user's files seen as folders, like ``ls``.  Pure: file items in, entries out.

Names are paths (``photos/2024/a.jpg``); a folder exists while a file is under it.  Listing the
folder ``photos`` shows its files and its sub-folders (``2024/``, with how many files and bytes
are under each), named relative to it; recursively, every file under it.

The items come from LIST a page at a time (:func:`fetch_all`: 1,000 per request, each page
after the last name received), so no reply holds a million entries; the pages join up to the
same list one reply used to hold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

PAGE = 1000  # files asked for per LIST request


@dataclass
class Entry:
    name: str  # the full name in the cluster (a folder's without its trailing "/")
    shown: str  # relative to the folder listed; a folder's ends with "/"
    folder: bool
    files: int = 1  # files under a folder (1 for a file)
    size: int = 0  # bytes (all of a folder's files)
    uploaded: float = 0.0  # the newest upload in it
    state: str = "ok"  # the worst state of its files
    owner: str = ""
    sha1: str = ""
    versions: int = 1
    item: dict[str, Any] | None = field(default=None, repr=False)  # a file's item, as LIST gave it


def fetch_all(
    call: Callable[[dict[str, Any]], dict[str, Any]], prefix: str = "", page: int = PAGE
) -> list[dict[str, Any]]:
    """Every file LIST shows for ``prefix``, asked a page at a time (``limit``, then ``after`` the
    last name received) through ``call`` (one LIST request: its header in, its reply out)."""
    header: dict[str, Any] = {"limit": page, **({"prefix": prefix} if prefix else {})}
    files: list[dict[str, Any]] = []
    while True:
        reply = call(header)
        batch = list(reply["files"])
        files.extend(batch)
        if not reply.get("more") or not batch:
            return files
        header = {**header, "after": str(batch[-1]["name"])}


_WORSE = {"ok": 0, "degraded": 1, "unavailable": 2, "lost": 3}


def rooted(name: str) -> str:
    """A name as typed from the root ("/a.txt", "/photos/") is the name ("a.txt", "photos/")."""
    return name.lstrip("/")


def folder_of(target: str) -> str:
    """A folder or file name as typed (``photos/``, ``/photos``, ``.``) as a name: ``photos``.  Names
    are exact: white space is kept (" photos" is not "photos")."""
    name = target.strip("/")
    return "" if name == "." else name


def under(files: list[dict[str, Any]], base: str) -> list[dict[str, Any]]:
    """The files named ``base`` or under the folder ``base`` (every file for ``""``)."""
    if not base:
        return list(files)
    return [f for f in files if f["name"] == base or str(f["name"]).startswith(base + "/")]


def _file(f: dict[str, Any], shown: str) -> Entry:
    return Entry(
        name=f["name"],
        shown=shown,
        folder=False,
        size=int(f["size"]),
        uploaded=float(f["uploaded"]),
        state=str(f.get("state", "ok")),
        owner=str(f.get("owner", "")),
        sha1=str(f.get("sha1", "")),
        versions=int(f.get("versions", 1)),
        item=f,
    )


def view(files: list[dict[str, Any]], base: str, recursive: bool = False) -> list[Entry]:
    """Entries of the folder ``base`` (``""``: the top): sub-folders first, then files, by name.
    ``base`` naming a file shows that file under its full name."""
    entries: list[Entry] = []
    folders: dict[str, Entry] = {}
    prefix = base + "/" if base else ""
    for f in sorted(under(files, base), key=lambda f: str(f["name"])):
        name = str(f["name"])
        if name == base:
            entries.append(_file(f, name))
            continue
        rel = name[len(prefix) :]
        top, sep, _ = rel.partition("/")
        if recursive or not sep:
            entries.append(_file(f, rel))
            continue
        folder = folders.get(top)
        if folder is None:
            folder = folders[top] = Entry(name=prefix + top, shown=top + "/", folder=True, files=0)
        folder.files += 1
        folder.size += int(f["size"])
        folder.uploaded = max(folder.uploaded, float(f["uploaded"]))
        state = str(f.get("state", "ok"))
        if _WORSE.get(state, 3) > _WORSE.get(folder.state, 3):
            folder.state = state
    return sorted(folders.values(), key=lambda e: e.name) + entries
