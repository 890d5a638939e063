"""Self-healing on a real cluster: servers killed for good, rotten chunk files, stray chunks.

Every check looks at what the servers' disks really hold: a copy counts as good only if its file's
SHA-256 is its name.  The proxy's repair grace, orphan grace and the servers' inventories run at
test speed (tests.cluster.FAST_PROXY / FAST_SERVER): seconds instead of minutes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from client.api import Client
from common.messages import MsgType
from common.transport import Connection
from tests.cluster import CHUNK, Cluster
from tests.conftest import PASSWORD, new_user

NO_SCRUB = ("--scrub-rate", "0")
FAST_SCRUB = ("--scrub-rate", "64", "--scrub-period", "1s")


def chunk_ids(data: bytes) -> list[str]:
    return [hashlib.sha256(data[o : o + CHUNK]).hexdigest() for o in range(0, len(data), CHUNK)]


def copy_path(c: Cluster, server: int, chunk_id: str) -> Path:
    return c.root / f"server{server}" / "ServerFiles" / chunk_id[:2] / chunk_id


def good_copies(c: Cluster, chunk_id: str, servers: Iterable[int]) -> set[int]:
    """The servers among ``servers`` whose copy of the chunk is on disk with the right bytes."""
    good = set()
    for server in servers:
        try:
            if hashlib.sha256(copy_path(c, server, chunk_id).read_bytes()).hexdigest() == chunk_id:
                good.add(server)
        except FileNotFoundError:
            pass
    return good


def quarantined(c: Cluster, server: int) -> list[Path]:
    folder = c.root / f"server{server}" / "ServerFiles" / "quarantine"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def flip_a_byte(path: Path) -> None:
    """Rot: one byte changed in place (the file keeps its name and size)."""
    with open(path, "r+b") as f:
        f.seek(len(path.read_bytes()) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def fully_replicated(c: Cluster, files: dict[str, bytes], live: set[int], replicas: int = 2) -> bool:
    return all(
        len(good_copies(c, chunk_id, live)) >= replicas
        for data in files.values()
        for chunk_id in chunk_ids(data)
    )


def upload_files(client: Client, folder: Path, count: int, chunks: int, seed: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    folder.mkdir(exist_ok=True)
    files = {}
    for n in range(count):
        data = rng.randbytes(rng.randint(1, chunks) * CHUNK - rng.randint(0, CHUNK - 1))
        path = folder / f"file{n}.bin"
        path.write_bytes(data)
        client.upload(path)
        files[path.name] = data
    return files


def test_a_server_lost_for_good_is_replaced_and_a_second_loss_loses_nothing(
    tmp_path: Path,
) -> None:
    c = Cluster(tmp_path / "cluster", server_args=NO_SCRUB, proxy_args=("--repair-grace", "2")).start()
    try:
        ana = new_user(c, "ana")
        files = upload_files(ana, tmp_path / "up", count=12, chunks=6, seed=1)
        distinct = {chunk_id for data in files.values() for chunk_id in chunk_ids(data)}
        assert ana.status()["health"]["healthy"] == len(distinct)  # status is current, not a round old
        c.kill_server(1)  # for good
        started = time.monotonic()
        c.wait_for(lambda: fully_replicated(c, files, {2, 3, 4}), "re-replication", timeout=40)
        print(f"re-replicated in {time.monotonic() - started:.1f} s")
        c.wait_for(lambda: ana.status()["health"]["under_replicated"] == 0, "status to agree", timeout=10)
        health = ana.status()["health"]
        assert health["lost"] == 0 and health["unavailable"] == 0
        assert {s["id"]: s["state"] for s in ana.status()["servers"]}[1] == "dead"
        c.kill_server(2)  # a second loss
        for name, data in files.items():
            assert ana.download(name, tmp_path / "down").path.read_bytes() == data
    finally:
        c.stop()


def test_the_scrubber_finds_every_rotten_copy_and_repair_fixes_them(tmp_path: Path) -> None:
    c = Cluster(tmp_path / "cluster", server_args=NO_SCRUB).start()
    try:
        ana = new_user(c, "ana")
        files = upload_files(ana, tmp_path / "up", count=20, chunks=12, seed=2)
        copies = sorted(c.chunk_files())
        rotten = random.Random(3).sample(copies, max(4, len(copies) // 100))  # 1 %, at least 4
        for path in rotten:
            flip_a_byte(path)
        c.stop()
        c.server_args = (*c.server_args, *FAST_SCRUB)
        c.start()
        c.wait_for(
            lambda: sum(len(quarantined(c, s)) for s in range(1, 5)) >= len(rotten),
            "the scrubber",
            timeout=60,
        )
        found = {p.name.split(".")[0] for s in range(1, 5) for p in quarantined(c, s)}
        assert found == {p.name for p in rotten}  # every rotten copy, and nothing else
        c.wait_for(lambda: fully_replicated(c, files, {1, 2, 3, 4}), "repair", timeout=30)
        for name, data in files.items():
            assert ana.download(name, tmp_path / "down").path.read_bytes() == data
    finally:
        c.stop()


def test_a_reader_that_meets_a_rotten_copy_gets_the_file_and_the_copy_is_repaired(
    tmp_path: Path,
) -> None:
    c = Cluster(tmp_path / "cluster", server_args=NO_SCRUB).start()
    try:
        ana = new_user(c, "ana")
        data = random.Random(4).randbytes(8 * CHUNK)
        (tmp_path / "a.bin").write_bytes(data)
        ana.upload(tmp_path / "a.bin")
        servers = {1, 2, 3, 4}
        for chunk_id in chunk_ids(data):  # one copy of every chunk rots (reads spread over both)
            flip_a_byte(copy_path(c, sorted(good_copies(c, chunk_id, servers))[0], chunk_id))
        result = c.cli("download", "a.bin", "--output", str(tmp_path / "down"), home=ana.home)
        assert result.returncode == 0, result.stderr
        assert "corrupt" not in result.stderr and "error" not in result.stderr.lower()  # nothing alarming
        assert (tmp_path / "down" / "a.bin").read_bytes() == data

        def reported_ones_repaired() -> bool:
            found = {p.name.split(".")[0] for s in servers for p in quarantined(c, s)}
            return bool(found) and all(len(good_copies(c, chunk_id, servers)) == 2 for chunk_id in found)

        # the copies the reader met were reported, checked by their servers, set aside and replaced
        c.wait_for(reported_ones_repaired, "repair after the reader's reports", timeout=30)
    finally:
        c.stop()


def test_dedup_never_builds_on_rotten_copies(tmp_path: Path) -> None:
    c = Cluster(tmp_path / "cluster", server_args=NO_SCRUB).start()
    try:
        ana = new_user(c, "ana")
        data = random.Random(5).randbytes(3 * CHUNK)
        (tmp_path / "a.bin").write_bytes(data)
        ana.upload(tmp_path / "a.bin")
        bad = chunk_ids(data)[1]
        for server in good_copies(c, bad, {1, 2, 3, 4}):
            flip_a_byte(copy_path(c, server, bad))  # both copies rot
        (tmp_path / "b.bin").write_bytes(data)
        result = ana.upload(tmp_path / "b.bin")
        assert result.sent >= CHUNK  # the rotten chunk had to be sent again
        assert ana.download("b.bin", tmp_path / "down").path.read_bytes() == data
        assert ana.download("a.bin", tmp_path / "down2").path.read_bytes() == data  # healed too
    finally:
        c.stop()


def test_a_chunk_that_arrives_after_a_proxy_restart_is_collected(tmp_path: Path) -> None:
    c = Cluster(tmp_path / "cluster", server_args=NO_SCRUB).start()
    try:
        stray = os.urandom(CHUNK)
        chunk_id = hashlib.sha256(stray).hexdigest()
        target = {"id": 1, "host": "127.0.0.1", "port": c.server_ports[1]}
        ticket = c.key.put_ticket(chunk_id, [target], "upload:gone-with-the-proxy", 600)
        with Connection.connect("127.0.0.1", c.server_ports[1], timeout=5) as conn:
            conn.request(MsgType.PUT_CHUNK, {"id": chunk_id, "size": CHUNK, "ticket": ticket}, stray)
        assert copy_path(c, 1, chunk_id).exists()
        c.wait_for(lambda: not copy_path(c, 1, chunk_id).exists(), "the orphan to be collected", timeout=30)
    finally:
        c.stop()


def test_status_shows_health_and_server_states(tmp_path: Path) -> None:
    c = Cluster(tmp_path / "cluster", server_args=NO_SCRUB, proxy_args=("--repair-grace", "600")).start()
    try:
        ana = new_user(c, "ana")
        upload_files(ana, tmp_path / "up", count=3, chunks=4, seed=6)
        c.kill_server(2)
        c.wait_for(lambda: not {s["id"]: s for s in ana.status()["servers"]}[2]["up"], "server 2 down")
        c.wait_for(lambda: ana.status()["health"]["under_replicated"] > 0, "the health figures", timeout=10)
        result = c.cli("status", "--json", home=ana.home)
        assert result.returncode == 1  # not everything is fine
        shown = json.loads(result.stdout)
        assert {s["id"]: s["state"] for s in shown["servers"]}[2] == "down"  # within the grace period
        assert shown["health"]["lost"] == 0
        states = {f["name"]: f["state"] for f in ana.list()}  # list says which files lack copies
        assert "degraded" in states.values() and set(states.values()) <= {"ok", "degraded"}
        listing = c.cli("list", home=ana.home)
        assert listing.returncode == 0 and "degraded (repairing)" in listing.stdout
    finally:
        c.stop()


def test_a_hung_server_does_not_slow_a_transfer_or_anyone_else(tmp_path: Path) -> None:
    """SIGSTOP: the server's kernel still accepts connections, then nothing answers.  A transfer
    costs at most one timeout more (generous bounds: this is about waiting once, not about speed)."""
    c = Cluster(tmp_path / "cluster", server_args=NO_SCRUB).start()
    try:
        ana, bob = new_user(c, "ana"), new_user(c, "bob")
        rng = random.Random(7)
        data, more, fresh = (rng.randbytes(64 * CHUNK) for _ in range(3))
        for name, blob in (("big.bin", data), ("more.bin", more), ("fresh.bin", fresh)):
            (tmp_path / name).write_bytes(blob)
        ana.upload(tmp_path / "big.bin")
        started = time.monotonic()
        ana.upload(tmp_path / "more.bin")
        undisturbed_up = time.monotonic() - started
        started = time.monotonic()
        ana.download("big.bin", tmp_path / "d0")
        undisturbed = time.monotonic() - started
        hung = c.servers[1]
        hung.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()  # the proxy still believes it is up: chunks are placed on it
            ana.upload(tmp_path / "fresh.bin")
            took_up = time.monotonic() - started
            assert took_up < 2 * undisturbed_up + 15 + 5, (
                f"{took_up:.1f} s (undisturbed {undisturbed_up:.1f} s)"
            )
            started = time.monotonic()
            assert ana.download("big.bin", tmp_path / "d1").path.read_bytes() == data
            took = time.monotonic() - started
            assert took < 2 * undisturbed + 15 + 5, f"{took:.1f} s (undisturbed {undisturbed:.1f} s)"
            print(
                f"hung server: upload {took_up:.1f} s (undisturbed {undisturbed_up:.1f} s), "
                f"download {took:.1f} s (undisturbed {undisturbed:.1f} s)"
            )
            ana.delete("big.bin")  # the collector now waits on the hung server, and nobody else does
            started = time.monotonic()
            bob.list()
            (tmp_path / "small.bin").write_bytes(b"x" * 100)
            bob.upload(tmp_path / "small.bin")
            assert time.monotonic() - started < 5
        finally:
            hung.send_signal(signal.SIGCONT)
    finally:
        c.stop()


def test_a_hung_holder_is_waited_on_once_when_an_upload_reuses_stored_chunks(tmp_path: Path) -> None:
    """Uploading content the cluster holds asks the holders for proofs, then to vouch for their
    copies.  A holder that does not answer the proof request (SIGSTOP) is counted down at once and
    not asked again: the upload costs one proof timeout (PROVE_TIMEOUT, 2 s), not that plus the
    vouching timeout (DEDUP_VERIFY_TIMEOUT, 10 s).  Dedup builds on the other holders' copies."""
    c = Cluster(tmp_path / "cluster", server_args=NO_SCRUB).start()
    try:
        ana = new_user(c, "ana")
        data = random.Random(11).randbytes(16 * CHUNK)
        (tmp_path / "a.bin").write_bytes(data)
        ana.upload(tmp_path / "a.bin")
        hung = c.servers[1]
        hung.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            ana.upload(tmp_path / "a.bin", name="copy.bin")
            took = time.monotonic() - started
            assert took < 7, f"{took:.1f} s: the hung holder was waited on more than once"
        finally:
            hung.send_signal(signal.SIGCONT)
        assert ana.download("copy.bin", tmp_path / "d").path.read_bytes() == data
    finally:
        c.stop()


