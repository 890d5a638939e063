"""How the proxy talks to a storage server: short request/reply exchanges, signed with the cluster key.

Every request carries a fresh MAC (common.cluster_auth), bound to the server it is for, and every OK
reply must carry one bound to that request, so the proxy only ever believes the holder of the cluster
secret, and a request recorded on its way to one server cannot be replayed to another.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from common.cluster_auth import ClusterKey, server_audience
from common.errors import ConnectionLost, FileClusterError, Unavailable
from common.limits import MAX_IDS_PER_REQUEST
from common.messages import MsgType
from common.transport import Connection
from proxy.placement import ServerRef

TIMEOUT = 5.0
BATCH = MAX_IDS_PER_REQUEST
VERIFY_BATCH = 64  # a copy not verified lately is read whole: keep each request short


class StorageClient:
    def __init__(
        self,
        key: ClusterKey,
        timeout: float = TIMEOUT,
        on_unreachable: Callable[[int], None] | None = None,
    ) -> None:
        self.key = key
        self.timeout = timeout
        # told the id of a server that could not be reached or did not answer in time: the proxy
        # counts it down until its next heartbeat, so nobody else waits on it meanwhile
        self.on_unreachable = on_unreachable

    def ask(
        self, server: ServerRef, msg_type: MsgType, header: dict[str, Any], timeout: float | None = None
    ) -> dict[str, Any]:
        signed = self.key.sign(msg_type, header, to=server_audience(server.id))  # for this server only
        try:
            conn = Connection.connect(
                server.host, server.port, timeout=timeout or self.timeout, what=f"storage server {server.id}"
            )
        except Unavailable:  # refused, or no answer to the connection itself
            self._unreachable(server)
            raise
        with conn:
            try:
                reply = conn.request(msg_type, signed)
            except ConnectionLost:  # reset, or silent past the timeout (not an ERROR reply)
                self._unreachable(server)
                raise
        return self.key.verify_reply(signed, reply)

    def _unreachable(self, server: ServerRef) -> None:
        if self.on_unreachable is not None:
            self.on_unreachable(server.id)

    def has_chunks(self, server: ServerRef, ids: Sequence[str]) -> set[str]:
        present: set[str] = set()
        for start in range(0, len(ids), BATCH):
            reply = self.ask(server, MsgType.HAS_CHUNKS, {"ids": list(ids[start : start + BATCH])})
            present.update(reply.get("present", []))
        return present

    def delete_chunks(self, server: ServerRef, ids: Sequence[str], older_than: float | None = None) -> int:
        """Delete copies; with ``older_than`` (Unix time), only those not written or verified since."""
        deleted = 0
        for start in range(0, len(ids), BATCH):
            header: dict[str, Any] = {"ids": list(ids[start : start + BATCH])}
            if older_than is not None:
                header["older_than"] = older_than
            reply = self.ask(server, MsgType.DELETE_CHUNKS, header)
            deleted += int(reply.get("deleted", 0))
        return deleted

    def verify_chunks(
        self, server: ServerRef, ids: Sequence[str], max_age: float, timeout: float | None = None
    ) -> tuple[dict[str, int], set[str]]:
        """Have a server check its copies (those verified within ``max_age`` s are not re-read):
        (good copies and their sizes, ids whose copy is bad or missing; bad ones are quarantined)."""
        good: dict[str, int] = {}
        gone: set[str] = set()
        for start in range(0, len(ids), VERIFY_BATCH):
            batch = list(ids[start : start + VERIFY_BATCH])
            reply = self.ask(server, MsgType.VERIFY_CHUNKS, {"ids": batch, "max_age": max_age}, timeout)
            for item in reply.get("good", []):
                if isinstance(item, list) and len(item) == 2 and item[0] in batch and type(item[1]) is int:
                    good[item[0]] = item[1]
            gone.update(c for c in batch if c not in good)
        return good, gone

    def replicate(
        self, target: ServerRef, chunk_id: str, size: int, sources: list[dict[str, Any]], timeout: float
    ) -> dict[str, Any]:
        """Have ``target`` copy a chunk from one of ``sources`` (each with its GET ticket)."""
        return self.ask(
            target, MsgType.REPLICATE, {"id": chunk_id, "size": size, "sources": sources}, timeout
        )

    def prove_chunks(
        self, server: ServerRef, nonce: str, ranges: Sequence[list[Any]], timeout: float | None = None
    ) -> list[str | None]:
        """The server's answers to a proof-of-ownership challenge (None where it lacks the chunk)."""
        answers: list[str | None] = []
        for start in range(0, len(ranges), BATCH):
            batch = list(ranges[start : start + BATCH])
            reply = self.ask(server, MsgType.PROVE_CHUNKS, {"nonce": nonce, "ranges": batch}, timeout)
            got = reply.get("digests")
            if not isinstance(got, list) or len(got) != len(batch):
                raise FileClusterError(f"storage server {server.id} answered a proof request oddly")
            answers.extend(d if isinstance(d, str) else None for d in got)
        return answers

    def ping(self, server: ServerRef, timeout: float = 2.0) -> dict[str, Any] | None:
        """The server's own figures (chunks, used), or None if it does not answer."""
        try:
            return self.ask(server, MsgType.PING, {}, timeout=timeout)
        except FileClusterError:
            return None

    def answers(self, server: ServerRef, timeout: float = 2.0) -> bool:
        return self.ping(server, timeout) is not None
