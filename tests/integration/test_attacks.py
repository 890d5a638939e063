"""Attacks on the cluster's trust, made with raw frames against real daemons.

Each test plays an attacker who can reach every port but holds no cluster secret (only an account
of her own, where the attack needs one): she writes the frames herself, with headers of her own
making, instead of following the client library.  Each asserts that the attack is refused with
its specific error, that it had no effect, and that the victim's file is still listed and
downloads byte for byte.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import secrets
import socket
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from client.api import Client
from common.cluster_auth import ClusterKey, aggregate, parse_secret, server_audience
from common.errors import (
    AuthError,
    Conflict,
    CorruptData,
    FileClusterError,
    Forbidden,
    InvalidRequest,
    NotFound,
)
from common.hashing import proof_digest
from common.messages import MsgType
from common.protocol import encode
from common.transport import Connection
from tests.cluster import CHUNK, Cluster
from tests.conftest import new_user

HOST = "127.0.0.1"


# -- the attacker's tools -------------------------------------------------------------------------
def connect(port: int) -> Connection:
    return Connection.connect(HOST, port, timeout=10.0)


def refused(error: type[FileClusterError], what: str, attempt: Callable[[], object]) -> FileClusterError:
    """Run ``attempt`` and require ``error``; an attempt that succeeds fails the test, named."""
    with pytest.raises(error) as caught:
        outcome = attempt()
        pytest.fail(f"{what}: not refused, the daemon answered {outcome!r}")
    return caught.value


def token_of(client: Client) -> str:
    assert client.proxy.token
    return client.proxy.token


def secret_of(cluster: Cluster) -> bytes:
    return parse_secret(cluster.secret_file.read_text())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pieces(data: bytes) -> list[bytes]:
    return [data[o : o + CHUNK] for o in range(0, len(data), CHUNK)]


def manifest(name: str, data: bytes) -> dict[str, Any]:
    """What UPLOAD_BEGIN says about ``data``: all of it public knowledge once the hashes leak."""
    return {
        "name": name,
        "size": len(data),
        "sha1": hashlib.sha1(data).hexdigest(),
        "chunk_size": CHUNK,
        "chunks": [[sha256(p), len(p)] for p in pieces(data)],
    }


def distinct_chunks(data: bytes) -> dict[str, bytes]:
    return {sha256(p): p for p in pieces(data)}


def honest_proofs(data: bytes, challenge: dict[str, Any]) -> list[str]:
    """The answers of someone who holds the bytes."""
    return [
        proof_digest(challenge["nonce"], cid, chunk[offset : offset + length])
        for (cid, chunk), (offset, length) in zip(
            distinct_chunks(data).items(), challenge["ranges"], strict=True
        )
    ]


def guessed_proofs(data: bytes, challenge: dict[str, Any]) -> list[str]:
    """The answers of someone who knows only the hashes: a guess at the bytes (all zeros)."""
    return [
        proof_digest(challenge["nonce"], cid, bytes(length))
        for cid, (_, length) in zip(distinct_chunks(data), challenge["ranges"], strict=True)
    ]


def chunk_path(cluster: Cluster, server: int, chunk_id: str) -> Path:
    return cluster.root / f"server{server}" / "ServerFiles" / chunk_id[:2] / chunk_id


def copies(cluster: Cluster, chunk_id: str) -> dict[int, bytes]:
    """Server id -> the bytes of its copy of ``chunk_id``, for every server holding one."""
    found = {}
    for i in range(1, cluster.n_servers + 1):
        with contextlib.suppress(FileNotFoundError):  # none there, or deleted while we looked
            found[i] = chunk_path(cluster, i, chunk_id).read_bytes()
    return found


@contextlib.contextmanager
def trap() -> Iterator[socket.socket]:
    """A listening socket of the attacker's that no daemon may ever connect to."""
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen(8)
        listener.setblocking(False)
        yield listener


def assert_never_called(listener: socket.socket) -> None:
    """No connection reached ``listener``: a daemon's connect completes in the kernel (the backlog)
    before the daemon answers the request that would have caused it, so none is pending now."""
    with pytest.raises(BlockingIOError):
        conn, peer = listener.accept()
        conn.close()
        pytest.fail(f"a daemon connected to the attacker's address from {peer}")


def proxy_cluster_id(cluster: Cluster) -> str:
    found = re.findall(r"proxy serving cluster ([0-9a-f]+) ", (cluster.root / "proxy.log").read_text())
    assert found
    return str(found[-1])


# -- the victim -----------------------------------------------------------------------------------
@dataclass
class Victim:
    client: Client
    name: str
    data: bytes
    tmp: Path

    @property
    def sha1(self) -> str:
        return hashlib.sha1(self.data).hexdigest()

    @property
    def ids(self) -> list[str]:
        return list(distinct_chunks(self.data))

    def copies(self, cluster: Cluster) -> dict[str, dict[int, bytes]]:
        return {cid: copies(cluster, cid) for cid in self.ids}


