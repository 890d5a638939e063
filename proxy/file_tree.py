"""The catalog's files: each user's names, the versions kept of each, folders, and usage.

Theory of operation
-------------------
``files[owner][name]`` is a file entry, packed into one ``bytes`` object (proxy.records): its
current version (``size``, ``sha1``, ``chunks``, ``uploaded``, ``version``) and ``older``, the
versions kept before it, newest first (each ``{version, size, sha1, chunks, uploaded}``).  Reading
one (:meth:`FileTree.entry`) unpacks a fresh dict; a change packs a new entry in its place.  An
entry written before versions existed has neither ``version`` nor ``older``: it is version 1 with
nothing older (:func:`upgrade`, at load).  Committing a name that exists makes the upload its new
current version; RESTORE makes an old version's content a new current version; nothing is ever
rewritten.  At most ``keep`` versions are kept (the current one included); the oldest beyond that
are dropped, and the chunks no kept version uses any more are returned as *freed*, for the
collector.

Folders are implicit: a folder exists while a file's name is under it, and a name is never both a
file and a folder for one user (:meth:`FileTree.clash`).

Everything here besides the entries is derived, never stored, and rebuilt at load:

* chunk references: how many times the kept versions (of every file) use each chunk, kept in the
  catalog's chunk table (proxy.chunk_table), which keeps a chunk no version uses only until the
  collector frees it;
* ``usage``: per owner, the sum of the sizes of every kept version of every file;
* ``folders``: per owner, a Counter of folder path -> files under it (clash checks in O(depth));
* ``book``: the share links (proxy.links), with their indexes by name and by owner, so deletes and
  moves find a file's links at once.

Changes arrive as journaled ops, applied by the catalog under its lock (``put``, ``restore``,
``move``, ``delete``).  What may refuse a change (``clash``, ``check_move``) is checked before the
op is journaled, so applying never fails, and replaying the journal gives the same state.
"""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from typing import Any

from common.errors import Conflict, InvalidRequest, NotFound, QuotaExceeded
from common.names import MAX_PATH_BYTES, SEPARATOR, parents
from common.sizes import human_size
from proxy import records
from proxy.chunk_table import ChunkTable
from proxy.links import LinkBook
from proxy.records import chunk_key

DEFAULT_KEEP_VERSIONS = 10
SORTED_KEPT = 16  # owners whose sorted names are kept for paged listings
_VERSION_KEYS = ("version", "size", "sha1", "chunks", "uploaded")
Files = dict[str, dict[str, bytes]]  # owner -> name -> packed entry
Counted = tuple[dict[str, int], dict[str, dict[str, int]]]  # usage and folders, as a snapshot keeps them


def upgrade(entry: dict[str, Any]) -> dict[str, Any]:
    """A file entry from before versions existed is version 1, with no older version."""
    entry.setdefault("version", 1)
    entry.setdefault("older", [])
    return entry


def _record(entry: dict[str, Any]) -> dict[str, Any]:
    """A version's own fields (an entry's current version, as it is kept once it becomes older)."""
    return {key: entry[key] for key in _VERSION_KEYS}


