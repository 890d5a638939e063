"""How the proxy talks to a storage server: short request/reply exchanges."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from common.errors import FileClusterError
from common.limits import MAX_IDS_PER_REQUEST
from common.messages import MsgType
from common.transport import Connection
from proxy.placement import ServerRef

TIMEOUT = 5.0
BATCH = MAX_IDS_PER_REQUEST


def ask(
    server: ServerRef, msg_type: MsgType, header: dict[str, Any], timeout: float = TIMEOUT
) -> dict[str, Any]:
    with Connection.connect(
        server.host, server.port, timeout=timeout, what=f"storage server {server.id}"
    ) as conn:
        return conn.request(msg_type, header)


def has_chunks(server: ServerRef, ids: Sequence[str]) -> set[str]:
    present: set[str] = set()
    for start in range(0, len(ids), BATCH):
        reply = ask(server, MsgType.HAS_CHUNKS, {"ids": list(ids[start : start + BATCH])})
        present.update(reply.get("present", []))
    return present


def delete_chunks(server: ServerRef, ids: Sequence[str]) -> int:
    deleted = 0
    for start in range(0, len(ids), BATCH):
        reply = ask(server, MsgType.DELETE_CHUNKS, {"ids": list(ids[start : start + BATCH])})
        deleted += int(reply.get("deleted", 0))
    return deleted


def ping(server: ServerRef, timeout: float = 2.0) -> dict[str, Any] | None:
    """The server's own figures (chunks, used), or None if it does not answer."""
    try:
        return ask(server, MsgType.PING, {}, timeout=timeout)
    except FileClusterError:
        return None


def answers(server: ServerRef, timeout: float = 2.0) -> bool:
    return ping(server, timeout) is not None
