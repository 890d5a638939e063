"""Many small files in a few requests (UPLOAD_BEGIN_MANY, UPLOAD_PROVE_MANY, UPLOAD_COMMIT_MANY):
each file succeeds or fails on its own, and a batch escapes none of the checks a single upload
passes (proof of ownership, receipts, owners)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from client import upload_batch
from client.api import Client
from client.pool import ConnectionPool
from client.put_many import Part, put_group
from client.upload import UploadResult, prove
from client.upload_batch import BatchItem
from common.errors import Conflict, FileClusterError, Forbidden, NotFound, ReplicationFailed
from common.hashing import manifest_of
from common.messages import MsgType
from tests.cluster import CHUNK, Cluster
from tests.conftest import new_user


def run(c: Client, items: list[BatchItem]) -> list[UploadResult | FileClusterError]:
    got: list[tuple[int, UploadResult | FileClusterError]] = []
    c.upload_many(items, lambda i, outcome: got.append((i, outcome)))
    assert [i for i, _ in got] == list(range(len(items)))  # each once, in order
    return [outcome for _, outcome in got]


def test_a_batch_stores_every_file_and_fails_only_the_bad_ones(
    cluster: Cluster, user: Client, tmp_path: Path
) -> None:
    shared = os.urandom(CHUNK)
    files = {
        "a.bin": os.urandom(CHUNK + 5),
        "b.bin": shared,
        "c.bin": shared,  # dedup inside the batch: sent once
        "empty.txt": b"",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    user.upload(tmp_path / "b.bin", name="taken/x.bin")
    items = [BatchItem(tmp_path / n, f"batch/{n}") for n in files]
    items.insert(2, BatchItem(tmp_path / "missing.bin"))
    items.append(BatchItem(tmp_path / "a.bin", "taken"))  # a folder already
    outcomes = run(user, items)
    assert isinstance(outcomes[2], NotFound) and isinstance(outcomes[-1], Conflict)
    good = [o for o in outcomes if isinstance(o, UploadResult)]
    assert [r.name for r in good] == [f"batch/{n}" for n in files]
    assert sum(r.sent for r in good) == CHUNK + 5  # b.bin and c.bin were stored by the first upload
    out = tmp_path / "out"
    for name, data in files.items():
        user.download(f"batch/{name}", out)
        assert (out / name).read_bytes() == data
    # names twice, and a file with a folder of its name, go to later batches: each is committed
    again = run(user, [BatchItem(tmp_path / "a.bin", "v"), BatchItem(tmp_path / "b.bin", "v")])
    assert [r.version for r in again if isinstance(r, UploadResult)] == [1, 2]


def test_batches_commit_in_their_order_while_the_next_ones_are_sent(
    cluster: Cluster, user: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batch k is committed while batch k+1 is sent and k+2 prepared: one name given to files in
    several batches gets its versions in the order of the items, and each outcome is reported
    once, in order."""
    monkeypatch.setattr(upload_batch, "FIRST_FILES", 2)
    monkeypatch.setattr(upload_batch, "MAX_FILES_PER_BATCH", 3)
    commit = upload_batch._Sender._commit
    calls = []

    def slow_first(self: upload_batch._Sender, files: list[Any]) -> None:
        calls.append(len(files))
        if len(calls) == 1:
            time.sleep(0.5)  # the batches after it are sent meanwhile, and must wait to commit
        commit(self, files)

    monkeypatch.setattr(upload_batch._Sender, "_commit", slow_first)
    items, contents = [], []
    for i in range(14):
        data = os.urandom(CHUNK // 4 + i)
        (tmp_path / f"f{i}").write_bytes(data)
        same = i % 3 == 0  # f0, f3, f6, f9, f12 share one name: five batches, five versions
        items.append(BatchItem(tmp_path / f"f{i}", "same.bin" if same else f"many/f{i}"))
        contents.append(data)
    outcomes = run(user, items)
    assert all(isinstance(o, UploadResult) for o in outcomes), outcomes
    assert [o.version for o in outcomes if isinstance(o, UploadResult) and o.name == "same.bin"] == [
        1,
        2,
        3,
        4,
        5,
    ]
    out = tmp_path / "out"
    user.download("same.bin", out)
    assert (out / "same.bin").read_bytes() == contents[12]
    assert len(user.list("many/")) == 14 - 5


def begin(c: Client, paths: list[Path]) -> tuple[list[Any], list[dict[str, Any]]]:
    manifests = [manifest_of(open(p, "rb"), CHUNK) for p in paths]
    files = [
        {"name": p.name, "size": m.size, "sha1": m.sha1, "chunks": [[k.id, k.size] for k in m.chunks]}
        for p, m in zip(paths, manifests, strict=True)
    ]
    reply = c.proxy.call(MsgType.UPLOAD_BEGIN_MANY, {"chunk_size": CHUNK, "files": files}, session=True)
    return manifests, reply["results"]


def test_a_batch_dedups_only_what_each_upload_proved_and_commits_only_with_receipts(
    cluster: Cluster, user: Client, other_user: Client, tmp_path: Path
) -> None:
    stored = tmp_path / "stored.bin"
    stored.write_bytes(os.urandom(2 * CHUNK))
    user.upload(stored)
    twin = tmp_path / "twin.bin"
    twin.write_bytes(stored.read_bytes())
    manifests, began = begin(other_user, [stored, twin])
    assert began[0]["challenge"]["nonce"] == began[1]["challenge"]["nonce"]  # one proof round
    honest = prove(open(stored, "rb"), manifests[0], began[0]["challenge"])
    forged = ["0" * 64 for _ in honest]  # knows the hashes, not the bytes
    ids = [r["upload_id"] for r in began]
    proved = other_user.proxy.call(
        MsgType.UPLOAD_PROVE_MANY, {"uploads": [[ids[0], honest], [ids[1], forged]]}, session=True
    )
    assert proved["results"] == [{}, {}]
    missing: dict[int, list[str]] = {m["file"]: [] for m in proved["missing"]}
    for m in proved["missing"]:
        missing[m["file"]].append(m["id"])
    assert missing == {1: [k.id for k in manifests[1].chunks]}  # the forger must send every chunk
    # another user cannot commit these uploads; without receipts only the deduplicated one commits
    theirs = user.proxy.call(MsgType.UPLOAD_COMMIT_MANY, {"uploads": [[ids[0], []]]}, session=True)
    assert theirs["results"][0]["error"]["code"] == "not_found"
    committed = other_user.proxy.call(
        MsgType.UPLOAD_COMMIT_MANY, {"uploads": [[ids[0], []], [ids[1], []]]}, session=True
    )
    first, second = committed["results"]
    assert first["file"]["name"] == "stored.bin"
    assert second["error"]["code"] == "conflict" and "receipt" in second["error"]["message"]
    assert [f["name"] for f in other_user.list()] == ["stored.bin"]


def test_a_batch_routes_around_a_dead_server(patient_cluster: Cluster, tmp_path: Path) -> None:
    c = new_user(patient_cluster)
    try:
        files = {f"f{i}.bin": os.urandom(CHUNK // 2 + i) for i in range(24)}
        for name, data in files.items():
            (tmp_path / name).write_bytes(data)
        patient_cluster.kill_server(1)  # the proxy still places chunks on it: the client re-places them
        outcomes = run(c, [BatchItem(tmp_path / n) for n in files])
        assert all(isinstance(o, UploadResult) for o in outcomes), outcomes
        for name, data in files.items():
            c.download(name, tmp_path / "out")
            assert (tmp_path / "out" / name).read_bytes() == data
    finally:
        c.close()


def test_chunks_a_group_did_not_store_go_the_one_chunk_way(
    cluster: Cluster, user: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PUT_CHUNKS refused whole (a ticket, a server that does not know it) or failing for some
    chunks (a replica, a disk) costs nothing but time: those chunks are sent one by one."""
    groups: list[int] = []

    def flaky(pool: ConnectionPool, parts: Sequence[Part[Any]]) -> list[list[Any] | FileClusterError]:
        groups.append(len(parts))
        if len(groups) == 1:
            raise Forbidden("the ticket does not match this request")
        results = put_group(pool, parts)
        results[0] = ReplicationFailed("a replica failed", server=parts[0].item["servers"][-1]["id"])
        return results

    monkeypatch.setattr(upload_batch, "put_group", flaky)
    files = {f"f{i}.bin": os.urandom(CHUNK // 8 + i) for i in range(40)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    outcomes = run(user, [BatchItem(tmp_path / n, f"g/{n}") for n in files])
    assert all(isinstance(o, UploadResult) for o in outcomes), outcomes
    assert len(groups) >= 2 and sum(groups) > len(groups)
    assert sum(o.sent for o in outcomes if isinstance(o, UploadResult)) == sum(map(len, files.values()))
    for name, data in files.items():
        user.download(f"g/{name}", tmp_path / "out")
        assert (tmp_path / "out" / name).read_bytes() == data
