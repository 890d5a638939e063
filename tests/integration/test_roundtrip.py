"""Upload and download round trips through the client library, on a real cluster."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path

import pytest

from client.api import Client
from common.errors import Gone, InvalidRequest
from common.messages import MsgType
from tests.cluster import CHUNK, Cluster
from tests.conftest import new_user

SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 12345]


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("size", SIZES, ids=[f"{s}B" for s in SIZES])
def test_round_trip(user: Client, tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    src = write(tmp_path / "src" / f"file-{size}.bin", data)
    result = user.upload(src)
    assert (result.name, result.size, result.sha1) == (src.name, size, hashlib.sha1(data).hexdigest())
    assert result.sent == size  # random bytes: every chunk is new
    got = user.download(src.name, tmp_path / "out")
    assert got.path == tmp_path / "out" / src.name
    assert got.path.read_bytes() == data
    assert not [p for p in got.path.parent.iterdir() if p.name.startswith(".")]  # no temp left


@pytest.mark.parametrize("name", ["ñandú y café.txt", "日本語 ファイル.bin", "with  spaces .dat"])
def test_non_ascii_and_spaced_names(user: Client, tmp_path: Path, name: str) -> None:
    data = name.encode() * 1000
    user.upload(write(tmp_path / name, data))
    assert name in [f["name"] for f in user.list()]
    assert user.download(name, tmp_path / "out").path.read_bytes() == data


def test_dedup_sends_nothing_and_stores_no_new_chunk(
    cluster: Cluster, user: Client, other_user: Client, tmp_path: Path
) -> None:
    data = os.urandom(3 * CHUNK + 7)
    ids = {hashlib.sha256(data[o : o + CHUNK]).hexdigest() for o in range(0, len(data), CHUNK)}

    def copies() -> Counter[str]:  # this file's chunks only: other tests share the cluster
        return Counter(p.name for p in cluster.chunk_files() if p.name in ids)

    first = user.upload(write(tmp_path / "a.bin", data))
    assert first.sent == len(data)
    assert copies() == {chunk_id: 2 for chunk_id in ids}
    again = user.upload(write(tmp_path / "copy of a.bin", data))
    other = other_user.upload(write(tmp_path / "b" / "a.bin", data))
    assert again.sent == 0 and other.sent == 0
    assert copies() == {chunk_id: 2 for chunk_id in ids}  # not one more copy
    assert other_user.download("a.bin", tmp_path / "out").path.read_bytes() == data


def test_partial_dedup_sends_only_new_chunks(user: Client, tmp_path: Path) -> None:
    base = os.urandom(4 * CHUNK)
    user.upload(write(tmp_path / "v1.bin", base))
    changed = base[: 3 * CHUNK] + os.urandom(CHUNK)
    result = user.upload(write(tmp_path / "v2.bin", changed))
    assert result.sent == CHUNK


def test_every_chunk_has_two_copies(cluster: Cluster, user: Client, tmp_path: Path) -> None:
    data = os.urandom(6 * CHUNK)
    user.upload(write(tmp_path / "copies.bin", data))
    for offset in range(0, len(data), CHUNK):
        chunk_id = hashlib.sha256(data[offset : offset + CHUNK]).hexdigest()
        holders = [f for f in cluster.chunk_files() if f.name == chunk_id]
        assert len(holders) == 2


def test_reupload_replaces_entry(user: Client, tmp_path: Path) -> None:
    path = write(tmp_path / "notes.txt", b"first version")
    user.upload(path)
    path.write_bytes(b"second, longer version")
    user.upload(path)
    files = [f for f in user.list() if f["name"] == "notes.txt"]
    assert len(files) == 1 and files[0]["size"] == len(b"second, longer version")
    out = user.download("notes.txt", tmp_path / "out")
    assert out.path.read_bytes() == b"second, longer version"


def test_listings_are_private(cluster: Cluster, tmp_path: Path) -> None:
    ana, bob = new_user(cluster, "ana"), new_user(cluster, "bob")
    ana.upload(write(tmp_path / "ana.txt", b"ana"))
    bob.upload(write(tmp_path / "bob.txt", b"bob"))
    assert [(f["owner"], f["name"]) for f in ana.list()] == [(ana.user, "ana.txt")]
    assert [(f["owner"], f["name"]) for f in bob.list()] == [(bob.user, "bob.txt")]
    with pytest.raises(InvalidRequest, match="only your own files"):  # the old `list --all`
        ana.proxy.call(MsgType.LIST, {"all": True}, session=True)


def test_share_and_download_as_another_user(
    cluster: Cluster, user: Client, other_user: Client, tmp_path: Path
) -> None:
    data = os.urandom(2 * CHUNK + 1)
    user.upload(write(tmp_path / "shared.bin", data))
    link = user.share("shared.bin")["link"]
    assert link.startswith(f"filecluster://{cluster.proxy_addr}/s/")
    token = link.rsplit("/", 1)[1]
    assert len(token) >= 22  # at least 128 random bits, url-safe base64
    assert user.share("shared.bin")["link"] != link  # sharing again makes another link
    assert other_user.download(link, tmp_path / "o1").path.read_bytes() == data
    assert other_user.download(token, tmp_path / "o2").path.read_bytes() == data
    anonymous = cluster.client()  # nobody logged in: a link is enough
    assert anonymous.download(link, tmp_path / "o3").path.read_bytes() == data


def test_delete_frees_unshared_chunks(cluster: Cluster, user: Client, tmp_path: Path) -> None:
    keep = os.urandom(CHUNK)
    gone = os.urandom(2 * CHUNK)
    user.upload(write(tmp_path / "keep.bin", keep))
    user.upload(write(tmp_path / "both.bin", keep + gone))
    gone_ids = {hashlib.sha256(gone[i : i + CHUNK]).hexdigest() for i in range(0, len(gone), CHUNK)}
    keep_id = hashlib.sha256(keep).hexdigest()
    on_disk = {p.name for p in cluster.chunk_files()}
    assert gone_ids <= on_disk
    link = user.share("both.bin")["link"]
    user.delete("both.bin")
    cluster.wait_for(
        lambda: not gone_ids & {p.name for p in cluster.chunk_files()}, "deleted chunks to be freed"
    )
    assert keep_id in {p.name for p in cluster.chunk_files()}
    assert user.download("keep.bin", tmp_path / "out").path.read_bytes() == keep
    assert "both.bin" not in [f["name"] for f in user.list()]
    with pytest.raises(Gone, match="was deleted"):
        cluster.client().download(link, tmp_path / "nope")
