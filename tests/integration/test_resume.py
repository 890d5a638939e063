"""Resume, with the real `filecluster` command killed or interrupted half-way.

To stop a transfer half-way for sure, the test file is built from chunks whose placement is known
(rendezvous hashing is a pure function of the chunk and the server ids): the first part of the file
lives only on servers 1 and 2, the rest only on servers 3 and 4.  With 3 and 4 SIGSTOPped, the
client gets through the first part, then waits on the rest until the test kills it.  The proxy of
this cluster counts a silent server down only after 8 s, so the stopped servers still count as up.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.partial import PARTIAL_DIR, partial_key, verified_chunks
from proxy.placement import ServerRef, place
from tests.cluster import CHUNK, Cluster, die_with_parent
from tests.conftest import PASSWORD

SERVERS = [ServerRef(i, "127.0.0.1", 0) for i in range(1, 5)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("resume"), heartbeat=2.0)
    c.env["FILECLUSTER_READ_TIMEOUT"] = "60"  # a client waits on a stopped server until killed
    c.start()
    try:
        yield c
    finally:
        c.stop()


def blocks_on(servers: set[int], count: int) -> list[bytes]:
    """``count`` random chunks that placement puts on exactly ``servers`` (all four servers up)."""
    found: list[bytes] = []
    while len(found) < count:
        block = os.urandom(CHUNK)
        if {s.id for s in place(hashlib.sha256(block).hexdigest(), SERVERS, 2)} == servers:
            found.append(block)
    return found


def registered_home(c: Cluster, user: str) -> Path:
    home = c.new_home()
    result = c.cli("register", user, home=home, password=PASSWORD)
    assert result.returncode == 0, result.stderr
    return home


@contextlib.contextmanager
def stopped(c: Cluster, *ids: int) -> Iterator[None]:
    """Servers ``ids`` SIGSTOPped (their kernels still accept connections), SIGCONTinued after."""
    try:
        for i in ids:
            c.servers[i].send_signal(signal.SIGSTOP)
        yield
    finally:
        for i in ids:
            c.servers[i].send_signal(signal.SIGCONT)


def end(proc: subprocess.Popen[str]) -> tuple[str, str]:
    if proc.poll() is None:
        proc.kill()
    return proc.communicate(timeout=30)


def stored_on(c: Cluster, block: bytes, *ids: int) -> bool:
    chunk_id = hashlib.sha256(block).hexdigest()
    return all((c.root / f"server{i}" / "ServerFiles" / chunk_id[:2] / chunk_id).is_file() for i in ids)


def test_a_killed_download_goes_on_from_its_partial_file(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    first, rest = blocks_on({1, 2}, 16), blocks_on({3, 4}, 16)
    data = b"".join(first + rest)
    src = tmp_path / "f.bin"
    src.write_bytes(data)
    home = registered_home(c, "reader")
    with c.client(home) as client:
        client.upload(src)
    out = tmp_path / "out"
    part = out / PARTIAL_DIR / f"{partial_key(hashlib.sha1(data).hexdigest(), len(data), 'f.bin')}.part"
    wanted = [{"id": hashlib.sha256(b).hexdigest(), "size": CHUNK} for b in first]

    def first_part_arrived() -> bool:
        assert proc.poll() is None, end(proc)
        try:
            fd = os.open(part, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            return len(verified_chunks(fd, wanted, [i * CHUNK for i in range(len(first))])) == len(first)
        finally:
            os.close(fd)

    with stopped(c, 3, 4):
        proc = c.cli_process("download", "f.bin", "-o", str(out), home=home)
        try:
            c.wait_for(first_part_arrived, "the first part of the file in the partial file")
            proc.kill()  # no chance to clean up or say anything
        finally:
            end(proc)
    assert proc.returncode == -signal.SIGKILL
    assert [p.name for p in out.iterdir()] == [PARTIAL_DIR]  # nothing at the final name
    again = c.cli("--json", "download", "f.bin", "-o", str(out), home=home)
    assert again.returncode == 0, again.stderr
    [saved] = json.loads(again.stdout)["files"]
    assert saved["resumed"] == len(first) * CHUNK  # exactly what was verified, nothing of the rest
    assert saved["path"] == str(out / "f.bin") and (out / "f.bin").read_bytes() == data
    assert [p.name for p in out.iterdir()] == ["f.bin"]  # the partial and its folder are gone


# The real command, made to stop itself (SIGSTOP) once the proxy has placed the chunks and before
# any is sent: the test then stops servers 3 and 4 and lets it go on, with no race.
PAUSING_UPLOAD = """
import os, signal, sys
from client import upload
from client.cli import main
send = upload._send_missing
def paused(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGSTOP)
    return send(*args, **kwargs)
upload._send_missing = paused
sys.exit(main(sys.argv[1:]))
"""


def stopped_itself(proc: subprocess.Popen[str]) -> bool:
    assert proc.poll() is None, end(proc)
    return Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


@pytest.mark.parametrize(
    ("sig", "status"), [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGINT, 130)], ids=["sigkill", "ctrl-c"]
)
def test_an_interrupted_upload_run_again_sends_only_what_the_cluster_lacks(
    cluster: Cluster, tmp_path: Path, sig: int, status: int
) -> None:
    c = cluster
    first, rest = blocks_on({1, 2}, 48), blocks_on({3, 4}, 16)
    data = b"".join(first + rest)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    user = f"resumer{sig}"
    home = registered_home(c, user)
    proc = subprocess.Popen(
        [sys.executable, "-c", PAUSING_UPLOAD, "upload", str(src)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=c.cli_env(home),
        cwd=c.root,
        preexec_fn=die_with_parent,
    )
    try:
        c.wait_for(lambda: stopped_itself(proc), "the upload to be placed")
        with stopped(c, 3, 4):  # the rest of the file cannot be stored now
            proc.send_signal(signal.SIGCONT)
            c.wait_for(lambda: all(stored_on(c, b, 1, 2) for b in first), "the first part on servers 1 and 2")
            assert proc.poll() is None, "the upload ended before it could be interrupted"
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=30)
    finally:
        end(proc)
    assert proc.returncode == status, err
    if sig == signal.SIGINT:
        log = (c.root / "proxy.log").read_text().splitlines()
        assert len([line for line in log if f"by {user} aborted" in line]) == 1  # parked by the proxy
    again = c.cli("--json", "upload", str(src), home=home)
    assert again.returncode == 0, again.stderr
    [uploaded] = json.loads(again.stdout)["files"]
    assert 0 < uploaded["sent"] <= len(data) - len(first) * CHUNK  # the first part was not sent again
    with c.client(home) as client:
        assert [f["name"] for f in client.list()] == ["big.bin"]
        assert client.download("big.bin", tmp_path / "out").path.read_bytes() == data
