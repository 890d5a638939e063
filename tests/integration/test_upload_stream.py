"""A big file is declared, proven and sent in batches while it is hashed (client.upload_stream):
what lands is the file, dedup and proof of ownership hold per batch, and the proxy commits a
streamed upload only whole, with its SHA-1."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from client import upload_stream
from client.api import Client
from common.errors import Conflict, InvalidRequest
from common.hashing import EMPTY_SHA1
from common.messages import MsgType
from tests.cluster import CHUNK, Cluster


@pytest.fixture(autouse=True)
def stream_small_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upload_stream, "STREAM_FROM", 4 * CHUNK)
    monkeypatch.setattr(upload_stream, "MAX_BATCH", 8)


def test_a_streamed_file_lands_whole_and_dedups_only_on_proof(
    cluster: Cluster, user: Client, other_user: Client, tmp_path: Path
) -> None:
    data = os.urandom(21 * CHUNK + 123)  # batches of 2, 4, 8, 8 chunks
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    phases: list[tuple[str, int, int]] = []
    first = user.upload(src, lambda *p: phases.append(p))
    assert (first.size, first.sha1, first.sent) == (len(data), hashlib.sha1(data).hexdigest(), len(data))
    assert phases[-1] == ("sending", len(data), len(data))
    again = other_user.upload(src, name="copy.bin")  # every chunk proven, none sent
    assert (again.sha1, again.sent) == (first.sha1, 0)
    user.download("big.bin", tmp_path / "out")
    assert (tmp_path / "out" / "big.bin").read_bytes() == data


def declare(c: Client, size: int, chunks: list[list[object]], **more: object) -> dict[str, object]:
    header = {"name": "s.bin", "size": size, "chunk_size": CHUNK, "chunks": chunks, **more}
    return c.proxy.call(MsgType.UPLOAD_BEGIN, header, session=True)


def test_the_proxy_commits_a_streamed_upload_only_whole_and_in_order(user: Client) -> None:
    size = 3 * CHUNK
    ids = [[hashlib.sha256(bytes([i])).hexdigest(), CHUNK] for i in range(3)]
    begun = declare(user, size, ids[:1], streamed=True)
    upload_id = str(begun["upload_id"])
    with pytest.raises(Conflict, match="prove the chunks declared before"):
        declare(user, size, ids[1:2], upload_id=upload_id)
    user.proxy.call(MsgType.UPLOAD_PROVE, {"upload_id": upload_id, "proofs": ["0" * 64]}, session=True)
    with pytest.raises(InvalidRequest, match="has 3 chunks"):  # more chunks than the size has
        declare(user, size, ids[1:] + ids[:1], upload_id=upload_id)
    with pytest.raises(InvalidRequest, match="chunk 1 should be"):
        declare(user, size, [[ids[1][0], 5]], upload_id=upload_id)
    commit = {"upload_id": upload_id, "receipts": [], "sha1": "0" * 40}
    with pytest.raises(InvalidRequest, match="has 3 chunks, not 1"):
        user.proxy.call(MsgType.UPLOAD_COMMIT, commit, session=True)
    whole = declare(user, 0, [], sha1=EMPTY_SHA1)
    with pytest.raises(InvalidRequest, match="only a streamed upload"):  # a whole manifest comes at once
        declare(user, size, ids, upload_id=str(whole["upload_id"]))
    user.proxy.call(MsgType.UPLOAD_ABORT, {"upload_id": upload_id}, session=True)


def test_a_streamed_file_that_changes_midway_stores_nothing_and_resumes(user: Client, tmp_path: Path) -> None:
    data = os.urandom(12 * CHUNK)
    src = tmp_path / "log.bin"
    src.write_bytes(data)

    def truncate_midway(phase: str, done: int, total: int) -> None:
        if done >= 2 * CHUNK and src.stat().st_size == total:
            os.truncate(src, 3 * CHUNK)  # rotated by another program

    with pytest.raises(Conflict, match="changed while it was being uploaded; nothing was stored"):
        user.upload(src, truncate_midway)
    assert user.list() == []
    src.write_bytes(data)
    again = user.upload(src)  # the chunks stored before the change are proven and reused
    assert again.sha1 == hashlib.sha1(data).hexdigest() and again.sent < len(data)
