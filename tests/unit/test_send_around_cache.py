"""Sending a file around the page cache (Connection.send_file with ``stages``).

Real socket pairs and real files on the test's disk.  The file is read with O_DIRECT into a stage and
sent from there: the same bytes at any offset and length, no page of it brought into the page cache,
the stage given back; bytes still only in the page cache (written, not yet on disk) are sent too.
No free stage, or a filesystem that refuses the direct read: sent as before (sendfile), the same
bytes.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
from pathlib import Path

import pytest

from common.direct_io import ALIGN, STAGE, StagePool, read_direct, reopen_direct
from common.errors import SourceShrank
from common.messages import MsgType
from common.transport import Connection
from tests.unit.test_transport import DATA, Inbox, count_calls, pair  # noqa: F401 (a fixture)


class CountingPool(StagePool):
    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.taken = 0
        self.out = 0

    def take(self) -> mmap.mmap | None:
        stage = super().take()
        if stage is not None:
            self.taken += 1
            self.out += 1
        return stage

    def give_back(self, stage: mmap.mmap) -> None:
        self.out -= 1
        super().give_back(stage)


def resident(path: Path) -> int:
    """How many pages of the file at ``path`` are in the page cache (mincore over a mapping)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = path.stat().st_size
    pages = (ctypes.c_ubyte * (-(-size // mmap.PAGESIZE)))()
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert address not in (None, ctypes.c_void_p(-1).value)
        try:
            assert libc.mincore(address, size, pages) == 0
        finally:
            libc.munmap(address, size)
    finally:
        os.close(fd)
    return sum(page & 1 for page in pages)


def evicted(path: Path, data: bytes) -> Path:
    """``data`` written to ``path``, on the disk, and out of the page cache."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    with open(path, "rb") as f:
        direct = reopen_direct(f.fileno(), os.O_RDONLY)
        if direct is None:
            pytest.skip("this filesystem takes no O_DIRECT")
        os.close(direct)
    return path


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return evicted(tmp_path / "source", DATA)


def send(sender: Connection, path: Path, offset: int, count: int, pool: StagePool | None) -> None:
    with open(path, "rb") as f:
        sender.send_head(MsgType.CHUNK_DATA, {"id": "c" * 64, "size": count}, count)
        sender.send_file(f, offset, count, pool)


def test_resident_tells_an_evicted_file_from_a_read_one(source: Path) -> None:
    assert resident(source) == 0
    source.read_bytes()
    assert resident(source) == -(-len(DATA) // mmap.PAGESIZE)


@pytest.mark.parametrize(
    ("offset", "count"),
    [(0, len(DATA)), (1, len(DATA) - 1), (ALIGN + 5, 2 * STAGE + 3), (STAGE, STAGE), (len(DATA) - 7, 7)],
)
def test_an_evicted_file_goes_around_the_page_cache_with_the_same_bytes(
    pair: tuple[Connection, Connection],  # noqa: F811
    source: Path,
    monkeypatch: pytest.MonkeyPatch,
    offset: int,
    count: int,
) -> None:
    sender, receiver = pair
    sendfiles = count_calls(monkeypatch, "sendfile")
    pool = CountingPool(1)
    inbox = Inbox(receiver)
    send(sender, source, offset, count, pool)
    assert inbox.wait().error is None
    assert inbox.data == DATA[offset : offset + count]
    assert pool.taken == 1 and pool.out == 0  # read into the stage, and the stage given back
    assert sendfiles == []
    assert resident(source) == 0  # no page of it was brought into the page cache
    sender.send(MsgType.PING, {})  # the frame ended exactly where it said
    assert receiver.receive().type == MsgType.PING


def test_no_free_stage_or_no_pool_is_sent_as_before(
    pair: tuple[Connection, Connection],  # noqa: F811
    source: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sender, receiver = pair
    sendfiles = count_calls(monkeypatch, "sendfile")
    busy = CountingPool(1)
    held = busy.take()  # the only stage is out
    for pool in (busy, None):
        inbox = Inbox(receiver)
        send(sender, source, 0, len(DATA), pool)
        assert inbox.wait().data == DATA
        assert sendfiles  # sent as before
        sendfiles.clear()
    assert busy.taken == 1 and held is not None


def test_bytes_only_in_the_page_cache_are_sent_too(
    pair: tuple[Connection, Connection],  # noqa: F811
    tmp_path: Path,
) -> None:
    """A direct read sees bytes written through the page cache and not yet on the disk."""
    sender, receiver = pair
    path = evicted(tmp_path / "f", bytes(len(DATA)))
    with open(path, "r+b") as f:
        f.write(DATA)  # dirty pages, no fsync
    pool = CountingPool(1)
    inbox = Inbox(receiver)
    send(sender, path, 0, len(DATA), pool)
    assert inbox.wait().data == DATA
    assert pool.taken == 1


def test_a_refused_direct_read_is_sent_as_before(
    pair: tuple[Connection, Connection],  # noqa: F811
    source: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sender, receiver = pair
    count_calls(monkeypatch, "preadv", fail=errno.EINVAL)  # the filesystem takes no direct read
    sendfiles = count_calls(monkeypatch, "sendfile")
    pool = CountingPool(1)
    inbox = Inbox(receiver)
    send(sender, source, 3, len(DATA) - 3, pool)
    assert inbox.wait().data == DATA[3:]
    assert sendfiles and pool.out == 0


def test_a_file_shorter_than_announced_still_raises_source_shrank(
    pair: tuple[Connection, Connection],  # noqa: F811
    tmp_path: Path,
) -> None:
    sender, receiver = pair
    short = evicted(tmp_path / "short", DATA[: STAGE + 100])
    pool = CountingPool(1)
    inbox = Inbox(receiver)
    with pytest.raises(SourceShrank):
        send(sender, short, 0, len(DATA), pool)
    assert sender.closed and pool.out == 0
    inbox.wait()
    assert inbox.data == DATA[: STAGE + 100]


@pytest.mark.parametrize("size", [1, ALIGN - 1, ALIGN, STAGE - 1, STAGE, STAGE + 1, 3 * STAGE + 123])
def test_read_direct_gives_the_bytes_at_any_offset(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = evicted(tmp_path / "f", data)
    stage = mmap.mmap(-1, STAGE)
    with open(path, "rb") as f:
        fd = reopen_direct(f.fileno(), os.O_RDONLY)
        assert fd is not None
        try:
            for offset in sorted({0, 1, ALIGN + 1, size // 2, size - 1}):
                for count in sorted({1, size - offset, size}):
                    got = b"".join(bytes(v) for v in read_direct(fd, offset, count, stage))
                    assert got == data[offset : offset + count]
        finally:
            os.close(fd)
