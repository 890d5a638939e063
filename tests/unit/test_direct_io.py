"""Writing around the page cache (common.direct_io), and its users: the chunk store's big chunks and
a download's chunks.  Whatever the sizes and the pieces, the bytes on disk are the bytes given; a
filesystem that refuses O_DIRECT, at open or at a write, gets the same bytes through the page cache;
and no stage is ever kept by a writer that is done or gone."""

from __future__ import annotations

import errno
import hashlib
import os
import random
from pathlib import Path
from typing import Any

import pytest

import common.direct_io as direct_io
import servers.chunk_store as chunk_store
from client.download import _Transfer
from common.cluster_auth import ClusterKey
from common.direct_io import ALIGN, STAGE, StagePool, Stager, aligned_buffer, open_direct, reopen_direct
from common.errors import CorruptData
from common.frame_server import FileBody, Request
from common.messages import MsgType
from servers.chunk_store import DIRECT_FROM, ChunkStore
from servers.storage_server import StorageService

SIZES = [1, ALIGN - 1, ALIGN, ALIGN + 1, STAGE - 1, STAGE, STAGE + 1, 3 * STAGE + 123]
CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL


def staged(path: Path, data: bytes, piece: int, pool: StagePool) -> bool:
    """Write ``data`` to a new ``path`` through a Stager, ``piece`` bytes at a time; whether it
    stayed direct."""
    fd, direct = open_direct(path, CREATE)
    stage = pool.take()
    assert stage is not None
    try:
        stager = Stager(fd, stage, direct=direct)
        for at in range(0, len(data), piece):
            stager.write(data[at : at + piece])
        stager.finish()
        return stager.direct
    finally:
        pool.give_back(stage)
        os.close(fd)


@pytest.mark.parametrize("size", SIZES)
def test_staged_bytes_are_the_bytes_given_whatever_the_pieces(tmp_path: Path, size: int) -> None:
    data = random.Random(size).randbytes(size)
    pool = StagePool(1)
    for piece in (1000, 65536, 300_001, size):
        path = tmp_path / f"{piece}.bin"
        staged(path, data, piece, pool)
        assert path.read_bytes() == data  # the padding of the last block is cut off again


def test_a_refused_direct_write_goes_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.pwrite
    refused: list[int] = []

    def pwrite(fd: int, data: Any, offset: int) -> int:
        if not refused:  # the first write: refused although the open took O_DIRECT
            refused.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    data = random.Random(1).randbytes(2 * STAGE + 5)
    path = tmp_path / "refused.bin"
    assert staged(path, data, 100_000, StagePool(1)) is False
    assert refused and path.read_bytes() == data


def test_a_filesystem_without_o_direct_gets_a_plain_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.open

    def no_direct(path: Any, flags: int, mode: int = 0o777) -> int:
        if flags & direct_io._DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(path, flags, mode)

    monkeypatch.setattr(os, "open", no_direct)
    fd, direct = open_direct(tmp_path / "plain.bin", CREATE)
    os.close(fd)
    assert direct is False
    assert reopen_direct(os.open(tmp_path, os.O_RDONLY)) is None


def test_the_pool_lends_at_most_its_limit_and_reuses_what_comes_back() -> None:
    pool = StagePool(2)
    first, second = pool.take(), pool.take()
    assert first is not None and second is not None
    assert pool.take() is None  # the caller writes through the page cache then
    pool.give_back(first)
    assert pool.take() is first


def is_direct(fd: int) -> bool:
    flags = next(line for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines() if "flags" in line)
    return bool(int(flags.split()[1], 8) & direct_io._DIRECT)


def put(store: ChunkStore, data: bytes, piece: int = 100_000) -> str:
    chunk_id = hashlib.sha256(data).hexdigest()
    with store.writer(chunk_id, len(data)) as writer:
        assert is_direct(writer.fd) == (len(data) >= DIRECT_FROM)  # type: ignore[attr-defined]
        for at in range(0, len(data), piece):
            writer.write(data[at : at + piece])
        writer.commit()
    return chunk_id


