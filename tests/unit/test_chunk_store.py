"""The storage seam: the disk store and its in-memory twin keep the same contract."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.errors import CorruptData, InvalidRequest, NotFound
from servers.chunk_store import ChunkStore
from servers.memory_store import MemoryChunkStore

Store = ChunkStore | MemoryChunkStore
DATA = b"some chunk bytes" * 1000
ID = hashlib.sha256(DATA).hexdigest()


@pytest.fixture(params=["disk", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return ChunkStore(tmp_path / "ServerFiles") if request.param == "disk" else MemoryChunkStore()


def put(store: Store, chunk_id: str, data: bytes, pieces: int = 3) -> None:
    step = max(1, len(data) // pieces)
    with store.writer(chunk_id, len(data)) as writer:
        for i in range(0, len(data), step):
            writer.write(data[i : i + step])
        writer.commit()


def read(store: Store, chunk_id: str) -> bytes:
    file, size = store.open(chunk_id)
    with file:
        data = file.read()
    assert len(data) == size
    return data


def test_put_get_has_delete(store: Store) -> None:
    assert not store.has(ID)
    put(store, ID, DATA)
    assert store.has(ID) and read(store, ID) == DATA
    assert (store.count, store.used) == (1, len(DATA))
    assert list(store.ids()) == [ID]
    assert store.delete([ID, ID]) == 1
    assert not store.has(ID) and store.count == 0
    with pytest.raises(NotFound):
        store.open(ID)


@pytest.mark.parametrize("bad", [DATA[:-1] + b"X", DATA[:-1], DATA + b"!"])
def test_bytes_that_do_not_match_the_id_are_refused(store: Store, bad: bytes) -> None:
    with pytest.raises(CorruptData), store.writer(ID, len(DATA)) as writer:
        writer.write(bad)
        writer.commit()
    assert not store.has(ID)
    assert store.count == 0


@pytest.mark.parametrize("chunk_id", ["../../etc/passwd", "A" * 64, "a" * 63, "g" * 64, ""])
def test_ids_are_checked_before_touching_a_path(store: Store, chunk_id: str) -> None:
    for call in (
        lambda: store.has(chunk_id),
        lambda: store.writer(chunk_id, 1),
        lambda: store.open(chunk_id),
        lambda: store.delete([chunk_id]),
    ):
        with pytest.raises(InvalidRequest):
            call()


def test_disk_layout_and_no_half_written_file(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "ServerFiles")
    writer = store.writer(ID, len(DATA))
    writer.write(DATA[:100])
    assert not (tmp_path / "ServerFiles" / ID[:2] / ID).exists()  # nothing visible mid-write
    writer.abort()
    assert list((tmp_path / "ServerFiles" / "tmp").iterdir()) == []
    put(store, ID, DATA)
    assert (tmp_path / "ServerFiles" / ID[:2] / ID).read_bytes() == DATA


def test_restart_counts_existing_chunks_and_clears_temp_files(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "sf")
    put(store, ID, DATA)
    (tmp_path / "sf" / "tmp" / "leftover").write_bytes(b"half")
    again = ChunkStore(tmp_path / "sf")
    assert (again.count, again.used) == (1, len(DATA))
    assert list((tmp_path / "sf" / "tmp").iterdir()) == []


def test_rewriting_a_chunk_keeps_counts(store: Store) -> None:
    put(store, ID, DATA)
    put(store, ID, DATA)
    assert store.count == 1


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0)  # whatever is created without an explicit mode is world-writable
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root.parent)): oct(p.stat().st_mode & 0o777) for p in [root, *root.rglob("*")]}


@pytest.mark.usefixtures("open_umask")
def test_chunks_are_private_whatever_the_umask(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "server1" / "ServerFiles")
    put(store, ID, DATA)
    assert modes(tmp_path / "server1") == {
        "server1": "0o700",
        "server1/ServerFiles": "0o700",
        "server1/ServerFiles/tmp": "0o700",
        "server1/ServerFiles/quarantine": "0o700",
        f"server1/ServerFiles/{ID[:2]}": "0o700",
        f"server1/ServerFiles/{ID[:2]}/{ID}": "0o600",
    }


@pytest.mark.usefixtures("open_umask")
def test_a_store_made_by_an_older_version_is_tightened(tmp_path: Path) -> None:
    root = tmp_path / "ServerFiles"
    put(ChunkStore(root), ID, DATA)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    reopened = ChunkStore(root)
    assert set(modes(root).values()) == {"0o700", "0o600"}
    assert read(reopened, ID) == DATA


def test_a_folder_removed_behind_the_stores_back_is_made_again(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "s")
    first = b"first" * 100
    first_id = hashlib.sha256(first).hexdigest()
    put(store, first_id, first)
    folder = tmp_path / "s" / first_id[:2]
    os.unlink(folder / first_id)
    folder.rmdir()  # an operator's clean-up, say: the store knew the folder existed
    again = next(
        b"again %d" % i
        for i in range(10_000)
        if hashlib.sha256(b"again %d" % i).hexdigest()[:2] == first_id[:2]
    )
    again_id = hashlib.sha256(again).hexdigest()
    put(store, again_id, again)
    assert (folder / again_id).read_bytes() == again
    assert list((tmp_path / "s" / "tmp").iterdir()) == []
