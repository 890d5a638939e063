"""The catalog's durability: journal replay, snapshots, torn tails, damage; and chunk references."""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import pytest

from common.errors import CorruptData, InsufficientStorage, StorageIOError
from proxy.catalog import Catalog

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

A, B, C = "a" * 64, "b" * 64, "c" * 64


def fill(cat: Catalog) -> None:
    cat.add_user("ana", "00", "11")
    cat.put_file("ana", "x.bin", 20, "1" * 40, [[A, 10], [B, 10]], {A: [1, 2], B: [2, 3]})
    cat.put_file("ana", "y.bin", 20, "2" * 40, [[B, 10], [C, 10]], {C: [1, 4]})
    cat.add_share("tok", "ana", "x.bin")


def same(a: Catalog, b: Catalog) -> None:
    assert a.state == b.state
    assert +a.refs == +b.refs


def test_journal_replay_restores_everything(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    fill(cat)
    # no close(), no snapshot: as if the process were killed
    again = Catalog(tmp_path)
    same(cat, again)
    assert (again.file("ana", "x.bin") or {}).get("size") == 20
    assert again.share("tok") == cat.share("tok") is not None
    assert again.cluster_id == cat.cluster_id


def test_snapshot_cuts_the_journal_and_replay_continues(tmp_path: Path) -> None:
    cat = Catalog(tmp_path, snapshot_every=3)
    fill(cat)
    cat.delete_file("ana", "y.bin")
    assert (tmp_path / "catalog.json").exists()
    assert len((tmp_path / "journal.jsonl").read_text().splitlines()) < 3
    same(cat, Catalog(tmp_path, snapshot_every=3))


def test_crash_between_snapshot_and_journal_cut_is_harmless(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    fill(cat)
    journal = (tmp_path / "journal.jsonl").read_bytes()
    cat.snapshot()
    (tmp_path / "journal.jsonl").write_bytes(journal)  # the old journal survived the crash
    same(cat, Catalog(tmp_path))


def test_torn_last_entry_is_dropped(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    fill(cat)
    with open(tmp_path / "journal.jsonl", "ab") as f:
        f.write(b'{"seq": 99, "op": "file_del", "own')  # crash in the middle of an append
    again = Catalog(tmp_path)
    same(cat, again)
    again.delete_file("ana", "x.bin")  # and the journal goes on cleanly after it
    assert Catalog(tmp_path).file("ana", "x.bin") is None


def test_damage_in_the_middle_refuses_to_start(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    fill(cat)
    lines = (tmp_path / "journal.jsonl").read_bytes().split(b"\n")
    lines[1] = b"garbage"
    (tmp_path / "journal.jsonl").write_bytes(b"\n".join(lines))
    with pytest.raises(CorruptData, match="damaged at line 2"):
        Catalog(tmp_path)


def test_missing_change_refuses_to_start(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    fill(cat)
    lines = (tmp_path / "journal.jsonl").read_bytes().split(b"\n")
    del lines[2]
    (tmp_path / "journal.jsonl").write_bytes(b"\n".join(lines))
    with pytest.raises(CorruptData, match="missing"):
        Catalog(tmp_path)


def test_every_change_is_on_disk_before_it_returns(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    cat.add_user("bob", "00", "11")
    entries = [json.loads(x) for x in (tmp_path / "journal.jsonl").read_text().splitlines()]
    assert entries[-1]["op"] == "user_add" and entries[-1]["user"] == "bob"


def test_references_and_freed_chunks(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    fill(cat)
    assert cat.refs[B] == 2
    assert cat.delete_file("ana", "x.bin") == [A]  # B is still used by y.bin
    assert (cat.share("tok") or {})["ended"] == "deleted"  # links to a deleted file end with it (410)
    assert cat.unreferenced() == [A]
    assert cat.chunk(A) is not None  # kept, with its locations, until the collector frees it
    cat.drop_chunks([A])
    assert cat.chunk(A) is None
    _, freed = cat.put_file("ana", "y.bin", 10, "3" * 40, [[C, 10]], {})  # y.bin version 2
    assert freed == []  # version 1 (B and C) is kept
    _, freed = cat.put_file("ana", "y.bin", 10, "4" * 40, [[C, 10]], {}, keep=2)  # version 1 falls off
    assert freed == [B]


def test_reconcile_server_inventory(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    fill(cat)
    orphans = cat.reconcile_server(2, {A, "d" * 64}, set(cat.listed_but_absent(2, {A, "d" * 64})))
    assert orphans == ["d" * 64]
    assert cat.chunk_servers(A) == [1, 2]
    assert cat.chunk_servers(B) == [3]  # server 2 no longer has B


def test_a_failed_append_leaves_no_torn_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os as real_os

    cat = Catalog(tmp_path)
    fill(cat)
    calls = {"n": 0}

    def full_disk(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("proxy.journal.os.fsync", full_disk)
    with pytest.raises(InsufficientStorage, match="disk is full"):
        cat.add_user("carol", "00", "11")
    monkeypatch.setattr("proxy.journal.os.fsync", real_os.fsync)
    assert cat.user("carol") is None  # not applied
    cat.add_user("dave", "00", "11")  # the journal goes on
    again = Catalog(tmp_path)
    assert again.user("carol") is None and again.user("dave") is not None


def test_a_cut_off_newline_does_not_glue_the_next_change_on(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    fill(cat)
    journal = tmp_path / "journal.jsonl"
    journal.write_bytes(journal.read_bytes().rstrip(b"\n"))  # the crash cut only the newline
    again = Catalog(tmp_path)
    same(cat, again)
    again.add_user("erin", "00", "11")
    assert Catalog(tmp_path).user("erin") is not None  # and the next restart still works


def test_a_failed_snapshot_does_not_fail_the_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cat = Catalog(tmp_path, snapshot_every=2)
    calls = {"n": 0}
    real = cat.journal.snapshot

    def broken(state: dict) -> None:  # type: ignore[type-arg]
        calls["n"] += 1
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cat.journal, "snapshot", broken)
    fill(cat)  # four changes: a snapshot is due, fails, and the changes still succeed
    assert calls["n"] >= 1 and cat.file("ana", "y.bin") is not None
    monkeypatch.setattr(cat.journal, "snapshot", real)
    cat.add_user("frank", "00", "11")
    cat.add_user("gina", "00", "11")  # due again: now it works
    assert (tmp_path / "catalog.json").exists()
    same(cat, Catalog(tmp_path))


def test_a_stale_inventory_does_not_drop_a_new_location(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    fill(cat)
    inventory: set[str] = set()  # read by server 4 before C was stored on it
    absent = cat.listed_but_absent(4, inventory)
    assert absent == [C]
    cat.reconcile_server(4, inventory, gone=set())  # server 4 says: C is there after all
    assert 4 in cat.chunk_servers(C)
    cat.reconcile_server(4, inventory, gone={C})  # confirmed gone: now it is dropped
    assert 4 not in cat.chunk_servers(C)


class Disk:
    """The journal's disk: once ``room`` is set, an append writes what fits, then fails with ENOSPC
    (what write(2) does on a full disk), below Python's buffered writer, as the kernel would."""

    def __init__(self) -> None:
        self.room: int | None = None  # None: room enough

    def open(self, path: Path, mode: str = "r", *args: Any, **kwargs: Any) -> IO[Any]:
        if mode != "ab":
            return builtins.open(path, mode, *args, **kwargs)
        return io.BufferedWriter(_DiskFile(path, self))


class _DiskFile(io.FileIO):
    def __init__(self, path: Path, disk: Disk) -> None:
        super().__init__(path, "ab")
        self.disk = disk

    def write(self, data: ReadableBuffer) -> int:
        if self.disk.room is None:
            return super().write(data)
        if self.disk.room == 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        written = super().write(bytes(data)[: self.disk.room])
        self.disk.room -= written
        return written


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> Disk:
    """Every journal file opened for appending is on a :class:`Disk` the test can fill up."""
    d = Disk()
    monkeypatch.setattr("proxy.journal.open", d.open, raising=False)
    return d


def test_a_write_that_fills_the_disk_is_cut_off_and_the_journal_goes_on(tmp_path: Path, disk: Disk) -> None:
    cat = Catalog(tmp_path)
    fill(cat)
    journal = tmp_path / "journal.jsonl"
    before = journal.read_bytes()
    disk.room = 10  # the next line gets 10 bytes onto the disk, then the disk is full
    with pytest.raises(InsufficientStorage, match="disk is full"):
        cat.add_user("carol", "00", "11")
    with pytest.raises(InsufficientStorage, match="disk is full"):  # still full: refused the same way
        cat.delete_file("ana", "x.bin")
    assert journal.read_bytes() == before  # no torn line left behind
    assert cat.user("carol") is None and cat.file("ana", "x.bin") is not None  # nothing applied
    disk.room = None  # space was freed
    cat.add_user("dave", "00", "11")  # the journal goes on
    again = Catalog(tmp_path)
    same(cat, again)
    assert again.user("dave") is not None and again.user("carol") is None


def test_an_append_that_cannot_be_rolled_back_refuses_changes_until_the_disk_works_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cat = Catalog(tmp_path)
    fill(cat)

    def failing_disk(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr("proxy.journal.os.fsync", failing_disk)  # the append fails, and so does its undo
    with pytest.raises(StorageIOError, match="could not write its catalog"):
        cat.add_user("carol", "00", "11")
    # while the disk still fails, every change is refused: none can be made durable
    with pytest.raises(StorageIOError, match="could not be repaired"):
        cat.delete_file("ana", "x.bin")
    assert cat.file("ana", "x.bin") is not None
    monkeypatch.undo()  # the disk works again: the journal is cut back to its last entry and goes on
    cat.add_user("dave", "00", "11")
    cat.drop_chunks([A])
    assert cat.user("carol") is None and cat.user("dave") is not None
    same(cat, Catalog(tmp_path))  # a restart has every acknowledged change, and only those


def test_a_full_disk_in_the_journal_heals_once_there_is_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cat = Catalog(tmp_path)
    fill(cat)
    real_fsync = os.fsync
    full = True

    def fsync(fd: int) -> None:
        if full:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr("proxy.journal.os.fsync", fsync)
    for name in ("eve", "fay", "gus"):
        with pytest.raises((InsufficientStorage, StorageIOError)):
            cat.add_user(name, "00", "11")
    full = False  # space is back: no restart needed
    cat.add_user("hal", "00", "11")
    again = Catalog(tmp_path)
    same(cat, again)
    assert again.user("hal") is not None and all(again.user(n) is None for n in ("eve", "fay", "gus"))


@pytest.mark.parametrize(
    "damage",
    [
        lambda raw: raw[: len(raw) // 2],
        lambda raw: b"\x00" * len(raw),
        lambda raw: b"[]",
        lambda raw: b'{"seq": "7"}',
    ],
    ids=["cut short", "zeroed", "not an object", "seq not a number"],
)
def test_a_damaged_snapshot_refuses_to_start(tmp_path: Path, damage: Callable[[bytes], bytes]) -> None:
    cat = Catalog(tmp_path)
    fill(cat)
    cat.snapshot()
    snapshot = tmp_path / "catalog.json"
    snapshot.write_bytes(damage(snapshot.read_bytes()))
    with pytest.raises(CorruptData, match=r"catalog\.json is damaged"):
        Catalog(tmp_path)


@pytest.mark.parametrize("line", [b"[2, 3]", b'{"op": "user_add", "user": "x"}'], ids=["a list", "no seq"])
def test_a_line_that_is_json_but_not_an_entry_is_damage(tmp_path: Path, line: bytes) -> None:
    cat = Catalog(tmp_path)
    fill(cat)
    journal = tmp_path / "journal.jsonl"
    lines = journal.read_bytes().split(b"\n")
    lines[1] = line
    journal.write_bytes(b"\n".join(lines))
    with pytest.raises(CorruptData, match="damaged at line 2"):
        Catalog(tmp_path)


def test_a_journal_that_cannot_be_reopened_after_a_snapshot_recovers_into_the_new_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cat = Catalog(tmp_path, snapshot_every=1)  # every change ends with a snapshot and a fresh journal
    fill(cat)

    def out_of_files(path: Path, mode: str = "r", *args: Any, **kwargs: Any) -> IO[Any]:
        if mode == "ab":
            raise OSError(errno.EMFILE, "Too many open files")
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr("proxy.journal.open", out_of_files, raising=False)
    cat.add_user("hal", "00", "11")  # journaled and in the snapshot: done; reopening the journal fails
    with pytest.raises(StorageIOError, match="cannot reopen the journal after a snapshot"):
        cat.add_user("joe", "00", "11")  # still failing: the old handle writes to a replaced file: refused
    monkeypatch.undo()
    assert cat.user("hal") is not None and cat.user("joe") is None
    cat.add_user("ivy", "00", "11")  # the disk works again: written to the new journal, not lost
    again = Catalog(tmp_path)
    same(cat, again)
    assert again.user("hal") is not None and again.user("ivy") is not None and again.user("joe") is None
