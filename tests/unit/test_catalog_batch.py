"""A batch of uploads recorded at once (Catalog.put_files): one journal fsync for all, each file
checked on its own against the catalog and the files before it in the batch, and all of it
replayed after a restart."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.errors import Conflict, FileClusterError, QuotaExceeded, StorageIOError
from proxy.catalog import Catalog
from proxy.catalog_files import FilePut

A, B, C, D = "a" * 64, "b" * 64, "c" * 64, "d" * 64


def put(name: str, *chunks: str, owner: str = "ana", quota: int | None = None) -> FilePut:
    return FilePut(
        owner, name, 10 * len(chunks), "1" * 40, [[c, 10] for c in chunks], {c: [1] for c in chunks}, quota
    )


@pytest.fixture
def cat(tmp_path: Path) -> Catalog:
    c = Catalog(tmp_path)
    c.add_user("ana", "00", "11")
    return c


def test_a_batch_is_journaled_with_one_fsync_and_replayed(
    cat: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsyncs: list[int] = []
    real = os.fsync

    def counted(fd: int) -> None:
        fsyncs.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counted)
    outcomes = cat.put_files([put("a.txt", A), put("docs/b.txt", B, C), put("c.txt", A)])
    assert len(fsyncs) == 1
    assert [o[0]["name"] for o in outcomes if not isinstance(o, FileClusterError)] == [
        "a.txt",
        "docs/b.txt",
        "c.txt",
    ]
    monkeypatch.undo()
    again = Catalog(tmp_path)
    assert again.state == cat.state
    assert +again.refs == +cat.refs == {A: 2, B: 1, C: 1}


def test_each_file_of_a_batch_is_refused_on_its_own(cat: Catalog) -> None:
    cat.put_file("ana", "photos/x.jpg", 10, "1" * 40, [[D, 10]], {D: [1]})
    outcomes = cat.put_files(
        [
            put("photos", A),  # a folder already
            put("ok.txt", A),
            put("ok.txt", B),  # named twice in the batch
            put("ok.txt/inner", C),  # inside a file of the batch
            put("dir/f", B),
            put("dir", C),  # a folder of the batch
            put("late.txt", C, quota=50),  # 10 (x.jpg) + 20 before it + 10 fits 50...
            put("over.txt", C, C, quota=50),  # ...but 20 more does not, counting the batch
        ]
    )
    refused = [type(o) for o in outcomes if isinstance(o, FileClusterError)]
    assert refused == [Conflict, Conflict, Conflict, Conflict, QuotaExceeded]
    assert sorted(f["name"] for f in cat.list_files("ana")) == ["dir/f", "late.txt", "ok.txt", "photos/x.jpg"]


def test_a_batch_the_journal_cannot_take_changes_nothing(
    cat: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = cat.journal.journal_path.read_bytes()

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(StorageIOError):
        cat.put_files([put("a.txt", A), put("b.txt", B)])
    monkeypatch.undo()
    assert cat.list_files("ana") == []
    assert cat.journal.journal_path.read_bytes() == before
    cat.put_files([put("a.txt", A)])  # and the journal goes on from where it was
    assert Catalog(cat.journal.folder).state == cat.state
