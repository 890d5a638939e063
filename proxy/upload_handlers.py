"""The proxy's upload requests: UPLOAD_BEGIN, UPLOAD_PROVE, UPLOAD_TICKETS, UPLOAD_REPLACE,
UPLOAD_COMMIT and UPLOAD_ABORT (docs/PROTOCOL.md §7.1, §7.4, §15.6, §15.8).

An upload is recorded in the catalog only at commit, once every placed copy came with its server's
receipt; dedup builds only on copies proven held by the client and vouched for by their servers.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from common.cluster_auth import ClusterKey, aggregate, same_mac
from common.errors import AuthError, Conflict, FileClusterError, InvalidRequest, NotFound, Unavailable
from common.frame_server import Reply, Request
from common.hashing import EMPTY_SHA1, check_chunk_id, check_sha1
from common.limits import MAX_CHUNKS_PER_FILE, MAX_IDS_PER_REQUEST
from common.names import check_file_name
from proxy.catalog import Catalog
from proxy.collector import Collector
from proxy.ownership import new_challenge, proven_chunks
from proxy.placement import ServerRef, place, rank
from proxy.registry import Registry
from proxy.repair import Repairer
from proxy.uploads import PendingUpload, Uploads

if TYPE_CHECKING:
    from proxy.service import ProxyConfig

log = logging.getLogger(__name__)

DEDUP_VERIFY_TIMEOUT = 10.0  # a holder slower than this to vouch for its copies: the client sends them


class UploadHandlers:
    def __init__(
        self,
        catalog: Catalog,
        registry: Registry,
        uploads: Uploads,
        collector: Collector,
        config: ProxyConfig,
        key: ClusterKey,
        repairer: Repairer,
    ) -> None:
        self.catalog = catalog
        self.registry = registry
        self.uploads = uploads
        self.collector = collector
        self.config = config
        self.key = key  # signs PUT tickets, checks receipts
        self.storage = collector.storage
        self.repairer = repairer

    def _check_manifest(self, h: Mapping[str, Any]) -> list[list[Any]]:
        size, chunk_size, chunks = h["size"], h["chunk_size"], h["chunks"]
        if chunk_size != self.config.chunk_size:
            raise Conflict(
                f"the cluster's chunk size is {self.config.chunk_size}, not {chunk_size}; upload again"
            )
        if size < 0:
            raise InvalidRequest("a file size cannot be negative")
        if size > chunk_size * MAX_CHUNKS_PER_FILE:
            raise InvalidRequest(
                f"file too large: at most {chunk_size * MAX_CHUNKS_PER_FILE} bytes "
                f"({MAX_CHUNKS_PER_FILE} chunks of {chunk_size})"
            )
        if h.get("streamed"):  # the first batch of chunks; the rest follow (proxy.upload_stream)
            return check_chunks(size, chunk_size, 0, chunks)
        if len(chunks) != math.ceil(size / chunk_size):
            raise InvalidRequest(f"a file of {size} bytes has {math.ceil(size / chunk_size)} chunks")
        clean = check_chunks(size, chunk_size, 0, chunks)
        if size == 0 and h.get("sha1") != EMPTY_SHA1:
            raise InvalidRequest("an empty file has the SHA-1 of no bytes")
        return clean

    def upload_begin(self, req: Request) -> Reply:
        """Record the manifest and answer with a proof-of-ownership challenge over every chunk.

        Nothing in the reply depends on what the cluster holds (proxy.ownership)."""
        h = req.header
        owner = principal(req)
        if h.get("upload_id") is not None:
            return self._declare_more(owner, h)
        name = check_file_name(h["name"], new=True)
        streamed = bool(h.get("streamed"))
        sha1 = "" if streamed else check_sha1(h.get("sha1"))  # streamed: it comes with the commit
        chunks = self._check_manifest(h)
        self.catalog.check_upload(owner, name, h["size"], self._quota(owner))  # before any byte is sent
        challenge = new_challenge(dict(chunks))
        upload = self.uploads.begin(owner, name, h["size"], sha1, chunks, challenge, streamed=streamed)
        return Reply({"upload_id": upload.id, "challenge": challenge.wire()})

    def _declare_more(self, owner: str, h: Mapping[str, Any]) -> Reply:
        """The next batch of a streamed upload's chunks, once the batch before it is proven: a
        challenge over those not declared before (UPLOAD_PROVE then places them)."""
        upload = self.uploads.get(h["upload_id"], owner)
        if not upload.streamed:
            raise InvalidRequest("only a streamed upload declares its chunks in batches")
        if upload.awaiting:
            raise Conflict("prove the chunks declared before (UPLOAD_PROVE) first")
        if (h["name"], h["size"], h["chunk_size"]) != (upload.name, upload.size, self.config.chunk_size):
            raise InvalidRequest("a batch of chunks names its upload's file, size and chunk size")
        chunks = check_chunks(upload.size, self.config.chunk_size, len(upload.chunks), h["chunks"])
        known = {chunk_id for chunk_id, _ in upload.chunks}
        challenge = new_challenge({c: size for c, size in chunks if c not in known})
        self.uploads.declare(upload.id, chunks, challenge)
        return Reply({"upload_id": upload.id, "challenge": challenge.wire()})

    def _quota(self, owner: str) -> int | None:
        return self.catalog.quota_of(owner, self.config.default_quota)

    def upload_prove(self, req: Request) -> Reply:
        """Check the proofs; deduplicate only proven chunks; place every other one (with tickets)."""
        h = req.header
        upload = self.uploads.get(h["upload_id"], principal(req))
        if not upload.awaiting:
            raise Conflict("this upload was already proved; ask for fresh tickets with UPLOAD_TICKETS")
        proofs = h["proofs"]
        if len(proofs) != len(upload.challenge.ranges) or not all(isinstance(p, str) for p in proofs):
            raise InvalidRequest(f"expected {len(upload.challenge.ranges)} proofs, one per distinct chunk")
        every = dict(upload.chunks)
        sizes = {chunk_id: every[chunk_id] for chunk_id, _, _ in upload.challenge.ranges}  # this batch's
        holders = self._holders(sizes)
        proven = proven_chunks(upload.challenge, proofs, holders, self.storage)  # network: no lock held
        verified = self._verified_copies({c: holders[c] for c in proven if c in holders}, sizes)
        with self.collector.lock:
            placement, reused = self._decide(sizes, verified, self.registry.live_ids())
            self.uploads.place(upload.id, placement, reused)
        return Reply({"missing": self._missing(upload, set(placement))})

    def _holders(self, sizes: Mapping[str, int]) -> dict[str, list[ServerRef]]:
        """Who checks each chunk's proof: the live servers with a copy (same size), in rank order."""
        up = [s.ref for s in self.registry.all() if self.registry.is_up(s)]
        holders = {}
        for chunk_id, size in sizes.items():
            known = self.catalog.chunk(chunk_id)
            held = set(known["servers"]) if known is not None and known["size"] == size else set()
            # and where a pending or aborted (parked) upload placed it: a resumed upload reuses what
            # the interrupted one stored, on the same proof and the same servers' word as any dedup
            held |= self.uploads.placed_on(chunk_id)
            ranked = rank(chunk_id, up)
            # content the cluster lacks is checked too, by the server that would hold it (it answers
            # "no copy"): the same round trip either way, so UPLOAD_PROVE takes as long for stored
            # content as for fresh, and its time does not tell what its reply does not
            asked = [s for s in ranked if s.id in held] or ranked[:1]
            if asked:
                holders[chunk_id] = asked
        return holders

    def _decide(
        self, sizes: Mapping[str, int], verified: Mapping[str, set[int]], live_ids: set[int]
    ) -> tuple[dict[str, list[ServerRef]], dict[str, list[int]]]:
        """Under the collector's lock: which chunks to send and where (placement), and which copies
        stored by another upload to reuse; ``verified``: the proven chunks' copies known good."""
        placement: dict[str, list[ServerRef]] = {}
        reused: dict[str, list[int]] = {}
        for chunk_id, size in sizes.items():
            good = verified.get(chunk_id, set()) & live_ids
            recorded = set(self.catalog.chunk_servers(chunk_id))
            if good & recorded:
                continue  # proven, verified and still stored on a live server: nothing to send
            if len(good - recorded) >= self.config.replicas:
                # stored by another upload, not committed yet: reused whole (as many copies as a
                # fresh upload makes); this upload's pins keep them, its commit records them
                reused[chunk_id] = sorted(good - recorded)
                continue
            targets = place(chunk_id, self.registry.live(need_bytes=size), self.config.replicas)
            if len(targets) < self.config.replicas:
                raise Unavailable(
                    f"not enough storage servers up with free space: {len(targets)} of "
                    f"{self.config.replicas} needed; see: filecluster status"
                )
            placement[chunk_id] = targets
        return placement, reused

    def _verified_copies(
        self, holders: Mapping[str, list[ServerRef]], sizes: Mapping[str, int]
    ) -> dict[str, set[int]]:
        """Which of the holders' copies are known good: each server confirms the copy's size and a
        verification within ``verify_age`` (or re-reads it now, quarantining a bad one).  Dedup
        builds only on these; a copy found bad or missing is forgotten, and repair replaces it.
        A holder counted down since ``holders`` was made (it did not answer the proof request just
        now: StorageClient's on_unreachable) is not asked again: its copies count as not verified
        (dedup builds on the other holders' copies; a chunk none of them vouches for is sent
        again), so nobody waits on that server twice."""
        up = self.registry.live_ids()
        by_server: defaultdict[ServerRef, list[str]] = defaultdict(list)
        for chunk_id, servers in holders.items():
            for server in servers:
                if server.id in up:
                    by_server[server].append(chunk_id)
        if not by_server:
            return {}

        def check(server: ServerRef) -> tuple[ServerRef, dict[str, int] | None, set[str]]:
            try:
                good, gone = self.storage.verify_chunks(
                    server, by_server[server], self.config.verify_age, timeout=DEDUP_VERIFY_TIMEOUT
                )
                return server, good, gone
            except FileClusterError as exc:
                log.warning("server %d could not confirm its copies for dedup: %s", server.id, exc)
                return server, None, set()

        verified: defaultdict[str, set[int]] = defaultdict(set)
        with ThreadPoolExecutor(min(16, len(by_server))) as pool:
            for server, good, gone in pool.map(check, list(by_server)):
                for chunk_id, size in (good or {}).items():
                    if sizes.get(chunk_id) == size:
                        verified[chunk_id].add(server.id)
                dropped = [c for c in gone if self.catalog.drop_location(c, server.id)]
                if dropped:
                    log.warning(
                        "server %d: %d copies bad or missing (found by dedup)", server.id, len(dropped)
                    )
                    self.repairer.wake()
        return dict(verified)

    def upload_tickets(self, req: Request) -> Reply:
        """Fresh tickets for what an upload still has to send (tickets expire in minutes)."""
        upload = self.uploads.get(req.header["upload_id"], principal(req))
        if not upload.proven:
            raise Conflict("prove the upload first (UPLOAD_PROVE)")
        return Reply({"missing": self._missing(upload)})

    def _missing(self, upload: PendingUpload, only: set[str] | None = None) -> list[dict[str, Any]]:
        """What the upload sends (``only``: of these chunks), where, with fresh tickets."""
        sizes = dict(upload.chunks)
        return [
            {
                "id": chunk_id,
                "size": sizes[chunk_id],
                "servers": [s.wire() for s in targets],
                "ticket": self.key.put_ticket(
                    chunk_id, [s.wire() for s in targets], upload.holder, self.config.ticket_ttl
                ),
            }
            for chunk_id, targets in upload.placement.items()
            if only is None or chunk_id in only
        ]

    def upload_replace(self, req: Request) -> Reply:
        """New servers for chunks whose chain failed (a server down, hung, or out of space),
        avoiding the servers the client names; those that do not answer a ping are marked down."""
        h = req.header
        upload = self.uploads.get(h["upload_id"], principal(req))
        if not upload.proven:
            raise Conflict("prove the upload first (UPLOAD_PROVE)")
        chunks, avoid = h["chunks"], h["avoid"]
        if len(chunks) > MAX_IDS_PER_REQUEST or len(avoid) > 64 or not all(type(a) is int for a in avoid):
            raise InvalidRequest("UPLOAD_REPLACE names at most 10000 chunks and 64 server ids")
        wanted = {check_chunk_id(c) for c in chunks}
        if not wanted <= set(upload.placement):
            raise InvalidRequest("UPLOAD_REPLACE names a chunk this upload does not send")
        self._check_servers(set(avoid))
        sizes = dict(upload.chunks)
        with self.collector.lock:
            for chunk_id in sorted(wanted):
                servers = [s for s in self.registry.live(need_bytes=sizes[chunk_id]) if s.id not in avoid]
                targets = place(chunk_id, servers, self.config.replicas)
                if len(targets) < self.config.replicas:
                    raise Unavailable(
                        f"not enough storage servers left for chunk {chunk_id[:12]}: {len(targets)} of "
                        f"{self.config.replicas} needed; see: filecluster status"
                    )
                self.uploads.re_place(upload.id, chunk_id, targets)
        return Reply({"missing": [m for m in self._missing(upload) if m["id"] in wanted]})

    def _check_servers(self, suspects: set[int]) -> None:
        """Ping the servers a client could not use, at once; mark down those that do not answer."""
        states = [s for s in (self.registry.get(i) for i in suspects) if s is not None]
        if not states:
            return
        with ThreadPoolExecutor(min(16, len(states))) as pool:
            answers = list(pool.map(lambda s: self.storage.answers(s.ref), states))
        for state, answered in zip(states, answers, strict=True):
            if not answered:
                log.warning(
                    "client reports server %d failing, and it does not answer: marking it down", state.id
                )
                self.registry.mark_down(state.id)

    def upload_commit(self, req: Request) -> Reply:
        h = req.header
        owner = principal(req)
        upload = self.uploads.get(h["upload_id"], owner)
        if not upload.proven or upload.awaiting:
            raise Conflict("prove the upload first (UPLOAD_PROVE)")
        if upload.streamed:
            self._complete(upload, h.get("sha1"))
        self._check_receipts(upload, h.get("receipts") or [])
        # every placed copy came with its server's receipt (verified and fsynced there) and is pinned
        # by this upload, so the catalog records the placement as is: no network call here
        # copies reused from an interrupted upload were proven and vouched for at UPLOAD_PROVE, like dedup
        with self.collector.lock:
            try:
                self._check_still_held(upload, self.registry.live_ids())
            except (Conflict, Unavailable):
                self._abandon(upload.id)
                raise
            entry, freed = self.catalog.put_file(
                owner,
                upload.name,
                upload.size,
                upload.sha1,
                upload.chunks,
                locations_of(upload),
                keep=self.config.keep_versions,
                quota=self._quota(owner),  # again, under the lock: concurrent uploads cannot both slip in
            )
            self.uploads.finish(upload.id)
        self.collector.queue_freed(freed)
        log.info("%s uploaded %s (%d bytes, %d chunks)", owner, upload.name, upload.size, len(upload.chunks))
        return Reply({"file": entry})

    def _complete(self, upload: PendingUpload, sha1: object) -> None:
        """A streamed upload commits once every chunk its size calls for was declared and proven; its
        whole SHA-1 comes with the commit (the client computed it while sending)."""
        want = math.ceil(upload.size / self.config.chunk_size)
        if len(upload.chunks) != want:
            raise InvalidRequest(f"a file of {upload.size} bytes has {want} chunks, not {len(upload.chunks)}")
        if not isinstance(sha1, str):
            raise InvalidRequest("the commit of a streamed upload carries the file's sha1")
        upload.sha1 = check_sha1(sha1)
        if upload.size == 0 and upload.sha1 != EMPTY_SHA1:
            raise InvalidRequest("an empty file has the SHA-1 of no bytes")

    def _check_still_held(self, upload: PendingUpload, live_ids: set[int]) -> None:
        """Under the collector's lock: every chunk the upload did not send (dedup) still has a live
        copy, else Conflict."""
        for chunk_id, _ in upload.chunks:
            if chunk_id in upload.placement:
                continue
            copies = set(self.catalog.chunk_servers(chunk_id)) | set(upload.reused.get(chunk_id, []))
            if not copies & live_ids:
                raise Conflict(f"chunk {chunk_id[:12]} no longer has a live copy; upload again")

    def _check_receipts(self, upload: PendingUpload, receipts: list[Any]) -> None:
        """Every placed copy must come with the receipt of the server that got it from this upload.

        A copy that is merely present proves nothing: it may predate the upload, and whoever knows
        a chunk's hash could otherwise commit it without ever holding its bytes."""
        got: dict[int, str] = {}
        for item in receipts:
            if not (
                isinstance(item, list)
                and len(item) == 2
                and type(item[0]) is int
                and isinstance(item[1], str)
            ):
                raise InvalidRequest("receipts is a list of [server id, aggregate receipt]")
            got[item[0]] = item[1]
        want: defaultdict[int, list[str]] = defaultdict(list)
        for chunk_id, servers in upload.placement.items():
            for server in servers:
                want[server.id].append(self.key.receipt(chunk_id, server.id, upload.holder))
        for server_id, macs in want.items():
            if not same_mac(aggregate(macs), got.get(server_id, "")):
                self._abandon(upload.id)
                raise Conflict(
                    f"storage server {server_id} has no receipt for every chunk this upload "
                    "had to send; upload again"
                )

    def _abandon(self, upload_id: str) -> None:
        upload = self.uploads.finish(upload_id)
        if upload is not None:
            self.collector.queue_abandoned(upload)

    def upload_abort(self, req: Request) -> Reply:
        """Park the upload (proxy.uploads): what it stored stays pinned for ``--resume-grace``, so
        running it again sends only the rest; then the collector frees what nothing uses."""
        h = req.header
        owner = principal(req)
        try:
            upload = self.uploads.get(h["upload_id"], owner)
            for gone in self.uploads.park(upload.id):
                self.collector.queue_abandoned(gone)
            log.info("upload %s of %s by %s aborted", upload.id[:8], upload.name, owner)
        except (NotFound, Conflict):
            pass  # already gone; still check the servers the client could not reach
        suspects = h.get("unreachable") or []
        self._check_servers({i for i in suspects[:64] if type(i) is int})
        return Reply({})


