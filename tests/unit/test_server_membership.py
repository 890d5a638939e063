"""A storage server's membership against a stand-in proxy on 127.0.0.1: heartbeats carry the lost
ids (kept until the proxy answered OK), free space, quarantine count and scrub progress; INVENTORY
is sent every interval and when asked, and a not_found answer makes the server register again."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from common.cluster_auth import ClusterKey
from common.errors import NotFound, Unavailable
from common.frame_server import FrameServer, Reply, Request, serve_in_thread
from common.limits import LOST_PER_HEARTBEAT
from common.messages import MsgType
from servers.membership import Membership
from servers.memory_store import MemoryChunkStore

KEY = ClusterKey(b"\x0c" * 32)


class FakeProxy:
    """Records what servers send; ``fail`` says which message types to refuse next, and how."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: list[tuple[MsgType, dict[str, Any], bytes]] = []
        self.fail: dict[MsgType, list[Exception]] = {}
        self.server = FrameServer(
            ("127.0.0.1", 0),
            {t: self.handle for t in (MsgType.SERVER_REGISTER, MsgType.HEARTBEAT, MsgType.INVENTORY)},
            max_header=1 << 20,
            max_payload=1 << 20,
            cluster=KEY,
        )

    def handle(self, req: Request) -> Reply:
        payload = b"".join(bytes(piece) for piece in req.body)
        with self.lock:
            self.received.append((req.type, dict(req.header), payload))
            pending = self.fail.get(req.type)
            if pending:
                raise pending.pop(0)
        if req.type is MsgType.SERVER_REGISTER:
            return Reply({"cluster_id": "c" * 32, "heartbeat": 2.0})
        return Reply({})

    def of(self, msg_type: MsgType) -> list[tuple[dict[str, Any], bytes]]:
        with self.lock:
            return [(h, p) for t, h, p in self.received if t is msg_type]


@pytest.fixture
def proxy() -> Iterator[FakeProxy]:
    fake = FakeProxy()
    serve_in_thread(fake.server, "fake-proxy")
    yield fake
    fake.server.stop()


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def stored(store: MemoryChunkStore, n: int) -> list[str]:
    ids = []
    for i in range(n):
        data = b"chunk %d" % i
        chunk_id = hashlib.sha256(data).hexdigest()
        with store.writer(chunk_id, len(data)) as writer:
            writer.write(data)
            writer.commit()
        ids.append(chunk_id)
    return ids


@pytest.fixture
def member(proxy: FakeProxy, tmp_path: Path) -> Iterator[Callable[..., Membership]]:
    started: list[Membership] = []

    def _start(store: MemoryChunkStore, **options: Any) -> Membership:
        m = Membership(
            server_id=7,
            advertise=("127.0.0.1", 1234),
            proxy=("127.0.0.1", proxy.server.port),
            store=store,
            key=KEY,
            capacity=None,
            interval=options.pop("interval", 0.1),
            state_dir=tmp_path,
            **options,
        )
        started.append(m)
        m.start()
        return m

    yield _start
    for m in started:
        m.stop()


def test_heartbeats_carry_lost_ids_and_keep_them_until_the_proxy_took_them(
    proxy: FakeProxy, member: Callable[..., Membership]
) -> None:
    store = MemoryChunkStore(capacity=10_000, reserve=1000)
    ids = stored(store, 4)
    store.quarantine(ids[1], "test")
    store.quarantine(ids[3], "test")
    proxy.fail[MsgType.HEARTBEAT] = [Unavailable("the proxy is busy")]  # the first heartbeat fails
    progress = {"passes": 1, "checked": 10, "total": 10, "rate": 1048576, "bad": 2, "last_pass_seconds": 0.1}
    member(store, scrub=lambda: progress)

    wait_for(lambda: len(proxy.of(MsgType.HEARTBEAT)) >= 2, "a heartbeat after the failed one")
    (failed, _), (taken, _) = proxy.of(MsgType.HEARTBEAT)[:2]
    assert failed["lost"] == taken["lost"] == [ids[1], ids[3]]  # put back, then sent again
    assert len(store.lost) == 0
    assert (taken["free"], taken["quarantined"], taken["scrub"]) == (store.available(), 2, progress)
    assert taken["chunks"] == 2
    wait_for(lambda: len(proxy.of(MsgType.HEARTBEAT)) >= 3, "another heartbeat")
    assert "lost" not in proxy.of(MsgType.HEARTBEAT)[2][0]  # told once
    register, payload = proxy.of(MsgType.SERVER_REGISTER)[0]
    assert register["free"] == store.available() == 10_000 - 1000 - store.used
    assert payload == b"".join(bytes.fromhex(c) for c in sorted([ids[0], ids[2]]))