@pytest.fixture
def clients() -> Iterator[contextlib.ExitStack]:
    """Where a test's clients are registered, to be closed however it ends."""
    with contextlib.ExitStack() as stack:
        yield stack


def user(cluster: Cluster, clients: contextlib.ExitStack, prefix: str) -> Client:
    return clients.enter_context(new_user(cluster, prefix))


def victim_with_file(cluster: Cluster, tmp_path: Path, clients: contextlib.ExitStack) -> Victim:
    """A new user with one file of 3 chunks of random bytes (the last one short)."""
    client = user(cluster, clients, "victim")
    name = f"secret-{uuid.uuid4().hex[:12]}.bin"
    data = os.urandom(3 * CHUNK - 1000)
    src = tmp_path / "victim-src"
    src.mkdir(exist_ok=True)
    (src / name).write_bytes(data)
    client.upload(src / name)
    victim = Victim(client, name, data, tmp_path)
    assert all(len(c) == cluster.replicas for c in victim.copies(cluster).values())
    return victim


def assert_intact(cluster: Cluster, victim: Victim) -> None:
    """The victim's listing is exactly her file, it downloads byte for byte, every copy is on disk."""
    listed = [(f["name"], f["owner"], f["size"], f["sha1"]) for f in victim.client.list()]
    assert listed == [(victim.name, victim.client.user, len(victim.data), victim.sha1)]
    out = victim.tmp / f"check-{uuid.uuid4().hex[:8]}"
    assert victim.client.download(victim.name, out).path.read_bytes() == victim.data
    for cid, held in victim.copies(cluster).items():
        assert len(held) == cluster.replicas and set(held.values()) == {distinct_chunks(victim.data)[cid]}


def with_session(token: str, header: dict[str, Any]) -> dict[str, Any]:
    return {**header, "session": token}


# -- storage servers: tickets ---------------------------------------------------------------------
def fetch(conn: Connection, chunk_id: str, ticket: dict[str, Any]) -> bytes:
    conn.send(MsgType.GET_CHUNK, {"id": chunk_id, "ticket": ticket})
    reply = conn.expect_reply(MsgType.GET_CHUNK)
    assert reply.type is MsgType.CHUNK_DATA and reply.header["id"] == chunk_id
    return b"".join(bytes(piece) for piece in conn.payload())


def test_get_chunk_needs_a_ticket_for_that_chunk_that_server_and_now(
    cluster: Cluster, tmp_path: Path, clients: contextlib.ExitStack
) -> None:
    victim = victim_with_file(cluster, tmp_path, clients)
    located = victim.client.locate(victim.name)
    exp, who = located["ticket"]["exp"], located["ticket"]["who"]
    # two chunks with a copy on one server (3 chunks, 2 copies each, 4 servers: there always are)
    chunk, server, other, other_copy = next(
        (a, sa, b, sb)
        for a, b in itertools.permutations(located["chunks"], 2)
        for sa in a["servers"]
        for sb in b["servers"]
        if sa["id"] == sb["id"]
    )
    cid, sid = chunk["id"], server["id"]
    elsewhere = next(s for s in chunk["servers"] if s["id"] != sid)  # the same chunk's other copy
    genuine = {"exp": exp, "who": who, "mac": server["ticket"]}
    past = ClusterKey(secret_of(cluster), clock=lambda: time.time() - 7200)
    old_exp = int(past.clock() + 600)  # what the proxy handed out two hours ago
    stranger = ClusterKey(os.urandom(32))
    attempts: dict[str, tuple[dict[str, Any] | None, str]] = {
        "no ticket": (None, "needs a ticket"),
        "an empty ticket": ({}, "malformed ticket"),
        "a malformed ticket": ({"exp": "soon", "who": 1, "mac": None}, "malformed ticket"),
        "a forged MAC": ({**genuine, "mac": "A" * 22}, "does not match"),
        "the ticket of another chunk on this server": (
            {**genuine, "mac": other_copy["ticket"]},
            "does not match",
        ),
        "the ticket of this chunk's copy on another server": (
            {**genuine, "mac": elsewhere["ticket"]},
            "does not match",
        ),
        "a later expiry": ({**genuine, "exp": exp + 3600}, "does not match"),
        "another holder": ({**genuine, "who": "user:mallory"}, "does not match"),
        "an expired ticket": (
            {"exp": old_exp, "who": who, "mac": past.get_mac(cid, sid, who, old_exp)},
            "expired",
        ),
        "a ticket signed with another secret": (
            {"exp": exp, "who": who, "mac": stranger.get_mac(cid, sid, who, exp)},
            "does not match",
        ),
    }
    with connect(server["port"]) as conn:
        for what, (ticket, reason) in attempts.items():
            header = {"id": cid} if ticket is None else {"id": cid, "ticket": ticket}
            error = refused(Forbidden, what, partial(conn.request, MsgType.GET_CHUNK, header))
            assert reason in error.message, (what, error.message)
        # on the same connection, each genuine ticket opens its own chunk: the checks above are the
        # ticket's bindings, not a server that refuses everything
        assert sha256(fetch(conn, other["id"], {**genuine, "mac": other_copy["ticket"]})) == other["id"]
        assert sha256(fetch(conn, cid, genuine)) == cid
    with connect(elsewhere["port"]) as conn:
        assert sha256(fetch(conn, cid, {**genuine, "mac": elsewhere["ticket"]})) == cid
    assert_intact(cluster, victim)