def kept_versions(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Every version kept of a file, newest (the current one) first."""
    return [entry, *entry["older"]]


class FileTree:
    def __init__(
        self,
        files: Files,
        shares: dict[str, dict[str, Any]],
        chunks: ChunkTable,
        counted: Counted | None = None,
    ) -> None:
        """The tree of ``files``; its usage, folders and chunk references are ``counted`` as a
        snapshot kept them (with the references in ``chunks``), or counted here."""
        self.files = files
        self.book = LinkBook(shares)
        self.chunks = chunks
        self.usage: Counter[str] = Counter()
        self.folders: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._sorted: dict[str, list[str]] = {}  # owner -> names, sorted: the last owners listed
        if counted is not None:
            self.usage.update(counted[0])
            self.folders.update((owner, Counter(folders)) for owner, folders in counted[1].items())
        else:
            self._count()

    def counted(self) -> dict[str, Any]:
        """``usage`` and ``folders`` as plain dicts, for a snapshot."""
        return {"usage": dict(self.usage), "folders": {o: dict(f) for o, f in self.folders.items()}}

    def _count(self) -> None:
        chunks = self.chunks
        for owner, names in self.files.items():
            in_folder: Counter[str] = Counter()  # files right in each folder: each folder's
            for name, blob in names.items():  # parents are then counted once, not once a file
                size, keys = records.usage_and_chunks(blob)
                self.usage[owner] += size
                for key in keys:
                    chunks.ref(key)
                folder, sep, _ = name.rpartition(SEPARATOR)
                if sep:
                    in_folder[folder] += 1
            counts = self.folders[owner]
            for folder, n in in_folder.items():
                for outer in (*parents(folder), folder):
                    counts[outer] += n
            if not counts:
                del self.folders[owner]
            if not self.usage[owner]:
                del self.usage[owner]

    def entry(self, owner: str, name: str) -> dict[str, Any] | None:
        """A file's entry (a fresh dict), or None."""
        blob = self.files.get(owner, {}).get(name)
        return None if blob is None else records.unpack(blob)

    # -- derived state ---------------------------------------------------------------------
    def _count_out(self, owner: str, name: str, entry: dict[str, Any]) -> set[str]:
        freed: set[str] = set()
        for version in kept_versions(entry):
            freed.update(self._drop(owner, version))
        self._remove_folders(owner, name)
        return freed

    def _use(self, owner: str, version: dict[str, Any]) -> None:
        for chunk_id, size in version["chunks"]:
            self.chunks.ref(chunk_key(chunk_id), size)
        self.usage[owner] += version["size"]

    def _drop(self, owner: str, version: dict[str, Any]) -> list[str]:
        """Forget one kept version: its bytes leave the usage, its chunks lose a reference."""
        self.usage[owner] -= version["size"]
        if self.usage[owner] <= 0:
            del self.usage[owner]
        return self.release(version["chunks"])

    def release(self, chunk_list: list[list[Any]]) -> list[str]:
        """Take one reference off each chunk of a list; the chunks no version uses any more."""
        freed = [chunk_id for chunk_id, _ in chunk_list if self.chunks.unref(chunk_key(chunk_id))]
        return sorted(set(freed))

    def _add_folders(self, owner: str, name: str) -> None:
        folders = self.folders[owner]
        for folder in parents(name):
            folders[folder] += 1

    def _remove_folders(self, owner: str, name: str) -> None:
        folders = self.folders[owner]
        for folder in parents(name):
            folders[folder] -= 1
            if folders[folder] <= 0:
                del folders[folder]
        if not folders:
            del self.folders[owner]

    def _trim(self, owner: str, entry: dict[str, Any], keep: int) -> set[str]:
        """Drop the oldest versions beyond ``keep`` (the current one included)."""
        freed: set[str] = set()
        older = entry["older"]
        while older and 1 + len(older) > max(1, keep):
            freed.update(self._drop(owner, older.pop()))
        return freed

    # -- ops (journaled by the catalog, applied under its lock) -------------------------------
    def put(self, e: dict[str, Any]) -> list[str]:
        """``file_put``: a committed upload becomes the name's current version.  An op without
        ``keep`` was journaled before versions existed, when an upload replaced the file."""
        owner, name = e["owner"], e["name"]
        names = self.files.setdefault(owner, {})
        old = self.entry(owner, name)
        entry = {
            "size": e["size"],
            "sha1": e["sha1"],
            "chunks": e["chunks"],
            "uploaded": e["uploaded"],
            "version": old["version"] + 1 if old else 1,
            "older": [_record(old), *old["older"]] if old else [],
        }
        self._use(owner, entry)
        if old is None:
            self._add_folders(owner, name)
            self._sorted.pop(owner, None)
        freed = self._trim(owner, entry, e.get("keep", 1))
        names[name] = records.pack(entry)
        return sorted(freed)

    def restore(self, e: dict[str, Any]) -> list[str]:
        """``file_restore``: an older version's content becomes a new current version."""
        owner, name = e["owner"], e["name"]
        old = self.entry(owner, name)
        assert old is not None  # checked before the op was journaled
        source = next(v for v in old["older"] if v["version"] == e["version"])
        entry = {
            "size": source["size"],
            "sha1": source["sha1"],
            "chunks": source["chunks"],
            "uploaded": e["uploaded"],
            "version": old["version"] + 1,
            "older": [_record(old), *old["older"]],
        }
        self._use(owner, entry)
        freed = self._trim(owner, entry, e["keep"])
        self.files[owner][name] = records.pack(entry)
        return sorted(freed)

    def move(self, e: dict[str, Any]) -> int:
        """``file_move``: a file, or every file under a folder, takes a new name; its versions and
        share links follow it."""
        owner = e["owner"]
        names = self.files[owner]
        pairs = self._targets(owner, e["old"], e["new"])
        self._sorted.pop(owner, None)
        for old, new in pairs:
            entry = names.pop(old)
            self._remove_folders(owner, old)
            names[new] = entry
            self._add_folders(owner, new)
        self.book.rename(owner, e["old"], e["new"])
        return len(pairs)

    def delete(self, e: dict[str, Any]) -> tuple[int, list[str]]:
        """``file_del``: a file (every version, every link), and with ``recursive`` every file
        under the folder of that name.  Returns how many files went and the chunks freed."""
        owner, name = e["owner"], e["name"]
        names = self.files.get(owner, {})
        doomed = [name] if name in names else []
        if e.get("recursive"):
            doomed += self.under(owner, name)
        freed: set[str] = set()
        self._sorted.pop(owner, None)
        for gone in doomed:
            freed.update(self._count_out(owner, gone, records.unpack(names.pop(gone))))
        # an op from before tombstones has no time: its links end as of the epoch
        self.book.end_gone(owner, doomed, lambda n: self.is_folder(owner, n), e.get("at", 0.0))
        if not names:
            self.files.pop(owner, None)
        return len(doomed), sorted(freed)

    # -- checks (before an op is journaled) ---------------------------------------------------
    def is_folder(self, owner: str, name: str) -> bool:
        folders = self.folders.get(owner)
        return bool(folders and folders.get(name))

    def clash(self, owner: str, name: str) -> str | None:
        """Why ``name`` cannot be a file of ``owner``'s (it is a folder, or is in a file), or None."""
        if self.is_folder(owner, name):
            return f"{name!r} is a folder"
        names = self.files.get(owner, {})
        for folder in parents(name):
            if folder in names:
                return f"{folder!r} is a file"
        return None

    def check_move(self, owner: str, old: str, new: str) -> int:
        """Refuse a move that cannot be done; how many files it moves."""
        names = self.files.get(owner, {})
        if old == new:
            raise Conflict(f"{old!r} already has that name")
        if old not in names and not self.is_folder(owner, old):
            raise NotFound(f"you have no file or folder named {old!r}")
        if new.startswith(old + SEPARATOR):
            raise Conflict(f"cannot move {old!r} into itself")
        if new in names:
            raise Conflict(f"{new!r} already exists")
        why = self.clash(owner, new)
        if why is not None:
            raise Conflict(why)
        pairs = self._targets(owner, old, new)
        for _, target in pairs:
            if len(target.encode("utf-8")) > MAX_PATH_BYTES:
                raise InvalidRequest(
                    f"moving {old!r} to {new!r} would make a name longer than {MAX_PATH_BYTES} bytes"
                )
        return len(pairs)

    def _targets(self, owner: str, old: str, new: str) -> list[tuple[str, str]]:
        names = self.files.get(owner, {})
        if old in names:
            return [(old, new)]
        return [(name, new + name[len(old) :]) for name in self.under(owner, old)]

    def check_quota(self, owner: str, size: int, quota: int | None, what: str, *, before: int = 0) -> None:
        """Refuse ``size`` more bytes for ``owner`` if that passes ``quota`` (None: unlimited);
        ``before``: bytes the same request takes first (the files before this one in a batch)."""
        usage = self.usage[owner] + before
        if quota is not None and usage + size > quota:
            counting = " (counting the files before it in this upload)" if before else ""
            raise QuotaExceeded(
                f"over your quota: {what} needs {human_size(size)}, and you use {human_size(usage)} "
                f"of {human_size(quota)}{counting}; delete files (older versions count too) "
                "or ask the operator"
            )

    # -- queries -----------------------------------------------------------------------------
    def under(self, owner: str, folder: str) -> list[str]:
        """The names of ``owner``'s files inside ``folder`` (at any depth), sorted; only a folder
        that exists is looked for, so a miss costs nothing."""
        if not self.is_folder(owner, folder):
            return []
        start = folder + SEPARATOR
        return sorted(n for n in self.files.get(owner, {}) if n.startswith(start))

    def describe(self, owner: str, name: str, version: int | None = None) -> dict[str, Any]:
        """A file as LIST shows it (its current version, or the version given)."""
        entry = self.entry(owner, name)
        assert entry is not None
        shown = entry if version is None else self._version_of(entry, version)
        assert shown is not None
        return {
            "name": name,
            "owner": owner,
            "size": shown["size"],
            "sha1": shown["sha1"],
            "uploaded": shown["uploaded"],
            "version": shown["version"],
            "versions": 1 + len(entry["older"]),
        }

    def version(self, owner: str, name: str, version: int) -> dict[str, Any] | None:
        """One kept version of a file (its chunks included), or None."""
        entry = self.entry(owner, name)
        return None if entry is None else self._version_of(entry, version)

    @staticmethod
    def _version_of(entry: dict[str, Any], version: int) -> dict[str, Any] | None:
        return next((v for v in kept_versions(entry) if v["version"] == version), None)

    def versions(self, owner: str, name: str) -> list[dict[str, Any]]:
        """Every kept version of a file, newest first, as VERSIONS shows them."""
        entry = self.entry(owner, name)
        assert entry is not None
        return [
            {
                "version": v["version"],
                "size": v["size"],
                "sha1": v["sha1"],
                "uploaded": v["uploaded"],
                "current": v is entry,
            }
            for v in kept_versions(entry)
        ]

    def sorted_names(self, owner: str) -> list[str]:
        """``owner``'s names, sorted; kept for the last :data:`SORTED_KEPT` owners listed, until
        their names change, so the pages of one listing cost a sort only once."""
        names = self._sorted.pop(owner, None)
        if names is None:
            names = sorted(self.files.get(owner, {}))
        self._sorted[owner] = names  # the most recently used last
        while len(self._sorted) > SORTED_KEPT:
            del self._sorted[next(iter(self._sorted))]
        return names

    def page(
        self, owner: str, prefix: str = "", after: str = "", limit: int | None = None
    ) -> tuple[list[dict[str, Any]], bool]:
        """The files LIST shows: ``owner``'s whose names start with ``prefix`` and sort after
        ``after``, by name, at most ``limit`` (None: all); and whether more follow."""
        names = self.sorted_names(owner)
        at = bisect.bisect_left(names, prefix)
        if after:
            at = max(at, bisect.bisect_right(names, after))
        shown: list[dict[str, Any]] = []
        while at < len(names) and names[at].startswith(prefix):
            if limit is not None and len(shown) >= limit:
                return shown, True
            shown.append(self.describe(owner, names[at]))
            at += 1
        return shown, False

    def listing(self, owner: str, prefix: str = "") -> list[dict[str, Any]]:
        return self.page(owner, prefix)[0]
