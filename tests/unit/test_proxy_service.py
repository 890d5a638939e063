"""The proxy's request logic without sockets, through the same door the wire uses (dispatch)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from common.errors import AuthError, Conflict, FileClusterError, InvalidRequest, ProtocolError
from common.frame_server import Request, dispatch
from common.hashing import EMPTY_SHA1
from common.limits import MAX_CHUNKS_PER_FILE
from common.messages import MsgType
from proxy.auth import token_hash
from proxy.catalog import Catalog
from proxy.collector import Collector
from proxy.registry import Registry
from proxy.service import ProxyConfig, ProxyService
from proxy.uploads import Uploads

CHUNK = 64 * 1024
DATA = b"x" * 1000
ID = hashlib.sha256(DATA).hexdigest()
SHA1 = hashlib.sha1(DATA).hexdigest()


@pytest.fixture
def service(tmp_path: Path) -> ProxyService:
    catalog = Catalog(tmp_path)
    registry = Registry(dead_after=60)
    uploads = Uploads()
    svc = ProxyService(
        catalog,
        registry,
        uploads,
        Collector(catalog, registry, uploads),
        ProxyConfig(chunk_size=CHUNK, replicas=2, heartbeat=1),
    )
    for i in (1, 2):
        registry.register(i, "127.0.0.1", 1, 10**9, 0, 0)
    catalog.add_user("ana", "00", "11")
    catalog.add_session(token_hash("tok"), "ana")
    catalog.put_file("ana", "first.txt", len(DATA), SHA1, [[ID, len(DATA)]], {ID: [1, 2]})
    return svc


def call(svc: ProxyService, msg_type: MsgType, header: Mapping[str, Any]) -> dict[str, Any]:
    reply = dispatch(svc.handlers(), svc.authenticate, Request(msg_type, header, local=("10.0.0.1", 9000)))
    return dict(reply.header)


def begin(svc: ProxyService, name: str, **manifest: Any) -> dict[str, Any]:
    header = {"session": "tok", "name": name, "size": len(DATA), "sha1": SHA1, "chunk_size": CHUNK}
    header["chunks"] = [[ID, manifest.get("size", len(DATA))]]
    header.update(manifest)
    return call(svc, MsgType.UPLOAD_BEGIN, header)


def test_dedup_commit_needs_a_live_copy(service: ProxyService) -> None:
    started = begin(service, "second.txt")
    assert started["missing"] == []  # both copies live: nothing to send
    service.registry.mark_down(1)
    service.registry.mark_down(2)  # ...and then both copies go away before the commit
    with pytest.raises(Conflict, match="no longer has a live copy"):
        call(service, MsgType.UPLOAD_COMMIT, {"session": "tok", "upload_id": started["upload_id"]})
    assert service.catalog.file("ana", "second.txt") is None


def test_a_known_chunk_with_another_size_is_refused(service: ProxyService) -> None:
    with pytest.raises(InvalidRequest, match="bytes, not"):
        begin(service, "liar.txt", size=999)


C2 = "c" * 64
BAD_MANIFESTS: list[tuple[str, dict[str, Any], type[FileClusterError], str]] = [
    ("wrong chunk size", {"chunk_size": CHUNK * 2}, Conflict, "the cluster's chunk size is"),
    ("negative size", {"size": -1, "chunks": []}, InvalidRequest, "cannot be negative"),
    (
        "too large",
        {"size": CHUNK * MAX_CHUNKS_PER_FILE + 1, "chunks": []},
        InvalidRequest,
        "file too large",
    ),
    ("too few chunks", {"size": CHUNK + 1, "chunks": [[C2, CHUNK]]}, InvalidRequest, "has 2 chunks"),
    ("too many chunks", {"size": 10, "chunks": [[C2, 5], [C2, 5]]}, InvalidRequest, "has 1 chunks"),
    ("wrong last size", {"size": CHUNK + 1, "chunks": [[C2, CHUNK], [C2, 2]]}, InvalidRequest, "should be 1"),
    ("wrong first size", {"size": CHUNK + 1, "chunks": [[C2, 1], [C2, 1]]}, InvalidRequest, "should be"),
    ("item not a list", {"size": 10, "chunks": [{"id": C2, "size": 10}]}, InvalidRequest, "each chunk"),
    ("item too short", {"size": 10, "chunks": [[C2]]}, InvalidRequest, "each chunk"),
    ("size not an int", {"size": 10, "chunks": [[C2, "10"]]}, InvalidRequest, "each chunk"),
    ("size a bool", {"size": 1, "chunks": [[C2, True]]}, InvalidRequest, "each chunk"),
    ("bad chunk id", {"size": 10, "chunks": [["../../etc", 10]]}, InvalidRequest, "invalid chunk id"),
    ("empty, wrong SHA-1", {"size": 0, "chunks": [], "sha1": "0" * 40}, InvalidRequest, "SHA-1 of no"),
    ("bad SHA-1", {"sha1": "XYZ"}, InvalidRequest, "invalid SHA-1"),
    ("bad name", {"name": "a/b"}, InvalidRequest, "path separator"),
]


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [case[1:] for case in BAD_MANIFESTS],
    ids=[case[0] for case in BAD_MANIFESTS],
)
def test_upload_begin_refuses_a_bad_manifest(
    service: ProxyService, change: dict[str, Any], error: type[FileClusterError], message: str
) -> None:
    name = change.pop("name", "new.bin")
    with pytest.raises(error, match=message):
        begin(service, name, **change)
    assert service.uploads.pinned(C2) is False  # nothing was pinned for a refused manifest


def test_an_empty_file_with_the_right_sha1_is_accepted(service: ProxyService) -> None:
    started = begin(service, "empty.txt", size=0, chunks=[], sha1=EMPTY_SHA1)
    assert started["missing"] == []
    reply = call(service, MsgType.UPLOAD_COMMIT, {"session": "tok", "upload_id": started["upload_id"]})
    assert reply["file"]["size"] == 0 and reply["file"]["sha1"] == EMPTY_SHA1


@pytest.mark.parametrize("session", [None, "", "not-a-session", 42])
def test_the_door_refuses_requests_without_a_live_session(service: ProxyService, session: object) -> None:
    header: dict[str, Any] = {"session": session, "name": "first.txt"}
    for msg_type in (MsgType.DELETE, MsgType.SHARE):
        with pytest.raises(AuthError, match="not logged in"):
            call(service, msg_type, header)
    assert service.catalog.file("ana", "first.txt") is not None


def test_locate_by_name_needs_a_session_and_by_token_does_not(service: ProxyService) -> None:
    with pytest.raises(AuthError):
        call(service, MsgType.LOCATE, {"name": "first.txt"})
    link = call(service, MsgType.SHARE, {"session": "tok", "name": "first.txt"})
    assert link["link"] == f"filecluster://10.0.0.1:9000/s/{link['token']}"  # the address used
    assert call(service, MsgType.LOCATE, {"token": link["token"]})["name"] == "first.txt"
    assert call(service, MsgType.LOCATE, {"session": "tok", "name": "first.txt"})["size"] == len(DATA)


def test_a_request_the_proxy_does_not_take_is_a_protocol_error(service: ProxyService) -> None:
    with pytest.raises(ProtocolError, match="not a request this server takes"):
        call(service, MsgType.GET_CHUNK, {"id": ID})
