"""LOCATE_MANY and RELEASE_MANY on a real cluster, and many files downloaded at once (client.batch)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from client.api import Client
from client.batch import Wanted, download_many
from client.download import DownloadResult
from client.partial import PARTIAL_DIR
from common.errors import AuthError, FileClusterError, InvalidRequest, NotFound
from common.limits import MAX_LOCATE_MANY
from common.messages import MsgType
from tests.cluster import Cluster

FILES = {f"docs/f{i}.txt": bytes([i]) * (1000 + i) for i in range(5)}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("locate-many"), servers=2).start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def owner(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Client:
    c = cluster.client()
    c.register("many", "a-long-password")
    c.login("many", "a-long-password")
    source = tmp_path_factory.mktemp("many-src")
    for name, data in FILES.items():
        path = source / name.replace("/", "_")
        path.write_bytes(data)
        c.upload(path, name=name)
    return c


def test_each_file_is_located_as_alone_and_a_missing_one_fails_alone(owner: Client) -> None:
    names = ["docs/f0.txt", "docs/none.txt", "docs/f1.txt"]
    reply = owner.proxy.call(MsgType.LOCATE_MANY, {"names": names}, session=True)
    found, missing, second = reply["files"]
    assert missing["error"]["code"] == NotFound.code
    assert (found["name"], found["size"], second["size"]) == ("docs/f0.txt", 1000, 1001)
    servers = {s["id"] for s in reply["servers"]}
    for chunk in found["chunks"]:
        assert set(chunk["servers"]) <= servers and len(chunk["tickets"]) == len(chunk["servers"]) == 2
    owner.proxy.call(MsgType.RELEASE_MANY, {"leases": [found["lease"], second["lease"]]})
    with pytest.raises(NotFound):  # released: the lease cannot be renewed
        owner.proxy.call(MsgType.LOCATE, {"lease": found["lease"]})


def test_bounds_and_who_may_ask(owner: Client, cluster: Cluster) -> None:
    with pytest.raises(InvalidRequest):
        owner.proxy.call(MsgType.LOCATE_MANY, {"names": ["a"] * (MAX_LOCATE_MANY + 1)}, session=True)
    with pytest.raises(InvalidRequest):
        owner.proxy.call(MsgType.LOCATE_MANY, {"names": []}, session=True)
    with pytest.raises(InvalidRequest):
        owner.proxy.call(MsgType.LOCATE_MANY, {"paths": ["f0.txt"]})
    stranger = cluster.client()
    with pytest.raises(AuthError):  # your own files only, by a session
        stranger.proxy.call(MsgType.LOCATE_MANY, {"names": ["docs/f0.txt"]})
    stranger.register("stranger", "a-long-password")
    stranger.login("stranger", "a-long-password")
    reply = stranger.proxy.call(MsgType.LOCATE_MANY, {"names": ["docs/f0.txt"]}, session=True)
    assert reply["files"][0]["error"]["code"] == NotFound.code  # another user's file: not found


def test_a_folder_link_locates_its_files_by_path(owner: Client) -> None:
    token = owner.share("docs")["token"]
    reply = owner.proxy.call(MsgType.LOCATE_MANY, {"token": token, "paths": ["f2.txt", "../f1.txt"]})
    first, bad = reply["files"]
    assert (first["kind"], first["size"]) == ("file", 1002)
    assert bad["error"]["code"] in (InvalidRequest.code, NotFound.code)


def test_many_files_download_at_once_verified(owner: Client, tmp_path: Path) -> None:
    results: dict[str, DownloadResult | FileClusterError] = {}

    def outcome(item: Wanted, result: DownloadResult | FileClusterError) -> None:
        results[item.name] = result

    wanted = [Wanted(name, name) for name in FILES] + [Wanted("docs/gone.txt", None)]
    download_many(owner.proxy, wanted, tmp_path, outcome)
    assert isinstance(results.pop("docs/gone.txt"), NotFound)
    for name, data in FILES.items():
        result = results[name]
        assert isinstance(result, DownloadResult) and result.fetched
        assert (tmp_path / name).read_bytes() == data
    assert not list(tmp_path.rglob("*.part"))
    assert not list(tmp_path.rglob(PARTIAL_DIR))  # the batch tidies the hidden folders it used
