"""The same file downloaded twice at once into one folder ends as one file, not ``name (1).ext``.

Both downloads look for the name before they fetch; the second to finish finds it taken when it
links its copy into place.  Here the other download's finish is made to happen right then (the
identical file written under the name just before the link), for a big file (client.download)
and for a group of small ones (client.small_files).  A different file that takes the name still
makes the download pick ``name (1).ext``: nothing is ever replaced.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

import client.download as download_module
import client.small_files as small_files_module
from client import destination
from client.destination import link_into_place
from client.download import DownloadResult
from common.errors import FileClusterError
from tests.cluster import CHUNK, Cluster
from tests.conftest import new_user
from tests.integration.test_small_files import download_all, upload_small


def taken_just_before_the_link(
    monkeypatch: pytest.MonkeyPatch, module: object, content: dict[str, bytes]
) -> list[str]:
    """Make ``module``'s link_into_place find its name taken by ``content[name]`` first."""
    taken: list[str] = []

    def racing(tmp: Path, out_dir: Path, name: str, same: tuple[int, str] | None = None) -> Path:
        if name in content and not (out_dir / name).exists():
            (out_dir / name).write_bytes(content[name])  # the other download got there first
            taken.append(name)
        return link_into_place(tmp, out_dir, name, same)

    monkeypatch.setattr(module, "link_into_place", racing)
    return taken


@pytest.mark.parametrize("case", ["same file", "another file", "unreadable"])
def test_a_big_download_finding_its_name_just_taken(
    fresh_cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    ana = new_user(fresh_cluster, "ana")
    data = bytes(range(256)) * (3 * CHUNK // 256 + 7)  # several chunks
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    ana.upload(src)
    other = data[::-1] if case == "another file" else data  # same size either way
    taken = taken_just_before_the_link(monkeypatch, download_module, {"big.bin": other})
    out = tmp_path / "out"
    if case == "unreadable":  # the name's file cannot be read: not known to be ours, so kept

        def failing_disk(path: Any, *args: Any, **kwargs: Any) -> Any:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        monkeypatch.setattr(destination, "open", failing_disk, raising=False)
    result = ana.download("big.bin", out)
    assert taken == ["big.bin"]
    expected = ["big.bin"] if case == "same file" else ["big (1).bin", "big.bin"]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == expected
    assert result.path.read_bytes() == data
    assert (out / "big.bin").read_bytes() == other  # never replaced
    assert not [p for p in out.rglob("*.part")]


def test_small_files_finding_their_names_just_taken(
    fresh_cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ana = new_user(fresh_cluster, "ana")
    files = upload_small(ana, tmp_path / "src", 20, seed=5)
    names = sorted(files)
    same, different = names[3], names[7]
    content = {
        same.rsplit("/", 1)[1]: files[same],
        different.rsplit("/", 1)[1]: bytes(len(files[different])),  # same size, other bytes
    }
    taken = taken_just_before_the_link(monkeypatch, small_files_module, content)
    out = tmp_path / "down"
    results = download_all(ana, names, out)
    assert sorted(taken) == sorted(content)
    for name in names:
        result = results[name]
        assert not isinstance(result, FileClusterError), result
        assert isinstance(result, DownloadResult) and result.path.read_bytes() == files[name]
    first, second = results[same], results[different]
    assert isinstance(first, DownloadResult) and isinstance(second, DownloadResult)
    assert first.path == out / same
    assert second.path.name.endswith(" (1).bin")
    saved = sorted(p.name for p in (out / "small").iterdir() if not p.name.startswith("."))
    assert len(saved) == len(names) + 1  # one "(1)", for the other file
