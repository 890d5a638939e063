"""Where a download keeps its partial file, what the sweep of stale ones may touch, how a partial
is resumed, and where ``save_as`` may put the file."""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client import download as downloader
from client.download import PARTIAL_DIR, STALE_PART_SECONDS
from client.partial import VERIFY_THREADS, clean_stale_parts, partial_key, verified_chunks
from common.errors import InvalidRequest, Unavailable
from tests.fake_storage import FakeStorage

LONG_AGO = time.time() - STALE_PART_SECONDS - 60


def old_file(path: Path, data: bytes = b"mine") -> Path:
    path.write_bytes(data)
    os.utime(path, (LONG_AGO, LONG_AGO))
    return path


def test_the_sweep_only_looks_in_its_own_folder_and_only_at_its_own_names(tmp_path: Path) -> None:
    partial = tmp_path / PARTIAL_DIR
    partial.mkdir()
    stale = old_file(partial / "0123456789abcdef.part")
    kept = [
        old_file(tmp_path / ".filecluster-0123456789abcdef.part"),  # a user's, named like a temp file
        old_file(tmp_path / "0123456789abcdef.part"),
        old_file(partial / "notes.txt"),  # not a name the client gives
    ]
    clean_stale_parts(partial)
    assert not stale.exists()
    assert all(path.read_bytes() == b"mine" for path in kept)


def test_an_empty_file_downloads_with_no_temp_folder_left(tmp_path: Path) -> None:
    info = {"name": "empty.txt", "size": 0, "sha1": hashlib.sha1(b"").hexdigest(), "chunks": []}
    result = downloader.download(info, tmp_path)
    assert result.path == tmp_path / "empty.txt" and result.path.read_bytes() == b""
    assert [p.name for p in tmp_path.iterdir()] == ["empty.txt"]


def test_a_planted_symlink_is_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / PARTIAL_DIR).symlink_to(elsewhere)
    info = {"name": "empty.txt", "size": 0, "sha1": hashlib.sha1(b"").hexdigest(), "chunks": []}
    with pytest.raises(InvalidRequest, match="is not a folder of yours"):
        downloader.download(info, out)
    assert list(elsewhere.iterdir()) == []


# -- resume: what an interrupted download left is checked, and only the rest is fetched ------------

CHUNK = 64 * 1024


def pieces(data: bytes) -> list[bytes]:
    return [data[o : o + CHUNK] for o in range(0, len(data), CHUNK)]


def located(data: bytes, server: FakeStorage, name: str = "f.bin") -> dict[str, Any]:
    chunks = [
        {"id": hashlib.sha256(p).hexdigest(), "size": len(p), "servers": [{**server.ref, "ticket": "m"}]}
        for p in pieces(data)
    ]
    sha1 = hashlib.sha1(data).hexdigest()
    return {"name": name, "size": len(data), "sha1": sha1, "chunks": chunks, "ticket": {"exp": 1, "who": "x"}}


def partial_of(folder: Path, data: bytes, name: str = "f.bin") -> Path:
    return folder / PARTIAL_DIR / f"{partial_key(hashlib.sha1(data).hexdigest(), len(data), name)}.part"


@pytest.fixture
def servers() -> Iterator[list[FakeStorage]]:
    made: list[FakeStorage] = []
    yield made
    for server in made:
        server.stop()


def serving(servers: list[FakeStorage], data: bytes) -> FakeStorage:
    server = FakeStorage(1, {hashlib.sha256(p).hexdigest(): p for p in pieces(data)})
    servers.append(server)
    return server


def test_a_partial_with_good_corrupt_and_missing_chunks_is_resumed(
    servers: list[FakeStorage], tmp_path: Path
) -> None:
    data = os.urandom(6 * CHUNK)
    chunk = pieces(data)
    part = partial_of(tmp_path, data)
    part.parent.mkdir(mode=0o700)
    # chunks 0 and 3 good, 1 corrupt, 2 never written (zeros), 4 and 5 past the end of a short file
    part.write_bytes(chunk[0] + bytes([chunk[1][0] ^ 1]) + chunk[1][1:] + bytes(CHUNK) + chunk[3])
    server = serving(servers, data)
    seen: list[tuple[str, int, int]] = []
    result = downloader.download(located(data, server), tmp_path, lambda *p: seen.append(p))
    assert result.path.read_bytes() == data
    assert result.resumed == 2 * CHUNK and result.fetched
    assert sorted(server.read()) == sorted(hashlib.sha256(chunk[i]).hexdigest() for i in (1, 2, 4, 5))
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]  # the partial and its folder are gone
    assert ("checking", len(data), len(data)) in seen
    assert ("receiving", 2 * CHUNK, len(data)) in seen  # the bar starts at what was kept


def test_verified_chunks_checks_each_chunk_on_its_own(tmp_path: Path) -> None:
    raw = bytearray(os.urandom(5 * CHUNK + 100))
    raw[4 * CHUNK - 1] |= 1  # chunk 3's last byte, cut short below, is never the zero put in its place
    data = bytes(raw)
    chunks = [{"id": hashlib.sha256(p).hexdigest(), "size": len(p)} for p in pieces(data)]
    offsets = [i * CHUNK for i in range(len(chunks))]
    damaged = bytearray(data)
    damaged[CHUNK + 7] ^= 0xFF  # chunk 1
    damaged[5 * CHUNK + 99] ^= 0x01  # the last byte of the short last chunk
    path = tmp_path / "p"
    path.write_bytes(bytes(damaged[: 4 * CHUNK - 1]) + bytes(CHUNK + 1) + bytes(damaged[5 * CHUNK :]))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert verified_chunks(fd, chunks, offsets) == {0, 2}  # 3 cut short, 4 zeros, 5 damaged
    finally:
        os.close(fd)