def test_lost_ids_go_at_most_a_batch_per_heartbeat(
    proxy: FakeProxy, member: Callable[..., Membership]
) -> None:
    store = MemoryChunkStore()
    for i in range(LOST_PER_HEARTBEAT + 3):
        store.lost.add(f"{i:064x}")
    member(store)

    def told() -> int:  # what the proxy has received (the queue empties before the last one lands)
        return sum(len(h.get("lost", [])) for h, _ in proxy.of(MsgType.HEARTBEAT))

    wait_for(lambda: told() == LOST_PER_HEARTBEAT + 3, "every lost id to be told")
    assert len(store.lost) == 0
    batches = [h["lost"] for h, _ in proxy.of(MsgType.HEARTBEAT) if "lost" in h]
    assert [len(b) for b in batches] == [LOST_PER_HEARTBEAT, 3]
    assert "scrub" not in proxy.of(MsgType.HEARTBEAT)[0][0]  # no scrubber, no figures


def test_inventory_every_interval_and_when_asked(proxy: FakeProxy, member: Callable[..., Membership]) -> None:
    store = MemoryChunkStore()
    ids = stored(store, 3)
    m = member(store, inventory_interval=0.5)
    wait_for(lambda: len(proxy.of(MsgType.INVENTORY)) >= 2, "two periodic inventories")
    header, payload = proxy.of(MsgType.INVENTORY)[0]
    assert payload == b"".join(bytes.fromhex(c) for c in sorted(ids))
    assert header["chunks"] == 3 and header["inventory_sha256"] == hashlib.sha256(payload).hexdigest()
    assert header["id"] == 7
    assert len(proxy.of(MsgType.SERVER_REGISTER)) == 1  # all on the one registration

    m.inventory_interval = 600.0
    time.sleep(0.6)  # a periodic one may still have been due
    before = len(proxy.of(MsgType.INVENTORY))
    m.request_inventory()  # what the scrubber does at the end of a pass
    wait_for(lambda: len(proxy.of(MsgType.INVENTORY)) > before, "the inventory asked for", seconds=1.5)


def test_an_inventory_the_proxy_does_not_know_leads_to_registering_again(
    proxy: FakeProxy, member: Callable[..., Membership]
) -> None:
    store = MemoryChunkStore()
    stored(store, 2)
    proxy.fail[MsgType.INVENTORY] = [NotFound("unknown server 7")]
    m = member(store, inventory_interval=600.0)
    wait_for(m.registered.is_set, "registration")
    m.request_inventory()
    wait_for(lambda: len(proxy.of(MsgType.SERVER_REGISTER)) == 2, "a second registration")
    assert len(proxy.of(MsgType.INVENTORY)) == 1


@pytest.mark.parametrize(
    ("said", "kept"),
    [
        ("ab" * 8, "ab" * 8),
        ("x" * 64, "x" * 64),
        ("", None),
        ("x" * 65, None),
        (["a", "b"], None),
        (12345, None),
        ({"id": "x"}, None),
        (None, None),
    ],
)
def test_a_disk_id_is_kept_only_as_a_short_string(said: object, kept: str | None) -> None:
    """STATUS shows every user the disk ids servers report: only an opaque short string is kept."""
    from proxy.membership import _disk

    assert _disk(said) == kept
