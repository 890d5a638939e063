"""Uploads in flight: what each one will commit, where its chunks go, and what it pins.

An upload exists only in the proxy's memory between UPLOAD_BEGIN and
UPLOAD_COMMIT (or abort, or expiry); nothing is journaled until commit.
UPLOAD_BEGIN records the manifest and the proof-of-ownership challenge;
UPLOAD_PROVE records the placement (the chunks the client must send, and
where) and the copies another upload stored that this one reuses.  Every
chunk an upload names is *pinned*: the collector will not delete it, so a
chunk the upload relies on cannot vanish before the commit.

Resume.  An aborted upload (UPLOAD_ABORT: Ctrl-C, SIGTERM, a failed attempt)
is not forgotten at once but *parked* for ``resume_grace``: it can no longer
commit, but the chunks it stored stay pinned, so running the upload again
reuses them.  An upload whose client vanished stays pending (pinned) until
its TTL.  Either way :meth:`Uploads.placed_on` answers, for a chunk the
catalog lacks, on which servers a pending or parked upload placed it: an
index kept here, so the lookup costs one dict access per chunk.  Those
servers are only *candidates*: UPLOAD_PROVE reuses a copy only once the
client proved it holds the bytes and the server vouched for its copy, as
for any dedup.  Once the grace ends the parked upload goes to the collector,
which frees what no file and no other upload uses.  At most
:data:`MAX_PARKED_PER_OWNER` uploads of one user are parked at a time (the
oldest goes first).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from common.errors import Conflict, NotFound
from common.limits import MAX_CHUNKS_PER_FILE
from proxy.auth import new_token
from proxy.ownership import Challenge
from proxy.placement import ServerRef

UPLOAD_TTL = 6 * 3600.0
RESUME_GRACE = 3600.0  # how long an aborted upload's chunks stay pinned for a resumed upload
MAX_PARKED_PER_OWNER = 16
# what one user's unfinished uploads may hold in the proxy's memory at once (each pending upload keeps
# its manifest): a client has at most a few batches in flight, and one file has at most
# MAX_CHUNKS_PER_FILE chunks
MAX_PENDING_PER_OWNER = 2048
MAX_PENDING_CHUNKS_PER_OWNER = 2 * MAX_CHUNKS_PER_FILE


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
    reused: dict[str, list[int]] = field(default_factory=dict)  # copies other uploads stored, vouched for
    proven: bool = False  # UPLOAD_PROVE has decided the placement (of every batch so far)
    awaiting: bool = True  # a challenge is out that UPLOAD_PROVE has not answered yet
    streamed: bool = False  # declared in batches as the client hashes (sha1 comes at commit)
    created: float = field(default_factory=time.monotonic)
    parked_until: float | None = None  # aborted: its stored chunks stay pinned until then
    indexed: set[tuple[str, int]] = field(default_factory=set)  # (chunk, server) in Uploads' index

    @property
    def holder(self) -> str:
        """Whom this upload's PUT tickets and the servers' receipts are bound to."""
        return f"upload:{self.id[:16]}"

    def copies(self) -> Iterator[tuple[str, int]]:
        """Every (chunk, server) where this upload placed a chunk or reuses a copy: what it may
        have left on the servers if it never commits."""
        for chunk_id, servers in self.placement.items():
            for server in servers:
                yield chunk_id, server.id
        for chunk_id, server_ids in self.reused.items():
            for server_id in server_ids:
                yield chunk_id, server_id

    def stored_chunks(self) -> set[str]:
        return {chunk_id for chunk_id, _ in self.copies()}


class Uploads:
    def __init__(self, ttl: float = UPLOAD_TTL, resume_grace: float = RESUME_GRACE) -> None:
        self.ttl = ttl
        self.resume_grace = resume_grace
        self._pending: dict[str, PendingUpload] = {}
        self._parked: dict[str, PendingUpload] = {}
        self._pins: Counter[str] = Counter()
        self._placed: dict[str, Counter[int]] = {}  # chunk -> server -> uploads that placed it there
        self._owned: Counter[str] = Counter()  # owner -> their pending uploads
        self._owned_chunks: Counter[str] = Counter()  # owner -> the chunks their pending uploads declared
        self._lock = threading.Lock()

    def begin(
        self,
        owner: str,
        name: str,
        size: int,
        sha1: str,
        chunks: list[list[Any]],
        challenge: Challenge,
        *,
        streamed: bool = False,
    ) -> PendingUpload:
        upload = PendingUpload(new_token(), owner, name, size, sha1, chunks, challenge, streamed=streamed)
        with self._lock:
            if self._owned[owner] >= MAX_PENDING_PER_OWNER:
                raise Conflict(
                    f"you have {MAX_PENDING_PER_OWNER} unfinished uploads; let them finish, or wait for "
                    "interrupted ones to expire"
                )
            self._own(owner, 1, len(chunks))
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

    def place(
        self,
        upload_id: str,
        placement: dict[str, list[ServerRef]],
        reused: dict[str, list[int]] | None = None,
    ) -> None:
        """Record where an upload's chunks go and which stored copies it reuses (UPLOAD_PROVE):
        from now on it may commit.  A streamed upload adds each batch's to those before."""
        with self._lock:
            upload = self._pending.get(upload_id)
            if upload is None:
                raise NotFound("unknown upload (it may have expired or been aborted); upload again")
            if upload.streamed:
                upload.placement.update(placement)
                upload.reused.update(reused or {})
            else:
                upload.placement, upload.reused = placement, dict(reused or {})
            upload.proven, upload.awaiting = True, False
            self._index(upload)

    def declare(self, upload_id: str, chunks: list[list[Any]], challenge: Challenge) -> None:
        """The next batch of a streamed upload's chunks (UPLOAD_BEGIN with ``upload_id``): pinned
        from now on, and proven by ``challenge``."""
        with self._lock:
            upload = self._pending.get(upload_id)
            if upload is None:
                raise NotFound("unknown upload (it may have expired or been aborted); upload again")
            self._own(upload.owner, 0, len(chunks))
            known = {chunk_id for chunk_id, _ in upload.chunks}
            self._pins.update({chunk_id for chunk_id, _ in chunks} - known)
            upload.chunks = upload.chunks + chunks
            upload.challenge, upload.awaiting = challenge, True

    def _own(self, owner: str, uploads: int, chunks: int) -> None:
        """Count an owner's pending uploads and their chunks; refuse (Conflict) chunks past the bound."""
        if chunks > 0 and self._owned_chunks[owner] + chunks > MAX_PENDING_CHUNKS_PER_OWNER:
            raise Conflict(
                f"your unfinished uploads declare more than {MAX_PENDING_CHUNKS_PER_OWNER} chunks; let "
                "them finish, or wait for interrupted ones to expire"
            )
        self._owned[owner] += uploads
        self._owned_chunks[owner] += chunks

    def _disown(self, upload: PendingUpload) -> None:
        """No longer pending (committed, abandoned, expired or parked): off its owner's counts."""
        for counter, amount in ((self._owned, 1), (self._owned_chunks, len(upload.chunks))):
            left = counter[upload.owner] - amount
            if left > 0:
                counter[upload.owner] = left
            else:
                counter.pop(upload.owner, None)

    def re_place(self, upload_id: str, chunk_id: str, targets: list[ServerRef]) -> None:
        """A new chain for one chunk (UPLOAD_REPLACE).  The old chain stays indexed: its head may
        well hold a copy (a failed replica does not undo the head's)."""
        with self._lock:
            upload = self._pending.get(upload_id)
            if upload is None:
                raise NotFound("unknown upload (it may have expired or been aborted); upload again")
            upload.placement[chunk_id] = targets
            self._index(upload)

    def _index(self, upload: PendingUpload) -> None:
        for copy in set(upload.copies()) - upload.indexed:
            upload.indexed.add(copy)
            self._placed.setdefault(copy[0], Counter())[copy[1]] += 1

    def _unindex(self, upload: PendingUpload) -> None:
        for chunk_id, server_id in upload.indexed:
            servers = self._placed.get(chunk_id)
            if servers is not None:
                servers[server_id] -= 1
                if servers[server_id] <= 0:
                    del servers[server_id]
                if not servers:
                    del self._placed[chunk_id]
        upload.indexed = set()

    def placed_on(self, chunk_id: str) -> set[int]:
        """The servers where a pending or parked upload placed (or reuses) ``chunk_id``: where a copy
        the catalog does not know yet may be.  Candidates only: a copy counts once its server vouches."""
        with self._lock:
            return set(self._placed.get(chunk_id, ()))

    def finish(self, upload_id: str) -> PendingUpload | None:
        """Forget a pending upload (committed, or abandoned to the collector), with its pins."""
        with self._lock:
            upload = self._pending.pop(upload_id, None)
            if upload is not None:
                self._disown(upload)
                self._unpin({chunk_id for chunk_id, _ in upload.chunks})
                self._unindex(upload)
        return upload

    def park(self, upload_id: str) -> list[PendingUpload]:
        """An aborted upload: it can no longer commit, but the chunks it stored stay pinned (and
        findable by :meth:`placed_on`) for ``resume_grace``.  Returns what must go to the collector
        now: the upload itself if it stored nothing or there is no grace, else the owner's oldest
        parked upload if there are more than MAX_PARKED_PER_OWNER."""
        with self._lock:
            upload = self._pending.pop(upload_id, None)
            if upload is None:
                return []
            self._disown(upload)
            self._unpin({chunk_id for chunk_id, _ in upload.chunks})
            stored = upload.stored_chunks()
            if self.resume_grace <= 0 or not stored:
                self._unindex(upload)
                return [upload]
            upload.parked_until = time.monotonic() + self.resume_grace
            self._pins.update(stored)
            self._parked[upload.id] = upload
            mine = sorted(
                (u for u in self._parked.values() if u.owner == upload.owner),
                key=lambda u: u.parked_until or 0.0,
            )
            return [self._unpark(u) for u in mine[: max(0, len(mine) - MAX_PARKED_PER_OWNER)]]

    def _unpark(self, upload: PendingUpload) -> PendingUpload:
        del self._parked[upload.id]
        self._unpin(upload.stored_chunks())
        self._unindex(upload)
        return upload

    def _unpin(self, chunk_ids: set[str]) -> None:
        """Drop one pin of each chunk; a chunk with none left leaves the counter (in O(len(chunk_ids)),
        not a rebuild of every pin: this runs on every commit)."""
        pins = self._pins
        for chunk_id in chunk_ids:
            left = pins[chunk_id] - 1
            if left > 0:
                pins[chunk_id] = left
            else:
                pins.pop(chunk_id, None)

    def parked(self) -> int:
        with self._lock:
            return len(self._parked)

    def expired(self) -> list[PendingUpload]:
        """Pending uploads past their TTL and parked ones past their grace, forgotten: what they
        stored goes to the collector."""
        now = time.monotonic()
        with self._lock:
            stale = [u.id for u in self._pending.values() if now - u.created > self.ttl]
            over = [u for u in self._parked.values() if u.parked_until is not None and now > u.parked_until]
            done = [self._unpark(u) for u in over]
        return done + [u for u in (self.finish(i) for i in stale) if u is not None]

    def pinned(self, chunk_id: str) -> bool:
        with self._lock:
            return self._pins[chunk_id] > 0
