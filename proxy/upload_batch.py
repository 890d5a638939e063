"""Many small files in three requests: UPLOAD_BEGIN_MANY, UPLOAD_PROVE_MANY, UPLOAD_COMMIT_MANY
(docs/PROTOCOL.md §7.8).

Theory of operation
-------------------
A batch is the single-file upload (proxy.upload_handlers) done for up to
MAX_FILES_PER_BATCH files at once, with every per-file check kept: each file
is its own pending upload (its own id, pins, PUT tickets, receipts and resume),
and each succeeds or fails on its own, the reply listing one result per file
in request order (``{"upload_id", "challenge"}``, ``{}``, ``{"file"}``, or
``{"error": {"code", "message"}}``); UPLOAD_PROVE_MANY's chunks to send are one
flat list, ``missing``, each naming its file's index.  What is shared is only
what costs a round trip or an fsync:

* UPLOAD_BEGIN_MANY draws ONE challenge nonce for the batch, with one byte
  range per distinct chunk; each upload keeps the ranges of its own chunks.
* UPLOAD_PROVE_MANY asks the servers once for the whole batch (one
  PROVE_CHUNKS and one VERIFY_CHUNKS per server), then judges each upload's
  proofs against those answers on its own: a chunk is deduplicated for an
  upload only if *that* upload proved it.
* UPLOAD_COMMIT_MANY checks each upload's receipts, then records every upload
  that passed with ONE journal fsync (Catalog.put_files), each checked against
  the catalog and the files before it in the batch (names, quota).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from common.errors import Conflict, FileClusterError, InvalidRequest
from common.frame_server import Reply, Request
from common.hashing import check_sha1
from common.limits import MAX_CHUNKS_PER_BATCH, MAX_FILES_PER_BATCH
from common.names import check_file_name
from proxy.catalog_files import FilePut
from proxy.ownership import Challenge, new_challenge, server_answers
from proxy.upload_handlers import UploadHandlers, locations_of, principal
from proxy.uploads import PendingUpload

log = logging.getLogger(__name__)

Result = dict[str, Any]
FILE_FIELDS = {"name": str, "size": int, "sha1": str, "chunks": list}


def failed(exc: FileClusterError) -> Result:
    """One file's refusal in a batch reply."""
    return {"error": {"code": exc.code, "message": exc.message}}