def test_put_chunk_without_a_ticket_writes_nothing(
    cluster: Cluster, tmp_path: Path, clients: contextlib.ExitStack
) -> None:
    victim = victim_with_file(cluster, tmp_path, clients)
    before = victim.copies(cluster)
    junk = os.urandom(5000)
    junk_id = sha256(junk)
    target = victim.ids[0]  # junk under a victim's chunk id would replace her copy, if it were taken
    for i, port in sorted(cluster.server_ports.items()):
        forged = {
            "exp": int(time.time()) + 600,
            "who": "upload:x",
            "chain": [[i, HOST, port]],
            "mac": "A" * 22,
        }
        with connect(port) as conn:
            for what, header in {
                f"junk without a ticket to server {i}": {"id": junk_id, "size": len(junk)},
                f"junk over a victim's chunk on server {i}": {"id": target, "size": len(junk)},
                f"junk with a forged ticket to server {i}": {
                    "id": target,
                    "size": len(junk),
                    "ticket": forged,
                },
                f"junk with a ticket that is not an object to server {i}": {
                    "id": junk_id,
                    "size": len(junk),
                    "ticket": None,
                },
            }.items():
                # each payload is read and dropped: the next request on this connection is answered
                refused(Forbidden, what, partial(conn.request, MsgType.PUT_CHUNK, header, junk))
        tmp = cluster.root / f"server{i}" / "ServerFiles" / "tmp"
        assert not [p for p in tmp.iterdir() if p.name.startswith((junk_id, target))]
    assert copies(cluster, junk_id) == {}
    assert victim.copies(cluster) == before
    assert_intact(cluster, victim)


def test_put_chunk_is_forwarded_only_along_the_chain_the_proxy_signed(
    cluster: Cluster, tmp_path: Path, clients: contextlib.ExitStack
) -> None:
    victim = victim_with_file(cluster, tmp_path, clients)
    mallory = user(cluster, clients, "mallory")
    token = token_of(mallory)
    data = os.urandom(CHUNK)
    cid = sha256(data)
    with connect(cluster.proxy_port) as proxy, trap() as listener:
        begun = proxy.request(MsgType.UPLOAD_BEGIN, with_session(token, manifest("mine.bin", data)))
        upload = {"upload_id": begun["upload_id"]}
        proofs = honest_proofs(data, begun["challenge"])
        [item] = proxy.request(MsgType.UPLOAD_PROVE, with_session(token, {**upload, "proofs": proofs}))[
            "missing"
        ]
        ticket = item["ticket"]
        head, replica = ticket["chain"]  # [id, host, port] each, as the proxy placed them
        evil = [HOST, listener.getsockname()[1]]
        refs = [{"id": head[0], "host": head[1], "port": head[2]}, {"id": 99, "host": HOST, "port": evil[1]}]
        tampered = {
            "an extra hop to the attacker": {**ticket, "chain": [head, replica, [99, *evil]]},
            "the replica moved to the attacker's address": {**ticket, "chain": [head, [replica[0], *evil]]},
            "the replica replaced by the attacker": {**ticket, "chain": [head, [99, *evil]]},
            "the replica dropped": {**ticket, "chain": [head]},
            "the chain reversed": {**ticket, "chain": [replica, head]},
            "a chain to the attacker signed with another secret": ClusterKey(os.urandom(32)).put_ticket(
                cid, refs, ticket["who"], 600
            ),
        }
        header = {"id": cid, "size": len(data)}
        with connect(head[2]) as conn:
            for what, forged in tampered.items():
                refused(
                    Forbidden,
                    what,
                    partial(conn.request, MsgType.PUT_CHUNK, {**header, "ticket": forged}, data),
                )
        outsider = next(i for i in cluster.server_ports if i not in (head[0], replica[0]))
        with connect(cluster.server_ports[outsider]) as conn:  # the genuine ticket, off its chain
            refused(
                Forbidden,
                "a server outside the chain",
                partial(conn.request, MsgType.PUT_CHUNK, {**header, "ticket": ticket}, data),
            )
        assert copies(cluster, cid) == {}
        assert_never_called(listener)
        # the genuine ticket at its head: both copies, and the trap is still untouched
        with connect(head[2]) as conn:
            stored = conn.request(MsgType.PUT_CHUNK, {**header, "ticket": ticket}, data)
        assert stored["stored"] == [head[0], replica[0]]
        assert set(copies(cluster, cid)) == {head[0], replica[0]}
        assert_never_called(listener)
        proxy.request(MsgType.UPLOAD_ABORT, with_session(token, upload))
    assert_intact(cluster, victim)


