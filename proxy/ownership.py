"""Proof of ownership for dedup: a client must show it holds the bytes of a chunk it will not send.

Theory of operation
-------------------
Knowing a chunk's SHA-256 is not knowing its bytes (Halevi et al., "Proofs
of Ownership in Remote Storage Systems", CCS 2011).  So UPLOAD_BEGIN answers
with a *challenge* over every distinct chunk of the manifest, stored or not
(the challenge itself tells nothing): a fresh random nonce, and for each
chunk a random byte range of up to :data:`PROOF_BYTES` bytes.  The client
answers, in UPLOAD_PROVE, ``SHA-256(nonce ":" id ":" bytes of the range)``
for each.  For the chunks the cluster holds on a live server, the proxy has a
server compute the same from its copy (PROVE_CHUNKS, cluster-authenticated)
and compares.  A chunk is deduplicated only if its proof matches; every other
chunk, stored or not, is placed and must be sent, so the reply never tells a
user whether content they have not proved is stored.  Nor does its time: a
chunk the cluster lacks is asked about too, of the live server that would
hold it (which answers that it has no copy), so UPLOAD_PROVE makes the same
round trip for stored content as for fresh.

Someone who knows every hash but none of the bytes must guess ``8·n`` bits
of a range of n bytes per chunk (n = 4096 for full chunks): the chance is
2^-32768.  Cost for an honest client with a 1 GiB file of 256 chunks: it reads
256 × 4 KiB = 1 MiB more (by then the file is in its page cache: it has just
hashed it), sends 256 proofs of 64 hex characters (~17 KiB), and makes one
extra round trip to the proxy; the servers read 1 MiB between them.
"""

from __future__ import annotations

import logging
import secrets
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from common.errors import FileClusterError
from proxy.placement import ServerRef
from proxy.storage_client import StorageClient

PROOF_BYTES = 4096
PROVE_TIMEOUT = 2.0  # a server that does not answer a proof request in time vouches for nothing
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Challenge:
    nonce: str
    ranges: tuple[tuple[str, int, int], ...]  # (chunk id, offset, length), one per distinct chunk

    def wire(self) -> dict[str, Any]:
        return {"nonce": self.nonce, "ranges": [[offset, length] for _, offset, length in self.ranges]}


def new_challenge(distinct: Mapping[str, int]) -> Challenge:
    """A fresh challenge over every distinct chunk (``id -> size``), in manifest order."""
    ranges = []
    for chunk_id, size in distinct.items():
        length = min(PROOF_BYTES, size)
        ranges.append((chunk_id, secrets.randbelow(size - length + 1), length))
    return Challenge(secrets.token_hex(16), tuple(ranges))


def proven_chunks(
    challenge: Challenge,
    proofs: Sequence[object],
    holders: Mapping[str, Sequence[ServerRef]],
    storage: StorageClient,
) -> set[str]:
    """The chunks among ``holders`` (id -> the live servers asked: those with a copy, else one
    without, for the same timing) whose proof matches a server's answer.  A server that cannot
    answer is skipped for the next holder; a chunk nobody can vouch for is simply not proven (the
    client then sends it)."""
    claimed = {cid: proofs[i] for i, (cid, _, _) in enumerate(challenge.ranges)}
    answers = server_answers(challenge, holders, storage)
    return {cid for cid, answer in answers.items() if answer == claimed[cid]}


def server_answers(
    challenge: Challenge, holders: Mapping[str, Sequence[ServerRef]], storage: StorageClient
) -> dict[str, str]:
    """What the servers answer to ``challenge`` for the chunks among ``holders`` (id -> the live
    servers to ask, in order): the first holder with a copy decides.  One answer per chunk serves
    every upload of a batch that was given the same challenge (proxy.upload_batch)."""
    claimed = {cid: (offset, length) for cid, offset, length in challenge.ranges}
    pending = {cid: list(servers) for cid, servers in holders.items() if cid in claimed}
    answered: dict[str, str] = {}

    def ask(server: ServerRef, ids: list[str]) -> list[str | None] | None:
        ranges = [[cid, claimed[cid][0], claimed[cid][1]] for cid in ids]
        try:
            return storage.prove_chunks(server, challenge.nonce, ranges, timeout=PROVE_TIMEOUT)
        except FileClusterError as exc:
            log.warning("server %d could not answer a proof request: %s", server.id, exc)
            return None

    while pending:
        by_server: defaultdict[ServerRef, list[str]] = defaultdict(list)
        for cid, servers in pending.items():
            by_server[servers.pop(0)].append(cid)
        pending = {cid: servers for cid, servers in pending.items() if servers}
        with ThreadPoolExecutor(min(16, len(by_server))) as pool:  # at once: a hung server costs one wait
            replies = list(pool.map(ask, by_server, by_server.values()))
        for ids, answers in zip(by_server.values(), replies, strict=True):
            if answers is None:
                continue
            for cid, answer in zip(ids, answers, strict=True):
                if answer is None:
                    continue  # this copy is gone: another holder may still vouch
                pending.pop(cid, None)
                answered[cid] = answer
    return answered
