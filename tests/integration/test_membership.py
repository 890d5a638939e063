"""Storage server membership: the cluster id guards a server's chunks, and a forgotten server comes back.

The cluster-id tests run real processes (tests.cluster).  "The collector had its chance" is never a
sleep: a control server of this cluster registers *after* the one under test, with an orphan of its
own, and once that orphan is gone from disk the collector has run a round over everything queued
before it (orphans are queued before the registration is answered, and a round takes all of them).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.proxy_link import ProxyLink
from common.cluster_auth import ClusterKey
from common.frame_server import FrameServer, serve_in_thread
from common.limits import PROXY_MAX_HEADER
from common.messages import MsgType
from common.protocol import DEFAULT_MAX_PAYLOAD
from proxy.auth import token_hash
from proxy.catalog import Catalog
from proxy.collector import Collector
from proxy.registry import Registry
from proxy.service import ProxyConfig, ProxyService
from proxy.storage_client import StorageClient
from proxy.uploads import Uploads
from servers.membership import Membership
from servers.memory_store import MemoryChunkStore
from servers.storage_server import StorageService, make_storage_server
from tests.cluster import CHUNK, Cluster
from tests.conftest import new_user

REFUSED = "the proxy refused this server"
REGISTERED = "registered with"


@pytest.fixture
def one_server(tmp_path: Path) -> Iterator[Cluster]:
    """A proxy and storage server 1 (one replica), for tests that add servers or wipe the proxy."""
    c = Cluster(tmp_path / "cluster", servers=1, replicas=1)
    try:
        yield c.start()
    finally:
        c.stop()


def plant(c: Cluster, i: int, data: bytes) -> Path:
    """Put a valid chunk straight into server i's folder (as if left there from earlier)."""
    chunk_id = hashlib.sha256(data).hexdigest()
    path = c.root / f"server{i}" / "ServerFiles" / chunk_id[:2] / chunk_id
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def id_file(c: Cluster, i: int) -> Path:
    return c.root / f"server{i}" / "cluster_id"


def proxy_cluster_id(c: Cluster) -> str:
    """The cluster id the running proxy logged at start (clients are not told it)."""
    found = re.findall(r"proxy serving cluster ([0-9a-f]+) ", (c.root / "proxy.log").read_text())
    return str(found[-1])


def server_log(c: Cluster, i: int) -> str:
    return (c.root / f"server{i}.log").read_text()


def start_control_server(c: Cluster, i: int) -> Path:
    """Start server i of this cluster (the right cluster id) holding one orphan; wait until the
    collector has freed it.  Everything queued before it was freed in that round or earlier."""
    path = id_file(c, i)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(proxy_cluster_id(c) + "\n")
    orphan = plant(c, i, os.urandom(1000))
    c.start_server(i)
    c.wait_for(lambda: not orphan.exists(), f"the collector to free server {i}'s orphan")
    return orphan


def servers_in_status(c: Cluster) -> dict[int, bool]:
    with new_user(c, "status") as client:
        return {s["id"]: s["up"] for s in client.status()["servers"]}


def test_a_proxy_on_a_new_catalog_refuses_the_old_servers_and_deletes_nothing(
    one_server: Cluster, tmp_path: Path
) -> None:
    c = one_server
    with new_user(c, "ana") as ana:
        (tmp_path / "kept.bin").write_bytes(os.urandom(2 * CHUNK + 7))
        ana.upload(tmp_path / "kept.bin")
    held = {p: p.read_bytes() for p in c.chunk_files(1)}
    assert len(held) == 3
    old_id = id_file(c, 1).read_text().strip()

    # the mistake: the proxy starts on an empty catalog, so a new cluster; server 1 still runs
    c.kill_proxy()
    shutil.rmtree(c.root / "proxy")
    c.start_proxy()
    new_id = proxy_cluster_id(c)
    assert new_id != old_id
    c.wait_for(
        lambda: REFUSED in server_log(c, 1) or server_log(c, 1).count(REGISTERED) > 1,
        "server 1 to be answered by the new proxy",
    )
    start_control_server(c, 2)  # the collector has had its chance at whatever server 1 sent

    assert {p: p.read_bytes() for p in c.chunk_files(1)} == held  # every chunk is still there
    assert servers_in_status(c) == {2: True}  # server 1 is not counted, not even as down
    assert id_file(c, 1).read_text().strip() == old_id  # it still belongs to its own cluster
    log = server_log(c, 1)
    assert f"{REFUSED}: server 1 belongs to cluster {old_id}, but this proxy runs cluster {new_id}" in log
    assert log.count(REGISTERED) == 1  # only the first registration, with the old proxy


