"""Folders, versions, moves, recursive deletes and quotas against a real cluster (whose proxy keeps
two versions of each file): what a user of the client library sees, and what reaches the servers."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.api import Client
from common.errors import Conflict, Gone, InvalidRequest, NotFound, QuotaExceeded
from tests.cluster import Cluster, die_with_parent
from tests.conftest import new_user

KEEP = 2


@pytest.fixture(scope="module")
def vcluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("versions"), proxy_args=("--keep-versions", str(KEEP))).start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def ana(vcluster: Cluster) -> Iterator[Client]:
    client = new_user(vcluster, "ana")
    yield client
    client.close()


def source(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def chunk_ids(data: bytes, chunk: int) -> set[str]:
    return {hashlib.sha256(data[i : i + chunk]).hexdigest() for i in range(0, len(data), chunk)}


def stored_ids(c: Cluster) -> set[str]:
    return {p.name for p in c.chunk_files()}


def admin(c: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy.admin_cli", "--proxy", c.proxy_addr, *args],
        capture_output=True,
        text=True,
        env=c.env,
        cwd=c.root,
        timeout=60,
        preexec_fn=die_with_parent,
    )


def test_two_concurrent_uploads_of_one_name_both_become_versions(
    vcluster: Cluster, ana: Client, tmp_path: Path
) -> None:
    second = vcluster.client()
    second.login(ana.whoami(), "correct horse battery")
    contents = [os.urandom(3 * vcluster.chunk_size + 5), os.urandom(2 * vcluster.chunk_size)]
    paths = [source(tmp_path, f"src{i}.bin", data) for i, data in enumerate(contents)]
    start = threading.Barrier(2)
    results = {}

    def run(i: int, client: Client) -> None:
        start.wait()
        results[i] = client.upload(paths[i], name="shared.bin")

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate((ana, second))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    second.close()
    assert sorted(r.version for r in results.values()) == [1, 2]  # in commit order, nothing lost
    by_version = {r.version: contents[i] for i, r in results.items()}
    versions = ana.versions("shared.bin")
    assert [(v["version"], v["current"]) for v in versions] == [(2, True), (1, False)]
    for version, data in by_version.items():
        got = ana.download("shared.bin", tmp_path / f"v{version}", version=version)
        assert got.path.read_bytes() == data and got.path.name == "shared.bin"
    assert ana.list()[0]["version"] == 2 and ana.list()[0]["versions"] == 2


def test_restore_and_old_versions_freed_beyond_keep(vcluster: Cluster, ana: Client, tmp_path: Path) -> None:
    one, two, three = (os.urandom(vcluster.chunk_size + 100) for _ in range(3))
    assert ana.upload(source(tmp_path, "a.bin", one)).version == 1
    assert ana.upload(source(tmp_path, "a.bin", two)).version == 2
    restored = ana.restore("a.bin", 1)
    assert (restored["version"], restored["versions"]) == (3, KEEP)  # version 1 itself fell off
    assert ana.download("a.bin", tmp_path / "r").path.read_bytes() == one
    with pytest.raises(NotFound, match="no version 1"):
        ana.download("a.bin", tmp_path / "gone", version=1)
    assert chunk_ids(two, vcluster.chunk_size) <= stored_ids(vcluster)
    ana.upload(source(tmp_path, "a.bin", three))  # version 4: version 2 (content two) falls off
    assert [v["version"] for v in ana.versions("a.bin")] == [4, 3]
    assert chunk_ids(one, vcluster.chunk_size) <= stored_ids(vcluster)  # version 3 still uses them
    vcluster.wait_for(
        lambda: not chunk_ids(two, vcluster.chunk_size) & stored_ids(vcluster), "the collector to free v2"
    )


def test_move_a_folder_then_download_by_the_new_name(vcluster: Cluster, ana: Client, tmp_path: Path) -> None:
    data = {"photos/a.jpg": b"a" * 1000, "photos/2024/b.jpg": b"b" * 2000}
    for name, content in data.items():
        ana.upload(source(tmp_path, "x", content), name=name)
    link = ana.share("photos/2024/b.jpg")["link"]
    with pytest.raises(Conflict, match="'photos' is a folder"):
        ana.upload(source(tmp_path, "x", b"clash"), name="photos")
    assert [f["name"] for f in ana.list("photos/2024/")] == ["photos/2024/b.jpg"]
    assert ana.move("photos/", "pics") == 2
    assert [f["name"] for f in ana.list()] == ["pics/2024/b.jpg", "pics/a.jpg"]
    got = ana.download("pics/2024/b.jpg", tmp_path / "out")
    assert got.path == tmp_path / "out" / "b.jpg" and got.path.read_bytes() == data["photos/2024/b.jpg"]
    assert vcluster.client().download(link, tmp_path / "by-link").path.read_bytes() == b"b" * 2000
    with pytest.raises(InvalidRequest, match="current version"):
        ana.download(link, tmp_path / "old-version", version=1)
    with pytest.raises(NotFound):
        ana.download("photos/a.jpg", tmp_path / "old")
    assert ana.move("pics/a.jpg", "top.jpg") == 1
    assert ana.delete("pics", recursive=True) == 1
    assert [f["name"] for f in ana.list()] == ["top.jpg"]
    with pytest.raises(Gone, match="was deleted"):  # its file was deleted
        vcluster.client().download(link, tmp_path / "dead")


def test_an_upload_over_quota_is_refused_before_any_byte(
    vcluster: Cluster, ana: Client, tmp_path: Path
) -> None:
    user = ana.whoami()
    ana.upload(source(tmp_path, "small.bin", b"s" * 1000))
    account = ana.account()
    assert (account["user"], account["usage"], account["files"]) == (user, 1000, 1)
    assert account["quota"] == 10 * 1024**3  # the proxy's default
    limited = admin(vcluster, "quota", user, "100K")
    assert limited.returncode == 0 and "100.0 KiB" in limited.stdout, limited
    assert ana.account()["quota"] == 100 * 1024
    before = vcluster.chunk_files()
    big = source(tmp_path, "big.bin", os.urandom(2 * vcluster.chunk_size))
    with pytest.raises(QuotaExceeded, match=r"you use 1000 B of 100.0 KiB"):
        ana.upload(big)
    assert vcluster.chunk_files() == before  # no chunk was sent anywhere
    assert [f["name"] for f in ana.list()] == ["small.bin"]
    shouted = admin(vcluster, "quota", user.upper(), "200K")  # accounts ignore case
    assert shouted.returncode == 0 and f"quota of {user}" in shouted.stdout, shouted
    assert ana.account()["quota"] == 200 * 1024
    raised = admin(vcluster, "quota", user, "unlimited")
    assert raised.returncode == 0 and "unlimited" in raised.stdout, raised
    assert ana.account()["quota"] is None
    assert ana.upload(big).sent == big.stat().st_size
    unknown = admin(vcluster, "quota", "nobody-here", "1G")
    assert unknown.returncode == 1 and "no user 'nobody-here'" in unknown.stderr
    bad = admin(vcluster, "quota", user, "lots")  # a usage error: one line, why and where to read more
    assert bad.returncode == 2 and bad.stderr == (
        "filecluster-admin quota: error: invalid size 'lots': expected e.g. 500M, 10G, 1T or unlimited"
        " (see: filecluster-admin quota --help)\n"
    )