# -- storage servers: the cluster MAC -------------------------------------------------------------
def test_cluster_requests_without_the_cluster_mac_are_refused(
    cluster: Cluster, tmp_path: Path, clients: contextlib.ExitStack
) -> None:
    victim = victim_with_file(cluster, tmp_path, clients)
    before = victim.copies(cluster)
    ids = victim.ids
    key = cluster.key
    stranger = ClusterKey(os.urandom(32))
    past = ClusterKey(secret_of(cluster), clock=lambda: time.time() - 3600)
    future = ClusterKey(secret_of(cluster), clock=lambda: time.time() + 3600)
    requests: dict[MsgType, dict[str, Any]] = {
        MsgType.PING: {},
        MsgType.HAS_CHUNKS: {"ids": ids},
        MsgType.DELETE_CHUNKS: {"ids": ids},
        MsgType.PROVE_CHUNKS: {"nonce": "n", "ranges": [[ids[0], 0, 1]]},  # a byte oracle if it answered
    }
    for i, port in sorted(cluster.server_ports.items()):
        me = server_audience(i)
        with connect(port) as conn:
            for msg_type, header in requests.items():
                swapped = MsgType.HAS_CHUNKS if msg_type is not MsgType.HAS_CHUNKS else MsgType.DELETE_CHUNKS
                now = int(time.time())
                attempts = {
                    "no MAC": header,
                    "a forged MAC": {
                        **header,
                        "auth": {"ts": now, "nonce": secrets.token_hex(16), "mac": "0" * 64},
                    },
                    "a malformed auth": {**header, "auth": {"ts": "now", "nonce": 7, "mac": None}},
                    "another cluster's secret": stranger.sign(msg_type, header, to=me),
                    "an hour old": past.sign(msg_type, header, to=me),
                    "an hour ahead": future.sign(msg_type, header, to=me),
                    "signed as another type": key.sign(swapped, header, to=me),
                    "signed for other fields": {
                        **header,
                        "auth": key.sign(msg_type, {**header, "x": 1}, to=me)["auth"],
                    },
                    "signed for another server": key.sign(msg_type, header, to=server_audience(i % 4 + 1)),
                }
                for what, attempt in attempts.items():
                    refused(
                        AuthError,
                        f"{msg_type.name} with {what} to server {i}",
                        partial(conn.request, msg_type, attempt),
                    )
            # the same connection still serves the holder of the secret
            signed = key.sign(MsgType.PING, {}, to=me)
            assert key.verify_reply(signed, conn.request(MsgType.PING, signed))["id"] == i
    assert victim.copies(cluster) == before
    assert_intact(cluster, victim)


def test_a_recorded_delete_chunks_cannot_be_replayed_to_its_server_or_another(
    cluster: Cluster, tmp_path: Path, clients: contextlib.ExitStack
) -> None:
    """DELETE_CHUNKS messages are recorded (the network is plain TCP) before the victim uploads the
    chunks they name, as the proxy's collector may well send them (an aborted upload's orphans);
    replayed once the chunks are the victim's, to the server each was for and to every other."""
    data = os.urandom(3 * CHUNK - 1000)
    ids = list(distinct_chunks(data))
    key = cluster.key
    recorded: dict[int, bytes] = {}
    for i, port in sorted(cluster.server_ports.items()):
        signed = key.sign(MsgType.DELETE_CHUNKS, {"ids": ids}, to=server_audience(i))
        recorded[i] = encode(MsgType.DELETE_CHUNKS, signed)
        with connect(port) as conn:  # delivered once, as the proxy sent it: nothing to delete yet
            conn.sock.sendall(recorded[i])
            assert key.verify_reply(signed, conn.read_reply(MsgType.DELETE_CHUNKS)) == {"deleted": 0}
    client = user(cluster, clients, "victim")
    (tmp_path / "later.bin").write_bytes(data)
    client.upload(tmp_path / "later.bin")
    victim = Victim(client, "later.bin", data, tmp_path)
    before = victim.copies(cluster)
    for target, port in sorted(cluster.server_ports.items()):
        with connect(port) as conn:
            for source, frame in recorded.items():
                conn.sock.sendall(frame)
                error = refused(
                    AuthError,
                    f"the DELETE_CHUNKS for server {source} replayed to server {target}",
                    partial(conn.read_reply, MsgType.DELETE_CHUNKS),
                )
                assert ("replayed" if source == target else f"for {server_audience(target)}") in error.message
    assert victim.copies(cluster) == before
    assert_intact(cluster, victim)


