"""Small files downloaded as a group (client.small_files) on a real cluster: every file arrives whole
whatever the copies the group reads are like, bad copies it reads are reported and repaired, and
what is not the plain case goes the long way (client.download) with the same outcome as alone."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import random
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client import batch
from client.api import Client
from client.batch import Wanted, download_many
from client.chunk_sources import Trouble
from client.download import DownloadResult
from client.partial import PARTIAL_DIR, partial_key
from client.small_files import FLUSH_FROM, SmallFiles
from common import atomic
from common.errors import FileClusterError
from common.messages import MsgType
from tests.cluster import CHUNK, Cluster
from tests.conftest import new_user
from tests.integration.test_healing import NO_SCRUB, copy_path, flip_a_byte, good_copies, quarantined

SERVERS = {1, 2, 3, 4}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "cluster", server_args=NO_SCRUB).start()
    try:
        yield c
    finally:
        c.stop()


def upload_small(c: Client, folder: Path, count: int, seed: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    files = {f"small/f{i:03d}.bin": rng.randbytes(rng.randrange(1, CHUNK + 1)) for i in range(count)}
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        path = folder / name.replace("/", "_")
        path.write_bytes(data)
        c.upload(path, name=name)
    return files


def download_all(c: Client, names: list[str], out: Path) -> dict[str, DownloadResult | FileClusterError]:
    results: dict[str, DownloadResult | FileClusterError] = {}

    def outcome(item: Wanted, result: DownloadResult | FileClusterError) -> None:
        results[item.name] = result

    download_many(c.proxy, [Wanted(name, name) for name in names], out, outcome)
    return results


def copies_in_order(c: Client, name: str) -> list[int]:
    """The servers of the file's one chunk, in the order a LOCATE reply lists them."""
    reply = c.proxy.call(MsgType.LOCATE_MANY, {"names": [name]}, session=True)
    c.proxy.call(MsgType.RELEASE_MANY, {"leases": [reply["files"][0]["lease"]]})
    return [int(s) for s in reply["files"][0]["chunks"][0]["servers"]]


def assert_all_arrived(
    results: dict[str, DownloadResult | FileClusterError], files: dict[str, bytes], out: Path
) -> None:
    for name, data in files.items():
        result = results[name]
        assert isinstance(result, DownloadResult), result
        assert result.path == out / name and result.path.read_bytes() == data
    assert not list(out.rglob(PARTIAL_DIR))


def test_the_copies_a_group_reads_rotten_or_gone_are_skipped_reported_and_repaired(
    cluster: Cluster, tmp_path: Path
) -> None:
    ana = new_user(cluster, "ana")
    files = upload_small(ana, tmp_path / "src", 4, seed=1)
    names = sorted(files)
    # the group reads file k from copy k mod 2; client.download, which a file the group cannot get
    # goes to, reads copy 0 first: so the second copy of files 1 and 3 is met by the group alone
    rotten_id = hashlib.sha256(files[names[1]]).hexdigest()
    rotten_on = copies_in_order(ana, names[1])[1]
    flip_a_byte(copy_path(cluster, rotten_on, rotten_id))
    gone_id = hashlib.sha256(files[names[3]]).hexdigest()
    gone_from = copies_in_order(ana, names[3])[1]
    os.unlink(copy_path(cluster, gone_from, gone_id))

    results = download_all(ana, names, tmp_path / "down")

    assert_all_arrived(results, files, tmp_path / "down")
    # only the group read those copies: they were reported, the rotten one set aside, both replaced
    cluster.wait_for(
        lambda: any(p.name.startswith(rotten_id) for p in quarantined(cluster, rotten_on)),
        "the rotten copy the group reported, set aside",
        timeout=30,
    )
    cluster.wait_for(
        lambda: all(len(good_copies(cluster, chunk, SERVERS)) == 2 for chunk in (rotten_id, gone_id)),
        "repair of the copies the group reported",
        timeout=30,
    )