@pytest.mark.parametrize("replicas", [2])
def test_chaos_every_acknowledged_file_survives(tmp_path: Path, replicas: int) -> None:
    """Clients upload and download while servers are killed -9 and restarted and chunk files rot."""
    import threading

    c = Cluster(tmp_path / "cluster", server_args=NO_SCRUB, proxy_args=("--repair-grace", "2")).start()
    acknowledged: dict[str, bytes] = {}
    wrong: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    rotten: set[str] = set()
    names: dict[int, str] = {}

    def client_loop(n: int) -> None:
        rng = random.Random(100 + n)
        client = new_user(c, f"chaos{n}x")
        names[n] = str(client.user)
        folder = tmp_path / f"c{n}"
        folder.mkdir()
        i = 0
        while not stop.is_set():
            i += 1
            data = rng.randbytes(rng.randint(1, 6 * CHUNK))
            path = folder / f"f{i}.bin"
            path.write_bytes(data)
            try:
                client.upload(path)
            except Exception:
                continue  # not acknowledged: may be lost
            with lock:
                acknowledged[f"{n}/{path.name}"] = data
            try:
                got = client.download(path.name, folder / "down")
            except Exception:
                continue  # a clear error is allowed while servers are down; wrong bytes never
            if got.path.read_bytes() != data:
                wrong.append(path.name)
            got.path.unlink()

    threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    rng = random.Random(8)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            victim = rng.randint(1, 4)
            c.kill_server(victim)
            time.sleep(rng.uniform(0.5, 2.5))
            for path in rng.sample(sorted(c.chunk_files()), k=min(2, len(c.chunk_files()))):
                if path.name not in rotten:  # one rotten copy per chunk at most: no single fault loses data
                    rotten.add(path.name)
                    flip_a_byte(path)
            c.start_server(victim)
            time.sleep(rng.uniform(0.2, 1.0))
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    try:
        assert not wrong
        owners = {n: Client.from_environment(c.proxy_addr, c.new_home()) for n in range(3)}
        for n, client in owners.items():
            client.login(names[n], PASSWORD)
        files = dict(acknowledged)
        assert files, "no upload succeeded during the chaos"
        # let the scrubber find the rot that nobody read: restart the servers with a fast scrub
        for i in list(c.servers):
            c.kill_server(i, signal.SIGTERM)
        c.server_args = (*c.server_args, *FAST_SCRUB)
        for i in range(1, 5):
            c.start_server(i)
        c.wait_for(lambda: fully_replicated(c, files, {1, 2, 3, 4}, replicas), "full repair", timeout=90)
        for key, data in files.items():
            owner, name = key.split("/")
            got = owners[int(owner)].download(name, tmp_path / "final" / owner)
            assert got.path.read_bytes() == data
    finally:
        c.stop()


