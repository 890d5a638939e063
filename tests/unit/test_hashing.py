"""common.hashing.manifest_of: one read of a file gives its SHA-1 and each chunk's SHA-256, whatever
its size, whether or not it has a descriptor, and whatever its size was when it was asked."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import pytest

from common.hashing import READ_SIZE, Manifest, manifest_of

CHUNK = 64 * 1024


def expected(data: bytes, chunk_size: int) -> tuple[str, list[tuple[str, int, int]]]:
    pieces = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]
    chunks, offset = [], 0
    for piece in pieces:
        chunks.append((hashlib.sha256(piece).hexdigest(), offset, len(piece)))
        offset += len(piece)
    return hashlib.sha1(data).hexdigest(), chunks


def described(manifest: Manifest) -> tuple[str, list[tuple[str, int, int]]]:
    return manifest.sha1, [(c.id, c.offset, c.size) for c in manifest.chunks]


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7])
def test_a_file_on_disk(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    (tmp_path / "f").write_bytes(data)
    with open(tmp_path / "f", "rb") as f:
        manifest = manifest_of(f, CHUNK)
    assert manifest.size == size
    assert described(manifest) == expected(data, CHUNK)


def test_chunks_bigger_than_a_read(tmp_path: Path) -> None:
    data = os.urandom(2 * READ_SIZE + 3)
    (tmp_path / "f").write_bytes(data)
    with open(tmp_path / "f", "rb") as f:
        assert described(manifest_of(f, 4 * READ_SIZE)) == expected(data, 4 * READ_SIZE)


def test_a_file_without_a_descriptor() -> None:
    data = os.urandom(CHUNK + 9)
    assert described(manifest_of(io.BytesIO(data), CHUNK)) == expected(data, CHUNK)


def test_a_file_bigger_than_its_size_said_is_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The size asked for the buffer is only a hint: a file that grew since is read to its end."""
    data = os.urandom(3 * CHUNK + 5)
    (tmp_path / "f").write_bytes(data)
    real = os.fstat

    def smaller(fd: int) -> Any:
        info = real(fd)
        return os.stat_result((*info[:6], 10, *info[7:]))  # st_size: 10 bytes

    monkeypatch.setattr(os, "fstat", smaller)
    with open(tmp_path / "f", "rb") as f:
        assert described(manifest_of(f, CHUNK)) == expected(data, CHUNK)
