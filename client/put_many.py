"""Sending many small chunks of one chain in one PUT_CHUNKS (servers.put_many).

:func:`group` sorts the chunks a batch of files must send: small chunks that
share a chain (the same servers in the same order) go together, up to
GROUP_CHUNKS chunks, ``max_bytes`` bytes and GROUP_HEADER bytes of header, and
the others one by one.  :func:`put_group` sends one group on the calling
thread's kept connection to the head of the chain and returns, per chunk, its
receipts or the error it met.  A caller hands every chunk that failed to the
one-chunk path (client.upload's PUT_CHUNK, with its ticket renewals and fresh
chains), so a group is only ever a faster way to the same outcome.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Final, Generic, TypeVar

from client.pool import ConnectionPool
from common.errors import FileClusterError
from common.limits import MAX_CHUNKS_PER_PUT, PUT_CHUNKS_HEADER
from common.messages import MsgType, put_results

GROUP_CHUNKS: Final = min(64, MAX_CHUNKS_PER_PUT)  # chunks in one PUT_CHUNKS
GROUP_CHUNK_SIZE: Final = 256 * 1024  # a bigger chunk is sent alone: grouping gains nothing there
GROUP_HEADER: Final = PUT_CHUNKS_HEADER // 2  # a group's header stays well within the server's limit

Owner = TypeVar("Owner")


@dataclass(frozen=True)
class Part(Generic[Owner]):
    """One chunk to send: the upload's item for it (id, size, servers, ticket), where its bytes
    are, and whose it is (the caller's file)."""

    owner: Owner
    item: dict[str, Any]
    file: BinaryIO
    offset: int

    @property
    def size(self) -> int:
        return int(self.item["size"])


def group(parts: Sequence[Part[Owner]], max_bytes: int) -> tuple[list[list[Part[Owner]]], list[Part[Owner]]]:
    """(groups of two or more chunks for one chain each, the chunks to send alone)."""
    open_groups: dict[tuple[Any, ...], tuple[list[Part[Owner]], list[int]]] = {}
    groups: list[list[Part[Owner]]] = []
    alone: list[Part[Owner]] = []
    limit = min(max_bytes, GROUP_CHUNK_SIZE * GROUP_CHUNKS)
    costs: dict[tuple[Any, ...], int] = {}
    for part in parts:
        if part.size > min(GROUP_CHUNK_SIZE, limit):
            alone.append(part)
            continue
        chain = tuple((s["id"], s["host"], s["port"]) for s in part.item["servers"])
        if chain not in costs:  # its entry in the header, with room (tickets of a chain differ little)
            costs[chain] = len(json.dumps(part.item["ticket"])) + 200
        cost = costs[chain]
        members, used = open_groups.get(chain, ([], [0, 0]))
        if members and (
            len(members) >= GROUP_CHUNKS or used[0] + part.size > limit or used[1] + cost > GROUP_HEADER
        ):
            groups.append(members)
            members, used = [], [0, 0]
        members.append(part)
        used[0] += part.size
        used[1] += cost
        open_groups[chain] = (members, used)
    for members, _ in open_groups.values():
        groups.append(members)
    alone += [g[0] for g in groups if len(g) == 1]
    return [g for g in groups if len(g) > 1], alone


def put_group(pool: ConnectionPool, parts: Sequence[Part[Owner]]) -> list[list[Any] | FileClusterError]:
    """PUT_CHUNKS ``parts`` (one chain's) to the chain's head; per part, its receipts or its error.

    A failure of the whole request (the head unreachable, a ticket refused, a file that shrank) is
    raised; the connection is then closed unless the exchange ended cleanly."""
    head = parts[0].item["servers"][0]
    conn = pool.get(head)
    chunks = [{"id": p.item["id"], "size": p.size, "ticket": p.item["ticket"]} for p in parts]
    conn.send_head(MsgType.PUT_CHUNKS, {"chunks": chunks}, sum(p.size for p in parts))
    for part in parts:
        conn.send_file(part.file, part.offset, part.size)
    return put_results(conn.read_reply(MsgType.PUT_CHUNKS), len(parts))