def test_a_download_survives_a_delete_and_a_reupload_of_its_file(tmp_path: Path) -> None:
    c = Cluster(tmp_path / "cluster", server_args=NO_SCRUB).start()
    try:
        ana = new_user(c, "ana")
        other = Client.from_environment(c.proxy_addr, c.new_home())
        other.login(str(ana.user), PASSWORD)  # the same user in another terminal
        data = random.Random(9).randbytes(40 * CHUNK)
        (tmp_path / "a.bin").write_bytes(data)
        ana.upload(tmp_path / "a.bin")
        interfered: list[bool] = []

        def progress(phase: str, done: int, total: int) -> None:
            if phase == "receiving" and done >= total // 4 and not interfered:
                interfered.append(True)
                other.delete("a.bin")  # and then a new file of that name
                (tmp_path / "new" / "a.bin").parent.mkdir()
                (tmp_path / "new" / "a.bin").write_bytes(b"something else entirely")
                other.upload(tmp_path / "new" / "a.bin")
                time.sleep(2.5)  # the collector runs every second: it would have freed the old chunks

        got = ana.download("a.bin", tmp_path / "down", progress)
        assert interfered and got.path.read_bytes() == data  # the old file, whole and exact
        old = set(chunk_ids(data))
        c.wait_for(lambda: not any(p.name in old for p in c.chunk_files()), "the old chunks to be freed")
    finally:
        c.stop()


