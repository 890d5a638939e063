"""The catalog's snapshot file: how the whole state is written and read back.

Format 2 (written since catalogs grew to millions of files): ``MAGIC``, the SHA-256 of the rest,
then a pickle (protocol 5) of plain data only (dicts, lists, tuples, str, bytes, numbers, None):

* ``seq``: the last journal change the snapshot holds;
* ``meta``: the small part, as JSON would hold it (``cluster_id``, ``users``, ``sessions``,
  ``shares``, ``servers``, and ``gateway_url`` once known);
* ``files``: owner -> name -> the packed entry (proxy.records), stored as it is held;
* ``chunks``: chunk key -> ``(size, servers, refs)``, proxy.chunk_table's table as it is held
  (``refs`` is not read back: references are counted again from the files).

A million files load in a few seconds, against tens for the same state as JSON objects.  Reading
refuses any pickled reference to code (:class:`_PlainData`), and the digest catches damage
anywhere, so a damaged snapshot refuses to start, as before.

Format 1 (older versions): one JSON object (files as dicts, chunks as ``{size, servers}``).  It
still loads (:func:`decode` returns it as it is; the catalog converts it), and the next snapshot
is written in format 2.  The file keeps its name, ``catalog.json``, whatever its format.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from typing import Any

MAGIC = b"FILECLUSTER-CATALOG-2\n"
FORMAT = 2
_DIGEST = 32


class _PlainData(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"a catalog snapshot holds data only, not {module}.{name}")


def encode(seq: int, meta: dict[str, Any], files: Any, chunks: Any) -> bytes:
    payload = pickle.dumps(
        {"version": FORMAT, "seq": seq, "meta": meta, "files": files, "chunks": chunks}, protocol=5
    )
    return MAGIC + hashlib.sha256(payload).digest() + payload


def decode(raw: bytes) -> dict[str, Any]:
    """The snapshot in ``raw``: format 2 as written, format 1 as its JSON object.  ValueError if
    it is damaged (or is not a catalog snapshot)."""
    if raw.startswith(MAGIC):
        digest, payload = raw[len(MAGIC) : len(MAGIC) + _DIGEST], raw[len(MAGIC) + _DIGEST :]
        if hashlib.sha256(payload).digest() != digest:
            raise ValueError("its checksum does not match")
        try:
            snapshot = _PlainData(io.BytesIO(payload)).load()
        except Exception as exc:  # whatever a damaged pickle raises
            raise ValueError(str(exc)) from None
        if not (
            isinstance(snapshot, dict)
            and snapshot.get("version") == FORMAT
            and type(snapshot.get("seq")) is int
            and isinstance(snapshot.get("meta"), dict)
            and isinstance(snapshot.get("files"), dict)
            and isinstance(snapshot.get("chunks"), dict)
        ):
            raise ValueError("not a catalog snapshot")
        return snapshot
    snapshot = json.loads(raw)
    if not isinstance(snapshot, dict) or not isinstance(snapshot.get("seq", 0), int):
        raise ValueError("not a catalog snapshot")
    return snapshot
