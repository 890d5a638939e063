"""A download routes around trouble: it spreads reads over every copy, waits on a hung server once
per thread rather than once per chunk, reports bad copies quietly, renews its tickets by its lease,
releases the lease however it ends, and gives up at its deadline.  Storage servers are fakes on
real sockets (tests.fake_storage)."""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client import download as downloader
from common.config import PARALLEL_TRANSFERS
from common.errors import Unavailable
from common.messages import MsgType
from tests.fake_storage import FakeProxy, FakeStorage

CHUNK = 64 * 1024


def pieces(data: bytes) -> list[bytes]:
    return [data[o : o + CHUNK] for o in range(0, len(data), CHUNK)]


def store(data: bytes) -> dict[str, bytes]:
    return {hashlib.sha256(p).hexdigest(): p for p in pieces(data)}


def located(
    data: bytes, copies: list[FakeStorage], *, mac: str = "m", exp: int = 100, lease: str | None = None
) -> dict[str, Any]:
    """A LOCATE reply for ``data`` with every chunk on ``copies``, in that order."""
    chunks = [
        {
            "id": hashlib.sha256(p).hexdigest(),
            "size": len(p),
            "servers": [{**s.ref, "ticket": f"{mac}-{s.id}"} for s in copies],
        }
        for p in pieces(data)
    ]
    info = {
        "name": "f.bin",
        "size": len(data),
        "sha1": hashlib.sha1(data).hexdigest(),
        "chunks": chunks,
        "ticket": {"exp": exp, "who": "link"},
    }
    if lease is not None:
        info["lease"] = lease
    return info


def kept_partials(folder: Path) -> int:
    """How many partial files a failed download left, checking that nothing else is in ``folder``."""
    assert [p.name for p in folder.iterdir()] == [downloader.PARTIAL_DIR]
    return len(list((folder / downloader.PARTIAL_DIR).glob("*.part")))


@pytest.fixture
def servers() -> Iterator[list[FakeStorage]]:
    made: list[FakeStorage] = []
    yield made
    for server in made:
        server.stop()


def test_every_copy_is_read_and_the_load_is_shared(servers: list[FakeStorage], tmp_path: Path) -> None:
    data = os.urandom(8 * CHUNK)
    a, b = FakeStorage(1, store(data)), FakeStorage(2, store(data))
    servers += [a, b]
    result = downloader.download(located(data, [a, b]), tmp_path)
    assert result.path.read_bytes() == data
    assert len(a.read()) == len(b.read()) == 4  # each chunk read once, half from each copy


