"""The catalog's durability: journal replay, snapshots, torn tails, damage; and chunk references."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.errors import CorruptData, InsufficientStorage
from proxy.catalog import Catalog

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
    assert cat.share("tok") is None  # links to a deleted file die with it
    assert cat.unreferenced() == [A]
    assert cat.chunk(A) is not None  # kept, with its locations, until the collector frees it
    cat.drop_chunks([A])
    assert cat.chunk(A) is None
    _, freed = cat.put_file("ana", "y.bin", 10, "3" * 40, [[C, 10]], {})  # replace y.bin
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
