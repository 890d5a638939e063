"""Uploads in flight: what each one will commit, where its chunks go, and what it pins.

An upload exists only in the proxy's memory between UPLOAD_BEGIN and
UPLOAD_COMMIT (or abort, or expiry); nothing is journaled until commit.
UPLOAD_BEGIN records the manifest and the proof-of-ownership challenge;
UPLOAD_PROVE records the placement (the chunks the client must send, and
where).  Every chunk an upload names is *pinned*: the collector will not
delete it, so a chunk the upload relies on cannot vanish before the commit.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from common.errors import Conflict, NotFound
from proxy.auth import new_token
from proxy.ownership import Challenge
from proxy.placement import ServerRef

UPLOAD_TTL = 6 * 3600.0


@dataclass
class PendingUpload:
    id: str
    owner: str
    name: str
    size: int
    sha1: str
    chunks: list[list[Any]]
    challenge: Challenge
    placement: dict[str, list[ServerRef]] = field(default_factory=dict)  # what to send, and where
    proven: bool = False  # UPLOAD_PROVE has decided the placement
    created: float = field(default_factory=time.monotonic)

    @property
    def holder(self) -> str:
        """Whom this upload's PUT tickets and the servers' receipts are bound to."""
        return f"upload:{self.id[:16]}"


class Uploads:
    def __init__(self, ttl: float = UPLOAD_TTL) -> None:
        self.ttl = ttl
        self._pending: dict[str, PendingUpload] = {}
        self._pins: Counter[str] = Counter()
        self._lock = threading.Lock()

    def begin(
        self,
        owner: str,
        name: str,
        size: int,
        sha1: str,
        chunks: list[list[Any]],
        challenge: Challenge,
    ) -> PendingUpload:
        upload = PendingUpload(new_token(), owner, name, size, sha1, chunks, challenge)
        with self._lock:
            self._pending[upload.id] = upload
            self._pins.update({chunk_id for chunk_id, _ in chunks})
        return upload

    def get(self, upload_id: str, owner: str) -> PendingUpload:
        with self._lock:
            upload = self._pending.get(upload_id)
        if upload is None or upload.owner != owner:
            raise NotFound("unknown upload (it expired, was aborted, or the proxy restarted); upload again")
        if time.monotonic() - upload.created > self.ttl:
            raise Conflict("the upload expired; upload again")  # the collector frees what it stored
        return upload

    def place(self, upload_id: str, placement: dict[str, list[ServerRef]]) -> None:
        """Record where an upload's chunks go (UPLOAD_PROVE): from now on it may commit."""
        with self._lock:
            upload = self._pending.get(upload_id)
            if upload is None:
                raise NotFound("unknown upload (it may have expired or been aborted); upload again")
            upload.placement, upload.proven = placement, True

    def finish(self, upload_id: str) -> PendingUpload | None:
        with self._lock:
            upload = self._pending.pop(upload_id, None)
            if upload is not None:
                self._pins.subtract({chunk_id for chunk_id, _ in upload.chunks})
                self._pins = +self._pins
        return upload

    def expired(self) -> list[PendingUpload]:
        now = time.monotonic()
        with self._lock:
            stale = [u.id for u in self._pending.values() if now - u.created > self.ttl]
        return [u for u in (self.finish(i) for i in stale) if u is not None]

    def pinned(self, chunk_id: str) -> bool:
        with self._lock:
            return self._pins[chunk_id] > 0
