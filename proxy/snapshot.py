"""The catalog's snapshot file: how the whole state is written and read back.

Format 2 (written since catalogs grew to millions of files): ``MAGIC``, the BLAKE2b-256 of the rest,
then a pickle (protocol 5) of plain data only (dicts, lists, tuples, str, bytes, numbers, None):

* ``seq``: the last journal change the snapshot holds;
* ``meta``: the small part, as JSON would hold it (``cluster_id``, ``users``, ``sessions``,
  ``shares``, ``servers``, and ``gateway_url`` once known);
* ``files``: owner -> name -> the packed entry (proxy.records), stored as it is held;
* ``chunks``: proxy.chunk_table's table (chunk key -> one number: size, refs, server set) and its
  server sets, as they are held;
* ``usage`` (owner -> bytes) and ``folders`` (owner -> folder -> files under it): proxy.file_tree's
  derived figures.

The derived parts (``refs``, ``usage``, ``folders``) are stored as the running proxy held them at
``seq``, so a restart rebuilds nothing: it is the pickle's load, and replaying the journal after
it applies the same ops to the same figures as the running proxy did.  (Format 1 stores none of
them: they are counted at load.)  A million files load in about two seconds, with no transient
copies (the file is read as a stream), against tens of seconds for the same state as JSON.
Reading refuses any pickled reference to code (:class:`_PlainData`), and the digest catches
damage anywhere, so a damaged snapshot refuses to start, as before.

Format 1 (older versions): one JSON object (files as dicts, chunks as ``{size, servers}``).  It
still loads (:func:`decode` returns it as it is; the catalog converts it), and the next snapshot
is written in format 2.  The file keeps its name, ``catalog.json``, whatever its format.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from pathlib import Path
from typing import Any

MAGIC = b"FILECLUSTER-CATALOG-2\n"
FORMAT = 2
_DIGEST = 32


class _PlainData(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"a catalog snapshot holds data only, not {module}.{name}")


def encode(seq: int, state: dict[str, Any]) -> bytes:
    """Format 2: ``state`` holds ``meta``, ``files``, ``chunks``, ``usage`` and ``folders``."""
    payload = pickle.dumps({"version": FORMAT, "seq": seq, **state}, protocol=5)
    return MAGIC + checksum(payload).digest() + payload


def checksum(data: bytes = b"") -> hashlib.blake2b:
    """BLAKE2b-256: CPython's own code, not OpenSSL's, whose locks a forked child (the snapshot
    writer, proxy.journal) could inherit held by another thread; it only detects damage."""
    return hashlib.blake2b(data, digest_size=_DIGEST)


class _Hashing(io.RawIOBase):
    """A file read through, hashing what it reads (the unpickler reads in frames)."""

    def __init__(self, f: io.BufferedReader) -> None:
        self.f = f
        self.digest = checksum()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self.f.readinto(buffer)
        if n:
            self.digest.update(memoryview(buffer)[:n])
        return n or 0


def read(path: Path) -> dict[str, Any]:
    """The snapshot at ``path``: format 2 as written, format 1 as its JSON object.  ValueError if
    it is damaged (or is not a catalog snapshot)."""
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            f.seek(0)
            snapshot = json.loads(f.read())
            if not isinstance(snapshot, dict) or not isinstance(snapshot.get("seq", 0), int):
                raise ValueError("not a catalog snapshot")
            return snapshot
        digest = f.read(_DIGEST)
        hashing = _Hashing(f)
        stream = io.BufferedReader(hashing, 1 << 20)
        error = ""
        try:
            snapshot = _PlainData(stream).load()
        except Exception as exc:  # whatever a damaged pickle raises
            snapshot, error = None, str(exc) or type(exc).__name__
        while stream.read(1 << 20):  # what follows the pickle counts too
            pass
        if hashing.digest.digest() != digest:
            raise ValueError("its checksum does not match")
        if error:
            raise ValueError(error)
    if not (
        isinstance(snapshot, dict)
        and snapshot.get("version") == FORMAT
        and type(snapshot.get("seq")) is int
        and all(isinstance(snapshot.get(k), dict) for k in ("meta", "files", "chunks", "usage", "folders"))
    ):
        raise ValueError("not a catalog snapshot")
    return snapshot
