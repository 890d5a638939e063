"""Compact file entries: each file, with every version kept of it, as one ``bytes`` object.

A file entry (proxy.file_tree) reads as a dict: ``size``, ``sha1``, ``chunks`` (``[[id, size],
...]``), ``uploaded``, ``version`` and ``older`` (the versions kept before it, newest first, each
with the same fields but ``older``).  A million of those as dicts, lists and hex strings take
about 1 KiB each and are a million objects the garbage collector walks; packed, a one-chunk file
takes about 120 bytes, in one object the collector never looks at.

Layout (little-endian), after a tag byte:

* ``PACKED`` (1): ``H`` versions, newest first; each: ``q`` size, ``d`` uploaded, ``I`` version,
  ``20s`` SHA-1, ``I`` chunk count, then per chunk ``32s`` id and ``I`` size;
* ``JSON`` (0): the entry as UTF-8 JSON, for anything the packed form cannot hold exactly (an id
  or SHA-1 that is not lowercase hex of its length, a number out of range).  Entries written by
  the code of today are always packed; the fallback keeps any older or odd entry loadable.

Chunk ids leave a packed entry as 32 raw bytes: the chunk table's key for them (proxy.chunk_table).
"""

from __future__ import annotations

import json
import re
import struct
from typing import Any

PACKED, JSON = 1, 0
_HEAD = struct.Struct("<BH")
_VERSION = struct.Struct("<qdI20sI")
_CHUNK = struct.Struct("<32sI")
_HEX = re.compile(r"[0-9a-f]*")
_U32 = 1 << 32
_MAX_SIZE = 1 << 63
ChunkKey = bytes | str  # 32 raw bytes for a 64-hex id (every id the proxy accepts), else the id


def is_hex(text: object, length: int) -> bool:
    return isinstance(text, str) and len(text) == length and _HEX.fullmatch(text) is not None


def chunk_key(chunk_id: str) -> ChunkKey:
    """The chunk table's key for a chunk id: its 32 bytes, or the id itself if it is not 64-hex."""
    return bytes.fromhex(chunk_id) if is_hex(chunk_id, 64) else chunk_id


def chunk_hex(key: ChunkKey) -> str:
    return key.hex() if isinstance(key, bytes) else key


def _packable(version: dict[str, Any]) -> bool:
    return (
        type(version["size"]) is int
        and 0 <= version["size"] < _MAX_SIZE
        and isinstance(version["uploaded"], (int, float))
        and type(version["version"]) is int
        and 0 <= version["version"] < _U32
        and is_hex(version["sha1"], 40)
        and len(version["chunks"]) < _U32
        and all(is_hex(c, 64) and type(s) is int and 0 <= s < _U32 for c, s in version["chunks"])
    )


def pack(entry: dict[str, Any]) -> bytes:
    """A file entry (its current version and ``older``) as bytes."""
    versions = [entry, *entry.get("older", [])]
    if len(versions) >= 1 << 16 or not all(_packable(v) for v in versions):
        return bytes([JSON]) + json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode()
    parts = [_HEAD.pack(PACKED, len(versions))]
    for v in versions:
        sha1 = bytes.fromhex(v["sha1"])
        parts.append(_VERSION.pack(v["size"], float(v["uploaded"]), v["version"], sha1, len(v["chunks"])))
        parts.extend(_CHUNK.pack(bytes.fromhex(c), s) for c, s in v["chunks"])
    return b"".join(parts)


def _versions(blob: bytes) -> list[dict[str, Any]]:
    _, count = _HEAD.unpack_from(blob)
    offset = _HEAD.size
    versions = []
    for _ in range(count):
        size, uploaded, number, sha1, n = _VERSION.unpack_from(blob, offset)
        offset += _VERSION.size
        chunks = [[c.hex(), s] for c, s in _CHUNK.iter_unpack(blob[offset : offset + n * _CHUNK.size])]
        offset += n * _CHUNK.size
        versions.append(
            {"size": size, "sha1": sha1.hex(), "chunks": chunks, "uploaded": uploaded, "version": number}
        )
    return versions


def unpack(blob: bytes) -> dict[str, Any]:
    """The file entry packed in ``blob``, as a fresh dict (changing it changes nothing stored)."""
    if blob[0] == JSON:
        entry: dict[str, Any] = json.loads(blob[1:])
        entry.setdefault("version", 1)  # an entry from before versions existed (proxy.file_tree)
        entry.setdefault("older", [])
        return entry
    current, *older = _versions(blob)
    current["older"] = older
    return current


def usage_and_chunks(blob: bytes) -> tuple[int, list[ChunkKey]]:
    """The bytes every kept version takes, and the chunk keys they use (once per use), read
    straight from the packed form: what the catalog counts at load."""
    if blob[0] == JSON:
        entry = unpack(blob)
        versions = [entry, *entry["older"]]
        return sum(int(v["size"]) for v in versions), [chunk_key(c) for v in versions for c, _ in v["chunks"]]
    _, count = _HEAD.unpack_from(blob)
    offset = _HEAD.size
    total = 0
    keys: list[ChunkKey] = []
    for _ in range(count):
        size, _, _, _, n = _VERSION.unpack_from(blob, offset)
        offset += _VERSION.size
        total += size
        for _ in range(n):
            keys.append(blob[offset : offset + 32])
            offset += _CHUNK.size
    return total, keys
