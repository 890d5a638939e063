"""How the proxy talks to a storage server: short request/reply exchanges, signed with the cluster key.

Every request carries a fresh MAC (common.cluster_auth), bound to the server it is for, and every OK
reply must carry one bound to that request, so the proxy only ever believes the holder of the cluster
secret, and a request recorded on its way to one server cannot be replayed to another.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from common.cluster_auth import ClusterKey, server_audience
from common.errors import FileClusterError
from common.limits import MAX_IDS_PER_REQUEST
from common.messages import MsgType
from common.transport import Connection
from proxy.placement import ServerRef

TIMEOUT = 5.0
BATCH = MAX_IDS_PER_REQUEST


class StorageClient:
    def __init__(self, key: ClusterKey, timeout: float = TIMEOUT) -> None:
        self.key = key
        self.timeout = timeout

    def ask(
        self, server: ServerRef, msg_type: MsgType, header: dict[str, Any], timeout: float | None = None
    ) -> dict[str, Any]:
        signed = self.key.sign(msg_type, header, to=server_audience(server.id))  # for this server only
        with Connection.connect(
            server.host, server.port, timeout=timeout or self.timeout, what=f"storage server {server.id}"
        ) as conn:
            return self.key.verify_reply(signed, conn.request(msg_type, signed))

    def has_chunks(self, server: ServerRef, ids: Sequence[str]) -> set[str]:
        present: set[str] = set()
        for start in range(0, len(ids), BATCH):
            reply = self.ask(server, MsgType.HAS_CHUNKS, {"ids": list(ids[start : start + BATCH])})
            present.update(reply.get("present", []))
        return present

    def delete_chunks(self, server: ServerRef, ids: Sequence[str]) -> int:
        deleted = 0
        for start in range(0, len(ids), BATCH):
            reply = self.ask(server, MsgType.DELETE_CHUNKS, {"ids": list(ids[start : start + BATCH])})
            deleted += int(reply.get("deleted", 0))
        return deleted

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
