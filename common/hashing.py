"""Hashing helpers: chunk ids (SHA-256) and whole-file digests (SHA-1)."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from common.errors import InvalidRequest

CHUNK_ID_RE = re.compile(r"[0-9a-f]{64}\Z")
SHA1_RE = re.compile(r"[0-9a-f]{40}\Z")
READ_SIZE = 1024 * 1024
EMPTY_SHA1 = hashlib.sha1(b"").hexdigest()


def check_chunk_id(chunk_id: object) -> str:
    """A chunk id must be 64 lowercase hex characters before it comes near a path."""
    if not isinstance(chunk_id, str) or not CHUNK_ID_RE.match(chunk_id):
        raise InvalidRequest(f"invalid chunk id {str(chunk_id)[:80]!r}")
    return chunk_id


def check_sha1(value: object) -> str:
    if not isinstance(value, str) or not SHA1_RE.match(value):
        raise InvalidRequest(f"invalid SHA-1 {str(value)[:80]!r}")
    return value


@dataclass(frozen=True)
class ChunkRef:
    id: str
    offset: int
    size: int


@dataclass(frozen=True)
class Manifest:
    size: int
    sha1: str
    chunk_size: int
    chunks: tuple[ChunkRef, ...]


def manifest_of(file: BinaryIO, chunk_size: int, progress: Callable[[int], None] | None = None) -> Manifest:
    """Read ``file`` once, computing its SHA-1 and the SHA-256 of every chunk."""
    whole = hashlib.sha1()
    chunks: list[ChunkRef] = []
    offset = 0
    buf = bytearray(min(READ_SIZE, chunk_size, _size_hint(file)))
    view = memoryview(buf)
    while True:
        part = hashlib.sha256()
        got = 0
        while got < chunk_size:
            n = file.readinto(view[: min(len(buf), chunk_size - got)])  # type: ignore[attr-defined]
            if not n:
                break
            whole.update(view[:n])
            part.update(view[:n])
            got += n
            if progress:
                progress(n)
        if got:
            chunks.append(ChunkRef(part.hexdigest(), offset, got))
            offset += got
        if got < chunk_size:
            break
    return Manifest(offset, whole.hexdigest(), chunk_size, tuple(chunks))


def _size_hint(file: BinaryIO) -> int:
    """A buffer size for reading ``file``: one more than its size now (a small file is then read in
    one call, and the next says it ended; zeroing a buffer of READ_SIZE for each of a thousand small
    files cost a batch upload more than their reading), READ_SIZE if the size cannot be had.  A file
    that grows meanwhile is still read whole, in more calls."""
    try:
        return os.fstat(file.fileno()).st_size + 1
    except (AttributeError, OSError, ValueError):  # not a file with a descriptor (an in-memory one)
        return READ_SIZE


def proof_digest(nonce: str, chunk_id: str, data: bytes | memoryview) -> str:
    """The answer to a proof-of-ownership challenge for one byte range of one chunk.

    SHA-256 over the proxy's fresh nonce, the chunk id and the range's bytes: only someone who
    holds those bytes can compute it, and a fresh nonce makes every answer new."""
    digest = hashlib.sha256(f"{nonce}:{chunk_id}:".encode())
    digest.update(data)
    return digest.hexdigest()
