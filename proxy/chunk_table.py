"""The catalog's chunks: each one's size, the servers listed with a copy, and its reference count.

Theory of operation
-------------------
One dict, keyed by the chunk's 32 raw bytes (proxy.records.chunk_key), whose values are one
``int`` each, three fields in one number: ``servers`` (bits 0-31: the index of a tuple of server
ids in :attr:`ChunkTable.server_sets`, shared by every chunk listed on the same servers), ``refs``
(bits 32-63: how many kept file versions use the chunk) and ``size`` (bits 64 up).  A number is
immutable and holds no reference, so the garbage collector never looks at one; a change replaces
it.  About 170 bytes a chunk with its key and its slot in the dict, against about 500 for a dict,
a list and a hex string.

A chunk no version uses (``refs`` 0) stays until the collector drops it (catalog op ``chunk_del``).
A reference to a chunk the table lacks (only a damaged old catalog could have one) adds it with
no servers, so the chunk is reported lost rather than ignored.

Repair's plan decides per set of servers, not per chunk: a *census* (:meth:`ChunkTable.census`)
counts the chunks in use on each set, from the records alone (no key is turned into an id), and
only the chunks of the sets that need work (a copy short or one too many) are then read one by one
(:meth:`ChunkTable.referenced_on`).  With every server up, a plan of a million chunks costs the
census, about 0.1 s of CPU, instead of a second and a half.

Scans (repair's chunks, a server's listed-but-absent copies) copy the keys (8 bytes each) under the
caller's lock and read the records in batches, each under the lock again: no scan holds the lock
for long, or copies the whole table.  Between batches a scan lets other threads run
(``time.sleep(0)`` releases the GIL): a scan of a million chunks takes about a second of CPU, and
without that a request thread coming back from the network may wait up to the interpreter's
switch interval (5 ms) at each step of its request while the scan runs.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager
from typing import Any

from proxy.records import ChunkKey, chunk_hex, chunk_key

BATCH = 1024  # records read per hold of the lock during a scan (then other threads may run)
CENSUS_BATCH = 65536  # records counted between two chances for other threads to run
_FIELD = 1 << 32
_MASK = _FIELD - 1


def _record(size: int, refs: int, servers: int) -> int:
    return servers | min(refs, _MASK) << 32 | size << 64


class ChunkTable:
    def __init__(self) -> None:
        self.table: dict[ChunkKey, int] = {}
        self.server_sets: list[tuple[int, ...]] = [()]  # index -> a tuple of server ids
        self._set_index: dict[tuple[int, ...], int] = {(): 0}

    def _index(self, servers: tuple[int, ...]) -> int:
        index = self._set_index.get(servers)
        if index is None:
            index = self._set_index[servers] = len(self.server_sets)
            self.server_sets.append(servers)
        return index

    def _fields(self, record: int) -> tuple[int, int, tuple[int, ...]]:
        """(size, refs, servers) of a record."""
        return record >> 64, record >> 32 & _MASK, self.server_sets[record & _MASK]

    def __len__(self) -> int:
        return len(self.table)

    def __contains__(self, chunk_id: str) -> bool:
        return chunk_key(chunk_id) in self.table

    # -- queries -----------------------------------------------------------------------------
    def get(self, chunk_id: str) -> dict[str, Any] | None:
        """``{size, servers}`` (a fresh copy), or None."""
        record = self.table.get(chunk_key(chunk_id))
        if record is None:
            return None
        size, _, servers = self._fields(record)
        return {"size": size, "servers": list(servers)}

    def servers(self, chunk_id: str) -> list[int]:
        record = self.table.get(chunk_key(chunk_id))
        return [] if record is None else list(self.server_sets[record & _MASK])

    def refs(self, chunk_id: str) -> int:
        record = self.table.get(chunk_key(chunk_id))
        return 0 if record is None else record >> 32 & _MASK

    def scan(self, lock: AbstractContextManager[Any]) -> Iterator[tuple[str, int, tuple[int, ...], int]]:
        """Every chunk as ``(id, size, servers, refs)``, read in batches under ``lock``; a chunk
        dropped meanwhile is skipped, one added meanwhile may be missed (as by any copy)."""
        with lock:
            keys = list(self.table)
        for start in range(0, len(keys), BATCH):
            with lock:
                batch = [(k, self.table.get(k)) for k in keys[start : start + BATCH]]
                sets = self.server_sets
            for key, record in batch:
                if record is not None:
                    yield chunk_hex(key), record >> 64, sets[record & _MASK], record >> 32 & _MASK
            time.sleep(0)

    def census(self, lock: AbstractContextManager[Any]) -> dict[tuple[int, ...], int]:
        """How many chunks in use (``refs`` > 0) are listed on each set of servers.  The records are
        copied under ``lock`` (8 bytes each) and counted outside it, a batch at a time."""
        with lock:
            records = list(self.table.values())
            sets = list(self.server_sets)
        counts: Counter[int] = Counter()
        for start in range(0, len(records), CENSUS_BATCH):
            counts.update(r & _MASK for r in records[start : start + CENSUS_BATCH] if r >> 32 & _MASK)
            time.sleep(0)
        return {sets[index]: n for index, n in counts.items()}  # one index per distinct set

    def referenced_on(
        self, wanted: Collection[tuple[int, ...]], lock: AbstractContextManager[Any]
    ) -> Iterator[tuple[str, int, tuple[int, ...], int]]:
        """The chunks in use listed on exactly one of the ``wanted`` sets of servers, as :meth:`scan`
        gives them (and reads them); nothing at all is read when ``wanted`` is empty."""
        for key, record in self._listed_on(lambda servers: servers in wanted, lock):
            if record >> 32 & _MASK:
                yield chunk_hex(key), record >> 64, self.server_sets[record & _MASK], record >> 32 & _MASK

    def on_server(self, server_id: int, lock: AbstractContextManager[Any]) -> Iterator[str]:
        """The chunks listed on ``server_id``, read as :meth:`scan` reads (only the server-set
        field of each record is looked at; only a match is turned into its id)."""
        for key, _ in self._listed_on(lambda servers: server_id in servers, lock):
            yield chunk_hex(key)

    def _listed_on(
        self, match: Callable[[tuple[int, ...]], bool], lock: AbstractContextManager[Any]
    ) -> Iterator[tuple[ChunkKey, int]]:
        """``(key, record)`` of the chunks whose set of servers matches ``match``, read in batches under
        ``lock``; nothing is read if no set matches."""
        with lock:
            wanted = {i for i, servers in enumerate(self.server_sets) if match(servers)}
            keys = list(self.table) if wanted else []
        for start in range(0, len(keys), BATCH):
            with lock:
                get = self.table.get
                batch = [(k, r) for k in keys[start : start + BATCH] if ((r := get(k, 0)) & _MASK) in wanted]
            yield from batch
            time.sleep(0)

    def unreferenced(self) -> list[str]:
        return [chunk_hex(k) for k, r in self.table.items() if not r >> 32 & _MASK]

    # -- changes -----------------------------------------------------------------------------
    def _set_servers(self, key: ChunkKey, record: int, servers: tuple[int, ...]) -> None:
        self.table[key] = record & ~_MASK | self._index(servers)

    def add(self, chunk_id: str, size: int, servers: list[int]) -> None:
        """Know a chunk (if new, with ``size``), listed on ``servers`` too."""
        key = chunk_key(chunk_id)
        record = self.table.get(key)
        if record is None:
            self.table[key] = _record(size, 0, self._index(tuple(dict.fromkeys(servers))))
            return
        listed = self.server_sets[record & _MASK]
        extra = [s for s in servers if s not in listed]
        if extra:
            self._set_servers(key, record, listed + tuple(dict.fromkeys(extra)))

    def add_server(self, chunk_id: str, server_id: int) -> bool:
        """List a copy on a server; False if the chunk is unknown."""
        key = chunk_key(chunk_id)
        record = self.table.get(key)
        if record is None:
            return False
        listed = self.server_sets[record & _MASK]
        if server_id not in listed:
            self._set_servers(key, record, (*listed, server_id))
        return True

    def drop_server(self, chunk_id: str, server_id: int) -> bool:
        """Forget a copy; True if it was listed."""
        key = chunk_key(chunk_id)
        record = self.table.get(key)
        if record is None or server_id not in self.server_sets[record & _MASK]:
            return False
        self._set_servers(key, record, tuple(s for s in self.server_sets[record & _MASK] if s != server_id))
        return True

    def forget_server(self, server_id: int) -> None:
        """Drop a server from every chunk (a rare admin op: one pass over the table)."""
        for key, record in self.table.items():
            listed = self.server_sets[record & _MASK]
            if server_id in listed:
                self._set_servers(key, record, tuple(s for s in listed if s != server_id))

    def ref(self, key: ChunkKey, size: int = 0) -> None:
        record = self.table.get(key)
        self.table[key] = _record(size, 1, 0) if record is None else record + _FIELD

    def unref(self, key: ChunkKey) -> bool:
        """Take a reference off; True if none is left."""
        record = self.table.get(key)
        if record is None:
            return True
        if record >> 32 & _MASK:
            record -= _FIELD
            self.table[key] = record
        return not record >> 32 & _MASK

    def drop(self, chunk_id: str) -> None:
        """Forget a chunk no version uses."""
        key = chunk_key(chunk_id)
        record = self.table.get(key)
        if record is not None and not record >> 32 & _MASK:
            del self.table[key]

    # -- snapshots, and the tests' view -------------------------------------------------------
    def dump(self) -> dict[str, Any]:
        """What a snapshot keeps: the table and the server sets, as they are held."""
        return {"table": self.table, "server_sets": self.server_sets}

    def load(self, kept: dict[str, Any]) -> None:
        """What :meth:`dump` gave, read back from a snapshot."""
        self.table = kept["table"]
        self.server_sets = [tuple(s) for s in kept["server_sets"]]
        self._set_index = {s: i for i, s in enumerate(self.server_sets)}

    def export(self) -> dict[str, dict[str, Any]]:
        """Every chunk as JSON: ``{id: {size, servers}}``."""
        sets = self.server_sets
        return {
            chunk_hex(k): {"size": r >> 64, "servers": list(sets[r & _MASK])} for k, r in self.table.items()
        }

    def load_export(self, chunks: dict[str, dict[str, Any]]) -> None:
        """The chunks of a JSON snapshot (format 1)."""
        for chunk_id, info in chunks.items():
            self.add(chunk_id, int(info["size"]), list(info["servers"]))

    def ref_counts(self) -> dict[str, int]:
        return {chunk_hex(k): r >> 32 & _MASK for k, r in self.table.items() if r >> 32 & _MASK}