def test_a_server_below_the_low_water_mark_gets_no_new_chunks(tmp_path: Path) -> None:
    import shutil

    free = shutil.disk_usage(tmp_path).free
    c = Cluster(tmp_path / "cluster", server_args=NO_SCRUB).start()
    try:
        c.kill_server(1, signal.SIGTERM)
        c.server_args = (*c.server_args, "--reserve", str(free + 2**30))  # keep more free than there is
        c.start_server(1)
        c.server_args = c.server_args[:-2]
        ana = new_user(c, "ana")
        c.wait_for(lambda: {s["id"]: s for s in ana.status()["servers"]}[1].get("free") == 0, "free 0")
        files = upload_files(ana, tmp_path / "up", count=6, chunks=8, seed=10)
        assert c.chunk_files(1) == set()  # nothing placed on the full server
        for name, data in files.items():
            assert ana.download(name, tmp_path / "down").path.read_bytes() == data
    finally:
        c.stop()


def test_a_server_that_comes_back_after_repair_has_its_extra_copies_removed(tmp_path: Path) -> None:
    c = Cluster(tmp_path / "cluster", server_args=NO_SCRUB, proxy_args=("--repair-grace", "2")).start()
    try:
        ana = new_user(c, "ana")
        files = upload_files(ana, tmp_path / "up", count=6, chunks=6, seed=12)
        held = {p.name for p in c.chunk_files(1)}
        assert held
        c.kill_server(1)
        c.wait_for(lambda: fully_replicated(c, files, {2, 3, 4}), "re-replication", timeout=30)
        c.start_server(1)  # back, with every copy it had: those chunks now have 3

        def exactly_two() -> bool:
            return all(
                len(good_copies(c, chunk_id, {1, 2, 3, 4})) == 2
                for data in files.values()
                for chunk_id in chunk_ids(data)
            )

        c.wait_for(exactly_two, "the extra copies to be removed", timeout=30)
        for name, data in files.items():
            assert ana.download(name, tmp_path / "down").path.read_bytes() == data
    finally:
        c.stop()
