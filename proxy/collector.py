"""The chunk collector: frees chunks on the storage servers once nothing needs them.

Three kinds of work reach it:

* *freed* chunks: in the catalog, but no file references them any more (after a
  delete or a replacement);
* *abandoned* copies: what an upload that will never commit placed on servers
  (an aborted one only once its resume grace is over, proxy.uploads);
* *orphan* candidates: chunks a server's inventory (its registration, or the
  periodic block report) lists that the catalog does not know, however they
  got there (an upload cut short by a proxy restart, a delete a server missed
  while it was down).  An orphan is deleted only once it has been seen as one
  for longer than ``orphan_grace``.

Nothing is deleted that an upload in flight pins or a download's lease holds
(proxy.leases).  The decisions are taken under :attr:`lock`, which guards
memory only: uploads take it to pin and to commit, so no decision races them.
The network calls come after, outside any lock: a hung server delays only
the collector.  Each DELETE_CHUNKS carries ``older_than``, the moment of the
decision: a copy written or verified after it (an upload that placed the
same bytes again meanwhile) is kept by the server.  A server that cannot be
reached keeps its copy; its next inventory shows it as an orphan.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict

from common.errors import FileClusterError
from proxy.catalog import Catalog
from proxy.leases import Leases
from proxy.registry import Registry
from proxy.storage_client import StorageClient
from proxy.uploads import PendingUpload, Uploads

log = logging.getLogger(__name__)

DEFAULT_ORPHAN_GRACE = 60.0


class Collector:
    def __init__(
        self,
        catalog: Catalog,
        registry: Registry,
        uploads: Uploads,
        storage: StorageClient,
        interval: float = 30.0,
        *,
        leases: Leases | None = None,
        orphan_grace: float = DEFAULT_ORPHAN_GRACE,
    ) -> None:
        self.catalog = catalog
        self.registry = registry
        self.uploads = uploads
        self.storage = storage  # signed calls to the storage servers, shared by the whole proxy
        self.leases = leases or Leases(ttl=600.0)
        self.interval = interval
        self.orphan_grace = orphan_grace
        self.lock = threading.Lock()  # memory only: pins, commits and deletion decisions
        self._freed: set[str] = set()
        self._abandoned: defaultdict[int, set[str]] = defaultdict(set)
        self._orphans: dict[int, dict[str, float]] = {}  # server -> candidate -> first seen (monotonic)
        self._queue_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.run_forever, name="collector", daemon=True)

    def start(self) -> None:
        self.queue_freed(self.catalog.unreferenced())
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def queue_freed(self, chunk_ids: list[str]) -> None:
        """Queue catalog chunks whose last reference went away."""
        if chunk_ids:
            with self._queue_lock:
                self._freed.update(chunk_ids)
            self._wake.set()

    def note_inventory(self, server_id: int, unknown: list[str]) -> None:
        """A server's full inventory listed these chunks the catalog lacks: they are the server's
        orphan candidates now (those no longer listed are not), each deleted once it has been
        one for longer than the grace period."""
        now = time.monotonic()
        with self._queue_lock:
            before = self._orphans.get(server_id, {})
            self._orphans[server_id] = {c: before.get(c, now) for c in unknown}
        if unknown:
            self._wake.set()

    def queue_abandoned(self, upload: PendingUpload) -> None:
        """Queue what an upload that will never commit may have stored, or reused (no grace: it is
        known junk, unless a file or another upload uses it, which the round checks)."""
        with self._queue_lock:
            for chunk_id, server_id in upload.copies():
                self._abandoned[server_id].add(chunk_id)
        self._wake.set()

    def run_forever(self) -> None:
        """The collector thread: a round every ``interval`` seconds, or as soon as work is queued."""
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.run_once()
            except Exception:
                log.exception("chunk collection failed; will retry")

    def run_once(self) -> None:
        """One round: expire stale uploads, decide what goes (memory only), then tell the servers."""
        for upload in self.uploads.expired():
            if upload.parked_until is not None:
                log.info("aborted upload of %s by %s: resume grace over", upload.name, upload.owner)
            else:
                log.info("upload of %s by %s expired", upload.name, upload.owner)
            self.queue_abandoned(upload)
        with self._queue_lock:
            freed, self._freed = self._freed, set()
            abandoned, self._abandoned = self._abandoned, defaultdict(set)
        decided = time.time()
        try:
            with self.lock:
                leased = self.leases.leased()
                doomed = self._decide_freed(freed, leased)
                for server_id, ids in self._decide_orphans(abandoned, leased).items():
                    doomed[server_id].extend(ids)
        except BaseException:  # nothing queued is lost: it is tried again next round, not sooner
            with self._queue_lock:
                self._freed.update(freed)
                for server_id, kept in abandoned.items():
                    self._abandoned[server_id].update(kept)
            raise
        self._delete_on_servers(doomed, decided)

    def _decide_freed(self, freed: set[str], leased: set[str]) -> defaultdict[int, list[str]]:
        unreferenced = self.catalog.unreferenced(freed)
        kept = [c for c in unreferenced if self.uploads.pinned(c) or c in leased]
        doomed = [c for c in unreferenced if not (self.uploads.pinned(c) or c in leased)]
        if kept:  # an upload or a download relies on them for now: look again next round
            with self._queue_lock:
                self._freed.update(kept)
        by_server: defaultdict[int, list[str]] = defaultdict(list)
        for chunk_id in doomed:
            for server_id in self.catalog.chunk_servers(chunk_id):
                by_server[server_id].append(chunk_id)
        self.catalog.drop_chunks(doomed)  # journaled before any server is told
        return by_server

    def _decide_orphans(self, abandoned: dict[int, set[str]], leased: set[str]) -> dict[int, list[str]]:
        cutoff = time.monotonic() - self.orphan_grace
        doomed: defaultdict[int, list[str]] = defaultdict(list)

        def held(chunk_id: str) -> bool:  # an upload in flight or a download relies on it
            return self.uploads.pinned(chunk_id) or chunk_id in leased

        requeue: defaultdict[int, set[str]] = defaultdict(set)
        for server_id, ids in abandoned.items():
            for chunk_id in sorted(ids):
                if self.catalog.chunk(chunk_id) is not None:
                    continue  # committed by another upload since: not junk
                if held(chunk_id):
                    requeue[server_id].add(chunk_id)  # look again later
                else:
                    doomed[server_id].append(chunk_id)
        with self._queue_lock:
            for server_id, ids in requeue.items():
                self._abandoned[server_id].update(ids)
            for server_id, candidates in self._orphans.items():
                for chunk_id, first_seen in list(candidates.items()):
                    if self.catalog.chunk(chunk_id) is not None:
                        del candidates[chunk_id]  # committed since: not an orphan after all
                    elif first_seen <= cutoff and not held(chunk_id):
                        del candidates[chunk_id]
                        doomed[server_id].append(chunk_id)
        return doomed

    def _delete_on_servers(self, by_server: dict[int, list[str]], decided: float) -> None:
        for server_id, ids in by_server.items():
            state = self.registry.get(server_id)
            if not ids or state is None or not self.registry.is_up(state):
                continue  # its next inventory shows the copies as orphans
            try:
                deleted = self.storage.delete_chunks(state.ref, ids, older_than=decided)
                log.info("freed %d chunk(s) on server %d", deleted, server_id)
            except FileClusterError as exc:
                log.warning("could not free chunks on server %d: %s", server_id, exc)
