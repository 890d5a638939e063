"""An upload re-places only what failed: a chunk whose chain fails goes again on a new chain from
UPLOAD_REPLACE (never through a server that failed in this upload), the rest is sent once, and
only the receipts of the PUT that succeeded reach the commit.  With a proxy that cannot re-place,
the upload aborts and tries a fresh placement once, as before.  Storage servers are fakes on real
sockets, the proxy a table of answers (tests.fake_storage)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client import pool
from client import upload as uploader
from common.errors import (
    InsufficientStorage,
    ReplicationFailed,
    StorageServerFailed,
    Unavailable,
)
from common.hashing import manifest_of
from common.messages import MsgType
from tests.fake_storage import FakeProxy, FakeStorage

CHUNK = 64 * 1024


@pytest.fixture
def servers() -> Iterator[list[FakeStorage]]:
    made: list[FakeStorage] = []
    yield made
    for server in made:
        server.stop()


class Cluster:
    """A fake proxy for one upload: ``placement`` says where each chunk goes first (``retry``: in a
    second attempt, if it differs); each UPLOAD_REPLACE takes the next chain from ``spares``."""

    def __init__(
        self,
        src: Path,
        placement: list[list[FakeStorage]],
        spares: list[list[FakeStorage]],
        retry: list[list[FakeStorage]] | None = None,
    ) -> None:
        with open(src, "rb") as f:
            self.manifest = manifest_of(f, CHUNK)
        self.placements = [placement, retry or placement]
        self.spares = list(spares)
        self.proxy = FakeProxy(
            {
                MsgType.HELLO: lambda h: {"chunk_size": CHUNK},
                MsgType.UPLOAD_BEGIN: self.begin,
                MsgType.UPLOAD_PROVE: lambda h: {"missing": self.missing()},
                MsgType.UPLOAD_REPLACE: self.replace,
                MsgType.UPLOAD_COMMIT: lambda h: {},
                MsgType.UPLOAD_ABORT: lambda h: {},
            }
        )

    def begin(self, header: dict[str, Any]) -> dict[str, Any]:
        ranges = [[0, 16]] * len({c.id for c in self.manifest.chunks})
        return {
            "upload_id": f"U{len(self.proxy.sent(MsgType.UPLOAD_BEGIN))}",
            "challenge": {"nonce": "n", "ranges": ranges},
        }

    def missing(self) -> list[dict[str, Any]]:
        placement = self.placements[len(self.proxy.sent(MsgType.UPLOAD_PROVE)) > 1]
        return [
            {"id": c.id, "size": c.size, "servers": [s.ref for s in chain], "ticket": {"n": 0}}
            for c, chain in zip(self.manifest.chunks, placement, strict=True)
        ]

    def replace(self, header: dict[str, Any]) -> dict[str, Any]:
        (chunk_id,) = header["chunks"]
        size = next(c.size for c in self.manifest.chunks if c.id == chunk_id)
        n = len(self.proxy.sent(MsgType.UPLOAD_REPLACE))
        chain = self.spares.pop(0)
        return {
            "missing": [{"id": chunk_id, "size": size, "servers": [s.ref for s in chain], "ticket": {"n": n}}]
        }


def source(tmp_path: Path, chunks: int) -> Path:
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(chunks * CHUNK))
    return src


def test_after_a_replica_fails_only_that_chunk_is_sent_again_on_a_new_chain(
    servers: list[FakeStorage], tmp_path: Path
) -> None:
    src = source(tmp_path, 3)
    broken_replica = FakeStorage(7)
    failing_head = FakeStorage(1, put_error=ReplicationFailed("replica 7 failed", server=7, cause="io_error"))
    good, spare, spare_replica = FakeStorage(2), FakeStorage(3), FakeStorage(4)
    servers += [broken_replica, failing_head, good, spare, spare_replica]
    c = Cluster(src, [[failing_head, broken_replica], [good], [good]], [[spare, spare_replica]])
    result = uploader.upload(c.proxy, src)
    first = c.manifest.chunks[0].id
    assert c.proxy.sent(MsgType.UPLOAD_REPLACE) == [
        {"upload_id": "U1", "chunks": [first], "avoid": [7]}  # the replica that failed, not its head
    ]
    assert failing_head.puts == [(first, {"n": 0})]
    assert spare.puts == [(first, {"n": 1})]  # with the new chain's ticket
    assert sorted(chunk_id for chunk_id, _ in good.puts) == sorted(c.id for c in c.manifest.chunks[1:])
    (commit,) = c.proxy.sent(MsgType.UPLOAD_COMMIT)
    assert [server_id for server_id, _ in commit["receipts"]] == [good.id, spare.id]
    assert c.proxy.sent(MsgType.UPLOAD_ABORT) == []
    assert result.sent == 3 * CHUNK


def test_a_full_head_is_avoided_and_so_is_every_server_that_failed_before(
    servers: list[FakeStorage], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(uploader, "PARALLEL_TRANSFERS", 1)  # one chunk after the other
    src = source(tmp_path, 2)
    full = FakeStorage(1, put_error=InsufficientStorage("no room for the chunk"))
    good, spare = FakeStorage(2), FakeStorage(3)
    servers += [full, good, spare]
    c = Cluster(src, [[full], [full]], [[good], [spare]])
    uploader.upload(c.proxy, src)
    ids = [chunk.id for chunk in c.manifest.chunks]
    assert full.puts == [(ids[0], {"n": 0})]  # the second chunk is re-placed before it is sent
    assert [h["avoid"] for h in c.proxy.sent(MsgType.UPLOAD_REPLACE)] == [[1], [1]]
    assert good.puts == [(ids[0], {"n": 1})] and spare.puts == [(ids[1], {"n": 2})]


def test_after_three_re_placements_the_upload_aborts_and_tries_a_fresh_placement_once(
    servers: list[FakeStorage], tmp_path: Path
) -> None:
    src = source(tmp_path, 1)
    failing = [FakeStorage(i, put_error=ReplicationFailed("a replica failed")) for i in range(1, 9)]
    servers += failing
    c = Cluster(src, [[failing[0]]], [[s] for s in failing[1:4] + failing[5:]], retry=[[failing[4]]])
    with pytest.raises(StorageServerFailed, match="a replica failed") as caught:
        uploader.upload(c.proxy, src)
    assert [len(s.puts) for s in failing] == [1] * 8  # 1 + 3 re-placements, twice
    # each abort names every server that failed in that attempt, for the proxy to check
    assert [h["unreachable"] for h in c.proxy.sent(MsgType.UPLOAD_ABORT)] == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert caught.value.suspects == [5, 6, 7, 8]
    assert c.proxy.sent(MsgType.UPLOAD_COMMIT) == []


def test_a_proxy_that_cannot_re_place_gets_the_old_abort_and_one_fresh_placement(
    servers: list[FakeStorage], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool, "TIMEOUT", 0.5)
    src = source(tmp_path, 2)
    hung, good = FakeStorage(1, mode="hung"), FakeStorage(2)
    servers += [hung, good]
    c = Cluster(src, [[hung], [good]], [], retry=[[good], [good]])
    del c.proxy.answers[MsgType.UPLOAD_REPLACE]  # a proxy from before it
    uploader.upload(c.proxy, src)
    assert [h["unreachable"] for h in c.proxy.sent(MsgType.UPLOAD_ABORT)] == [[1]]
    assert len(c.proxy.sent(MsgType.UPLOAD_BEGIN)) == 2
    assert len(c.proxy.sent(MsgType.UPLOAD_COMMIT)) == 1


def test_the_deadline_aborts_an_upload(
    servers: list[FakeStorage], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool, "TIMEOUT", 30.0)
    monkeypatch.setenv("FILECLUSTER_TRANSFER_DEADLINE", "0.5")
    src = source(tmp_path, 64)  # more than the socket buffers hold: the sender blocks
    hung = FakeStorage(1, mode="hung")
    servers.append(hung)
    c = Cluster(src, [[hung]] * 64, [])
    start = time.monotonic()
    missed = re.escape("the upload of f.bin did not finish within its deadline of 0.5 s")
    with pytest.raises(Unavailable, match=missed):
        uploader.upload(c.proxy, src)
    assert time.monotonic() - start < 3
    assert [h["upload_id"] for h in c.proxy.sent(MsgType.UPLOAD_ABORT)] == ["U1"]
    assert c.proxy.sent(MsgType.UPLOAD_COMMIT) == []
