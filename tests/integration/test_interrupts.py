"""Ctrl-C and SIGTERM in the middle of a transfer made by the real `filecluster` command.

Every storage server is SIGSTOPped first: its kernel still accepts connections, so the client
connects and then waits, mid-transfer, for bytes that never come, until the signal arrives.  The
cluster's proxy waits 8 s before it counts a silent server down, so the stopped servers still
count as up while the client starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from client import download as downloader
from client import upload as uploader
from common.hashing import manifest_of
from tests.cluster import CHUNK, Cluster, established_remote_ports
from tests.conftest import PASSWORD

# How long an interrupted transfer may take to end: well under the client's 15 s storage timeout,
# which is how long it would take if the transfers in flight were not broken at once.
PROMPTLY = 5.0

SIGNALS = [
    pytest.param(signal.SIGINT, 130, "interrupted", id="ctrl-c"),
    pytest.param(signal.SIGTERM, 143, "terminated", id="sigterm"),
]


def registered_home(c: Cluster, user: str) -> Path:
    home = c.new_home()
    result = c.cli("register", user, home=home, password=PASSWORD)
    assert result.returncode == 0, result.stderr
    return home


def interrupt(proc: subprocess.Popen[str], sig: int) -> tuple[str, str, float]:
    """Send ``sig``; the command's stdout, stderr, and the seconds it took to end."""
    start = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    return out, err, time.monotonic() - start


def end(proc: subprocess.Popen[str]) -> None:
    """Make sure a command a test started is gone, whatever happened in the test."""
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


def listed(c: Cluster, home: Path) -> list[str]:
    result = c.cli("list", "--json", home=home)
    assert result.returncode == 0, result.stderr
    return [f["name"] for f in json.loads(result.stdout)]


def parts(folder: Path) -> list[Path]:
    return list((folder / downloader.PARTIAL_DIR).glob("*.part"))


@pytest.mark.parametrize(("sig", "status", "message"), SIGNALS)
def test_an_interrupted_upload_is_aborted_at_the_proxy_and_stores_nothing(
    patient_cluster: Cluster, tmp_path: Path, sig: int, status: int, message: str
) -> None:
    c = patient_cluster
    home = registered_home(c, "ana")
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(1024 * CHUNK))  # 64 MiB: sending takes a good part of a second
    proc = c.cli_process("upload", str(src), home=home)
    try:
        # the servers stop once chunks flow (stopped before, they would not answer the proxy's proof
        # requests, and it would count them down and place nothing): the upload then stalls mid-way
        storage_ports = set(c.server_ports.values())
        deadline = time.monotonic() + 30
        while not established_remote_ports(proc.pid) & storage_ports and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.002)
        with c.servers_stopped():
            assert proc.poll() is None, "the upload ended before the servers could be stopped"
            out, err, took = interrupt(proc, sig)
    finally:
        end(proc)
    assert proc.returncode == status, err
    assert err == f"{message}\n"  # one line, no traceback
    assert out == ""
    assert took < PROMPTLY, f"the interrupted upload took {took:.1f} s to end"
    aborted = [line for line in (c.root / "proxy.log").read_text().splitlines() if "aborted" in line]
    assert len(aborted) == 1 and aborted[0].endswith(" of big.bin by ana aborted"), aborted
    assert listed(c, home) == []  # the catalog is unchanged
    assert "uploaded big.bin" in c.cli("upload", str(src), home=home).stdout  # and nothing is stuck


def ana_with_a_big_file(c: Cluster, tmp_path: Path) -> tuple[Path, bytes]:
    """ana's home, once she uploaded big.bin (64 chunks; returned); downloads then wait on stopped
    servers until they are signalled."""
    c.env["FILECLUSTER_READ_TIMEOUT"] = "60"
    home = registered_home(c, "ana")
    data = os.urandom(64 * CHUNK)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    assert c.cli("upload", str(src), home=home).returncode == 0
    return home, data


