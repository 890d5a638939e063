"""The store's self-healing half: verify, quarantine, verified age, delete older_than, the reserve.

Both stores keep the same contract; the disk store is also checked on the files themselves (bytes
flipped, truncated, replaced by a folder) and for what it keeps in ``quarantine/``."""

from __future__ import annotations

import hashlib
import os
import stat
import time
from pathlib import Path

import pytest

from common.errors import InsufficientStorage, InvalidRequest
from servers.chunk_store import VERIFIED_XATTR, ChunkStore, LostQueue
from servers.memory_store import MemoryChunkStore

Store = ChunkStore | MemoryChunkStore
DATA = b"chunk bytes to check again " * 3000
ID = hashlib.sha256(DATA).hexdigest()
OTHER = b"another chunk" * 100
OTHER_ID = hashlib.sha256(OTHER).hexdigest()
MISSING = "0" * 64


@pytest.fixture(params=["disk", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return ChunkStore(tmp_path / "ServerFiles") if request.param == "disk" else MemoryChunkStore()


def put(store: Store, data: bytes) -> str:
    chunk_id = hashlib.sha256(data).hexdigest()
    with store.writer(chunk_id, len(data)) as writer:
        writer.write(data)
        writer.commit()
    return chunk_id


def spoil(store: Store, chunk_id: str, data: bytes) -> None:
    """Replace a stored copy's bytes behind the store's back (bit rot, a bad sector)."""
    if isinstance(store, MemoryChunkStore):
        store.chunks[chunk_id] = data
    else:
        (store.root / chunk_id[:2] / chunk_id).write_bytes(data)


def age(store: Store, chunk_id: str, seconds: float) -> None:
    """Make a copy look written (or verified) ``seconds`` ago."""
    then = time.time() - seconds
    if isinstance(store, MemoryChunkStore):
        store.stamps[chunk_id] = then
    else:
        path = store.root / chunk_id[:2] / chunk_id
        os.utime(path, (then, then))
        stamp = f"{then} {path.stat().st_mtime_ns}".encode()  # the verified-stamp follows
        os.setxattr(path, VERIFIED_XATTR, stamp)


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def test_a_good_copy_verifies_and_its_age_restarts(store: Store) -> None:
    put(store, DATA)
    put(store, OTHER)
    age(store, ID, 3600)
    assert store.verified_age(ID) == pytest.approx(3600, abs=5)
    assert store.verify(ID) == "good"
    age_now = store.verified_age(ID)
    assert age_now is not None and age_now < 5
    assert store.verify(MISSING) == "missing" and store.verified_age(MISSING) is None
    assert (store.count, store.used, store.quarantined_count()) == (2, len(DATA) + len(OTHER), 0)
    assert len(store.lost) == 0


@pytest.mark.parametrize(
    "bad",
    [flip(DATA, 0), flip(DATA, len(DATA) // 2), DATA[:-1], DATA + b"!", b""],
    ids=["first-byte", "middle-byte", "truncated", "longer", "empty"],
)
def test_a_spoiled_copy_is_bad_and_quarantined_not_deleted(store: Store, bad: bytes) -> None:
    put(store, DATA)
    put(store, OTHER)
    spoil(store, ID, bad)
    assert store.verify(ID) == "bad"
    assert not store.has(ID) and list(store.ids()) == [OTHER_ID]
    assert store.count == 1
    if len(bad) == len(DATA):  # (a file resized behind the store's back leaves used off until a restart)
        assert store.used == len(OTHER)
    assert store.quarantined_count() == 1
    assert store.lost.take(10) == [ID]
    assert store.verify(ID) == "missing"  # gone from the store, so it is not reported twice
    assert store.verify(OTHER_ID) == "good"
    if isinstance(store, ChunkStore):
        [kept] = store.quarantine_dir.iterdir()
        assert kept.name.startswith(f"{ID}.") and kept.read_bytes() == bad
        assert int(kept.name.split(".")[1]) == pytest.approx(time.time(), abs=5)
        assert stat.S_IMODE(store.quarantine_dir.stat().st_mode) == 0o700
        assert ChunkStore(store.root).quarantined_count() == 1  # remembered across a restart
        assert list(ChunkStore(store.root).ids()) == [OTHER_ID]
    else:
        assert store.quarantined == [(ID, bad)]


def test_something_that_is_not_a_file_is_bad(tmp_path: Path) -> None:
    root = tmp_path / "ServerFiles"
    (root / ID[:2]).mkdir(parents=True)
    (root / ID[:2] / ID).mkdir()  # a folder where the chunk should be
    store = ChunkStore(root)
    assert (store.count, store.used) == (1, 0)  # counted (ids() lists it), with no bytes
    assert store.verify(ID) == "bad"
    assert (store.count, store.used) == (0, 0)
    assert store.lost.take(1) == [ID]
    [kept] = store.quarantine_dir.iterdir()
    assert kept.is_dir()


def test_an_unreadable_copy_is_bad(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ChunkStore(tmp_path / "ServerFiles")
    put(store, DATA)
    real_read = os.read

    class Failing:
        def __init__(self, path: str, mode: str, buffering: int = -1) -> None:
            self.fd = os.open(path, os.O_RDONLY)

        def __enter__(self) -> Failing:
            return self

        def __exit__(self, *exc: object) -> None:
            os.close(self.fd)

        def fileno(self) -> int:
            return self.fd

        def read(self, n: int) -> bytes:
            real_read(self.fd, 10)
            raise OSError(5, "Input/output error")

    from servers import chunk_store

    monkeypatch.setattr(chunk_store, "open", Failing, raising=False)
    assert store.verify(ID) == "bad"
    monkeypatch.undo()
    assert not store.has(ID) and store.used == 0
    [kept] = store.quarantine_dir.iterdir()
    assert kept.read_bytes() == DATA  # the bytes are kept for whoever looks into it


def test_quarantine_by_hand_and_the_lost_queue(store: Store) -> None:
    put(store, DATA)
    assert store.quarantine(ID, "the operator said so") is True
    assert store.quarantine(ID, "again") is False
    assert not store.has(ID) and store.count == 0 and store.quarantined_count() == 1
    put(store, DATA)  # a fresh copy (a repair) may come back; the old one stays quarantined
    assert store.verify(ID) == "good"
    assert store.quarantine(ID, "twice in one second") is True
    assert store.quarantined_count() == 2
    assert ID in store.lost


def test_lost_queue_takes_in_order_and_puts_back_in_front() -> None:
    lost = LostQueue()
    for i in range(5):
        lost.add(f"{i:064x}")
    lost.add(f"{0:064x}")  # once only
    first = lost.take(2)
    assert first == [f"{0:064x}", f"{1:064x}"] and len(lost) == 3
    lost.put_back(first)
    assert lost.take(10) == [f"{i:064x}" for i in range(5)]
    assert lost.take(10) == []


def test_delete_older_than_spares_copies_stored_or_verified_since(store: Store) -> None:
    put(store, DATA)
    put(store, OTHER)
    age(store, ID, 100)
    age(store, OTHER_ID, 100)
    decided = time.time() - 50  # the proxy decided to delete both 50 s ago...
    assert store.verify(OTHER_ID) == "good"  # ...then OTHER was verified (or stored again)
    assert store.delete([ID, OTHER_ID, MISSING], older_than=decided) == 1
    assert not store.has(ID) and store.has(OTHER_ID)
    assert (store.count, store.used) == (1, len(OTHER))
    assert store.delete([OTHER_ID]) == 1  # without older_than: whatever its age


def test_a_fresh_commit_counts_as_newer(store: Store) -> None:
    decided = time.time() - 1
    put(store, DATA)
    assert store.delete([ID], older_than=decided) == 0 and store.has(ID)
    assert store.delete([ID], older_than=time.time() + 1) == 1


def test_the_reserve_is_kept_free(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probe = ChunkStore(tmp_path / "probe")
    free = probe.free()
    assert probe.available() == free or abs(probe.available() - free) < 1 << 20
    store = ChunkStore(tmp_path / "ServerFiles", reserve=free - len(OTHER) // 2)
    monkeypatch.setattr(store, "free", lambda: free)  # other tests running beside may free space meanwhile
    with pytest.raises(InsufficientStorage) as caught:
        store.writer(OTHER_ID, len(OTHER))
    assert caught.value.code == "insufficient_storage"
    assert store.available() < len(OTHER)
    assert ChunkStore(tmp_path / "huge", reserve=free * 2).available() == 0
    roomy = ChunkStore(tmp_path / "roomy", reserve=1 << 20)
    put(roomy, OTHER)
    assert roomy.available() <= roomy.free() - (1 << 20)
    with pytest.raises(InvalidRequest):
        ChunkStore(tmp_path / "neg", reserve=-1)


def test_the_memory_reserve_behaves_the_same() -> None:
    store = MemoryChunkStore(capacity=len(DATA) + 100, reserve=100)
    assert store.available() == len(DATA)
    put(store, DATA)
    assert store.available() == 0
    with pytest.raises(InsufficientStorage):
        store.writer(OTHER_ID, len(OTHER))