def check_chunks(size: int, chunk_size: int, start: int, chunks: list[Any]) -> list[list[Any]]:
    """``chunks`` as chunks ``start``, ``start + 1``, ... of a file of ``size`` bytes: each
    ``[id, size]``, full but for the file's last, and none past it."""
    count = math.ceil(size / chunk_size)
    if start + len(chunks) > count:
        raise InvalidRequest(f"a file of {size} bytes has {count} chunks")
    clean = []
    for index, item in enumerate(chunks, start):
        if not (isinstance(item, list) and len(item) == 2 and type(item[1]) is int):
            raise InvalidRequest("each chunk is [id, size]")
        want = chunk_size if index < count - 1 else size - chunk_size * index
        if item[1] != want:
            raise InvalidRequest(f"chunk {index} should be {want} bytes, not {item[1]}")
        clean.append([check_chunk_id(item[0]), item[1]])
    return clean


def locations_of(upload: PendingUpload) -> dict[str, list[int]]:
    """Where an upload's new copies are, for the catalog: what it placed, and what it reuses."""
    locations = {chunk_id: [s.id for s in servers] for chunk_id, servers in upload.placement.items()}
    for chunk_id, server_ids in upload.reused.items():
        locations.setdefault(chunk_id, list(server_ids))
    return locations


def principal(req: Request) -> str:
    """The session's user, which the door resolved (the message table says SESSION)."""
    if req.user is None:
        raise AuthError("not logged in (or the session ended); run: filecluster login USER")
    return req.user