def test_a_recorded_delete_chunks_cannot_be_replayed_to_its_server_after_a_restart(
    fresh_cluster: Cluster, tmp_path: Path, clients: contextlib.ExitStack
) -> None:
    """A server remembers the nonces it has seen only as long as its process lives: the DELETE_CHUNKS
    recorded before it restarted (a second or two, well inside the 120 s window) must not be taken
    by the new process, or it would delete the copies of a file uploaded since."""
    c = fresh_cluster
    data = os.urandom(2 * CHUNK - 1000)
    ids = list(distinct_chunks(data))
    key = c.key
    recorded: dict[int, bytes] = {}
    for i, port in sorted(c.server_ports.items()):
        signed = key.sign(MsgType.DELETE_CHUNKS, {"ids": ids}, to=server_audience(i))
        recorded[i] = encode(MsgType.DELETE_CHUNKS, signed)
        with connect(port) as conn:  # delivered once, as the proxy sent it: nothing to delete yet
            conn.sock.sendall(recorded[i])
            assert key.verify_reply(signed, conn.read_reply(MsgType.DELETE_CHUNKS)) == {"deleted": 0}
    signed_at = int(time.time())  # the messages' timestamps are whole seconds, this one at the latest
    client = user(c, clients, "victim")
    (tmp_path / "again.bin").write_bytes(data)
    client.upload(tmp_path / "again.bin")
    victim = Victim(client, "again.bin", data, tmp_path)
    before = victim.copies(c)
    restarted = sorted(before[ids[0]])[0]  # a server holding a copy
    c.wait_for(lambda: time.time() >= signed_at + 1, "the next second")  # the restart comes later
    c.kill_server(restarted)
    c.start_server(restarted)
    for i in sorted(set().union(*(held.keys() for held in before.values()))):
        with connect(c.server_ports[i]) as conn:
            conn.sock.sendall(recorded[i])
            error = refused(
                AuthError,
                f"the DELETE_CHUNKS replayed to server {i}"
                + (" after its restart" if i == restarted else ""),
                partial(conn.read_reply, MsgType.DELETE_CHUNKS),
            )
            assert ("before this process started" if i == restarted else "replayed") in error.message
    assert victim.copies(c) == before
    assert_intact(c, victim)


# -- the proxy: membership ----------------------------------------------------------------------------
def register_header(server_id: int, port: int, inventory: bytes, **extra: Any) -> dict[str, Any]:
    return {
        "id": server_id,
        "host": HOST,
        "port": port,
        "capacity": 10**12,
        "used": 0,
        "chunks": len(inventory) // 32,
        "inventory_sha256": sha256(inventory),
        **extra,
    }


def test_fake_storage_servers_cannot_join_or_move_or_starve_the_real_ones(
    fresh_cluster: Cluster, tmp_path: Path, clients: contextlib.ExitStack
) -> None:
    """A fake address registered as a new server, or as servers 1-4, would have uploads sent there
    and downloads looked for there; a spoofed heartbeat with capacity 0 would starve a server."""
    c = fresh_cluster
    victim = victim_with_file(c, tmp_path, clients)
    inventory = b"".join(bytes.fromhex(cid) for cid in victim.ids)  # "I hold the victim's chunks"
    stranger = ClusterKey(os.urandom(32))
    now = int(time.time())
    forged_auth = {"ts": now, "nonce": secrets.token_hex(16), "mac": "0" * 64}
    with trap() as listener, connect(c.proxy_port) as conn:
        evil = listener.getsockname()[1]
        for server_id in (9, 1, 2, 3, 4):
            header = register_header(server_id, evil, inventory)
            for what, attempt in {
                "no MAC": header,
                "a forged MAC": {**header, "auth": forged_auth},
                "another cluster's secret": stranger.sign(MsgType.SERVER_REGISTER, header),
            }.items():
                refused(
                    AuthError,
                    f"SERVER_REGISTER of server {server_id} at the attacker's address with {what}",
                    partial(conn.request, MsgType.SERVER_REGISTER, attempt, inventory),
                )
            beat: dict[str, Any] = {"id": server_id, "capacity": 0, "used": 0, "chunks": 0}
            for what, attempt in {
                "no MAC": beat,
                "a forged MAC": {**beat, "auth": forged_auth},
                "another cluster's secret": stranger.sign(MsgType.HEARTBEAT, beat),
            }.items():
                refused(
                    AuthError,
                    f"HEARTBEAT of server {server_id} with capacity 0 and {what}",
                    partial(conn.request, MsgType.HEARTBEAT, attempt),
                )
        # the real servers keep their place and their room
        with new_user(c, "status") as watcher:
            servers = watcher.status()["servers"]
            assert [(s["id"], s["host"], s["port"], s["up"]) for s in servers] == [
                (i, HOST, c.server_ports[i], True) for i in (1, 2, 3, 4)
            ]
            assert all(s["capacity"] > 0 for s in servers)
            # uploads go on, and no chunk of theirs is placed at the attacker's address
            data = os.urandom(8 * CHUNK)
            (tmp_path / "after.bin").write_bytes(data)
            watcher.upload(tmp_path / "after.bin")
            for chunk in watcher.locate("after.bin")["chunks"]:
                assert {(s["id"], s["port"]) for s in chunk["servers"]} <= set(c.server_ports.items())
            assert watcher.download("after.bin", tmp_path / "back").path.read_bytes() == data
        for chunk in victim.client.locate(victim.name)["chunks"]:
            assert {(s["id"], s["port"]) for s in chunk["servers"]} <= set(c.server_ports.items())
        assert_never_called(listener)
    assert_intact(c, victim)


