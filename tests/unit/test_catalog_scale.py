"""The catalog's compact form: packed file entries, the chunk table, snapshot format 2 (and the
JSON format before it), and snapshots written by a forked child while changes go on."""

from __future__ import annotations

import json
import pickle
import threading
import time
from pathlib import Path

import pytest

from client import listing
from common.errors import CorruptData
from proxy import records
from proxy import snapshot as snapshot_format
from proxy.catalog import Catalog
from proxy.chunk_table import ChunkTable

A, B, C = "a" * 64, "b" * 64, "c" * 64


def fill(cat: Catalog) -> None:
    cat.add_user("ana", "00", "11")
    cat.put_file("ana", "docs/x.bin", 20, "1" * 40, [[A, 10], [B, 10]], {A: [1, 2], B: [2, 3]})
    cat.put_file("ana", "docs/x.bin", 10, "2" * 40, [[C, 10]], {C: [1, 4]})  # a second version
    cat.put_file("ana", "y.bin", 20, "3" * 40, [[B, 10], [C, 10]], {})
    cat.add_share("tok", "ana", "docs")


def same(a: Catalog, b: Catalog) -> None:
    assert a.state == b.state
    assert +a.refs == +b.refs
    assert +a.tree.usage == +b.tree.usage


def test_entries_pack_and_unpack_exactly() -> None:
    entry = {"size": 5, "sha1": "f" * 40, "chunks": [[A, 3], [B, 2]], "uploaded": 1.5, "version": 2}
    entry["older"] = [{"size": 1, "sha1": "e" * 40, "chunks": [[C, 1]], "uploaded": 1.0, "version": 1}]
    blob = records.pack(entry)
    assert blob[0] == records.PACKED and len(blob) < 200
    assert records.unpack(blob) == entry
    assert records.usage_and_chunks(blob) == (6, [bytes.fromhex(A), bytes.fromhex(B), bytes.fromhex(C)])


def test_an_entry_the_packed_form_cannot_hold_is_kept_as_json() -> None:
    odd = {"size": 5, "sha1": "not hex", "chunks": [["short-id", 5]], "uploaded": 1, "version": 1}
    odd["older"] = []
    blob = records.pack(odd)
    assert blob[0] == records.JSON
    assert records.unpack(blob) == odd
    assert records.usage_and_chunks(blob) == (5, ["short-id"])


def test_the_chunk_table_shares_server_tuples_and_counts_references() -> None:
    table = ChunkTable()
    table.add(A, 10, [1, 2])
    table.add(B, 10, [1, 2])
    assert table.table[bytes.fromhex(A)] == table.table[bytes.fromhex(B)]  # same size, same servers
    assert table.server_sets == [(), (1, 2)]
    table.add(A, 10, [2, 3])
    assert table.get(A) == {"size": 10, "servers": [1, 2, 3]}
    assert list(table.on_server(3, threading.RLock())) == [A]
    assert sorted(table.on_server(1, threading.RLock())) == [A, B]
    table.ref(bytes.fromhex(A))
    assert table.refs(A) == 1 and table.unreferenced() == [B]
    table.drop(A)  # still referenced: kept
    assert table.unref(bytes.fromhex(A)) and A in table
    table.drop(A)
    assert A not in table and table.get(A) is None


def test_a_scan_reads_in_batches_and_skips_what_went_meanwhile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("proxy.chunk_table.BATCH", 2)
    table = ChunkTable()
    ids = [f"{i:064x}" for i in range(5)]
    for chunk_id in ids:
        table.add(chunk_id, 1, [1])
    seen = []
    lock = threading.RLock()
    for chunk_id, *_ in table.scan(lock):
        seen.append(chunk_id)
        if chunk_id == ids[0]:
            table.drop(ids[3])  # a chunk collected while the scan runs
    assert seen == [ids[0], ids[1], ids[2], ids[4]]


def test_a_big_catalog_snapshots_in_format_2_and_reloads_the_same(tmp_path: Path) -> None:
    cat = Catalog(tmp_path, big_from=2)
    fill(cat)
    cat.snapshot()
    assert (tmp_path / "catalog.json").read_bytes().startswith(snapshot_format.MAGIC)
    again = Catalog(tmp_path)
    same(cat, again)
    assert again.file("ana", "docs/x.bin") == cat.file("ana", "docs/x.bin")
    assert again.tree.book.live("ana", "docs") == ["tok"]


def test_a_format_1_snapshot_loads_and_is_rewritten_in_format_2_once_big(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    fill(cat)
    cat.snapshot()  # a small catalog: format 1, JSON
    assert json.loads((tmp_path / "catalog.json").read_text())["seq"] == cat.journal.seq
    old = Catalog(tmp_path, big_from=2)
    same(cat, old)
    old.add_user("bob", "00", "11")
    old.snapshot()
    assert (tmp_path / "catalog.json").read_bytes().startswith(snapshot_format.MAGIC)
    again = Catalog(tmp_path)
    same(old, again)
    assert again.user("bob") is not None


def test_a_bit_flip_in_a_format_2_snapshot_refuses_to_start(tmp_path: Path) -> None:
    cat = Catalog(tmp_path, big_from=0)
    fill(cat)
    cat.snapshot()
    path = tmp_path / "catalog.json"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptData, match=r"catalog\.json is damaged: its checksum"):
        Catalog(tmp_path)


def test_a_snapshot_naming_code_is_refused_even_with_a_good_checksum(tmp_path: Path) -> None:
    payload = pickle.dumps({"version": 2, "seq": 1, "meta": {}, "files": {}, "chunks": time.time})
    path = tmp_path / "catalog.json"
    path.write_bytes(snapshot_format.MAGIC + snapshot_format.checksum(payload).digest() + payload)
    with pytest.raises(ValueError, match="data only"):
        snapshot_format.read(path)


