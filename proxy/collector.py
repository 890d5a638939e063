"""The chunk collector: frees chunks on the storage servers once nothing needs them.

Two kinds of work reach it: chunks in the catalog that no file references any
more (after a delete or a replacement), and *orphans*, chunks a server holds
that the catalog never recorded (an aborted upload, a delete a server missed
while it was down).  Before deleting anything it checks, under its lock, that
the chunk is still unreferenced and that no upload in flight pins it;
uploads take the same lock to pin and to commit, so a chunk can never be
deleted under an upload that relies on it.  A server that cannot be reached
keeps its copy; the next time it registers, its inventory shows the copy as
an orphan and it is freed then.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict

from common.errors import FileClusterError
from proxy.catalog import Catalog
from proxy.registry import Registry
from proxy.storage_client import StorageClient
from proxy.uploads import PendingUpload, Uploads

log = logging.getLogger(__name__)


class Collector:
    def __init__(
        self,
        catalog: Catalog,
        registry: Registry,
        uploads: Uploads,
        storage: StorageClient,
        interval: float = 30.0,
    ) -> None:
        self.catalog = catalog
        self.registry = registry
        self.uploads = uploads
        self.storage = storage  # signed calls to the storage servers, shared by the whole proxy
        self.interval = interval
        self.lock = threading.Lock()  # pins, commits and deletions are serialised on this
        self._freed: set[str] = set()
        self._orphans: defaultdict[int, set[str]] = defaultdict(set)
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

    def queue_orphans(self, server_id: int, chunk_ids: list[str]) -> None:
        """Queue chunks a server holds that the catalog may not know."""
        if chunk_ids:
            with self._queue_lock:
                self._orphans[server_id].update(chunk_ids)
            self._wake.set()

    def queue_abandoned(self, upload: PendingUpload) -> None:
        """Queue what an upload that will never commit may have stored, as orphan work."""
        for chunk_id, servers in upload.placement.items():
            for server in servers:
                self.queue_orphans(server.id, [chunk_id])

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
        """One round: expire stale uploads, then delete what is queued (what tests call)."""
        for upload in self.uploads.expired():
            log.info("upload of %s by %s expired", upload.name, upload.owner)
            self.queue_abandoned(upload)
        with self._queue_lock:
            freed, self._freed = self._freed, set()
            orphans, self._orphans = self._orphans, defaultdict(set)
        try:
            with self.lock:
                self._delete_freed(freed)
                self._delete_orphans(orphans)
        except BaseException:  # nothing queued is lost: it is tried again next round, not sooner
            with self._queue_lock:
                self._freed.update(freed)
                for server_id, ids in orphans.items():
                    self._orphans[server_id].update(ids)
            raise

    def _delete_freed(self, freed: set[str]) -> None:
        unreferenced = self.catalog.unreferenced(freed)
        doomed = [c for c in unreferenced if not self.uploads.pinned(c)]
        pinned = [c for c in unreferenced if self.uploads.pinned(c)]
        if pinned:  # an upload relies on them for now: look again next round
            with self._queue_lock:
                self._freed.update(pinned)
        by_server: defaultdict[int, list[str]] = defaultdict(list)
        for chunk_id in doomed:
            for server_id in self.catalog.chunk_servers(chunk_id):
                by_server[server_id].append(chunk_id)
        self._delete_on_servers(by_server)
        self.catalog.drop_chunks(doomed)

    def _delete_orphans(self, orphans: dict[int, set[str]]) -> None:
        by_server: dict[int, list[str]] = {}
        for server_id, ids in orphans.items():
            unknown = [c for c in sorted(ids) if self.catalog.chunk(c) is None]
            by_server[server_id] = [c for c in unknown if not self.uploads.pinned(c)]
            pinned = [c for c in unknown if self.uploads.pinned(c)]
            if pinned:  # an upload in flight may commit them: look again next round
                with self._queue_lock:
                    self._orphans[server_id].update(pinned)
        self._delete_on_servers(by_server)

    def _delete_on_servers(self, by_server: dict[int, list[str]]) -> None:
        for server_id, ids in by_server.items():
            state = self.registry.get(server_id)
            if not ids or state is None or not self.registry.is_up(state):
                continue
            try:
                deleted = self.storage.delete_chunks(state.ref, ids)
                log.info("freed %d chunk(s) on server %d", deleted, server_id)
            except FileClusterError as exc:
                log.warning("could not free chunks on server %d: %s", server_id, exc)
