"""Where a download keeps its temp file, and what the sweep of stale ones may touch."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from client import download as downloader
from client.download import PARTIAL_DIR, STALE_PART_SECONDS
from common.errors import InvalidRequest

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
    downloader._clean_stale_parts(partial)
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
