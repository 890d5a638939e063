"""The catalog's file requests: each checks what it may refuse under the catalog's lock, then
journals one op, which proxy.file_tree applies.

:class:`FileChanges` is a part of :class:`proxy.catalog.Catalog` (its base), kept apart so that
the catalog's module keeps to durability, users, sessions, servers and chunks.  Queries return
the file tree's view: a file's current version, or any kept one.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from common.errors import Conflict, FileClusterError, NotFound
from common.names import NameSet
from proxy.chunk_table import ChunkTable
from proxy.file_tree import DEFAULT_KEEP_VERSIONS, Files, FileTree


@dataclass(frozen=True)
class FilePut:
    """One upload of a batch to record (:meth:`FileChanges.put_files`)."""

    owner: str
    name: str
    size: int
    sha1: str
    chunks: list[list[Any]]
    locations: dict[str, list[int]]
    quota: int | None  # the owner's quota (None: unlimited)


class FileChanges:
    # provided by the catalog
    lock: Any  # a threading.RLock
    meta: dict[str, Any]
    chunks: ChunkTable
    files: Files
    tree: FileTree

    def _change(self, op: dict[str, Any]) -> Any:
        raise NotImplementedError  # the catalog journals the op, then applies it

    def _change_many(self, ops: list[dict[str, Any]]) -> list[Any]:
        raise NotImplementedError  # the catalog journals the ops with one fsync, then applies them

    def user(self, user: str) -> dict[str, Any] | None:
        raise NotImplementedError

    # -- ops: each applies one journaled change ------------------------------------------
    def _apply_file_put(self, e: dict[str, Any]) -> list[str]:
        for chunk_id, size in e["chunks"]:
            self.chunks.add(chunk_id, size, e["locations"].get(chunk_id, []))
        return self.tree.put(e)

    def _apply_file_restore(self, e: dict[str, Any]) -> list[str]:
        return self.tree.restore(e)

    def _apply_file_move(self, e: dict[str, Any]) -> int:
        return self.tree.move(e)

    def _apply_file_del(self, e: dict[str, Any]) -> tuple[int, list[str]]:
        return self.tree.delete(e)

    def _apply_quota_set(self, e: dict[str, Any]) -> None:
        record = self.meta["users"][e["user"]]
        if e["quota"] is None:
            record.pop("quota", None)
        else:
            record["quota"] = e["quota"]

    # -- changes -----------------------------------------------------------------------
    def put_file(
        self,
        owner: str,
        name: str,
        size: int,
        sha1: str,
        chunks: list[list[Any]],
        locations: dict[str, list[int]],
        *,
        keep: int = DEFAULT_KEEP_VERSIONS,
        quota: int | None = None,
    ) -> tuple[dict[str, Any], list[str]]:
        """Record a complete upload as the name's current version (an existing file keeps its
        previous content as an older version, up to ``keep`` versions in all); returns the file
        and the chunks freed.  Refused (nothing journaled) if the name is a folder or inside a
        file, or if ``size`` more bytes would pass the owner's ``quota`` (None: unlimited)."""
        with self.lock:
            self.check_upload(owner, name, size, quota)
            freed = self._change(
                {
                    "op": "file_put",
                    "owner": owner,
                    "name": name,
                    "size": size,
                    "sha1": sha1,
                    "chunks": chunks,
                    "locations": locations,
                    "uploaded": time.time(),
                    "keep": keep,
                }
            )
            return self.describe(owner, name), freed

    def put_files(
        self, puts: list[FilePut], *, keep: int = DEFAULT_KEEP_VERSIONS
    ) -> list[tuple[dict[str, Any], list[str]] | FileClusterError]:
        """Record a batch of complete uploads with one journal fsync; for each, the file and the
        chunks freed, or why it was refused (nothing journaled for it).  Each is checked as
        :meth:`put_file` checks one, against the catalog and the files before it in the batch: a
        name given twice, or one that would be a folder of another, is refused, and each owner's
        quota counts the sizes accepted before it (so a batch passes no quota)."""
        with self.lock:
            outcomes: list[tuple[dict[str, Any], list[str]] | FileClusterError | None] = []
            ops: list[dict[str, Any]] = []
            taken: dict[str, NameSet] = {}
            added: Counter[str] = Counter()
            for put in puts:
                mine = taken.setdefault(put.owner, NameSet())
                try:
                    conflict = mine.conflict(put.name)
                    if conflict is not None:
                        raise Conflict(conflict)
                    self.check_upload(put.owner, put.name, put.size, put.quota, before=added[put.owner])
                except FileClusterError as exc:
                    outcomes.append(exc)
                    continue
                mine.add(put.name)
                added[put.owner] += put.size
                outcomes.append(None)
                ops.append(
                    {
                        "op": "file_put",
                        "owner": put.owner,
                        "name": put.name,
                        "size": put.size,
                        "sha1": put.sha1,
                        "chunks": put.chunks,
                        "locations": put.locations,
                        "uploaded": time.time(),
                        "keep": keep,
                    }
                )
            freed = iter(self._change_many(ops))
            return [
                outcome if outcome is not None else (self.describe(put.owner, put.name), next(freed))
                for put, outcome in zip(puts, outcomes, strict=True)
            ]

    def check_upload(self, owner: str, name: str, size: int, quota: int | None, *, before: int = 0) -> None:
        """Refuse an upload whose name would make a file and a folder of one name (Conflict), or
        whose ``size`` would take the owner past ``quota`` (QuotaExceeded; None: unlimited);
        ``before``: the bytes of the files before it in the same request, counted too."""
        with self.lock:
            why = self.tree.clash(owner, name)
            if why is not None:
                raise Conflict(why)
            self.tree.check_quota(owner, size, quota, f"{name!r}", before=before)

    def restore_version(
        self,
        owner: str,
        name: str,
        version: int,
        *,
        keep: int = DEFAULT_KEEP_VERSIONS,
        quota: int | None = None,
    ) -> tuple[dict[str, Any], list[str]]:
        """Make an older version's content the file's new current version; the file and the chunks
        freed (a version beyond ``keep`` may go)."""
        with self.lock:
            entry = self.file(owner, name)
            if entry is None:
                raise NotFound(f"you have no file named {name!r}")
            source = self.tree.version(owner, name, version)
            if source is None:
                raise NotFound(f"{name!r} has no version {version} (see its versions)")
            if source["version"] == entry["version"]:
                raise Conflict(f"version {version} of {name!r} is already the current one")
            self.tree.check_quota(owner, source["size"], quota, f"restoring {name!r}")
            freed = self._change(
                {
                    "op": "file_restore",
                    "owner": owner,
                    "name": name,
                    "version": version,
                    "uploaded": time.time(),
                    "keep": keep,
                }
            )
            return self.describe(owner, name), freed

    def move(self, owner: str, old: str, new: str) -> int:
        """Rename a file, or a folder (every file under it), with one journal entry; versions and
        share links follow.  Returns how many files moved."""
        with self.lock:
            self.tree.check_move(owner, old, new)
            return int(self._change({"op": "file_move", "owner": owner, "old": old, "new": new}))

    def delete_files(self, owner: str, name: str, *, recursive: bool = False) -> tuple[int, list[str]]:
        """Delete a file (every version and link) and, with ``recursive``, every file under the
        folder ``name``, with one journal entry; how many files went, and the chunks freed."""
        with self.lock:
            if self.file(owner, name) is None and not (recursive and self.tree.is_folder(owner, name)):
                if self.tree.is_folder(owner, name):
                    raise Conflict(f"{name!r} is a folder; delete it recursively to delete what is in it")
                raise NotFound(f"you have no file {'or folder ' if recursive else ''}named {name!r}")
            op: dict[str, Any] = {"op": "file_del", "owner": owner, "name": name, "at": time.time()}
            if recursive:
                op["recursive"] = True
            deleted, freed = self._change(op)
            return int(deleted), list(freed)

    def delete_file(self, owner: str, name: str) -> list[str]:
        """Delete one file (every version and link); the chunks freed."""
        return self.delete_files(owner, name)[1]

    def set_quota(self, user: str, quota: int | None) -> None:
        """A user's own quota in bytes (-1: unlimited; None: back to the proxy's default)."""
        with self.lock:
            record = self.user(user)
            if record is None:
                raise NotFound(f"no user {user!r}")
            if record.get("quota") != quota:
                self._change({"op": "quota_set", "user": user, "quota": quota})

    def quota_of(self, user: str, default: int | None) -> int | None:
        """The bytes ``user`` may keep (None: unlimited): their own quota, else ``default``."""
        record = self.user(user) or {}
        own = record.get("quota")
        if own is None:
            return default
        return None if own < 0 else int(own)

    def usage(self, user: str) -> tuple[int, int]:
        """Bytes ``user``'s kept versions take, and how many files they have."""
        with self.lock:
            return self.tree.usage[user], len(self.files.get(user, {}))

    # -- queries -------------------------------------------------------------------------
    def file(self, owner: str, name: str) -> dict[str, Any] | None:
        """A file's entry (its current version's fields and ``older``): a fresh copy, or None."""
        with self.lock:
            return self.tree.entry(owner, name)

    def describe(self, owner: str, name: str, version: int | None = None) -> dict[str, Any]:
        return self.tree.describe(owner, name, version)

    def version(self, owner: str, name: str, version: int) -> dict[str, Any] | None:
        """One kept version of a file (``size``, ``sha1``, ``chunks``, ...), or None."""
        with self.lock:
            return self.tree.version(owner, name, version)

    def versions(self, owner: str, name: str) -> list[dict[str, Any]]:
        with self.lock:
            if self.file(owner, name) is None:
                raise NotFound(f"you have no file named {name!r}")
            return self.tree.versions(owner, name)

    def list_files(self, owner: str | None, prefix: str = "") -> list[dict[str, Any]]:
        with self.lock:
            owners = [owner] if owner is not None else sorted(self.files)
            return [item for o in owners for item in self.tree.listing(o, prefix)]

    def list_page(
        self, owner: str, prefix: str = "", after: str = "", limit: int | None = None
    ) -> tuple[list[dict[str, Any]], bool]:
        """One page of ``owner``'s files (proxy.file_tree.FileTree.page), and whether more follow."""
        with self.lock:
            return self.tree.page(owner, prefix, after, limit)