def test_hello_and_refusals_do_not_reveal_the_cluster_id(
    cluster: Cluster, tmp_path: Path, clients: contextlib.ExitStack
) -> None:
    victim = victim_with_file(cluster, tmp_path, clients)
    cluster_id = proxy_cluster_id(cluster)
    seen: list[str] = []
    with connect(cluster.proxy_port) as conn:
        for header in ({}, {"client": "fc/0.1"}, {"client": None}):
            reply = conn.request(MsgType.HELLO, header)
            assert set(reply) == {"chunk_size", "replicas"}
            seen.append(json.dumps(reply))
        # a server that claims another cluster would be told which cluster this is, once signed
        foreign = register_header(9, 1, b"", cluster_id="0" * 32)
        seen.append(
            refused(
                AuthError,
                "unsigned foreign registration",
                partial(conn.request, MsgType.SERVER_REGISTER, foreign),
            ).message
        )
        seen.append(
            refused(
                AuthError,
                "unsigned heartbeat",
                partial(conn.request, MsgType.HEARTBEAT, {"id": 9, "capacity": 1, "used": 0, "chunks": 0}),
            ).message
        )
    with connect(cluster.server_ports[1]) as conn:
        seen.append(refused(AuthError, "unsigned ping", partial(conn.request, MsgType.PING, {})).message)
    assert not [text for text in seen if cluster_id in text]
    assert_intact(cluster, victim)