@pytest.mark.parametrize(("sig", "status", "message"), SIGNALS)
def test_an_interrupted_download_shows_nothing_and_keeps_its_partial_for_the_next(
    patient_cluster: Cluster, tmp_path: Path, sig: int, status: int, message: str
) -> None:
    c = patient_cluster
    home, data = ana_with_a_big_file(c, tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with c.servers_stopped():
        proc = c.cli_process("download", "big.bin", "-o", str(out_dir), home=home)
        try:
            c.wait_for(lambda: parts(out_dir) or proc.poll() is not None, "the hidden temp file")
            c.wait_until_transferring(proc, "the download to connect to a storage server")
            assert len(parts(out_dir)) == 1
            out, err, took = interrupt(proc, sig)
        finally:
            end(proc)
    assert proc.returncode == status, err
    assert err == f"{message}\n"  # one line, no traceback
    assert out == ""
    assert took < PROMPTLY, f"the interrupted download took {took:.1f} s to end"
    assert [p.name for p in out_dir.iterdir()] == [downloader.PARTIAL_DIR]  # nothing visible
    assert len(parts(out_dir)) == 1  # the partial file waits for the next try
    again = c.cli("download", "big.bin", "-o", str(out_dir), home=home)
    assert again.returncode == 0, again.stderr
    assert (out_dir / "big.bin").read_bytes() == data
    assert [p.name for p in out_dir.iterdir()] == ["big.bin"]  # the partial was used up


def link_downloads(c: Cluster, home: Path, link: str) -> tuple[int, str]:
    """The owner's view of ``link``: downloads counted, and its state."""
    result = c.cli("--json", "links", home=home)
    assert result.returncode == 0, result.stderr
    (row,) = [r for r in json.loads(result.stdout)["links"] if r["link"] == link]
    return row["downloads"], row["state"]


def interrupted_link_download(c: Cluster, link: str, out_dir: Path, sig: int = signal.SIGINT) -> None:
    """Start downloading ``link`` while the servers are stopped; Ctrl-C it (or ``sig``) once it is
    fetching."""
    with c.servers_stopped():
        proc = c.cli_process("download", link, "-o", str(out_dir), home=c.new_home())
        try:
            c.wait_until_transferring(proc, "the download to connect to a storage server")
            _, err, _ = interrupt(proc, sig)
        finally:
            end(proc)
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and err == "interrupted\n"
    else:
        assert proc.returncode == -sig, err
    assert len(parts(out_dir)) == 1


@pytest.mark.parametrize("how", ["filecluster://", "http://"])
def test_a_link_download_counts_once_resumed_or_already_there(
    patient_cluster: Cluster, tmp_path: Path, how: str
) -> None:
    """A link of one download: an interrupted download of it goes on under the lease it kept (on
    its partial), not as a second download; the file already there costs nothing; and a link the
    owner revoked meanwhile is not resumed."""
    c = patient_cluster
    if how == "http://":
        c.start_gateway()
    home, data = ana_with_a_big_file(c, tmp_path)
    shared = c.cli("share", "big.bin", "--max-downloads", "1", home=home)
    link = shared.stdout.strip()
    assert shared.returncode == 0 and link.startswith(how), shared.stderr
    out_dir = tmp_path / "out"
    interrupted_link_download(c, link, out_dir)
    assert link_downloads(c, home, link) == (1, "exhausted")  # reserved when it began
    anyone = c.new_home()
    again = c.cli("download", link, "-o", str(out_dir), home=anyone)
    assert again.returncode == 0 and again.stdout.startswith("saved "), again.stderr
    assert (out_dir / "big.bin").read_bytes() == data
    there = c.cli("download", link, "-o", str(out_dir), home=anyone)
    assert there.returncode == 0 and there.stdout.startswith("already there"), there.stderr
    assert link_downloads(c, home, link) == (1, "exhausted")
    elsewhere = c.cli("download", link, "-o", str(tmp_path / "elsewhere"), home=anyone)
    assert elsewhere.returncode == 1 and "download limit was reached" in elsewhere.stderr

    several = c.cli("share", "big.bin", "--max-downloads", "3", home=home).stdout.strip()
    for _ in range(3):
        assert c.cli("download", several, "-o", str(tmp_path / "mine"), home=anyone).returncode == 0
    assert link_downloads(c, home, several) == (1, "active")

    revoked = c.cli("share", "big.bin", home=home).stdout.strip()
    later = tmp_path / "later"
    interrupted_link_download(c, revoked, later)
    assert c.cli("unshare", revoked, home=home).returncode == 0
    refused = c.cli("download", revoked, "-o", str(later), home=anyone)
    assert refused.returncode == 1 and "revoked" in refused.stderr
    assert not (later / "big.bin").exists()


def test_a_link_download_killed_outright_still_counts_once(patient_cluster: Cluster, tmp_path: Path) -> None:
    """kill -9 runs no cleanup: the lease is kept with the partial as soon as the file is located,
    so the next try goes on under it rather than asking a link of one download for a second."""
    c = patient_cluster
    home, data = ana_with_a_big_file(c, tmp_path)
    link = c.cli("share", "big.bin", "--max-downloads", "1", home=home).stdout.strip()
    out_dir = tmp_path / "out"
    interrupted_link_download(c, link, out_dir, signal.SIGKILL)
    assert link_downloads(c, home, link) == (1, "exhausted")
    again = c.cli("download", link, "-o", str(out_dir), home=c.new_home())
    assert again.returncode == 0 and again.stdout.startswith("saved "), again.stderr
    assert (out_dir / "big.bin").read_bytes() == data
    assert link_downloads(c, home, link) == (1, "exhausted")
    assert not os.listxattr(out_dir / "big.bin")  # the download left no trace on the file


def interrupted_while_queuing(silent: socket.socket) -> type[ThreadPoolExecutor]:
    """An executor for the transfers in which Ctrl-C lands while they are being queued: as the
    second is submitted, once the first has connected to ``silent`` (a server that never answers)."""

    class Executor(ThreadPoolExecutor):
        submitted = 0

        def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
            if self.submitted == 1:
                ready, _, _ = select.select([silent], [], [], 10)
                assert ready, "the first transfer never connected"
                raise KeyboardInterrupt
            self.submitted += 1
            return super().submit(fn, *args, **kwargs)

    return Executor


@pytest.mark.parametrize("direction", ["download", "upload"])
def test_ctrl_c_while_transfers_are_being_queued_breaks_those_in_flight(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, direction: str
) -> None:
    data = os.urandom(3 * CHUNK)
    src = tmp_path / "f.bin"
    src.write_bytes(data)
    out_dir = tmp_path / "out"
    with socket.create_server(("127.0.0.1", 0)) as silent, open(src, "rb") as file:
        server = {"id": 1, "host": "127.0.0.1", "port": silent.getsockname()[1]}
        manifest = manifest_of(file, CHUNK)
        chunks = [{"id": c.id, "size": c.size, "servers": [server], "ticket": {}} for c in manifest.chunks]
        module = downloader if direction == "download" else uploader
        monkeypatch.setattr(module, "ThreadPoolExecutor", interrupted_while_queuing(silent))
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            if direction == "download":
                info = {"name": "f.bin", "size": len(data), "sha1": hashlib.sha1(data).hexdigest()}
                downloader.download({**info, "chunks": chunks}, out_dir)
            else:
                renewal = uploader._Renewal(dict)  # never asked: nothing gets as far as a ticket
                uploader._send_missing(file, manifest, chunks, None, uploader._Sent(), renewal)
        took = time.monotonic() - start
    assert took < PROMPTLY, f"the interrupted {direction} took {took:.1f} s to end"
    if direction == "download":  # nothing visible; the partial file is kept for the next try
        assert [p.name for p in out_dir.iterdir()] == [downloader.PARTIAL_DIR]
