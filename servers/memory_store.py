"""The in-memory twin of :class:`servers.chunk_store.ChunkStore`: the same contract, for tests."""

from __future__ import annotations

import hashlib
import io
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import BinaryIO

from common.errors import CorruptData, FileClusterError, InsufficientStorage, NotFound
from common.hashing import check_chunk_id
from servers.chunk_store import READ_PIECE, ChunkWriter, LostQueue, Pace, Verdict

log = logging.getLogger(__name__)


class MemoryChunkStore:
    """The in-memory twin of :class:`ChunkStore`, same contract, for tests.

    ``stamps`` stands for the files' mtimes; ``capacity`` for the disk's size."""

    def __init__(self, *, capacity: int = 1 << 40, reserve: int = 0) -> None:
        self.chunks: dict[str, bytes] = {}
        self.stamps: dict[str, float] = {}  # when each copy was last written or verified
        self.quarantined: list[tuple[str, bytes]] = []  # (id, bytes), oldest first
        self.capacity = capacity
        self.reserve = reserve
        self.lost = LostQueue()
        self.lock = threading.Lock()

    @property
    def count(self) -> int:
        return len(self.chunks)

    @property
    def used(self) -> int:
        return sum(len(v) for v in self.chunks.values())

    def free(self) -> int:
        return max(self.capacity - self.used, 0)

    def available(self) -> int:
        return max(self.free() - self.reserve, 0)

    def disk(self) -> str:
        return f"memory-{id(self):x}"  # each store its own "disk"

    def quarantined_count(self) -> int:
        return len(self.quarantined)

    def ids(self) -> Iterator[str]:
        yield from sorted(self.chunks)

    def has(self, chunk_id: str) -> bool:
        return check_chunk_id(chunk_id) in self.chunks

    def size(self, chunk_id: str) -> int:
        try:
            return len(self.chunks[check_chunk_id(chunk_id)])
        except KeyError:
            raise NotFound(f"no chunk {chunk_id}") from None

    def open(self, chunk_id: str) -> tuple[BinaryIO, int]:
        try:
            data = self.chunks[check_chunk_id(chunk_id)]
        except KeyError:
            raise NotFound(f"no chunk {chunk_id}") from None
        return io.BytesIO(data), len(data)

    def fits(self, size: int) -> bool:
        return self.free() - size >= self.reserve

    def writer(self, chunk_id: str, size: int, *, fits: bool = False) -> ChunkWriter:
        chunk_id = check_chunk_id(chunk_id)
        if not fits and self.free() - size < self.reserve:
            raise InsufficientStorage(f"no room for a chunk of {size} bytes")
        return _MemoryWriter(self, chunk_id, size)

    def group_flush(self, count: int) -> None:
        """ChunkStore.group_flush's: nothing to flush in memory."""
        return None

    def commit_all(
        self, writers: Sequence[ChunkWriter], flush: object = None
    ) -> list[FileClusterError | None]:
        """ChunkStore.commit_all's contract: each writer committed on its own, its error or None."""
        errors: list[FileClusterError | None] = []
        for writer in writers:
            try:
                writer.commit()
                errors.append(None)
            except FileClusterError as exc:
                errors.append(exc)
            finally:
                writer.abort()
        return errors

    def delete(self, chunk_ids: Iterable[str], older_than: float | None = None) -> int:
        deleted = 0
        with self.lock:
            for chunk_id in map(check_chunk_id, chunk_ids):
                if chunk_id not in self.chunks:
                    continue
                if older_than is not None and self.stamps.get(chunk_id, 0.0) >= older_than:
                    continue
                del self.chunks[chunk_id]
                self.stamps.pop(chunk_id, None)
                deleted += 1
        return deleted

    def verified_age(self, chunk_id: str) -> float | None:
        with self.lock:
            if check_chunk_id(chunk_id) not in self.chunks:
                return None
            return max(time.time() - self.stamps.get(chunk_id, 0.0), 0.0)

    def verify(self, chunk_id: str, pace: Pace | None = None) -> Verdict:
        data = self.chunks.get(check_chunk_id(chunk_id))
        if data is None:
            return "missing"
        if pace is not None:
            for offset in range(0, len(data), READ_PIECE):
                pace(min(READ_PIECE, len(data) - offset))
        if hashlib.sha256(data).hexdigest() == chunk_id:
            with self.lock:
                if self.chunks.get(chunk_id) is data:
                    self.stamps[chunk_id] = time.time()
            return "good"
        with self.lock:
            if self.chunks.get(chunk_id) is not data:  # replaced or deleted meanwhile
                return "good" if chunk_id in self.chunks else "missing"
        self.quarantine(chunk_id, "its bytes do not match their SHA-256")
        return "bad"

    def quarantine(self, chunk_id: str, reason: str) -> bool:
        with self.lock:
            data = self.chunks.pop(check_chunk_id(chunk_id), None)
            self.stamps.pop(chunk_id, None)
            if data is None:
                return False
            self.quarantined.append((chunk_id, data))
        self.lost.add(chunk_id)
        log.warning("quarantined chunk %s (%s)", chunk_id, reason)
        return True


class _MemoryWriter:
    def __init__(self, store: MemoryChunkStore, chunk_id: str, size: int) -> None:
        self.store, self.chunk_id, self.size = store, chunk_id, size
        self.parts: list[bytes] = []

    def write(self, data: bytes | memoryview) -> None:
        self.parts.append(bytes(data))
        if sum(map(len, self.parts)) > self.size:
            raise CorruptData(f"chunk {self.chunk_id} is longer than the announced {self.size} bytes")

    def commit(self) -> None:
        data = b"".join(self.parts)
        if len(data) != self.size or hashlib.sha256(data).hexdigest() != self.chunk_id:
            raise CorruptData(f"chunk {self.chunk_id}: the bytes do not match their SHA-256")
        with self.store.lock:
            self.store.chunks[self.chunk_id] = data
            self.store.stamps[self.chunk_id] = time.time()

    def abort(self) -> None:
        self.parts.clear()

    def __enter__(self) -> _MemoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()