@pytest.mark.parametrize("size", [DIRECT_FROM - 1, DIRECT_FROM, 3 * STAGE + 5])
def test_a_chunk_written_around_the_page_cache_is_read_around_it(tmp_path: Path, size: int) -> None:
    """GET_CHUNK of a big chunk (written with O_DIRECT) reads it with O_DIRECT too (into a stage
    of READ_STAGES, common.transport): no page-cache pages for it.  A small one is sent as before."""
    store = ChunkStore(tmp_path / "ServerFiles")
    data = random.Random(size).randbytes(size)
    chunk_id = put(store, data)
    reply = StorageService(1, store, ClusterKey(b"k" * 32)).get_chunk(
        Request(MsgType.GET_CHUNK, {"id": chunk_id})
    )
    body = reply.payload
    assert isinstance(body, FileBody) and body.count == size
    body.file.close()
    assert (body.stages is chunk_store.READ_STAGES) == (size >= DIRECT_FROM)


@pytest.mark.parametrize("size", [DIRECT_FROM - 1, DIRECT_FROM, DIRECT_FROM + 1, 4 * STAGE + 4097])
def test_a_big_chunk_is_stored_whole_and_gives_its_stage_back(tmp_path: Path, size: int) -> None:
    store = ChunkStore(tmp_path / "ServerFiles")
    data = random.Random(size).randbytes(size)
    chunk_id = put(store, data)
    assert (store.root / chunk_id[:2] / chunk_id).read_bytes() == data
    assert store.direct  # this filesystem takes O_DIRECT
    assert chunk_store._STAGES._out == 0


def test_a_big_chunk_that_is_wrong_or_cut_short_gives_its_stage_back(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "ServerFiles")
    data = random.Random(7).randbytes(2 * STAGE)
    wrong = hashlib.sha256(b"other bytes").hexdigest()
    with pytest.raises(CorruptData), store.writer(wrong, len(data)) as writer:
        writer.write(data)
        writer.commit()
    with store.writer(hashlib.sha256(data).hexdigest(), len(data)) as writer:
        writer.write(data[:STAGE])  # the sender vanished: the writer is dropped
    assert chunk_store._STAGES._out == 0
    assert list(store.tmp.iterdir()) == [] and list(store.ids()) == []


def test_big_chunks_beyond_the_stages_go_through_the_page_cache(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "ServerFiles")
    data = [random.Random(n).randbytes(DIRECT_FROM + n) for n in range(12)]  # more than the 8 stages
    writers = [store.writer(hashlib.sha256(d).hexdigest(), len(d)) for d in data]
    for writer, d in zip(writers, data, strict=True):
        writer.write(d)
    assert store.commit_all(writers) == [None] * len(data)
    for d in data:
        chunk_id = hashlib.sha256(d).hexdigest()
        assert (store.root / chunk_id[:2] / chunk_id).read_bytes() == d
    assert chunk_store._STAGES._out == 0


def test_a_download_writes_what_direct_io_refuses_through_the_page_cache(tmp_path: Path) -> None:
    path = tmp_path / "partial"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    size = 3 * STAGE + 100
    os.ftruncate(fd, size)
    transfer = _Transfer(fd, None, None, None, None)  # type: ignore[arg-type]
    transfer.direct = reopen_direct(fd)
    assert transfer.direct is not None
    data = random.Random(3).randbytes(size)
    buf = aligned_buffer(size)
    buf[:] = data
    view = memoryview(buf)
    transfer.write(view[STAGE:], STAGE)  # page-aligned: direct but for its last 100 bytes
    transfer.write(view[1:STAGE], 1)  # at an odd offset: all through the page cache
    os.pwrite(fd, data[:1], 0)
    transfer.close()
    view.release()
    os.close(fd)
    assert path.read_bytes() == data
