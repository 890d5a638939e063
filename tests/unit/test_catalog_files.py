"""The catalog's files: versions and their retention, restore, moves of files and folders (links
follow), recursive deletes, the file/folder clash rule, usage and quotas; every one journaled, so
a reload from the folder gives the same state."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from common.errors import Conflict, InvalidRequest, NotFound, QuotaExceeded
from proxy.catalog import Catalog

A, B, C, D = "a" * 64, "b" * 64, "c" * 64, "d" * 64


def put(cat: Catalog, name: str, *chunks: str, keep: int = 10, quota: int | None = None) -> dict[str, Any]:
    """Commit ``name`` made of 10-byte chunks; the file as LIST shows it."""
    listed = [[c, 10] for c in chunks]
    entry, _ = cat.put_file(
        "ana", name, 10 * len(chunks), "1" * 40, listed, {c: [1] for c in chunks}, keep=keep, quota=quota
    )
    return entry


def reloaded(cat: Catalog, folder: Path) -> Catalog:
    """The catalog as a restart would see it (journal replay, no snapshot), checked equal."""
    again = Catalog(folder)
    assert again.state == cat.state
    assert +again.refs == +cat.refs
    assert +again.tree.usage == +cat.tree.usage
    assert {o: +c for o, c in again.tree.folders.items()} == {o: +c for o, c in cat.tree.folders.items()}
    assert dict(again.tree.book.by_name) == {k: v for k, v in cat.tree.book.by_name.items() if v}
    assert {o: list(t) for o, t in again.tree.book.by_owner.items()} == {
        o: list(t) for o, t in cat.tree.book.by_owner.items() if t
    }
    return again


@pytest.fixture
def cat(tmp_path: Path) -> Catalog:
    c = Catalog(tmp_path)
    c.add_user("ana", "00", "11")
    c.add_user("bob", "00", "11")
    return c


def test_an_upload_of_an_existing_name_becomes_its_next_version(cat: Catalog, tmp_path: Path) -> None:
    assert put(cat, "a.txt", A)["version"] == 1
    second = put(cat, "a.txt", B)
    assert (second["version"], second["versions"]) == (2, 2)
    versions = cat.versions("ana", "a.txt")
    assert [(v["version"], v["current"]) for v in versions] == [(2, True), (1, False)]
    assert cat.refs[A] == 1 and cat.refs[B] == 1  # the older version still holds its chunks
    assert (cat.version("ana", "a.txt", 1) or {})["chunks"] == [[A, 10]]
    assert cat.list_files("ana") == [second]
    reloaded(cat, tmp_path)


def test_only_the_last_versions_are_kept_and_what_falls_off_is_freed(cat: Catalog, tmp_path: Path) -> None:
    put(cat, "a.txt", A, B, keep=3)
    put(cat, "a.txt", B, keep=3)
    put(cat, "a.txt", C, keep=3)
    assert cat.unreferenced() == []
    _, freed = cat.put_file("ana", "a.txt", 10, "2" * 40, [[D, 10]], {D: [1]}, keep=3)
    assert freed == [A]  # version 1 (A, B) fell off; B is still used by version 2
    assert [v["version"] for v in cat.versions("ana", "a.txt")] == [4, 3, 2]
    assert cat.unreferenced() == [A]  # the collector's work list
    assert cat.usage("ana") == (30, 1)
    reloaded(cat, tmp_path)


def test_restore_makes_an_old_version_current_again_as_a_new_version(cat: Catalog, tmp_path: Path) -> None:
    put(cat, "a.txt", A)
    put(cat, "a.txt", B)
    entry, freed = cat.restore_version("ana", "a.txt", 1)
    assert (entry["version"], entry["versions"], freed) == (3, 3, [])
    assert (cat.file("ana", "a.txt") or {})["chunks"] == [[A, 10]]
    assert [v["version"] for v in cat.versions("ana", "a.txt")] == [3, 2, 1]  # nothing rewritten
    assert cat.refs[A] == 2
    with pytest.raises(NotFound, match="no version 9"):
        cat.restore_version("ana", "a.txt", 9)
    with pytest.raises(Conflict, match="already the current one"):
        cat.restore_version("ana", "a.txt", 3)
    with pytest.raises(NotFound, match=re.escape("no file named 'b.txt'")):
        cat.restore_version("ana", "b.txt", 1)
    _, freed = cat.restore_version("ana", "a.txt", 2, keep=2)  # versions 3 (A) and 4 (B) stay
    assert freed == [] and [v["version"] for v in cat.versions("ana", "a.txt")] == [4, 3]
    reloaded(cat, tmp_path)


def test_move_a_file_keeps_its_versions_and_its_link(cat: Catalog, tmp_path: Path) -> None:
    put(cat, "a.txt", A)
    put(cat, "a.txt", B)
    cat.add_share("tok", "ana", "a.txt")
    assert cat.move("ana", "a.txt", "docs/b.txt") == 1
    assert cat.file("ana", "a.txt") is None
    assert [v["version"] for v in cat.versions("ana", "docs/b.txt")] == [2, 1]
    assert (cat.share("tok") or {})["name"] == "docs/b.txt"
    assert cat.share_for("ana", "docs/b.txt") == "tok" and cat.share_for("ana", "a.txt") is None
    again = reloaded(cat, tmp_path)
    assert again.share_for("ana", "docs/b.txt") == "tok"


def test_move_a_folder_moves_everything_in_it_with_one_journal_entry(cat: Catalog, tmp_path: Path) -> None:
    for name in ("photos/a.jpg", "photos/2024/b.jpg", "photos2/c.jpg", "other.txt"):
        put(cat, name, A)
    cat.add_share("tok", "ana", "photos/2024/b.jpg")
    journal = tmp_path / "journal.jsonl"
    lines = len(journal.read_text().splitlines())
    assert cat.move("ana", "photos", "pics/old") == 2
    assert len(journal.read_text().splitlines()) == lines + 1
    assert [f["name"] for f in cat.list_files("ana")] == [
        "other.txt",
        "photos2/c.jpg",  # a folder whose name merely starts the same is not touched
        "pics/old/2024/b.jpg",
        "pics/old/a.jpg",
    ]
    assert (cat.share("tok") or {})["name"] == "pics/old/2024/b.jpg"
    assert cat.tree.is_folder("ana", "pics") and not cat.tree.is_folder("ana", "photos")
    reloaded(cat, tmp_path)


@pytest.mark.parametrize(
    ("old", "new", "error", "message"),
    [
        ("nothing", "x", NotFound, "no file or folder named 'nothing'"),
        ("a.txt", "a.txt", Conflict, "already has that name"),
        ("a.txt", "b.txt", Conflict, "'b.txt' already exists"),
        ("a.txt", "dir", Conflict, "'dir' is a folder"),
        ("a.txt", "b.txt/x", Conflict, "'b.txt' is a file"),
        ("dir", "dir/sub", Conflict, "into itself"),
        ("dir", "b.txt", Conflict, "'b.txt' already exists"),
        ("dir/sub", "dir", Conflict, "'dir' is a folder"),
        ("dir", "x" * 255 + "/" + "y" * 255 + "/" + "z" * 255 + "/" + "w" * 200, InvalidRequest, "longer"),
    ],
)
def test_a_move_that_cannot_be_done_changes_nothing(
    cat: Catalog, tmp_path: Path, old: str, new: str, error: type[Exception], message: str
) -> None:
    for name in ("a.txt", "b.txt", "dir/sub/" + "s" * 100, "dir/x"):
        put(cat, name, A)
    before = json.dumps(cat.state, sort_keys=True)
    with pytest.raises(error, match=message):
        cat.move("ana", old, new)
    assert json.dumps(cat.state, sort_keys=True) == before
    reloaded(cat, tmp_path)


def test_a_name_is_never_both_a_file_and_a_folder(cat: Catalog) -> None:
    put(cat, "photos/a.jpg", A)
    with pytest.raises(Conflict, match="'photos' is a folder"):
        put(cat, "photos", B)
    with pytest.raises(Conflict, match=re.escape("'photos/a.jpg' is a file")):
        put(cat, "photos/a.jpg/b", B)
    cat.put_file("bob", "photos", 10, "1" * 40, [[B, 10]], {})  # another user's names are theirs
    assert cat.file("ana", "photos") is None and cat.refs[B] == 1
    cat.delete_file("ana", "photos/a.jpg")
    put(cat, "photos", C)  # the folder went with its last file
    assert cat.file("ana", "photos") is not None


def test_recursive_delete_takes_every_file_in_the_folder_and_their_links(
    cat: Catalog, tmp_path: Path
) -> None:
    put(cat, "d/a", A)
    put(cat, "d/a", B)  # two versions
    put(cat, "d/e/f", C)
    put(cat, "d2", D)
    cat.add_share("tok", "ana", "d/e/f")
    with pytest.raises(Conflict, match="'d' is a folder"):
        cat.delete_files("ana", "d")  # not recursive
    with pytest.raises(NotFound):
        cat.delete_files("ana", "nothing", recursive=True)
    deleted, freed = cat.delete_files("ana", "d", recursive=True)
    assert (deleted, freed) == (2, [A, B, C])
    assert [f["name"] for f in cat.list_files("ana")] == ["d2"]
    assert (cat.share("tok") or {})["ended"] == "deleted" and cat.usage("ana") == (10, 1)
    assert cat.delete_files("ana", "d2", recursive=True) == (1, [D])  # a file, recursively: that file
    assert cat.usage("ana") == (0, 0) and "ana" not in cat.state["files"]
    reloaded(cat, tmp_path)


def test_usage_counts_every_kept_version_and_the_quota_refuses_before_anything_changes(
    cat: Catalog, tmp_path: Path
) -> None:
    put(cat, "a.txt", A, B)
    put(cat, "a.txt", C)
    assert cat.usage("ana") == (30, 1) and cat.usage("bob") == (0, 0)
    with pytest.raises(QuotaExceeded, match=r"needs 10 B, and you use 30 B of 39 B"):
        put(cat, "b.txt", D, quota=39)
    assert cat.file("ana", "b.txt") is None
    put(cat, "b.txt", D, quota=40)
    with pytest.raises(QuotaExceeded):
        cat.restore_version("ana", "a.txt", 1, quota=40)
    assert cat.quota_of("ana", 100) == 100  # the proxy's default
    cat.set_quota("ana", 5)
    cat.set_quota("bob", -1)
    assert (cat.quota_of("ana", 100), cat.quota_of("bob", 100)) == (5, None)
    again = reloaded(cat, tmp_path)
    assert again.quota_of("ana", 100) == 5
    again.set_quota("ana", None)
    assert Catalog(tmp_path).quota_of("ana", 100) == 100
    with pytest.raises(NotFound, match="no user 'carol'"):
        cat.set_quota("carol", 5)


def test_list_by_prefix(cat: Catalog) -> None:
    for name in ("b", "a/x", "a/y/z", "ab"):
        put(cat, name, A)
    assert [f["name"] for f in cat.list_files("ana", "a/")] == ["a/x", "a/y/z"]
    assert [f["name"] for f in cat.list_files("ana", "a")] == ["a/x", "a/y/z", "ab"]
    assert [f["name"] for f in cat.list_files("ana", "nothing/")] == []


def test_a_catalog_from_before_versions_loads_as_version_1(tmp_path: Path) -> None:
    """A snapshot and a journal as the code before versions wrote them: entries without versions,
    and a file_put over an existing name (which then replaced the file) with no ``keep``."""
    old_entry = {"size": 10, "sha1": "1" * 40, "chunks": [[A, 10]], "uploaded": 1.0}
    snapshot = {
        "version": 1,
        "cluster_id": "c" * 32,
        "users": {"ana": {"salt": "00", "hash": "11", "created": 1.0}},
        "sessions": {},
        "files": {"ana": {"a.txt": old_entry, "b.txt": {**old_entry, "chunks": [[B, 10]]}}},
        "chunks": {A: {"size": 10, "servers": [1]}, B: {"size": 10, "servers": [1]}},
        "shares": {"tok": {"owner": "ana", "name": "a.txt", "created": 1.0}},
        "servers": {},
        "seq": 1,
    }
    (tmp_path / "catalog.json").write_text(json.dumps(snapshot))
    replace = {"seq": 2, "op": "file_put", "owner": "ana", "name": "b.txt", "size": 10, "sha1": "2" * 40}
    replace.update(chunks=[[C, 10]], locations={C: [1]}, uploaded=2.0)
    (tmp_path / "journal.jsonl").write_text(json.dumps(replace) + "\n")
    cat = Catalog(tmp_path)
    assert cat.describe("ana", "a.txt")["version"] == 1 and cat.describe("ana", "a.txt")["versions"] == 1
    assert [v["version"] for v in cat.versions("ana", "b.txt")] == [2]  # the old put replaced it
    assert cat.unreferenced() == [B]
    assert cat.share_for("ana", "a.txt") == "tok"
    put(cat, "a.txt", D)
    assert [v["version"] for v in cat.versions("ana", "a.txt")] == [2, 1]
    cat.snapshot()
    reloaded(cat, tmp_path)
