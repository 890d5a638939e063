"""The proxy's request logic without sockets, through the same door the wire uses (dispatch)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from common.cluster_auth import ClusterKey
from common.errors import (
    AuthError,
    Conflict,
    FileClusterError,
    Forbidden,
    InvalidRequest,
    NotFound,
    ProtocolError,
    Throttled,
)
from common.frame_server import Request, dispatch
from common.hashing import EMPTY_SHA1, proof_digest
from common.limits import MAX_CHUNKS_PER_FILE
from common.messages import MsgType
from proxy.auth import token_hash
from proxy.catalog import Catalog
from proxy.collector import Collector
from proxy.registry import Registry
from proxy.service import REPORTS_FREE, ProxyConfig, ProxyService
from proxy.storage_client import StorageClient
from proxy.uploads import Uploads
from tests.fake_storage import memory_storage_servers

CHUNK = 64 * 1024
DATA = b"x" * 1000
ID = hashlib.sha256(DATA).hexdigest()
SHA1 = hashlib.sha1(DATA).hexdigest()


KEY = ClusterKey(b"\x05" * 32)


@pytest.fixture
def servers() -> Iterator[dict[int, int]]:
    """Storage servers 1 and 2 (in-process, real sockets), each holding a copy of DATA: id -> port."""
    with memory_storage_servers(KEY, {ID: DATA}) as ports:
        yield ports


@pytest.fixture
def service(tmp_path: Path, servers: dict[int, int]) -> ProxyService:
    catalog = Catalog(tmp_path)
    registry = Registry(dead_after=60)
    uploads = Uploads()
    svc = ProxyService(
        catalog,
        registry,
        uploads,
        Collector(catalog, registry, uploads, StorageClient(KEY)),
        ProxyConfig(chunk_size=CHUNK, replicas=2, heartbeat=1),
        KEY,
    )
    for i, port in servers.items():
        registry.register(i, "127.0.0.1", port, 10**9, 0, 0)
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


def prove(svc: ProxyService, started: Mapping[str, Any], data: bytes = DATA) -> list[dict[str, Any]]:
    """Answer the challenge from ``data`` (the bytes of ID, or whatever a liar has); the missing list."""
    challenge = started["challenge"]
    proofs = [proof_digest(challenge["nonce"], ID, data[o : o + n]) for o, n in challenge["ranges"]]
    header = {"session": "tok", "upload_id": started["upload_id"], "proofs": proofs}
    return list(call(svc, MsgType.UPLOAD_PROVE, header)["missing"])


def test_dedup_commit_needs_a_live_copy(service: ProxyService) -> None:
    started = begin(service, "second.txt")
    assert prove(service, started) == []  # proven, and both copies live: nothing to send
    service.registry.mark_down(1)
    service.registry.mark_down(2)  # ...and then both copies go away before the commit
    with pytest.raises(Conflict, match="no longer has a live copy"):
        call(service, MsgType.UPLOAD_COMMIT, {"session": "tok", "upload_id": started["upload_id"]})
    assert service.catalog.file("ana", "second.txt") is None


def test_a_known_chunk_claimed_with_another_size_is_placed_without_a_hint(service: ProxyService) -> None:
    started = begin(service, "liar.txt", size=999, sha1="0" * 40)  # no error: that would be an oracle
    assert [m["id"] for m in prove(service, started, b"?" * 999)] == [ID]  # not proven: send it


def test_a_proof_from_the_hashes_alone_does_not_deduplicate(service: ProxyService) -> None:
    started = begin(service, "stolen.txt")
    missing = prove(service, started, b"\0" * len(DATA))  # knows ID, size and SHA-1, not the bytes
    assert [m["id"] for m in missing] == [ID]  # must send the bytes, which it does not have
    assert len(missing[0]["servers"]) == 2 and missing[0]["ticket"]["chain"]
    with pytest.raises(Conflict):  # and without sending them there is nothing to commit
        call(service, MsgType.UPLOAD_COMMIT, {"session": "tok", "upload_id": started["upload_id"]})
    assert service.catalog.file("ana", "stolen.txt") is None


@pytest.mark.parametrize("receipt", ["é" * 22, "A" * 22])
def test_a_forged_receipt_is_refused(service: ProxyService, receipt: str) -> None:
    started = begin(service, "forged.txt")
    placed = prove(service, started, b"\0" * len(DATA))  # not proven: ID is placed on 1 and 2
    receipts = [[s["id"], receipt] for s in placed[0]["servers"]]
    header = {"session": "tok", "upload_id": started["upload_id"], "receipts": receipts}
    with pytest.raises(Conflict, match="no receipt for every chunk"):
        call(service, MsgType.UPLOAD_COMMIT, header)
    assert service.catalog.file("ana", "forged.txt") is None


def test_commit_before_proving_is_refused(service: ProxyService) -> None:
    started = begin(service, "hasty.txt")
    with pytest.raises(Conflict, match="prove the upload first"):
        call(service, MsgType.UPLOAD_COMMIT, {"session": "tok", "upload_id": started["upload_id"]})


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
    ("bad name", {"name": "a//b"}, InvalidRequest, "empty folder name"),
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
    assert started["challenge"]["ranges"] == []
    header = {"session": "tok", "upload_id": started["upload_id"], "proofs": []}
    assert call(service, MsgType.UPLOAD_PROVE, header)["missing"] == []
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


# -- issue 7: leases, reports of bad copies, re-placement, admin -----------------------------------
def locate(svc: ProxyService, **header: Any) -> dict[str, Any]:
    return call(svc, MsgType.LOCATE, header)


def test_a_lease_keeps_a_deleted_files_chunks_until_it_is_released(service: ProxyService) -> None:
    located = locate(service, session="tok", name="first.txt")
    lease = located["lease"]
    assert ID in service.leases.leased()
    call(service, MsgType.DELETE, {"session": "tok", "name": "first.txt"})
    renewed = locate(service, lease=lease)  # no session, no name: the lease is enough
    assert [c["id"] for c in renewed["chunks"]] == [ID] and renewed["ticket"]["exp"] >= located["ticket"][
        "exp"
    ]
    service.collector.run_once()
    assert service.catalog.chunk(ID) is not None  # still there: the download may go on
    call(service, MsgType.RELEASE, {"lease": lease})
    with pytest.raises(NotFound):
        locate(service, lease=lease)
    service.collector.run_once()
    assert service.catalog.chunk(ID) is None


@pytest.mark.parametrize("forge", ["mac", "server", "chunk", "who"])
def test_a_report_of_a_bad_copy_needs_the_ticket_for_that_copy(service: ProxyService, forge: str) -> None:
    located = locate(service, session="tok", name="first.txt")
    copy = located["chunks"][0]["servers"][0]
    ticket = {**located["ticket"], "mac": copy["ticket"]}
    header = {"id": ID, "server": copy["id"], "ticket": ticket, "problem": "corrupt"}
    call(service, MsgType.REPORT_BAD, header)  # the genuine ticket: accepted
    assert (ID, copy["id"]) in service.repairer._reports
    service.repairer._reports.clear()
    forged = {
        "mac": {**header, "ticket": {**ticket, "mac": "A" * 22}},
        "server": {**header, "server": 3 - copy["id"]},
        "chunk": {**header, "id": "0" * 64},
        "who": {**header, "ticket": {**ticket, "who": "user:bob"}},
    }[forge]
    with pytest.raises(Forbidden):
        call(service, MsgType.REPORT_BAD, forged)
    assert not service.repairer._reports


def test_a_reported_copy_is_forgotten_only_if_its_server_finds_it_bad(
    service: ProxyService, servers: dict[int, int]
) -> None:
    service.repairer.report(ID, 1)  # a lie: server 1's copy is fine
    service.repairer.run_once()
    assert set(service.catalog.chunk_servers(ID)) == {1, 2}


def test_upload_replace_avoids_the_failed_servers(service: ProxyService, tmp_path: Path) -> None:
    other = b"y" * 1000
    for i in (3, 4):  # two more servers on the books (never contacted: the client says they failed)
        service.registry.register(i, "127.0.0.1", 1, 10**9, 0, 0)
    header = {
        "session": "tok",
        "name": "new.txt",
        "size": len(other),
        "sha1": hashlib.sha1(other).hexdigest(),
    }
    header.update(chunk_size=CHUNK, chunks=[[hashlib.sha256(other).hexdigest(), len(other)]])
    started = call(service, MsgType.UPLOAD_BEGIN, header)
    challenge = started["challenge"]
    oid = hashlib.sha256(other).hexdigest()
    proofs = [proof_digest(challenge["nonce"], oid, other[o : o + n]) for o, n in challenge["ranges"]]
    first = call(
        service, MsgType.UPLOAD_PROVE, {"session": "tok", "upload_id": started["upload_id"], "proofs": proofs}
    )
    placed = {s["id"] for s in first["missing"][0]["servers"]}
    replaced = call(
        service,
        MsgType.UPLOAD_REPLACE,
        {"session": "tok", "upload_id": started["upload_id"], "chunks": [oid], "avoid": sorted(placed)},
    )["missing"]
    assert {s["id"] for s in replaced[0]["servers"]}.isdisjoint(placed)
    with pytest.raises(InvalidRequest):
        call(
            service,
            MsgType.UPLOAD_REPLACE,
            {"session": "tok", "upload_id": started["upload_id"], "chunks": [ID], "avoid": []},
        )


def test_admin_needs_the_cluster_secret_and_drains_and_forgets(service: ProxyService) -> None:
    def door(header: Mapping[str, Any]) -> None:
        dispatch(service.handlers(), service.authenticate, Request(MsgType.ADMIN, header), KEY)

    with pytest.raises(AuthError):
        door({"action": "status", "session": "tok"})  # a user's session is not enough
    with pytest.raises(AuthError):
        door(ClusterKey(b"\x06" * 32).sign(MsgType.ADMIN, {"action": "status"}))  # another secret

    def admin(**header: Any) -> dict[str, Any]:
        reply = dispatch(
            service.handlers(),
            service.authenticate,
            Request(MsgType.ADMIN, KEY.sign(MsgType.ADMIN, header)),
            KEY,
        )
        return dict(reply.header)

    assert {s["id"] for s in admin(action="status")["servers"]} == {1, 2}
    service.catalog.remember_server(1, "127.0.0.1", 1)
    admin(action="drain", server=1)
    assert service.registry.get(1).draining and service.catalog.draining_servers() == {1}  # type: ignore[union-attr]
    assert all(s.id != 1 for s in service.registry.live())
    with pytest.raises(Conflict):
        admin(action="forget", server=1)  # up, and its chunk still needs it
    admin(action="forget-force", server=1)
    assert service.registry.get(1) is None and 1 not in service.catalog.chunk_servers(ID)
    with pytest.raises(NotFound):
        admin(action="drain", server=9)
    with pytest.raises(InvalidRequest):
        admin(action="explode")


def test_reports_of_bad_copies_are_throttled_per_address(service: ProxyService) -> None:
    located = locate(service, session="tok", name="first.txt")
    copy = located["chunks"][0]["servers"][0]
    header = {"id": ID, "server": copy["id"], "ticket": {**located["ticket"], "mac": copy["ticket"]}}
    header["problem"] = "corrupt"
    for _ in range(REPORTS_FREE):  # each may cost a server a full re-read: a budget per address
        call(service, MsgType.REPORT_BAD, header)
    with pytest.raises(Throttled):
        call(service, MsgType.REPORT_BAD, header)


def test_list_pages_with_limit_and_after(service: ProxyService) -> None:
    for name in ("b.txt", "c.txt"):
        service.catalog.put_file("ana", name, len(DATA), SHA1, [[ID, len(DATA)]], {ID: [1, 2]})
    first = call(service, MsgType.LIST, {"session": "tok", "limit": 2})
    assert [f["name"] for f in first["files"]] == ["b.txt", "c.txt"] and first["more"] is True
    assert first["files"][0]["state"] == "ok"
    rest = call(service, MsgType.LIST, {"session": "tok", "limit": 2, "after": "c.txt"})
    assert [f["name"] for f in rest["files"]] == ["first.txt"] and rest["more"] is False
    for limit in (0, 10_001):
        with pytest.raises(InvalidRequest, match="limit"):
            call(service, MsgType.LIST, {"session": "tok", "limit": limit})