# -- the proxy: proof of ownership, receipts, listings ---------------------------------------------
def test_dropship_knowing_only_the_hashes_gets_nothing(
    cluster: Cluster, tmp_path: Path, clients: contextlib.ExitStack
) -> None:
    """Mallory knows the victim's file size, SHA-1 and chunk SHA-256s, not the bytes: she may not
    claim the file by manifest (with wrong proofs, or none), nor commit without sending the bytes."""
    victim = victim_with_file(cluster, tmp_path, clients)
    mallory = user(cluster, clients, "mallory")
    token = token_of(mallory)
    known = manifest("loot.bin", victim.data)
    key = cluster.key
    uploads: list[str] = []

    def begin() -> tuple[dict[str, Any], dict[str, Any]]:
        begun = conn.request(MsgType.UPLOAD_BEGIN, with_session(token, known))
        uploads.append(begun["upload_id"])
        return {"upload_id": begun["upload_id"]}, begun["challenge"]

    def prove_wrongly(upload: dict[str, Any], challenge: dict[str, Any]) -> list[dict[str, Any]]:
        reply = conn.request(
            MsgType.UPLOAD_PROVE,
            with_session(token, {**upload, "proofs": guessed_proofs(victim.data, challenge)}),
        )
        missing: list[dict[str, Any]] = reply["missing"]
        # every chunk must be sent, to the servers that hold the victim's copies, with tickets
        assert sorted(m["id"] for m in missing) == sorted(victim.ids)
        assert all(len(m["servers"]) == cluster.replicas and m["ticket"] for m in missing)
        return missing

    def commit(upload: dict[str, Any], receipts: object) -> dict[str, Any]:
        header = {**upload} if receipts is None else {**upload, "receipts": receipts}
        return conn.request(MsgType.UPLOAD_COMMIT, with_session(token, header))

    with connect(cluster.proxy_port) as conn:
        # 1. no proof at all: no commit, and no tickets either
        upload, _ = begin()
        refused(Conflict, "a commit with no proof", partial(commit, upload, None))
        refused(
            Conflict,
            "tickets with no proof",
            partial(conn.request, MsgType.UPLOAD_TICKETS, with_session(token, upload)),
        )
        refused(
            InvalidRequest,
            "too few proofs",
            partial(conn.request, MsgType.UPLOAD_PROVE, with_session(token, {**upload, "proofs": []})),
        )

        # 2. wrong proofs, then a commit without the bytes, receipts of every kind but the real ones
        def forged_receipts(
            missing: list[dict[str, Any]], make: Callable[[str, int, str], str]
        ) -> list[list[Any]]:
            by_server: dict[int, list[str]] = {}
            for m in missing:
                for s in m["servers"]:
                    by_server.setdefault(s["id"], []).append(make(m["id"], s["id"], m["ticket"]["who"]))
            return [[sid, aggregate(macs)] for sid, macs in sorted(by_server.items())]

        stranger = ClusterKey(os.urandom(32))
        receipt_kinds: dict[str, Callable[[list[dict[str, Any]]], object]] = {
            "no receipts": lambda missing: None,
            "an empty list": lambda missing: [],
            "forged receipts": lambda missing: [[s["id"], "A" * 22] for m in missing for s in m["servers"]],
            "receipts aggregated from nothing": lambda missing: forged_receipts(
                missing, lambda c, s, w: "A" * 22
            ),
            "receipts signed with another secret": lambda missing: forged_receipts(missing, stranger.receipt),
            # genuine receipts, but the victim's: for her own upload, not this one
            "another upload's receipts": lambda missing: forged_receipts(
                missing, lambda c, s, w: key.receipt(c, s, "upload:" + secrets.token_urlsafe(12))
            ),
        }
        for what, make in receipt_kinds.items():
            upload, challenge = begin()
            missing = prove_wrongly(upload, challenge)
            refused(Conflict, f"a commit with {what}", partial(commit, upload, make(missing)))
            refused(NotFound, f"a second commit after {what}", partial(commit, upload, make(missing)))
        # 3. her genuine tickets do not take bytes that are not the chunk's
        upload, challenge = begin()
        missing = prove_wrongly(upload, challenge)
        for m in missing:
            with connect(m["servers"][0]["port"]) as storage:
                junk = os.urandom(m["size"])
                header = {"id": m["id"], "size": m["size"], "ticket": m["ticket"]}
                refused(
                    CorruptData,
                    "junk under a real ticket",
                    partial(storage.request, MsgType.PUT_CHUNK, header, junk),
                )
        refused(Conflict, "a commit after junk", partial(commit, upload, []))
        # she owns nothing, and cannot reach the victim's file by name
        assert conn.request(MsgType.LIST, with_session(token, {})) == {"files": []}
        for name in ("loot.bin", victim.name):
            refused(
                NotFound,
                f"LOCATE {name}",
                partial(conn.request, MsgType.LOCATE, with_session(token, {"name": name})),
            )
        for upload_id in uploads:  # leave nothing pinned
            conn.request(MsgType.UPLOAD_ABORT, with_session(token, {"upload_id": upload_id}))
    with pytest.raises(NotFound):
        mallory.download(victim.name, tmp_path / "stolen")
    assert not (tmp_path / "stolen").exists() or not list((tmp_path / "stolen").iterdir())
    assert mallory.list() == []
    assert_intact(cluster, victim)
    # once the victim deletes it, it is gone for everyone, down to the disks
    victim.client.delete(victim.name)
    assert victim.client.list() == [] and mallory.list() == []
    with pytest.raises(NotFound):
        victim.client.locate(victim.name)
    cluster.wait_for(lambda: not any(victim.copies(cluster).values()), "the victim's chunks to be deleted")