def test_ctrl_c_while_checking_a_partial_checks_no_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n, size = 2000, 4096
    path = tmp_path / "p"
    path.write_bytes(bytes(n * size))
    chunks = [{"id": "0" * 64, "size": size}] * n
    reads: list[int] = []
    real = os.pread

    def counted(fd: int, k: int, offset: int) -> bytes:
        reads.append(offset)
        return real(fd, k, offset)

    monkeypatch.setattr(os, "pread", counted)

    def interrupted(phase: str, done: int, total: int) -> None:
        if done:
            raise KeyboardInterrupt

    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(KeyboardInterrupt):
            verified_chunks(fd, chunks, [i * size for i in range(n)], interrupted)
    finally:
        os.close(fd)
    assert len(reads) <= 2 * VERIFY_THREADS + 1  # only the chunks in flight were read, not the rest


def test_an_interrupted_download_keeps_its_partial_and_the_next_one_goes_on(
    servers: list[FakeStorage], tmp_path: Path
) -> None:
    data = os.urandom(8 * CHUNK)
    half = FakeStorage(1, {hashlib.sha256(p).hexdigest(): p for p in pieces(data)[:4]})
    servers.append(half)
    with pytest.raises(Unavailable, match="cannot be read from any copy"):
        downloader.download(located(data, half), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [PARTIAL_DIR]  # nothing visible, never the final name
    assert partial_of(tmp_path, data).stat().st_size == len(data)
    whole = serving(servers, data)
    result = downloader.download(located(data, whole), tmp_path)
    assert result.path.read_bytes() == data and result.resumed == 4 * CHUNK
    assert sorted(whole.read()) == sorted(hashlib.sha256(p).hexdigest() for p in pieces(data)[4:])
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_a_partial_another_download_holds_is_left_alone(servers: list[FakeStorage], tmp_path: Path) -> None:
    data = os.urandom(3 * CHUNK)
    part = partial_of(tmp_path, data)
    part.parent.mkdir(mode=0o700)
    part.write_bytes(b"another download's bytes")
    fd = os.open(part, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # that download is running
        result = downloader.download(located(data, serving(servers, data)), tmp_path)
        assert result.path.read_bytes() == data and result.resumed == 0
        assert part.read_bytes() == b"another download's bytes"
        assert [p.name for p in part.parent.iterdir()] == [part.name]  # its own private partial went
    finally:
        os.close(fd)


def test_odd_things_at_a_partials_name_are_neither_followed_nor_touched(
    servers: list[FakeStorage], tmp_path: Path
) -> None:
    data = os.urandom(2 * CHUNK)
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious")
    out = tmp_path / "out"
    part = partial_of(out, data)
    part.parent.mkdir(parents=True, mode=0o700)
    part.symlink_to(outside)
    result = downloader.download(located(data, serving(servers, data)), out)
    assert result.path.read_bytes() == data
    assert outside.read_bytes() == b"precious" and part.is_symlink()
    linked = tmp_path / "linked"
    linked.write_bytes(b"x" * len(data))
    out2 = tmp_path / "out2"
    part2 = partial_of(out2, data)
    part2.parent.mkdir(parents=True, mode=0o700)
    os.link(linked, part2)  # a file with another name too: writing into it would change that one
    result = downloader.download(located(data, serving(servers, data)), out2)
    assert result.path.read_bytes() == data and result.resumed == 0
    assert linked.read_bytes() == b"x" * len(data) and part2.exists()


def test_the_sweep_leaves_a_locked_partial_alone(tmp_path: Path) -> None:
    partial = tmp_path / PARTIAL_DIR
    partial.mkdir()
    running = old_file(partial / ("ab" * 16 + ".part"))
    stale = old_file(partial / ("cd" * 16 + ".part"))
    fd = os.open(running, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        clean_stale_parts(partial)
    finally:
        os.close(fd)
    assert running.exists() and not stale.exists()


# -- save_as: a path under the output folder, and never outside it ---------------------------------


def test_save_as_makes_the_folders_under_the_output_folder(
    servers: list[FakeStorage], tmp_path: Path
) -> None:
    data = os.urandom(CHUNK + 1)
    result = downloader.download(located(data, serving(servers, data)), tmp_path, save_as="a/b/c.bin")
    assert result.path == tmp_path / "a" / "b" / "c.bin" and result.path.read_bytes() == data
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["a", "a/b", "a/b/c.bin"]


@pytest.mark.parametrize(
    "bad", ["../x.bin", "a/../../x.bin", "/tmp/x.bin", "a//x.bin", "a/", "", ".", "a/./x", "a\\b", "a/\x00"]
)
def test_save_as_cannot_name_a_way_out(tmp_path: Path, bad: str) -> None:
    data = b"data"
    info = {"name": "f.bin", "size": 4, "sha1": hashlib.sha1(data).hexdigest(), "chunks": [{"size": 4}]}
    out = tmp_path / "out"
    with pytest.raises(InvalidRequest, match="cannot save as"):
        downloader.download(info, out, save_as=bad)
    assert list(tmp_path.iterdir()) == []  # not even the output folder


def test_save_as_never_follows_a_symlinked_folder(servers: list[FakeStorage], tmp_path: Path) -> None:
    data = os.urandom(100)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "docs").symlink_to(elsewhere)
    (out / "plain").write_bytes(b"a file")
    server = serving(servers, data)
    with pytest.raises(InvalidRequest, match="is not a folder"):
        downloader.download(located(data, server), out, save_as="docs/f.bin")
    with pytest.raises(InvalidRequest, match="is not a folder"):
        downloader.download(located(data, server), out, save_as="plain/f.bin")
    assert list(elsewhere.iterdir()) == [] and server.read() == []
