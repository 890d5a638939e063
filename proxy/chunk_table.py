"""The catalog's chunks: each one's size, the servers listed with a copy, and its reference count.

Theory of operation
-------------------
One dict, keyed by the chunk's 32 raw bytes (proxy.records.chunk_key), whose values are tuples
``(size, servers, refs)``: ``servers`` a tuple of server ids, shared by every chunk listed on the
same servers (so a million chunks on 4 servers hold a handful of tuples), and ``refs`` how many
kept file versions use the chunk (derived: counted at load, never stored).  Tuples of numbers are
immutable, so a change replaces a chunk's tuple, and the garbage collector soon stops tracking
them.  About 130 bytes a chunk, against about 500 for a dict, a list and a hex string.

A chunk no version uses (``refs`` 0) stays until the collector drops it (catalog op ``chunk_del``).
A reference to a chunk the table lacks (only a damaged old catalog could have one) adds it with
no servers, so the chunk is reported lost rather than ignored.

Scans (repair's plan, a server's listed-but-absent copies) copy the keys (8 bytes each) under the
caller's lock and read the records in batches, each under the lock again: no scan holds the lock
for long, or copies the whole table.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

from proxy.records import ChunkKey, chunk_hex, chunk_key

Record = tuple[int, tuple[int, ...], int]
BATCH = 4096  # records read per hold of the lock during a scan


class ChunkTable:
    def __init__(self) -> None:
        self.table: dict[ChunkKey, Record] = {}
        self._servers: dict[tuple[int, ...], tuple[int, ...]] = {}  # shared server tuples

    def _shared(self, servers: tuple[int, ...]) -> tuple[int, ...]:
        return self._servers.setdefault(servers, servers)

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
        return {"size": record[0], "servers": list(record[1])}

    def servers(self, chunk_id: str) -> list[int]:
        record = self.table.get(chunk_key(chunk_id))
        return list(record[1]) if record else []

    def refs(self, chunk_id: str) -> int:
        record = self.table.get(chunk_key(chunk_id))
        return record[2] if record else 0

    def scan(self, lock: AbstractContextManager[Any]) -> Iterator[tuple[str, int, tuple[int, ...], int]]:
        """Every chunk as ``(id, size, servers, refs)``, read in batches under ``lock``; a chunk
        dropped meanwhile is skipped, one added meanwhile may be missed (as by any copy)."""
        with lock:
            keys = list(self.table)
        for start in range(0, len(keys), BATCH):
            with lock:
                batch = [(k, self.table.get(k)) for k in keys[start : start + BATCH]]
            for key, record in batch:
                if record is not None:
                    yield chunk_hex(key), record[0], record[1], record[2]

    def unreferenced(self) -> list[str]:
        return [chunk_hex(k) for k, r in self.table.items() if not r[2]]

    # -- changes -----------------------------------------------------------------------------
    def add(self, chunk_id: str, size: int, servers: list[int]) -> None:
        """Know a chunk (if new, with ``size``), listed on ``servers`` too."""
        key = chunk_key(chunk_id)
        record = self.table.get(key)
        if record is None:
            self.table[key] = (size, self._shared(tuple(dict.fromkeys(servers))), 0)
            return
        extra = [s for s in servers if s not in record[1]]
        if extra:
            self.table[key] = (record[0], self._shared(record[1] + tuple(dict.fromkeys(extra))), record[2])

    def add_server(self, chunk_id: str, server_id: int) -> bool:
        """List a copy on a server; False if the chunk is unknown."""
        key = chunk_key(chunk_id)
        record = self.table.get(key)
        if record is None:
            return False
        if server_id not in record[1]:
            self.table[key] = (record[0], self._shared((*record[1], server_id)), record[2])
        return True

    def drop_server(self, chunk_id: str, server_id: int) -> bool:
        """Forget a copy; True if it was listed."""
        key = chunk_key(chunk_id)
        record = self.table.get(key)
        if record is None or server_id not in record[1]:
            return False
        kept = tuple(s for s in record[1] if s != server_id)
        self.table[key] = (record[0], self._shared(kept), record[2])
        return True

    def forget_server(self, server_id: int) -> None:
        """Drop a server from every chunk (a rare admin op: one pass over the table)."""
        for key, record in self.table.items():
            if server_id in record[1]:
                kept = tuple(s for s in record[1] if s != server_id)
                self.table[key] = (record[0], self._shared(kept), record[2])

    def ref(self, key: ChunkKey, size: int = 0) -> None:
        record = self.table.get(key)
        if record is None:
            self.table[key] = (size, (), 1)
        else:
            self.table[key] = (record[0], record[1], record[2] + 1)

    def unref(self, key: ChunkKey) -> bool:
        """Take a reference off; True if none is left."""
        record = self.table.get(key)
        if record is None:
            return True
        left = max(0, record[2] - 1)
        self.table[key] = (record[0], record[1], left)
        return left == 0

    def drop(self, chunk_id: str) -> None:
        """Forget a chunk no version uses."""
        key = chunk_key(chunk_id)
        record = self.table.get(key)
        if record is not None and not record[2]:
            del self.table[key]

    # -- the snapshot's and the tests' view ------------------------------------------------
    def export(self) -> dict[str, dict[str, Any]]:
        """Every chunk as JSON: ``{id: {size, servers}}``."""
        return {chunk_hex(k): {"size": r[0], "servers": list(r[1])} for k, r in self.table.items()}

    def load_rows(self, rows: dict[ChunkKey, Any]) -> None:
        """The chunks of a snapshot (:attr:`table` as it was written: its reference counts are
        not trusted, but counted again from the files)."""
        shared = self._shared
        self.table = {k: (r[0], shared(tuple(r[1])), 0) for k, r in rows.items()}

    def load_export(self, chunks: dict[str, dict[str, Any]]) -> None:
        """The chunks of a JSON snapshot (the format before this one)."""
        for chunk_id, info in chunks.items():
            self.add(chunk_id, int(info["size"]), list(info["servers"]))

    def ref_counts(self) -> dict[str, int]:
        return {chunk_hex(k): r[2] for k, r in self.table.items() if r[2]}