def shape(value: Any) -> Any:
    """The structure of a reply: keys and list lengths kept, every leaf replaced by its type."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


def test_upload_replies_do_not_tell_whether_content_is_stored(
    cluster: Cluster, tmp_path: Path, clients: contextlib.ExitStack
) -> None:
    victim = victim_with_file(cluster, tmp_path, clients)
    mallory = user(cluster, clients, "mallory")
    token = token_of(mallory)
    fresh = os.urandom(len(victim.data))  # the same size; no one has these bytes
    shapes = {}
    with connect(cluster.proxy_port) as conn:
        for label, data in (("stored", victim.data), ("fresh", fresh)):
            begun = conn.request(MsgType.UPLOAD_BEGIN, with_session(token, manifest("probe.bin", data)))
            upload = {"upload_id": begun["upload_id"]}
            proofs = guessed_proofs(data, begun["challenge"])
            proved = conn.request(MsgType.UPLOAD_PROVE, with_session(token, {**upload, "proofs": proofs}))
            conn.request(MsgType.UPLOAD_ABORT, with_session(token, upload))
            lengths = [r[1] for r in begun["challenge"]["ranges"]]
            shapes[label] = (shape(begun), lengths, shape(proved))
            assert len(proved["missing"]) == len(distinct_chunks(data))
        assert shapes["stored"] == shapes["fresh"]
        # control: the holder of the bytes is spared sending exactly the stored ones
        for data, sent in ((victim.data, 0), (fresh, len(distinct_chunks(fresh)))):
            begun = conn.request(MsgType.UPLOAD_BEGIN, with_session(token, manifest("probe.bin", data)))
            upload = {"upload_id": begun["upload_id"]}
            proofs = honest_proofs(data, begun["challenge"])
            proved = conn.request(MsgType.UPLOAD_PROVE, with_session(token, {**upload, "proofs": proofs}))
            conn.request(MsgType.UPLOAD_ABORT, with_session(token, upload))
            assert len(proved["missing"]) == sent
    assert_intact(cluster, victim)


def test_upload_prove_takes_as_long_for_stored_as_for_fresh_content(
    cluster: Cluster, tmp_path: Path, clients: contextlib.ExitStack
) -> None:
    """The time is a reply too: if the proxy asked a storage server to check the proofs only for
    content it holds, a wrong proof would come back several times slower for stored content, and
    one UPLOAD_PROVE would tell whether a file is stored (Harnik et al., "Side channels in cloud
    services", 2010).  One-chunk files, so either way the proxy asks exactly one server.  The
    attempts come in pairs, stored then fresh, and each pair is compared (a sign test: a busy
    machine slows both of a pair alike): with the oracle, stored content was slower in 97-100 % of
    40 pairs; without, in 23-70 %.  The uploads are aborted only at the end, so no collector round
    (it deletes what an aborted upload placed) runs in between."""
    client = user(cluster, clients, "victim")
    stored = os.urandom(CHUNK // 2)
    (tmp_path / "one.bin").write_bytes(stored)
    client.upload(tmp_path / "one.bin")
    token = token_of(user(cluster, clients, "mallory"))
    took: dict[bool, list[float]] = {True: [], False: []}
    uploads = []
    with connect(cluster.proxy_port) as conn:
        for _ in range(40):
            for is_stored in (True, False):
                data = stored if is_stored else os.urandom(len(stored))
                begun = conn.request(MsgType.UPLOAD_BEGIN, with_session(token, manifest("probe.bin", data)))
                uploads.append({"upload_id": begun["upload_id"]})
                proofs = guessed_proofs(data, begun["challenge"])
                header = with_session(token, {**uploads[-1], "proofs": proofs})
                start = time.perf_counter()
                assert len(conn.request(MsgType.UPLOAD_PROVE, header)["missing"]) == 1
                took[is_stored].append(time.perf_counter() - start)
        for upload in uploads:
            conn.request(MsgType.UPLOAD_ABORT, with_session(token, upload))
    slower = sum(s > f for s, f in zip(took[True], took[False], strict=True)) / len(took[True])
    stored_ms, fresh_ms = (statistics.median(took[flag]) * 1000 for flag in (True, False))
    assert slower < 0.85, (
        f"UPLOAD_PROVE was slower for stored content in {slower:.0%} of the pairs "
        f"(medians {stored_ms:.2f} ms against {fresh_ms:.2f} ms)"
    )


def test_listings_and_replies_show_only_your_own_files(
    cluster: Cluster, tmp_path: Path, clients: contextlib.ExitStack
) -> None:
    victim = victim_with_file(cluster, tmp_path, clients)
    mallory = user(cluster, clients, "mallory")
    (tmp_path / "mine.txt").write_bytes(b"mallory's own")
    mallory.upload(tmp_path / "mine.txt")
    token = token_of(mallory)
    mine = [(f["name"], f["owner"]) for f in mallory.list()]
    assert mine == [("mine.txt", mallory.user)]
    replies: list[str] = []  # everything she is told, except echoes of a name she sent
    with connect(cluster.proxy_port) as conn:
        replies.append(
            refused(
                InvalidRequest,
                "LIST all",
                partial(conn.request, MsgType.LIST, with_session(token, {"all": True})),
            ).message
        )
        replies.append(
            refused(
                AuthError,
                "LIST all without a session",
                partial(conn.request, MsgType.LIST, {"all": True, "session": ""}),
            ).message
        )
        for header in ({}, {"all": False}, {"all": None}):
            listed = conn.request(MsgType.LIST, with_session(token, header))
            assert [(f["name"], f["owner"]) for f in listed["files"]] == mine
            replies.append(json.dumps(listed))
        for msg_type in (MsgType.STATUS, MsgType.WHOAMI):
            replies.append(json.dumps(conn.request(msg_type, with_session(token, {}))))
        replies.append(json.dumps(conn.request(MsgType.HELLO, {})))
        for msg_type in (MsgType.LOCATE, MsgType.SHARE, MsgType.DELETE):  # by the victim's file name
            error = refused(
                NotFound,
                f"{msg_type.name} of the victim's file",
                partial(conn.request, msg_type, with_session(token, {"name": victim.name})),
            )
            assert victim.sha1 not in error.message
    assert not [text for text in replies if victim.name in text or victim.sha1 in text]
    assert_intact(cluster, victim)