def test_a_server_down_costs_the_group_no_file(cluster: Cluster, tmp_path: Path) -> None:
    ana = new_user(cluster, "ana")
    files = upload_small(ana, tmp_path / "src", 24, seed=2)
    cluster.kill_server(2)
    results = download_all(ana, sorted(files), tmp_path / "down")
    assert_all_arrived(results, files, tmp_path / "down")


def test_a_hung_server_costs_a_download_of_many_files_a_timeout_per_thread_not_per_file(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGSTOP: connections to the server open, then nothing answers.  The groups that asked it
    time out and hand its files to client.download, which must not wait on it again for each
    file: one Trouble for the whole run, so every thread tries it last once any has timed out."""
    monkeypatch.setenv("FILECLUSTER_READ_TIMEOUT", "1")
    ana = new_user(cluster, "ana")
    files = upload_small(ana, tmp_path / "src", 96, seed=9)
    hung = cluster.servers[1]
    timeouts: list[tuple[str, int]] = []
    real_failed = Trouble.failed

    def failed(self: Trouble, server: dict[str, Any]) -> None:
        timeouts.append((str(server["host"]), int(server["port"])))
        real_failed(self, server)

    monkeypatch.setattr(Trouble, "failed", failed)
    hung.send_signal(signal.SIGSTOP)
    try:
        results = download_all(ana, sorted(files), tmp_path / "down")
    finally:
        hung.send_signal(signal.SIGCONT)
    assert_all_arrived(results, files, tmp_path / "down")
    assert 1 <= len(timeouts) <= batch.GROUPS + batch.THREADS, timeouts  # at most once per thread


def test_what_is_not_the_plain_case_ends_as_it_would_alone(cluster: Cluster, tmp_path: Path) -> None:
    ana = new_user(cluster, "ana")
    files = upload_small(ana, tmp_path / "src", 6, seed=3)
    names = sorted(files)
    out = tmp_path / "down"
    (out / "small").mkdir(parents=True)
    (out / names[0]).write_bytes(files[names[0]])  # the very file: not fetched again
    (out / names[1]).write_bytes(b"another file of that name")  # kept; the download gets "(1)"
    hidden = out / "small" / PARTIAL_DIR  # an interrupted download of the third: resumed
    hidden.mkdir(mode=0o700)
    data = files[names[2]]
    key = partial_key(hashlib.sha1(data).hexdigest(), len(data), names[2].rsplit("/", 1)[1])
    (hidden / f"{key}.part").write_bytes(data)
    (out / "small" / "f004.bin").mkdir()  # a folder where the fifth goes: it gets "(1)" too

    results = download_all(ana, names, out)

    first, second, third, fifth = (results[names[i]] for i in (0, 1, 2, 4))
    assert isinstance(first, DownloadResult) and not first.fetched
    assert isinstance(second, DownloadResult) and second.path.name == "f001 (1).bin"
    assert (out / names[1]).read_bytes() == b"another file of that name"
    assert isinstance(third, DownloadResult) and third.resumed == len(data)
    assert isinstance(fifth, DownloadResult) and fifth.path.name == "f004 (1).bin"
    for name, result in results.items():
        assert isinstance(result, DownloadResult) and result.path.read_bytes() == files[name]
    assert not list(out.rglob(PARTIAL_DIR))


def test_a_group_stopped_halfway_names_nothing_unfinished_and_the_next_download_ends_it(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ana = new_user(cluster, "ana")
    files = upload_small(ana, tmp_path / "src", 8, seed=4)
    names = sorted(files)
    out = tmp_path / "down"
    real_fsync = os.fsync
    calls = 0

    def fsync_then_ctrl_c(fd: int) -> None:  # Ctrl-C arrives during the group's third fsync
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        download_all(ana, names, out)
    monkeypatch.setattr(os, "fsync", real_fsync)

    visible = sorted(p for p in (out / "small").iterdir() if p.name != PARTIAL_DIR)
    assert [p.name for p in visible] == ["f000.bin", "f001.bin"]  # fsynced and linked: whole
    for path in visible:
        assert path.read_bytes() == files[f"small/{path.name}"]
    assert len(list((out / "small" / PARTIAL_DIR).glob("*.part"))) == 6  # verified: kept to resume

    results = download_all(ana, names, out)

    resumed = sum(r.resumed for r in results.values() if isinstance(r, DownloadResult))
    assert resumed == sum(len(files[name]) for name in names[2:])  # nothing fetched twice
    assert_all_arrived(results, files, out)
    for name in names[:2]:  # already there, whole: not fetched again
        result = results[name]
        assert isinstance(result, DownloadResult) and not result.fetched


def flush_events(monkeypatch: pytest.MonkeyPatch, fail: bool) -> list[str]:
    """Record each filesystem flush, hard link and fsync (the flush made to fail if ``fail``)."""
    events: list[str] = []

    def sync_all(fd: int) -> int:  # where there is no trusted syncfs (not Linux 5.8+): os.sync stands in
        os.sync()
        return 0

    real_flush = atomic._SYNCFS or sync_all
    real_link, real_fsync = os.link, os.fsync

    def syncfs(fd: int) -> int:
        events.append("flush")
        if fail:
            ctypes.set_errno(errno.EIO)
            return -1
        return real_flush(fd)

    def link(src: Any, dst: Any, **kwargs: Any) -> None:
        real_link(src, dst, **kwargs)
        events.append("link")

    def fsync(fd: int) -> None:
        real_fsync(fd)
        events.append("fsync")

    monkeypatch.setattr(atomic, "_SYNCFS", syncfs)
    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(os, "fsync", fsync)
    return events


def download_a_big_group(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: bool
) -> tuple[int, list[str]]:
    """Download a group big enough to be flushed together (whole, byte for byte); the number of
    files and what flush_events saw."""
    ana = new_user(cluster, "ana")
    files = upload_small(ana, tmp_path / "src", FLUSH_FROM + 4, seed=5)
    events = flush_events(monkeypatch, fail)
    assert_all_arrived(download_all(ana, sorted(files), tmp_path / "down"), files, tmp_path / "down")
    return len(files), events


def test_a_big_group_is_made_durable_by_two_flushes_data_before_any_name(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    count, events = download_a_big_group(cluster, tmp_path, monkeypatch, fail=False)
    assert events == ["flush"] + ["link"] * count + ["flush"]  # no fsync of a file or a folder


def test_a_flush_that_fails_falls_back_to_a_fsync_of_each_file_and_folder(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    count, events = download_a_big_group(cluster, tmp_path, monkeypatch, fail=True)
    assert events[0] == "flush" and "flush" not in events[1:]  # one try, then the file-by-file way
    fsyncs = [i for i, event in enumerate(events) if event == "fsync"]
    links = [i for i, event in enumerate(events) if event == "link"]
    assert len(links) == count and len(fsyncs) == count + 1  # each file, then its folder
    assert all(fsync < link for fsync, link in zip(fsyncs, links, strict=False))  # data before name
    assert fsyncs[-1] > links[-1]


def test_a_group_that_raises_ends_the_download_with_its_error_not_a_hang(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The feeder waits for room that finished files give back; a group that raised (a bug, no
    memory) gives back none of its own, so without a word from it the download would wait forever."""
    ana = new_user(cluster, "ana")
    files = upload_small(ana, tmp_path / "src", batch.ROOM * 4 + 1, seed=5)  # more than ROOM x BATCH
    monkeypatch.setattr(batch, "BATCH", 4)

    def broken(self: SmallFiles, files: list[Any], buffer: bytearray) -> None:
        raise RuntimeError("a bug in the group")

    monkeypatch.setattr(SmallFiles, "_fetch", broken)
    raised: list[BaseException] = []

    def run() -> None:
        try:
            download_all(ana, sorted(files), tmp_path / "down")
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the download hung after a group raised"
    assert len(raised) == 1 and isinstance(raised[0], RuntimeError), raised
    assert not [p for p in (tmp_path / "down").rglob("*") if p.is_file() and PARTIAL_DIR not in p.parts]