def test_a_background_snapshot_keeps_the_changes_made_while_it_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cat = Catalog(tmp_path, snapshot_every=6, big_from=0)  # every snapshot forks
    real = cat._encode

    def slow(seq: int) -> bytes:  # runs in the child: the parent goes on meanwhile
        time.sleep(0.3)
        return real(seq)

    monkeypatch.setattr(cat, "_encode", slow)
    fill(cat)  # the 6th change (init, a user, 3 puts, the share) is due: a child starts
    assert cat.journal.pending is not None
    for name in ("bob", "cy", "dee"):
        cat.add_user(name, "00", "11")  # journaled while the child writes
    assert cat.wait_snapshot(timeout=10)
    assert cat.journal.pending is None
    lines = (tmp_path / "journal.jsonl").read_text().splitlines()
    assert [json.loads(x)["user"] for x in lines] == ["bob", "cy", "dee"]  # only what came after
    again = Catalog(tmp_path)
    same(cat, again)
    assert all(again.user(n) is not None for n in ("bob", "cy", "dee"))


def test_a_failed_background_snapshot_loses_nothing_and_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cat = Catalog(tmp_path, snapshot_every=3, big_from=0)
    real = cat._encode

    def broken(seq: int) -> bytes:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cat, "_encode", broken)
    fill(cat)
    assert cat.wait_snapshot(timeout=10)
    assert not (tmp_path / "catalog.json").exists()
    monkeypatch.setattr(cat, "_encode", real)
    for name in ("bob", "cy", "dee", "eve", "fay", "gus"):  # due again within these: tried again
        cat.add_user(name, "00", "11")
        assert cat.wait_snapshot(timeout=10)
    assert (tmp_path / "catalog.json").exists()
    same(cat, Catalog(tmp_path))


def test_a_listing_comes_in_pages_that_join_up_to_the_whole(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    cat.add_user("ana", "00", "11")
    names = ["a/1", "a/2", "a/3", "ab", "b", "c/d"]
    for name in reversed(names):
        cat.put_file("ana", name, 1, "1" * 40, [[A, 1]], {})
    first, more = cat.list_page("ana", limit=4)
    assert [f["name"] for f in first] == names[:4] and more
    rest, more = cat.list_page("ana", after="ab", limit=4)
    assert [f["name"] for f in rest] == ["b", "c/d"] and not more
    page, more = cat.list_page("ana", "a/", after="a/1", limit=1)
    assert [f["name"] for f in page] == ["a/2"] and more
    cat.put_file("ana", "a/0", 1, "1" * 40, [[A, 1]], {})  # a new name shows in the next page
    assert [f["name"] for f in cat.list_page("ana", "a/")[0]] == ["a/0", "a/1", "a/2", "a/3"]
    cat.move("ana", "a", "z")
    assert [f["name"] for f in cat.list_page("ana", after="b")[0]] == ["c/d", "z/0", "z/1", "z/2", "z/3"]


def test_the_client_asks_page_after_page_until_none_follows(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    cat.add_user("ana", "00", "11")
    for i in range(7):
        cat.put_file("ana", f"f{i}", 1, "1" * 40, [[A, 1]], {})
    asked: list[dict[str, object]] = []

    def call(header: dict[str, object]) -> dict[str, object]:
        asked.append(dict(header))
        after, limit = header.get("after", ""), header["limit"]
        assert isinstance(limit, int)
        files, more = cat.list_page("ana", str(header.get("prefix", "")), str(after), limit)
        return {"files": files, "more": more}

    assert listing.fetch_all(call, page=3) == cat.list_files("ana")
    assert [h.get("after") for h in asked] == [None, "f2", "f5"]


def test_a_delete_ends_only_the_folder_links_whose_folder_went(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    fill(cat)
    cat.add_share("dir", "ana", "docs", kind="folder")  # docs/x.bin is its only file
    cat.add_share("file", "ana", "y.bin")
    book = cat.tree.book
    assert book.folder_links == {"ana": {"dir"}}

    def ended(token: str) -> object:
        return (book.get(token) or {}).get("ended")

    cat.delete_file("ana", "y.bin")
    assert ended("file") == "deleted" and not ended("dir")
    cat.delete_file("ana", "docs/x.bin")  # the folder is gone with its last file
    assert ended("dir") == "deleted" and not book.folder_links
    same(cat, Catalog(tmp_path))


def test_a_middle_sized_catalog_is_snapshotted_in_format_1_by_a_child_off_the_request_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cat = Catalog(tmp_path, snapshot_every=6, fork_from=2)  # big_from stays 50 000: format 1
    real = cat._encode

    def slow(seq: int) -> bytes:  # runs in the child: the change that made it due does not wait
        time.sleep(0.5)
        return real(seq)

    monkeypatch.setattr(cat, "_encode", slow)
    started = time.monotonic()
    fill(cat)  # the 6th change is due: a child starts
    assert time.monotonic() - started < 0.4 and cat.journal.pending is not None
    assert cat.wait_snapshot(timeout=10)
    assert json.loads((tmp_path / "catalog.json").read_text())["seq"] == cat.journal.seq
    same(cat, Catalog(tmp_path))
    tiny = Catalog(tmp_path / "tiny", snapshot_every=6, fork_from=10**6)
    fill(tiny)  # fewer chunks than fork_from: written inline, done when the change returns
    assert tiny.journal.pending is None and (tmp_path / "tiny" / "catalog.json").exists()
