"""The proxy's requests on folders, versions and quotas, through the same door the wire uses
(dispatch), with in-process storage servers: what each refuses, and that a quota holds under
concurrent uploads."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from common.cluster_auth import ClusterKey
from common.errors import Conflict, InvalidRequest, NotFound, QuotaExceeded
from common.frame_server import Request, dispatch
from common.hashing import proof_digest
from common.messages import MsgType
from proxy.auth import token_hash
from proxy.catalog import Catalog
from proxy.collector import Collector
from proxy.registry import Registry
from proxy.service import ProxyConfig, ProxyService
from proxy.storage_client import StorageClient
from proxy.uploads import Uploads
from tests.fake_storage import memory_storage_servers

CHUNK = 64 * 1024
DATA = b"v" * 1000
ID = hashlib.sha256(DATA).hexdigest()
SHA1 = hashlib.sha1(DATA).hexdigest()
KEY = ClusterKey(b"\x07" * 32)


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[int, int]]:
    """Two storage servers (in-process, real sockets) that each hold DATA: id -> port."""
    with memory_storage_servers(KEY, {ID: DATA}) as ports:
        yield ports


@pytest.fixture
def service(tmp_path: Path, servers: dict[int, int]) -> ProxyService:
    """A proxy whose users may keep 2500 bytes each; ana has dir/first.txt (DATA), shared."""
    catalog = Catalog(tmp_path)
    registry = Registry(dead_after=60)
    uploads = Uploads()
    config = ProxyConfig(chunk_size=CHUNK, replicas=2, heartbeat=1, default_quota=2500)
    svc = ProxyService(
        catalog, registry, uploads, Collector(catalog, registry, uploads, StorageClient(KEY)), config, KEY
    )
    for i, port in servers.items():
        registry.register(i, "127.0.0.1", port, 10**9, 0, 0)
    catalog.add_user("ana", "00", "11")
    catalog.add_session(token_hash("tok"), "ana")
    catalog.put_file("ana", "dir/first.txt", len(DATA), SHA1, [[ID, len(DATA)]], {ID: [1, 2]})
    catalog.add_share("link-token", "ana", "dir/first.txt")
    return svc


def call(svc: ProxyService, msg_type: MsgType, header: Mapping[str, Any]) -> dict[str, Any]:
    request = Request(msg_type, {"session": "tok", **header}, local=("10.0.0.1", 9000))
    return dict(dispatch(svc.handlers(), svc.authenticate, request).header)


def upload(svc: ProxyService, name: str) -> str:
    """Begin and prove an upload of DATA (the servers hold it: nothing to send); its id."""
    manifest = {
        "name": name,
        "size": len(DATA),
        "sha1": SHA1,
        "chunk_size": CHUNK,
        "chunks": [[ID, len(DATA)]],
    }
    started = call(svc, MsgType.UPLOAD_BEGIN, manifest)
    challenge = started["challenge"]
    proofs = [proof_digest(challenge["nonce"], ID, DATA[o : o + n]) for o, n in challenge["ranges"]]
    assert (
        call(svc, MsgType.UPLOAD_PROVE, {"upload_id": started["upload_id"], "proofs": proofs})["missing"]
        == []
    )
    return str(started["upload_id"])


def commit(svc: ProxyService, upload_id: str) -> dict[str, Any]:
    return dict(call(svc, MsgType.UPLOAD_COMMIT, {"upload_id": upload_id})["file"])


def test_two_uploads_begun_within_the_quota_cannot_both_commit_past_it(service: ProxyService) -> None:
    first, second = upload(service, "a.txt"), upload(service, "b.txt")  # each: 1000 + 1000 <= 2500
    assert commit(service, first)["version"] == 1
    with pytest.raises(QuotaExceeded, match=re.escape("needs 1000 B, and you use 2.0 KiB of 2.4 KiB")):
        commit(service, second)  # 3000 > 2500: the second cannot slip in
    assert service.catalog.file("ana", "b.txt") is None
    with pytest.raises(QuotaExceeded, match=re.escape("'c.txt' needs 1000 B")):
        upload(service, "c.txt")  # refused at UPLOAD_BEGIN, before any placement


def test_whoami_says_usage_quota_and_files(service: ProxyService) -> None:
    assert call(service, MsgType.WHOAMI, {}) == {"user": "ana", "usage": 1000, "quota": 2500, "files": 1}


def test_upload_begin_refuses_a_file_folder_clash(service: ProxyService) -> None:
    with pytest.raises(Conflict, match="'dir' is a folder"):
        upload(service, "dir")
    with pytest.raises(Conflict, match=re.escape("'dir/first.txt' is a file")):
        upload(service, "dir/first.txt/x")


def test_locate_a_version_by_name_never_by_link(service: ProxyService) -> None:
    commit(service, upload(service, "dir/first.txt"))
    old = call(service, MsgType.LOCATE, {"name": "dir/first.txt", "version": 1})
    assert (old["version"], old["versions"], [c["id"] for c in old["chunks"]]) == (1, 2, [ID])
    with pytest.raises(NotFound, match="no version 3"):
        call(service, MsgType.LOCATE, {"name": "dir/first.txt", "version": 3})
    with pytest.raises(InvalidRequest, match="current version"):
        call(service, MsgType.LOCATE, {"token": "link-token", "version": 1})
    current = call(service, MsgType.LOCATE, {"name": "dir/first.txt"})
    by_link = call(service, MsgType.LOCATE, {"token": "link-token"})
    assert current["version"] == 2 and "version" not in by_link  # a link holder is told no versions
    assert (by_link["sha1"], by_link["uploaded"]) == (current["sha1"], current["uploaded"])


@pytest.mark.parametrize(
    ("msg_type", "header", "error", "message"),
    [
        (MsgType.VERSIONS, {"name": "nope"}, NotFound, "no file named 'nope'"),
        (MsgType.VERSIONS, {"name": "a//b"}, InvalidRequest, "empty folder name"),
        (MsgType.RESTORE, {"name": "dir/first.txt", "version": 0}, InvalidRequest, "1 or more"),
        (MsgType.RESTORE, {"name": "dir/first.txt", "version": 1}, Conflict, "already the current"),
        (MsgType.MOVE, {"old": "dir", "new": "x\u202etxt"}, InvalidRequest, "text-direction"),
        (MsgType.MOVE, {"old": "dir/first.txt", "new": "dir"}, Conflict, "'dir' is a folder"),
        (MsgType.DELETE, {"name": "dir"}, Conflict, "'dir' is a folder"),
        (MsgType.LIST, {"prefix": "x" * 2000}, InvalidRequest, "prefix too long"),
    ],
)
def test_refusals_change_nothing(
    service: ProxyService, msg_type: MsgType, header: dict[str, Any], error: type[Exception], message: str
) -> None:
    before = call(service, MsgType.LIST, {})
    with pytest.raises(error, match=message):
        call(service, msg_type, header)
    assert call(service, MsgType.LIST, {}) == before


def test_delete_recursive_and_list_prefix(service: ProxyService) -> None:
    commit(service, upload(service, "dir/sub/second.txt"))
    assert [f["name"] for f in call(service, MsgType.LIST, {"prefix": "dir/sub/"})["files"]] == [
        "dir/sub/second.txt"
    ]
    assert call(service, MsgType.DELETE, {"name": "dir", "recursive": True}) == {
        "deleted": 2,
        "freed_chunks": 1,
    }
    assert call(service, MsgType.LIST, {})["files"] == []
