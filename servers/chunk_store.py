"""Where a storage server keeps its chunks: the storage seam (Swift's DiskFile shape).

A chunk is stored under its SHA-256, ``ServerFiles/ab/abcdef...``.  Writing
goes through a :class:`ChunkWriter`: bytes are hashed as they are written to
a temp file in the same filesystem; ``commit`` refuses a size or hash
mismatch, fsyncs the file, renames it into place and fsyncs the directory.
A temp file that was never committed is removed, so a reader never sees a
half-written chunk.  :class:`MemoryChunkStore` is the in-memory twin for
tests.

Only the server's user can read chunks: files are 0600 and every folder
(the root, the fan-out folders, ``tmp``) 0700, whatever the umask; a store
made by an older version is tightened when it opens.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import threading
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from common.atomic import PRIVATE_DIR, PRIVATE_FILE, fsync_dir, make_private_dir, open_private, tighten
from common.errors import CorruptData, InsufficientStorage, NotFound, StorageIOError
from common.hashing import check_chunk_id

TMP_DIR = "tmp"


class ChunkWriter(Protocol):
    """What both stores' ``writer()`` returns: write pieces, then commit (verify + install) or abort."""

    def write(self, data: bytes | memoryview) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...
    def __enter__(self) -> ChunkWriter: ...
    def __exit__(self, *exc: object) -> None: ...


def _io_error(exc: OSError, what: str) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientStorage(f"no space left to {what}")
    return StorageIOError(f"disk error while trying to {what}: {exc.strerror or exc}")


class _Usage:
    """Chunk count and bytes used, kept up to date under a lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.bytes = 0

    def add(self, count: int, size: int) -> None:
        with self.lock:
            self.count += count
            self.bytes += size


class ChunkStore:
    """Chunks on disk under ``root`` (a server's ``ServerFiles`` folder)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tmp = self.root / TMP_DIR
        make_private_dir(self.root)
        make_private_dir(self.tmp)
        for leftover in self.tmp.iterdir():  # half-written chunks from a crash
            leftover.unlink(missing_ok=True)
        self._usage = _Usage()
        for sub in self.root.iterdir():
            if sub.is_dir() and not sub.is_symlink():
                tighten(sub, PRIVATE_DIR)
        for chunk_id in self.ids():
            path = self._path(chunk_id)
            self._usage.add(1, path.stat().st_size)
            tighten(path, PRIVATE_FILE)

    def _path(self, chunk_id: str) -> Path:
        check_chunk_id(chunk_id)
        return self.root / chunk_id[:2] / chunk_id

    @property
    def count(self) -> int:
        return self._usage.count

    @property
    def used(self) -> int:
        return self._usage.bytes

    def free(self) -> int:
        usage = os.statvfs(self.root)
        return usage.f_bavail * usage.f_frsize

    def ids(self) -> Iterator[str]:
        for sub in sorted(self.root.iterdir()):
            if sub.name == TMP_DIR or not sub.is_dir():
                continue
            for entry in sorted(sub.iterdir()):
                if len(entry.name) == 64 and entry.name.startswith(sub.name):
                    yield entry.name

    def has(self, chunk_id: str) -> bool:
        return self._path(chunk_id).is_file()

    def size(self, chunk_id: str) -> int:
        try:
            return self._path(chunk_id).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"no chunk {chunk_id}") from None

    def open(self, chunk_id: str) -> tuple[BinaryIO, int]:
        """An open file on the chunk and its size (the size of what was opened, even if deleted since)."""
        try:
            file = open(self._path(chunk_id), "rb")
        except FileNotFoundError:
            raise NotFound(f"no chunk {chunk_id}") from None
        except OSError as exc:
            raise _io_error(exc, "read a chunk") from None
        return file, os.fstat(file.fileno()).st_size

    def writer(self, chunk_id: str, size: int) -> ChunkWriter:
        return _DiskWriter(self, check_chunk_id(chunk_id), size)

    def delete(self, chunk_ids: Iterable[str]) -> int:
        deleted = 0
        for chunk_id in chunk_ids:
            path = self._path(chunk_id)
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                continue
            self._usage.add(-1, -size)
            deleted += 1
        return deleted

    def _install(self, tmp: Path, final: Path, size: int) -> None:
        """Rename a verified, fsynced temp file into place; count it once, whatever the race."""
        if not final.parent.is_dir():
            final.parent.mkdir(mode=PRIVATE_DIR, exist_ok=True)
            fsync_dir(self.root)  # the new folder itself must survive a crash
        with self._usage.lock:
            existed = final.exists()
            os.replace(tmp, final)
            if not existed:
                self._usage.count += 1
                self._usage.bytes += size
        fsync_dir(final.parent)


class _DiskWriter:
    def __init__(self, store: ChunkStore, chunk_id: str, size: int) -> None:
        self.store = store
        self.chunk_id = chunk_id
        self.size = size
        self.written = 0
        self.hash = hashlib.sha256()
        self.tmp_path = store.tmp / f"{chunk_id}.{uuid.uuid4().hex}"
        try:
            self.file: BinaryIO | None = open(self.tmp_path, "wb", opener=open_private)  # 0600
        except OSError as exc:
            raise _io_error(exc, "store a chunk") from None

    def write(self, data: bytes | memoryview) -> None:
        self.written += len(data)
        if self.written > self.size:
            raise CorruptData(f"chunk {self.chunk_id} is longer than the announced {self.size} bytes")
        self.hash.update(data)
        assert self.file is not None
        try:
            self.file.write(data)
        except OSError as exc:
            raise _io_error(exc, "store a chunk") from None

    def commit(self) -> None:
        assert self.file is not None
        if self.written != self.size:
            raise CorruptData(f"chunk {self.chunk_id}: got {self.written} of {self.size} bytes")
        if self.hash.hexdigest() != self.chunk_id:
            raise CorruptData(f"chunk {self.chunk_id}: the bytes do not match their SHA-256")
        final = self.store._path(self.chunk_id)
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            self.file = None
            self.store._install(self.tmp_path, final, self.size)
        except OSError as exc:
            raise _io_error(exc, "store a chunk") from None
        finally:
            self.abort()

    def abort(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        self.tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> _DiskWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


class MemoryChunkStore:
    """The in-memory twin of :class:`ChunkStore`, same contract, for tests."""

    def __init__(self) -> None:
        self.chunks: dict[str, bytes] = {}
        self.lock = threading.Lock()

    @property
    def count(self) -> int:
        return len(self.chunks)

    @property
    def used(self) -> int:
        return sum(len(v) for v in self.chunks.values())

    def free(self) -> int:
        return 1 << 40

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

    def writer(self, chunk_id: str, size: int) -> ChunkWriter:
        return _MemoryWriter(self, check_chunk_id(chunk_id), size)

    def delete(self, chunk_ids: Iterable[str]) -> int:
        with self.lock:
            return sum(self.chunks.pop(check_chunk_id(c), None) is not None for c in chunk_ids)


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

    def abort(self) -> None:
        self.parts.clear()

    def __enter__(self) -> _MemoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()
