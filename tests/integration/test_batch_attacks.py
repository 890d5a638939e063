"""Attacks on issue 10's batch messages, made with raw requests against a real cluster.

UPLOAD_BEGIN_MANY / UPLOAD_PROVE_MANY / UPLOAD_COMMIT_MANY, a streamed UPLOAD_BEGIN (``streamed``,
``upload_id``) and its commit's ``sha1``, LOCATE_MANY / RELEASE_MANY and LIST paging, each played by
an attacker with an account of her own (or none): docs/SECURITY.md promises that a batch does what
the same single requests could do and no more.  Each attempt must be refused with a clear error,
leave the catalog as it was, and leave the proxy answering.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from client.api import Client
from common.errors import AuthError, Conflict, InvalidRequest, NotFound, PeerClosed, QuotaExceeded
from common.hashing import EMPTY_SHA1
from common.limits import MAX_CHUNKS_PER_BATCH, MAX_CHUNKS_PER_FILE, MAX_FILES_PER_BATCH, MAX_LOCATE_MANY
from common.messages import MsgType
from common.protocol import MAGIC, PREFIX, VERSION
from common.sizes import human_size
from common.transport import Connection
from proxy.ownership import Challenge
from proxy.uploads import MAX_PENDING_PER_OWNER, Uploads
from tests.cluster import CHUNK, Cluster
from tests.conftest import new_user
from tests.integration.test_attacks import guessed_proofs, honest_proofs, manifest, refused

QUOTA = 16 * CHUNK


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(
        tmp_path_factory.mktemp("batch-attacks"), servers=3, proxy_args=("--default-quota", str(QUOTA))
    ).start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def victim(cluster: Cluster) -> Iterator[Client]:
    c = new_user(cluster, "victim")
    yield c
    c.close()


@pytest.fixture
def mallory(cluster: Cluster) -> Iterator[Client]:
    c = new_user(cluster, "mallory")
    yield c
    c.close()


# -- helpers ------------------------------------------------------------------------------------------
def file_of(name: str, data: bytes) -> dict[str, Any]:
    """One file of an UPLOAD_BEGIN_MANY."""
    m = manifest(name, data)
    return {k: m[k] for k in ("name", "size", "sha1", "chunks")}


def begin_many(c: Client, files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    reply = c.proxy.call(MsgType.UPLOAD_BEGIN_MANY, {"chunk_size": CHUNK, "files": files}, session=True)
    results: list[dict[str, Any]] = reply["results"]
    assert len(results) == len(files)
    return results


def prove_many(c: Client, uploads: list[list[Any]]) -> dict[str, Any]:
    return c.proxy.call(MsgType.UPLOAD_PROVE_MANY, {"uploads": uploads}, session=True)


def commit_many(c: Client, uploads: list[list[Any]]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = c.proxy.call(
        MsgType.UPLOAD_COMMIT_MANY, {"uploads": uploads}, session=True
    )["results"]
    return results


def code(result: dict[str, Any]) -> str:
    assert "error" in result, f"not refused: {result!r}"
    assert result["error"]["message"] and "\n" not in result["error"]["message"]
    return str(result["error"]["code"])


def missing_by_file(proved: dict[str, Any]) -> dict[int, set[str]]:
    found: dict[int, set[str]] = {}
    for m in proved["missing"]:
        found.setdefault(m["file"], set()).add(m["id"])
    return found


def names(c: Client) -> list[str]:
    return sorted(f["name"] for f in c.list())


def stored(c: Client, tmp_path: Path, name: str, data: bytes) -> bytes:
    """``data`` uploaded by ``c`` as ``name`` (honestly, with the client library)."""
    src = tmp_path / f"src-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    src.write_bytes(data)
    c.upload(src, name=name)
    return data


def raw_call(cluster: Cluster, msg_type: MsgType, header: dict[str, Any]) -> dict[str, Any]:
    """A request sent as bytes of the attacker's making: no check of the client library's on the way."""
    body = json.dumps(header).encode()
    with Connection.connect("127.0.0.1", cluster.proxy_port, timeout=10.0) as conn:
        conn.sock.sendall(PREFIX.pack(MAGIC, VERSION, msg_type, len(body), 0) + body)
        return conn.read_reply(msg_type)


def declare(c: Client, name: str, size: int, chunks: list[list[Any]], **more: Any) -> dict[str, Any]:
    header = {"name": name, "size": size, "chunk_size": CHUNK, "chunks": chunks, **more}
    return c.proxy.call(MsgType.UPLOAD_BEGIN, header, session=True)


# -- someone else's uploads ---------------------------------------------------------------------------
def test_no_batch_message_reaches_another_users_upload(
    cluster: Cluster, victim: Client, mallory: Client, tmp_path: Path
) -> None:
    data = stored(victim, tmp_path, "orig.bin", os.urandom(CHUNK + 100))
    began = begin_many(victim, [file_of("copy1.bin", data), file_of("copy2.bin", data)])
    ids = [r["upload_id"] for r in began]
    streamed = declare(victim, "big.bin", 2 * CHUNK, manifest("x", data)["chunks"][:1], streamed=True)
    sid = streamed["upload_id"]
    own = begin_many(mallory, [file_of("m.bin", b"mallory's own")])[0]
    # her proofs for the victim's uploads, mixed with her own: the victim's are unknown to her
    proved = prove_many(
        mallory, [[ids[0], guessed_proofs(data, began[0]["challenge"])], [own["upload_id"], []]]
    )
    assert code(proved["results"][0]) == NotFound.code
    assert code(proved["results"][1]) == InvalidRequest.code  # her own, with the wrong number of proofs
    assert all(m["file"] == 1 for m in proved["missing"])
    for uploads in ([[ids[0], []], [ids[1], []]], [[sid, []]]):
        assert {code(r) for r in commit_many(mallory, uploads)} == {NotFound.code}
    assert code(prove_many(mallory, [[sid, ["0" * 64]]])["results"][0]) == NotFound.code
    refused(
        NotFound,
        "prove a streamed upload of another",
        lambda: mallory.proxy.call(
            MsgType.UPLOAD_PROVE, {"upload_id": sid, "proofs": ["0" * 64]}, session=True
        ),
    )
    refused(
        NotFound,
        "extend another's streamed upload",
        lambda: declare(mallory, "big.bin", 2 * CHUNK, manifest("x", data)["chunks"][1:], upload_id=sid),
    )
    refused(
        NotFound,
        "tickets of another's upload",
        lambda: mallory.proxy.call(MsgType.UPLOAD_TICKETS, {"upload_id": ids[0]}, session=True),
    )
    for upload_id in (*ids, sid):  # answered as for a gone upload, and nothing parked
        assert mallory.proxy.call(MsgType.UPLOAD_ABORT, {"upload_id": upload_id}, session=True) == {}
    stranger = cluster.client()
    try:
        for msg, header in (
            (MsgType.UPLOAD_BEGIN_MANY, {"chunk_size": CHUNK, "files": [file_of("s", b"s")]}),
            (MsgType.UPLOAD_PROVE_MANY, {"uploads": [[ids[0], []]]}),
            (MsgType.UPLOAD_COMMIT_MANY, {"uploads": [[ids[0], []]]}),
        ):
            refused(
                AuthError,
                f"{msg.name} without a session",
                partial(stranger.proxy.call, msg, {**header, "session": "x" * 43}),
            )
    finally:
        stranger.close()
    assert names(mallory) == []
    # the victim's uploads are intact: proven (every chunk was hers already) and committed
    proofs = [[i, honest_proofs(data, r["challenge"])] for i, r in zip(ids, began, strict=True)]
    assert prove_many(victim, proofs) == {"results": [{}, {}], "missing": []}
    assert [r["file"]["name"] for r in commit_many(victim, [[i, []] for i in ids])] == [
        "copy1.bin",
        "copy2.bin",
    ]
    victim.proxy.call(
        MsgType.UPLOAD_PROVE,
        {"upload_id": sid, "proofs": honest_proofs(data[:CHUNK], streamed["challenge"])},
        session=True,
    )
    assert names(victim) == ["copy1.bin", "copy2.bin", "orig.bin"]


# -- dedup without proof ------------------------------------------------------------------------------
def test_a_batch_dedups_no_chunk_its_upload_did_not_prove(
    victim: Client, mallory: Client, tmp_path: Path
) -> None:
    secret = stored(victim, tmp_path, "secret.bin", os.urandom(2 * CHUNK))
    mine = os.urandom(CHUNK)
    files = [file_of("stolen.bin", secret), file_of("mine.bin", mine), file_of("again.bin", secret)]
    began = begin_many(mallory, files)
    ids = [r["upload_id"] for r in began]
    honest_mine = honest_proofs(mine, began[1]["challenge"])
    attempts: list[list[Any]] = [
        [ids[0], guessed_proofs(secret, began[0]["challenge"])],  # knows the hashes, not the bytes
        [ids[1], honest_mine],
        [ids[2], honest_mine + honest_mine],  # another file's proofs, one per chunk: not its own
    ]
    proved = prove_many(mallory, attempts)
    assert proved["results"] == [{}, {}, {}]
    want = {c for c, _ in files[0]["chunks"]}
    assert missing_by_file(proved) == {0: want, 1: {files[1]["chunks"][0][0]}, 2: want}  # she sends all
    # proven once, an upload is not proven again with better luck, nor with a proof of another's batch
    again = prove_many(mallory, [[ids[0], honest_mine + honest_mine]])
    assert code(again["results"][0]) == Conflict.code
    one, other = (begin_many(mallory, [file_of(n, secret)])[0] for n in ("one.bin", "other.bin"))
    mixed = prove_many(mallory, [[one["upload_id"], ["0" * 64] * 2], [other["upload_id"], ["0" * 64] * 2]])
    assert mixed["results"][0] == {} and code(mixed["results"][1]) == InvalidRequest.code
    assert missing_by_file(mixed) == {0: want}
    forged = [[server, "0" * 64] for server in range(1, 4)]
    committed = commit_many(
        mallory, [[ids[0], forged], [ids[2], []], [one["upload_id"], []], [other["upload_id"], []]]
    )
    assert [code(r) for r in committed] == [Conflict.code] * 4
    assert "receipt" in committed[0]["error"]["message"]
    assert names(mallory) == []  # mine.bin: proven, not sent, not committed
    assert names(victim) == ["secret.bin"]


def test_an_upload_is_named_once_in_a_batch(mallory: Client, tmp_path: Path) -> None:
    data = stored(mallory, tmp_path, "have.bin", os.urandom(CHUNK // 2))
    began = begin_many(mallory, [file_of("twice.bin", data)])[0]
    proofs = honest_proofs(data, began["challenge"])
    proved = prove_many(mallory, [[began["upload_id"], proofs], [began["upload_id"], proofs]])
    assert proved["results"][0] == {} and code(proved["results"][1]) == InvalidRequest.code
    twice = commit_many(mallory, [[began["upload_id"], []], [began["upload_id"], []]])
    assert twice[0]["file"]["version"] == 1 and code(twice[1]) == InvalidRequest.code
    assert [v["version"] for v in mallory.versions("twice.bin")] == [1]
    shapes: list[Any] = [
        ["id"],
        [1, []],
        ["id", "proofs"],
        "id",
        None,
        [["a", "b"], []],
        ["id", [], "more"],
        {"a": 1},
    ]
    for bad in shapes:
        refused_item = prove_many(mallory, [bad])["results"][0]
        assert code(refused_item) == InvalidRequest.code
        assert code(commit_many(mallory, [bad])[0]) == InvalidRequest.code
    assert names(mallory) == ["have.bin", "twice.bin"]


# -- streamed uploads -------------------------------------------------------------------------------
def test_a_streamed_upload_commits_only_whole_proven_and_received(
    victim: Client, mallory: Client, tmp_path: Path
) -> None:
    secret = stored(victim, tmp_path, "secret.bin", os.urandom(3 * CHUNK))
    chunks = manifest("x", secret)["chunks"]
    size = len(secret)
    first = declare(mallory, "s.bin", size, chunks[:1], streamed=True)
    sid = first["upload_id"]
    refused(
        Conflict,
        "declare before the proof round",
        lambda: declare(mallory, "s.bin", size, chunks[1:2], upload_id=sid),
    )
    refused(
        InvalidRequest,
        "prove a streamed upload in a batch",
        lambda: _raise(prove_many(mallory, [[sid, ["0" * 64]]])),
    )
    mallory.proxy.call(MsgType.UPLOAD_PROVE, {"upload_id": sid, "proofs": ["0" * 64]}, session=True)
    for bad, why in (
        ([[chunks[1][0], CHUNK - 1]], "chunk 1 should be"),  # a short chunk in the middle
        (chunks[1:] + chunks[:1], "has 3 chunks"),  # past the declared size
        ([["zz", CHUNK]], "chunk id"),
    ):
        refused(
            InvalidRequest,
            f"declare {why}",
            partial(declare, mallory, "s.bin", size, bad, upload_id=sid),
        )
    for header in ({"name": "t.bin"}, {"size": size + CHUNK}, {"chunk_size": 2 * CHUNK}):
        refused(
            InvalidRequest,
            f"another file's batch {header}",
            partial(
                mallory.proxy.call,
                MsgType.UPLOAD_BEGIN,
                {
                    "name": "s.bin",
                    "size": size,
                    "chunk_size": CHUNK,
                    "chunks": chunks[1:2],
                    "upload_id": sid,
                    **header,
                },
                session=True,
            ),
        )
    commit = {"upload_id": sid, "receipts": [], "sha1": hashlib.sha1(secret).hexdigest()}
    refused(
        InvalidRequest,
        "commit with chunks missing",
        lambda: mallory.proxy.call(MsgType.UPLOAD_COMMIT, commit, session=True),
    )
    second = declare(mallory, "s.bin", size, chunks[1:], upload_id=sid)
    assert len(second["challenge"]["ranges"]) == 2  # only the new chunks are challenged
    refused(
        Conflict,
        "commit before the last proof round",
        lambda: mallory.proxy.call(MsgType.UPLOAD_COMMIT, commit, session=True),
    )
    missing = mallory.proxy.call(
        MsgType.UPLOAD_PROVE, {"upload_id": sid, "proofs": ["0" * 64] * 2}, session=True
    )
    assert {m["id"] for m in missing["missing"]} == {c for c, _ in chunks[1:]}
    refused(
        InvalidRequest,
        "more chunks after the last",
        lambda: declare(mallory, "s.bin", size, chunks[:1], upload_id=sid),
    )
    refused(
        InvalidRequest, "commit in a batch", lambda: _raise({"results": commit_many(mallory, [[sid, []]])})
    )
    for sha1 in (None, "xyz", 40 * "g"):
        bad_commit = {k: v for k, v in {**commit, "sha1": sha1}.items() if v is not None}
        refused(
            InvalidRequest,
            f"commit with sha1 {sha1}",
            partial(mallory.proxy.call, MsgType.UPLOAD_COMMIT, bad_commit, session=True),
        )
    forged = {**commit, "receipts": [[server, "0" * 64] for server in range(1, 4)]}
    refused(
        Conflict,
        "commit with forged receipts",
        lambda: mallory.proxy.call(MsgType.UPLOAD_COMMIT, forged, session=True),
    )
    refused(
        NotFound,
        "commit after a refusal",
        lambda: mallory.proxy.call(MsgType.UPLOAD_COMMIT, commit, session=True),
    )
    empty = declare(mallory, "e.bin", 0, [], streamed=True)
    mallory.proxy.call(MsgType.UPLOAD_PROVE, {"upload_id": empty["upload_id"], "proofs": []}, session=True)
    refused(
        InvalidRequest,
        "an empty file with a SHA-1 of bytes",
        lambda: mallory.proxy.call(
            MsgType.UPLOAD_COMMIT, {"upload_id": empty["upload_id"], "sha1": commit["sha1"]}, session=True
        ),
    )
    assert (
        mallory.proxy.call(
            MsgType.UPLOAD_COMMIT, {"upload_id": empty["upload_id"], "sha1": EMPTY_SHA1}, session=True
        )["file"]["size"]
        == 0
    )
    refused(
        InvalidRequest,
        "a whole upload declared in batches",
        lambda: declare(
            mallory,
            "w.bin",
            0,
            [],
            sha1=EMPTY_SHA1,
            upload_id=_raise_id(declare(mallory, "w.bin", 0, [], sha1=EMPTY_SHA1)),
        ),
    )
    assert names(mallory) == ["e.bin"] and names(victim) == ["secret.bin"]


def _raise(reply: dict[str, Any]) -> None:
    """A batch reply's first refusal, raised as the single request would raise it."""
    error = reply["results"][0].get("error")
    if error:
        raise {c.code: c for c in (InvalidRequest, Conflict, NotFound)}[error["code"]](error["message"])