class BatchUploadHandlers(UploadHandlers):
    def upload_begin_many(self, req: Request) -> Reply:
        """Check and record each file's manifest (as UPLOAD_BEGIN does); one challenge for all."""
        h = req.header
        owner = principal(req)
        files = h["files"]
        if not 1 <= len(files) <= MAX_FILES_PER_BATCH:
            raise InvalidRequest(f"UPLOAD_BEGIN_MANY names 1 to {MAX_FILES_PER_BATCH} files")
        if sum(len(f["chunks"]) for f in files if _is_file(f)) > MAX_CHUNKS_PER_BATCH:
            raise InvalidRequest(f"a batch has at most {MAX_CHUNKS_PER_BATCH} chunks in all")
        if h["chunk_size"] != self.config.chunk_size:
            raise Conflict(
                f"the cluster's chunk size is {self.config.chunk_size}, not {h['chunk_size']}; upload again"
            )
        quota = self._quota(owner)
        sizes: dict[str, int] = {}  # every distinct chunk of the batch
        accepted: list[tuple[int, str, str, list[list[Any]]]] = []
        results: list[Result] = [{} for _ in files]
        planned = 0
        for index, f in enumerate(files):
            try:
                if not _is_file(f):
                    raise InvalidRequest("each file is {name, size, sha1, chunks}")
                name = check_file_name(f["name"], new=True)
                sha1 = check_sha1(f["sha1"])
                chunks = self._check_manifest({**f, "chunk_size": h["chunk_size"]})
                if any(sizes.get(c, s) != s for c, s in chunks):
                    raise InvalidRequest("a chunk id has two sizes in one batch")
                # before any byte is sent; the batch's earlier files count towards the quota
                self.catalog.check_upload(owner, name, f["size"], quota, before=planned)
            except FileClusterError as exc:
                results[index] = failed(exc)
                continue
            planned += f["size"]
            sizes.update((c, s) for c, s in chunks)
            accepted.append((index, name, sha1, chunks))
        batch = new_challenge(sizes)
        ranges = {cid: (cid, offset, length) for cid, offset, length in batch.ranges}
        for index, name, sha1, chunks in accepted:
            mine = Challenge(batch.nonce, tuple(ranges[c] for c in dict(chunks)))
            try:  # the owner's unfinished uploads are bounded (proxy.uploads): the rest fail alone
                upload = self.uploads.begin(owner, name, files[index]["size"], sha1, chunks, mine)
            except FileClusterError as exc:
                results[index] = failed(exc)
                continue
            results[index] = {"upload_id": upload.id, "challenge": mine.wire()}
        return Reply({"results": results})

    def upload_prove_many(self, req: Request) -> Reply:
        """Check each upload's proofs against one round of the servers' answers; place each."""
        owner = principal(req)
        items = _items(req.header["uploads"], "proofs")
        results: list[Result] = [{} for _ in items]
        ready: list[tuple[int, PendingUpload, list[str]]] = []
        missing: list[dict[str, Any]] = []  # flat (the header nesting limit): each names its file
        nonce = None
        for index, (upload_id, proofs, error) in enumerate(items):
            try:
                if error is not None:
                    raise error
                upload = self.uploads.get(upload_id, owner)
                if upload.streamed:
                    raise InvalidRequest("a streamed upload is proved with UPLOAD_PROVE")
                if not upload.awaiting:
                    raise Conflict(
                        "this upload was already proved; ask for fresh tickets with UPLOAD_TICKETS"
                    )
                if len(proofs) != len(upload.challenge.ranges) or not all(isinstance(p, str) for p in proofs):
                    raise InvalidRequest(
                        f"expected {len(upload.challenge.ranges)} proofs, one per distinct chunk"
                    )
                nonce = nonce or upload.challenge.nonce
                if upload.challenge.nonce != nonce:
                    raise InvalidRequest("prove this upload with the others of its UPLOAD_BEGIN_MANY")
            except FileClusterError as exc:
                results[index] = failed(exc)
                continue
            ready.append((index, upload, proofs))
        if ready and nonce is not None:
            sizes: dict[str, int] = {}
            ranges: dict[str, tuple[str, int, int]] = {}
            for _, upload, _ in ready:
                sizes.update((c, s) for c, s in upload.chunks)
                ranges.update((r[0], r) for r in upload.challenge.ranges)
            holders = self._holders(sizes)
            answers = server_answers(Challenge(nonce, tuple(ranges.values())), holders, self.storage)
            proven = {
                upload.id: {
                    r[0]
                    for r, proof in zip(upload.challenge.ranges, proofs, strict=True)
                    if answers.get(r[0]) == proof
                }
                for _, upload, proofs in ready
            }
            every = set().union(*proven.values())
            verified = self._verified_copies({c: holders[c] for c in every if c in holders}, sizes)
            with self.collector.lock:
                live_ids = self.registry.live_ids()
                for index, upload, _ in ready:
                    mine = {c: verified[c] for c in proven[upload.id] if c in verified}
                    try:
                        placement, reused = self._decide(dict(upload.chunks), mine, live_ids)
                        self.uploads.place(upload.id, placement, reused)
                    except FileClusterError as exc:
                        results[index] = failed(exc)
                        continue
                    missing += [{**m, "file": index} for m in self._missing(upload)]
        return Reply({"results": results, "missing": missing})

    def upload_commit_many(self, req: Request) -> Reply:
        """Check each upload's receipts and live copies; record those that pass with one fsync."""
        owner = principal(req)
        items = _items(req.header["uploads"], "receipts")
        results: list[Result] = [{} for _ in items]
        ready: list[tuple[int, PendingUpload]] = []
        for index, (upload_id, receipts, error) in enumerate(items):
            try:
                if error is not None:
                    raise error
                upload = self.uploads.get(upload_id, owner)
                if upload.streamed:
                    raise InvalidRequest("a streamed upload is committed with UPLOAD_COMMIT")
                if not upload.proven or upload.awaiting:
                    raise Conflict("prove the upload first (UPLOAD_PROVE)")
                self._check_receipts(upload, receipts)
            except FileClusterError as exc:
                results[index] = failed(exc)
                continue
            ready.append((index, upload))
        freed: list[str] = []
        with self.collector.lock:
            live_ids = self.registry.live_ids()
            held: list[tuple[int, PendingUpload]] = []
            for index, upload in ready:
                try:
                    self._check_still_held(upload, live_ids)
                except FileClusterError as exc:
                    self._abandon(upload.id)
                    results[index] = failed(exc)
                    continue
                held.append((index, upload))
            quota = self._quota(owner)  # under the lock: concurrent uploads cannot both slip in
            puts = [FilePut(owner, u.name, u.size, u.sha1, u.chunks, locations_of(u), quota) for _, u in held]
            outcomes = self.catalog.put_files(puts, keep=self.config.keep_versions)
            for (index, upload), outcome in zip(held, outcomes, strict=True):
                if isinstance(outcome, FileClusterError):
                    results[index] = failed(outcome)  # still pending: the client aborts (parks) it
                    continue
                entry, gone = outcome
                self.uploads.finish(upload.id)
                freed += gone
                results[index] = {"file": entry}
        self.collector.queue_freed(freed)
        done = [u for (i, u) in held if "file" in results[i]]
        if done:
            log.info(
                "%s uploaded %d files (%d bytes) in one batch", owner, len(done), sum(u.size for u in done)
            )
        return Reply({"results": results})


def _is_file(f: object) -> bool:
    return (
        isinstance(f, Mapping)
        and set(f) == set(FILE_FIELDS)
        and all(isinstance(f[k], t) and not isinstance(f[k], bool) for k, t in FILE_FIELDS.items())
    )


def _items(raw: list[Any], what: str) -> list[tuple[str, list[Any], FileClusterError | None]]:
    """``[[upload id, list], ...]`` of a batch request, each with why it is refused (or None): a
    malformed item, or an upload named twice."""
    if not 1 <= len(raw) <= MAX_FILES_PER_BATCH:
        raise InvalidRequest(f"a batch names 1 to {MAX_FILES_PER_BATCH} uploads")
    seen: set[str] = set()
    items: list[tuple[str, list[Any], FileClusterError | None]] = []
    for item in raw:
        if not (
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], list)
        ):
            items.append(("", [], InvalidRequest(f"each upload is [upload id, {what}]")))
        elif item[0] in seen:
            items.append((item[0], [], InvalidRequest("an upload is named twice in one batch")))
        else:
            seen.add(item[0])
            items.append((item[0], item[1], None))
    return items
