"""common.atomic.FilesystemFlush: one syncfs for many files, trusted only where it reports errors."""

from __future__ import annotations

import ctypes
import errno
from pathlib import Path

import pytest

from common import atomic
from common.atomic import FilesystemFlush


def test_a_flush_covers_its_own_filesystem_only(tmp_path: Path) -> None:
    with FilesystemFlush(tmp_path) as flush:
        assert flush.works == (atomic._SYNCFS is not None)  # Linux 5.8 or later
        if flush.works:
            (tmp_path / "a").write_bytes(b"x")
            flush.flush()
            assert flush.covers(tmp_path)
            assert not flush.covers(Path("/proc/self"))  # another filesystem
        assert not flush.covers(tmp_path / "missing")
    assert not flush.works  # closed


def test_a_failed_flush_is_an_error_and_a_folder_that_cannot_be_opened_means_no_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(fd: int) -> int:
        ctypes.set_errno(errno.EIO)
        return -1

    monkeypatch.setattr(atomic, "_SYNCFS", failing)
    with FilesystemFlush(tmp_path) as flush:
        assert flush.works
        with pytest.raises(OSError) as raised:
            flush.flush()
        assert raised.value.errno == errno.EIO
    assert not FilesystemFlush(tmp_path / "missing").works
    monkeypatch.setattr(atomic, "_SYNCFS", None)  # where syncfs would not report errors
    assert not FilesystemFlush(tmp_path).works