def _raise_id(reply: dict[str, Any]) -> str:
    return str(reply["upload_id"])


# -- quotas and names ---------------------------------------------------------------------------------
def test_a_batch_passes_no_quota_and_no_name_twice(mallory: Client, tmp_path: Path) -> None:
    third = [file_of(f"q{i}.bin", os.urandom(QUOTA // 3)) for i in range(4)]  # each under the quota
    began = begin_many(mallory, third)
    assert [code(r) for r in began[3:]] == [QuotaExceeded.code] and all("upload_id" in r for r in began[:3])
    said = began[3]["error"]["message"]  # the file's own size, and the usage the batch's others make
    used = f"you use {human_size(3 * (QUOTA // 3))} of {human_size(QUOTA)}"
    assert f"'q3.bin' needs {human_size(QUOTA // 3)}, and {used} (counting the files before it in" in said
    for r in began[:3]:
        mallory.proxy.call(MsgType.UPLOAD_ABORT, {"upload_id": r["upload_id"]}, session=True)
    half = QUOTA // 2 + 1
    sid = declare(mallory, "grows.bin", half, [], streamed=True)["upload_id"]  # within the quota now
    refused(
        QuotaExceeded,
        "a streamed file past the quota",
        lambda: declare(mallory, "huge.bin", QUOTA + 1, [], streamed=True),
    )
    mallory.proxy.call(MsgType.UPLOAD_PROVE, {"upload_id": sid, "proofs": []}, session=True)
    refused(
        InvalidRequest,
        "a streamed file growing past its size",
        lambda: mallory.proxy.call(
            MsgType.UPLOAD_BEGIN,
            {"name": "grows.bin", "size": QUOTA, "chunk_size": CHUNK, "chunks": [], "upload_id": sid},
            session=True,
        ),
    )
    seed = stored(mallory, tmp_path, "seed.bin", os.urandom(half))  # the quota is half used now
    small = stored(mallory, tmp_path, "small.bin", os.urandom(100))
    # a name twice, and a file with a folder of its name, in one batch: the later ones are refused
    same = [file_of("n.bin", small), file_of("n.bin", small), file_of("d", small), file_of("d/x", small)]
    began = begin_many(mallory, same)
    ids = [r["upload_id"] for r in began]
    proofs = [[i, honest_proofs(small, r["challenge"])] for i, r in zip(ids, began, strict=True)]
    assert prove_many(mallory, proofs) == {"results": [{}] * 4, "missing": []}
    committed = commit_many(mallory, [[i, []] for i in ids])
    assert [r.get("file", {}).get("name") for r in committed] == ["n.bin", None, "d", None]
    assert [code(r) for r in committed if "error" in r] == [Conflict.code, Conflict.code]
    # the streamed file, proven whole (every chunk already hers), is checked against the quota again
    more = declare(mallory, "grows.bin", half, manifest("x", seed)["chunks"], upload_id=sid)
    proved = mallory.proxy.call(
        MsgType.UPLOAD_PROVE,
        {"upload_id": sid, "proofs": honest_proofs(seed, more["challenge"])},
        session=True,
    )
    assert proved["missing"] == []
    commit = {"upload_id": sid, "sha1": hashlib.sha1(seed).hexdigest()}
    refused(
        QuotaExceeded,
        "a streamed file past the quota at its commit",
        lambda: mallory.proxy.call(MsgType.UPLOAD_COMMIT, commit, session=True),
    )
    assert names(mallory) == ["d", "n.bin", "seed.bin", "small.bin"]
    assert mallory.account()["usage"] == half + 300


def test_locate_many_finds_only_what_a_locate_would(
    cluster: Cluster, victim: Client, mallory: Client, tmp_path: Path
) -> None:
    stored(victim, tmp_path, "docs/a.txt", b"a" * 100)
    stored(victim, tmp_path, "private.txt", b"p" * 100)
    stored(victim, tmp_path, "docs2/b.txt", b"b" * 100)
    token = victim.share("docs")["token"]
    reply = mallory.proxy.call(MsgType.LOCATE_MANY, {"names": ["docs/a.txt", "private.txt"]}, session=True)
    assert [code(f) for f in reply["files"]] == [NotFound.code] * 2 and reply["servers"] == []
    escapes = [
        "../private.txt",
        "/private.txt",
        "/docs/a.txt",
        "a.txt/..",
        "./a.txt",
        "a.txt/",
        "",
        "//a.txt",
        "..",
        "../docs2/b.txt",
        "docs/../../private.txt",
        "x" * 5000,
        "a.txt\x00",
        "A.TXT",
    ]
    stranger = cluster.client()
    try:
        reply = stranger.proxy.call(MsgType.LOCATE_MANY, {"token": token, "paths": ["a.txt", *escapes]})
        first, *rest = reply["files"]
        assert first["size"] == 100
        assert [code(f) for f in rest] and all(
            code(f) in (InvalidRequest.code, NotFound.code) for f in rest
        ), rest
        for header, error in (
            ({"names": ["docs/a.txt"]}, AuthError),  # names need a session
            ({"token": token, "paths": ["a.txt"] * (MAX_LOCATE_MANY + 1)}, InvalidRequest),
            ({"token": token, "paths": []}, InvalidRequest),
            ({"token": token, "paths": [1, 2]}, InvalidRequest),
            ({"token": token, "names": ["a.txt"]}, InvalidRequest),
            ({"token": "", "paths": ["a.txt"]}, InvalidRequest),
            ({"paths": ["a.txt"]}, InvalidRequest),
            ({}, InvalidRequest),
        ):
            refused(
                error,
                f"LOCATE_MANY {str(header)[:60]}",
                partial(stranger.proxy.call, MsgType.LOCATE_MANY, header),
            )
        forged = stranger.proxy.call(MsgType.LOCATE_MANY, {"token": "x" * 43, "paths": ["a.txt"]})["files"]
        assert code(forged[0]) in (NotFound.code, AuthError.code)
        # leases: ending ones she does not hold (unknown ids) ends nothing of the victim's
        lease = reply["files"][0]["lease"]
        assert stranger.proxy.call(MsgType.RELEASE_MANY, {"leases": ["x" * 43, lease[:-1], ""]}) == {}
        for bad in ([], [1], ["x"] * (MAX_LOCATE_MANY + 1)):
            refused(
                InvalidRequest,
                f"RELEASE_MANY {len(bad)}",
                partial(stranger.proxy.call, MsgType.RELEASE_MANY, {"leases": bad}),
            )
        assert stranger.proxy.call(MsgType.LOCATE, {"lease": lease})  # still held: renewable
    finally:
        stranger.close()
    assert names(victim) == ["docs/a.txt", "docs2/b.txt", "private.txt"]


def test_list_paging_shows_only_your_own_names_whatever_the_bounds(
    cluster: Cluster, victim: Client, mallory: Client, tmp_path: Path
) -> None:
    for name in ("a", "b/c", "b/d", "z"):
        stored(victim, tmp_path, name, name.encode())
    stored(mallory, tmp_path, "m", b"m")

    def page(c: Client, **h: Any) -> dict[str, Any]:
        return c.proxy.call(MsgType.LIST, h, session=True)

    for bad in (
        {"limit": 0},
        {"limit": -1},
        {"limit": 10_001},
        {"limit": 2**62},
        {"after": "x" * 1100},
        {"prefix": "x" * 1100, "limit": 1},
    ):
        refused(InvalidRequest, f"LIST {str(bad)[:40]}", partial(page, victim, **bad))
    for after in ("", "\x00", "\U0010ffff", "a", "b/", "m", "zz", "../", "/"):
        shown = page(mallory, after=after, limit=10)
        assert [f["name"] for f in shown["files"]] == (["m"] if after < "m" else []) and shown[
            "more"
        ] is False
    for header in ({"after": 5}, {"limit": "1"}, {"limit": 1.5}, {"limit": True}, {"after": ["a"]}):
        with pytest.raises(PeerClosed):  # the wrong JSON type, sent raw: a protocol error
            raw_call(cluster, MsgType.LIST, {"session": victim.proxy.token, **header})
    got: list[str] = []
    after = ""
    while True:
        shown = page(victim, after=after, limit=1)
        got += [f["name"] for f in shown["files"]]
        if not shown["more"]:
            break
        after = got[-1]
    assert got == ["a", "b/c", "b/d", "z"]
    assert [f["name"] for f in page(victim, prefix="b/", after="b/c", limit=5)["files"]] == ["b/d"]


# -- hostile shapes ----------------------------------------------------------------------------------
def test_hostile_batch_shapes_are_refused_cheaply(cluster: Cluster, mallory: Client) -> None:
    one = [["a" * 64, CHUNK]]
    full = {"name": "f", "size": CHUNK, "sha1": "0" * 40, "chunks": one}
    for files in ([], [full] * (MAX_FILES_PER_BATCH + 1)):
        refused(InvalidRequest, f"{len(files)} files", partial(begin_many, mallory, files))
    over = [
        {**full, "name": f"f{i}", "size": 5 * CHUNK, "chunks": one * 5}
        for i in range(MAX_CHUNKS_PER_BATCH // 5 + 1)
    ]
    refused(InvalidRequest, "too many chunks in all", lambda: begin_many(mallory, over))
    refused(
        Conflict,
        "another chunk size",
        lambda: mallory.proxy.call(
            MsgType.UPLOAD_BEGIN_MANY, {"chunk_size": 1, "files": [full]}, session=True
        ),
    )
    shapes: list[Any] = [
        1,
        "f",
        None,
        [],
        {},
        {**full, "extra": 1},
        {**full, "size": True},
        {**full, "size": -1},
        {**full, "size": 2 * CHUNK},
        {**full, "chunks": [["a" * 64]]},
        {**full, "chunks": [["A" * 64, CHUNK]]},
        {**full, "name": "../x"},
        {**full, "name": ""},
        {**full, "name": "a//b"},
        {**full, "sha1": "x"},
        {**full, "chunks": [[["a" * 64], CHUNK]]},
        {**full, "chunks": [["a" * 64, CHUNK - 1]]},
        {**full, "name": "two", "size": 2 * CHUNK - 1, "chunks": [["b" * 64, CHUNK], ["a" * 64, CHUNK - 1]]},
    ]
    results = begin_many(mallory, [full, *shapes])
    assert "upload_id" in results[0]
    assert [code(r) for r in results[1:]] == [InvalidRequest.code] * len(shapes), results
    # the most a batch may be: 256 files, 1 024 chunks, every chunk one id; answered, and quickly forgotten
    many = [
        {**full, "name": f"d/f{i}", "size": 4 * CHUNK, "chunks": one * 4} for i in range(MAX_FILES_PER_BATCH)
    ]
    began = begin_many(mallory, many)
    assert sum("upload_id" in r for r in began) == QUOTA // (4 * CHUNK)  # the quota: the rest refused
    ids = [r["upload_id"] for r in began if "upload_id" in r]
    proved = prove_many(mallory, [[i, ["0" * 64]] for i in ids])
    assert proved["results"] == [{}] * len(ids) and {m["id"] for m in proved["missing"]} == {"a" * 64}
    assert [code(r) for r in commit_many(mallory, [[i, []] for i in ids])] == [Conflict.code] * len(ids)
    with pytest.raises(PeerClosed):  # nested past the codec's limit: a protocol error, the connection drops
        mallory.proxy.call(MsgType.UPLOAD_PROVE_MANY, {"uploads": [[[[[[[["x"]]]]]]]]}, session=True)
    assert mallory.whoami() and names(mallory) == []


def test_unfinished_uploads_cannot_grow_the_proxys_memory(cluster: Cluster) -> None:
    flooder = new_user(cluster, "flooder")
    try:
        files = [file_of(f"f{i}", bytes([i])) for i in range(MAX_FILES_PER_BATCH)]
        began = 0
        for _ in range(MAX_PENDING_PER_OWNER // MAX_FILES_PER_BATCH):
            began += sum("upload_id" in r for r in begin_many(flooder, files))
        assert began == MAX_PENDING_PER_OWNER  # every one begun and left unfinished
        refused_batch = begin_many(flooder, files)  # one more batch: each file refused, none kept
        assert {code(r) for r in refused_batch} == {Conflict.code}
        assert "unfinished uploads" in refused_batch[0]["error"]["message"]
        refused(Conflict, "one more single upload", lambda: declare(flooder, "one", 0, [], sha1=EMPTY_SHA1))
    finally:
        flooder.close()
    other = new_user(cluster, "other")  # the bound is the flooder's alone
    try:
        assert "upload_id" in begin_many(other, [file_of("x", b"x")])[0]
    finally:
        other.close()


def test_unfinished_uploads_are_bounded_in_chunks_too_and_freed_when_they_end() -> None:
    uploads = Uploads()
    nonce = Challenge("n", ())
    big = [[f"{i:064x}", 1] for i in range(MAX_CHUNKS_PER_FILE)]
    first = uploads.begin("eve", "a", 1, "", big, nonce, streamed=True)
    second = uploads.begin("eve", "b", 1, "", big, nonce, streamed=True)
    with pytest.raises(Conflict, match="more than"):
        uploads.begin("eve", "c", 1, "", big[:1], nonce)
    uploads.begin("bob", "c", 1, "", big, nonce)  # another user's bound
    uploads.finish(first.id)
    third = uploads.begin("eve", "c", 1, "", big[:10], nonce, streamed=True)
    with pytest.raises(Conflict, match="more than"):  # a streamed upload's later batches count too
        uploads.declare(third.id, big, nonce)
    uploads.park(second.id)
    uploads.declare(third.id, big[10:], nonce)
    assert len(uploads.get(third.id, "eve").chunks) == MAX_CHUNKS_PER_FILE