def test_a_server_that_lost_its_cluster_id_keeps_chunks_the_catalog_lacks(one_server: Cluster) -> None:
    c = one_server
    c.kill_server(1)
    id_file(c, 1).unlink()
    unknown = plant(c, 1, os.urandom(1000))
    c.start_server(1)  # registers without a cluster id: accepted
    cluster_id = proxy_cluster_id(c)
    assert id_file(c, 1).read_text().strip() == cluster_id  # and it joined this cluster again

    start_control_server(c, 2)  # an orphan of a server with the right id is freed...
    # ...and one planted now is freed after server 2's next inventory and the grace: by then server 1
    # has sent inventories of its own (with its new id) for longer than the grace too
    later = plant(c, 2, os.urandom(1000))
    c.wait_for(lambda: not later.exists(), "the collector to free server 2's second orphan")

    assert unknown.exists()  # ...but not the one of the server that could not prove its cluster
    assert servers_in_status(c) == {1: True, 2: True}
    proxy_log = (c.root / "proxy.log").read_text()
    assert "server 1 holds 1 chunk(s) the catalog lacks but has no cluster id: keeping them" in proxy_log


def test_unknown_chunks_of_a_server_of_this_cluster_are_collected(
    one_server: Cluster, tmp_path: Path
) -> None:
    c = one_server
    with new_user(c, "ana") as ana:
        (tmp_path / "kept.bin").write_bytes(os.urandom(1000))
        ana.upload(tmp_path / "kept.bin")
    [kept] = c.chunk_files(1)
    c.kill_server(1)
    orphan = plant(c, 1, os.urandom(1000))  # e.g. a delete it missed while it was down
    c.start_server(1)  # presents the cluster id it saved on its first registration

    c.wait_for(lambda: not orphan.exists(), "the collector to free server 1's orphan")
    assert c.chunk_files(1) == {kept}  # what a file uses stays
    assert server_log(c, 1).count(REGISTERED) == 2


# -- a server the proxy forgot (in-process: a proxy service and a storage server on real sockets) -----
HEARTBEAT = 0.05
KEY = ClusterKey(b"\x03" * 32)  # the secret this in-process proxy and server share
DATA = b"chunk kept by server 1"
CHUNK_ID = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[tuple[ProxyService, FrameServer]]:
    catalog = Catalog(tmp_path / "proxy")
    registry = Registry(dead_after=5.0)
    uploads = Uploads()
    service = ProxyService(
        catalog,
        registry,
        uploads,
        Collector(catalog, registry, uploads, StorageClient(KEY)),  # not started: collects nothing
        ProxyConfig(chunk_size=CHUNK, replicas=1, heartbeat=HEARTBEAT),
        KEY,
    )
    catalog.add_user("ana", "00", "11")
    catalog.add_session(token_hash("tok"), "ana")
    sha1 = hashlib.sha1(DATA).hexdigest()
    catalog.put_file("ana", "f.bin", len(DATA), sha1, [[CHUNK_ID, len(DATA)]], {CHUNK_ID: [1]})
    server = FrameServer(
        ("127.0.0.1", 0),
        service.handlers(),
        max_header=PROXY_MAX_HEADER,
        max_payload=DEFAULT_MAX_PAYLOAD,
        authenticate=service.authenticate,
        cluster=KEY,
    )
    serve_in_thread(server, "proxy")
    try:
        yield service, server
    finally:
        server.stop()
        catalog.close()


def test_a_server_the_proxy_forgot_registers_again_at_its_next_heartbeat(
    proxy: tuple[ProxyService, FrameServer], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service, proxy_server = proxy
    store = MemoryChunkStore()
    with store.writer(CHUNK_ID, len(DATA)) as writer:
        writer.write(DATA)
        writer.commit()
    storage = make_storage_server(StorageService(1, store, KEY), ("127.0.0.1", 0))
    serve_in_thread(storage, "server1")
    (tmp_path / "server1").mkdir()
    membership = Membership(
        server_id=1,
        advertise=("127.0.0.1", storage.port),
        proxy=("127.0.0.1", proxy_server.port),
        store=store,
        key=KEY,
        capacity=10**9,
        interval=HEARTBEAT,
        state_dir=tmp_path / "server1",
    )
    membership.start()
    try:
        Cluster.wait_for(membership.registered.is_set, "server 1 to register", timeout=5)
        assert service.registry.get(1) is not None

        # the proxy forgets every server; the next heartbeat gets not_found
        forgetful = Registry(dead_after=5.0)
        service.registry = service.collector.registry = service.members.registry = forgetful
        Cluster.wait_for(lambda: forgetful.get(1) is not None, "server 1 to register again", timeout=5)
        state = forgetful.get(1)
        assert state is not None
        seen = state.last_seen
        Cluster.wait_for(  # and it is back to heartbeats: the same record, refreshed
            lambda: forgetful.get(1) is state and state.last_seen > seen, "a heartbeat to count", timeout=5
        )
        assert forgetful.is_up(state)

        with ProxyLink("127.0.0.1", proxy_server.port, token="tok") as link:
            located = link.call(MsgType.LOCATE, {"name": "f.bin"}, session=True)
        for chunk in located["chunks"]:
            for server in chunk["servers"]:
                assert isinstance(server.pop("ticket"), str)  # each copy comes with its GET ticket
        assert located["chunks"] == [
            {
                "id": CHUNK_ID,
                "size": len(DATA),
                "servers": [{"id": 1, "host": "127.0.0.1", "port": storage.port}],
            }
        ]
        # not_found is not a lost proxy: no reconnect, no warning
        assert not [
            r for r in caplog.records if r.levelno >= logging.WARNING and r.name == "servers.membership"
        ]
    finally:
        membership.stop()
        storage.stop()
