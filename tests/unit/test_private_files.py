"""The proxy's catalog is private whatever the umask: its folder 0700, its files 0600."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.atomic import make_private_dir
from proxy.catalog import Catalog


@pytest.fixture(autouse=True)
def open_umask() -> Iterator[None]:
    old = os.umask(0)  # whatever is created without an explicit mode is world-writable
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> str:
    return oct(path.stat().st_mode & 0o777)


def test_a_new_catalog_and_the_folders_made_for_it_are_private(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "proxy"
    catalog = Catalog(folder)
    catalog.add_user("ana", "00", "11")
    assert mode(folder) == mode(folder.parent) == "0o700"
    assert mode(folder / "journal.jsonl") == "0o600"
    catalog.snapshot()
    assert mode(folder / "catalog.json") == mode(folder / "journal.jsonl") == "0o600"


def test_a_catalog_made_by_an_older_version_is_tightened(tmp_path: Path) -> None:
    folder = tmp_path / "proxy"
    Catalog(folder).snapshot()
    Catalog(folder).add_user("ana", "00", "11")
    for path, loose in ((folder, 0o755), (folder / "catalog.json", 0o644), (folder / "journal.jsonl", 0o666)):
        path.chmod(loose)
    assert Catalog(folder).user("ana") is not None
    assert (mode(folder), mode(folder / "catalog.json"), mode(folder / "journal.jsonl")) == (
        "0o700",
        "0o600",
        "0o600",
    )


def test_existing_parents_are_left_alone(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    make_private_dir(shared / "mine")
    assert (mode(shared), mode(shared / "mine")) == ("0o755", "0o700")