def test_a_hung_server_is_waited_on_once_per_thread_not_once_per_chunk(
    servers: list[FakeStorage], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(downloader, "READ_TIMEOUT", 0.5)
    data = os.urandom(32 * CHUNK)
    hung, good = FakeStorage(1, store(data), mode="hung"), FakeStorage(2, store(data))
    servers += [hung, good]
    proxy = FakeProxy({MsgType.RELEASE: lambda h: {}})
    start = time.monotonic()
    result = downloader.download(located(data, [hung, good], lease="L"), tmp_path, proxy=proxy)
    took = time.monotonic() - start
    assert result.path.read_bytes() == data
    # without routing around it, the 16 chunks that start at the hung copy would each wait it out
    assert hung.connections <= PARALLEL_TRANSFERS
    assert took < 4 * 0.5, f"{took:.1f} s"
    assert proxy.sent(MsgType.REPORT_BAD) == []  # a silent server is no proof of a bad copy


@pytest.mark.parametrize("problem", ["corrupt", "missing", "short"])
def test_a_bad_copy_is_reported_and_the_download_still_succeeds(
    servers: list[FakeStorage], tmp_path: Path, problem: str
) -> None:
    data = os.urandom(4 * CHUNK)
    bad, good = FakeStorage(1, store(data), mode=problem), FakeStorage(2, store(data))
    servers += [bad, good]
    proxy = FakeProxy({MsgType.REPORT_BAD: lambda h: {}, MsgType.RELEASE: lambda h: {}})
    progress: list[int] = []
    info = located(data, [bad, good], lease="L")
    result = downloader.download(info, tmp_path, lambda _, done, __: progress.append(done), proxy=proxy)
    assert result.path.read_bytes() == data
    assert progress[-1] == len(data)
    reports = proxy.sent(MsgType.REPORT_BAD)
    assert sorted(r["id"] for r in reports) == sorted(bad.read())  # every bad copy read, once each
    assert len(reports) == 2  # the chunks that start at the bad copy (the others never needed it)
    for report in reports:
        assert report["server"] == bad.id and report["problem"] == problem
        assert report["ticket"] == {"exp": 100, "who": "link", "mac": f"m-{bad.id}"}
    assert [t for t, _ in proxy.calls][-1] == MsgType.RELEASE


def test_when_no_copy_is_good_the_download_fails_with_one_clear_line(
    servers: list[FakeStorage], tmp_path: Path
) -> None:
    data = os.urandom(2 * CHUNK)
    a, b = FakeStorage(1, store(data), mode="corrupt"), FakeStorage(2, store(data), mode="missing")
    servers += [a, b]
    proxy = FakeProxy({MsgType.REPORT_BAD: lambda h: {}, MsgType.RELEASE: lambda h: {}})
    with pytest.raises(Unavailable, match=re.escape("cannot be read from any copy")) as caught:
        downloader.download(located(data, [a, b], lease="L"), tmp_path / "out", proxy=proxy)
    assert "\n" not in str(caught.value)
    assert kept_partials(tmp_path / "out") == 1  # nothing visible; what arrived waits for the next try
    problems = sorted((r["server"], r["problem"]) for r in proxy.sent(MsgType.REPORT_BAD))
    assert (1, "corrupt") in problems and (2, "missing") in problems
    assert proxy.sent(MsgType.RELEASE) == [{"lease": "L"}]


def test_the_deadline_breaks_every_connection(
    servers: list[FakeStorage], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(downloader, "READ_TIMEOUT", 30.0)
    monkeypatch.setenv("FILECLUSTER_TRANSFER_DEADLINE", "0.5")
    data = os.urandom(2 * CHUNK)
    hung = FakeStorage(1, store(data), mode="hung")
    servers.append(hung)
    proxy = FakeProxy({MsgType.RELEASE: lambda h: {}})
    start = time.monotonic()
    missed = r"the download of f\.bin did not finish within its deadline of 0\.5 s"
    with pytest.raises(Unavailable, match=missed):
        downloader.download(located(data, [hung], lease="L"), tmp_path / "out", proxy=proxy)
    assert time.monotonic() - start < 3
    assert kept_partials(tmp_path / "out") == 1
    assert proxy.sent(MsgType.RELEASE) == [{"lease": "L"}]


def test_expired_tickets_are_renewed_by_the_lease_once_for_every_thread(
    servers: list[FakeStorage], tmp_path: Path
) -> None:
    data = os.urandom(8 * CHUNK)
    a, b = FakeStorage(1, store(data)), FakeStorage(2, store(data))
    servers += [a, b]
    for server in (a, b):
        server.refused_macs = {f"old-{a.id}", f"old-{b.id}"}
    fresh = located(data, [a, b], mac="new", exp=200, lease="L")
    proxy = FakeProxy({MsgType.LOCATE: lambda h: fresh, MsgType.RELEASE: lambda h: {}})

    def relocate() -> dict[str, Any]:
        raise AssertionError("a download with a lease renews by its lease")

    info = located(data, [a, b], mac="old", exp=100, lease="L")
    result = downloader.download(info, tmp_path, relocate=relocate, proxy=proxy)
    assert result.path.read_bytes() == data
    assert proxy.sent(MsgType.LOCATE) == [{"lease": "L"}]
    assert proxy.sent(MsgType.RELEASE) == [{"lease": "L"}]
    assert proxy.sent(MsgType.REPORT_BAD) == []  # an expired ticket says nothing of the copy


def test_an_old_proxy_without_leases_or_reports_still_serves_a_download(
    servers: list[FakeStorage], tmp_path: Path
) -> None:
    data = os.urandom(4 * CHUNK)
    bad, good = FakeStorage(1, store(data), mode="corrupt"), FakeStorage(2, store(data))
    servers += [bad, good]
    good.refused_macs = {"old-2"}
    proxy = FakeProxy()  # knows neither REPORT_BAD nor RELEASE
    relocated: list[int] = []

    def relocate() -> dict[str, Any]:
        relocated.append(1)
        return located(data, [bad, good], mac="new", exp=200)

    info = located(data, [bad, good], mac="old")
    assert downloader.download(info, tmp_path, relocate=relocate, proxy=proxy).path.read_bytes() == data
    assert relocated == [1]
    assert proxy.sent(MsgType.RELEASE) == []  # no lease, nothing to release
    assert len(proxy.sent(MsgType.REPORT_BAD)) == 1  # tried once, refused, and left be


def test_an_identical_file_already_there_still_releases_the_lease(tmp_path: Path) -> None:
    data = b"already here"
    (tmp_path / "f.bin").write_bytes(data)
    info = {"name": "f.bin", "size": len(data), "sha1": hashlib.sha1(data).hexdigest(), "chunks": []}
    proxy = FakeProxy({MsgType.RELEASE: lambda h: {}})
    assert not downloader.download({**info, "lease": "L"}, tmp_path, proxy=proxy).fetched
    assert proxy.sent(MsgType.RELEASE) == [{"lease": "L"}]


def test_chunks_bigger_than_a_buffer_stream_through_it_and_a_corrupt_copy_still_counts_for_nothing(
    servers: list[FakeStorage], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(downloader, "BUFFER_SIZE", CHUNK // 4 - 1)  # pieces, the last one shorter
    data = os.urandom(3 * CHUNK + 5)
    bad, good = FakeStorage(1, store(data), mode="corrupt"), FakeStorage(2, store(data))
    servers += [bad, good]
    progress: list[int] = []
    result = downloader.download(
        located(data, [bad, good]), tmp_path, lambda _, done, __: progress.append(done)
    )
    assert result.path.read_bytes() == data
    assert len(bad.read()) == 2  # chunks 0 and 2 start at the bad copy, whose bytes were written first
    assert progress == sorted(progress) and progress[-1] == len(data)  # bad bytes never counted
