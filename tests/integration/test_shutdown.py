"""SIGTERM stops a daemon promptly whichever of its threads the kernel hands the signal to.

A signal sent to a process goes to any one of its threads that does not block it; Python runs the
handler only in the main thread, when that thread next runs Python code.  The test picks the
thread itself (tgkill, as the kernel may) so that the case is not left to chance.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import Cluster


def signal_a_side_thread(pid: int, sig: int) -> None:
    """Send ``sig`` to one thread of process ``pid`` that is not its main thread."""
    threads = sorted(int(t.name) for t in Path(f"/proc/{pid}/task").iterdir())
    others = [tid for tid in threads if tid != pid]
    assert others, f"process {pid} runs no thread besides its main one"
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.tgkill(pid, others[0], sig) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


@pytest.fixture
def small_cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "cluster", servers=1, replicas=1)
    try:
        yield c.start()
    finally:
        c.stop()


def stopped_cleanly(proc: subprocess.Popen[str]) -> int:
    try:
        return proc.wait(timeout=5)  # the clean stop itself takes a fraction of a second
    except subprocess.TimeoutExpired:
        pytest.fail("the daemon ignored SIGTERM for 5 s")


def test_sigterm_to_any_thread_stops_the_storage_server_and_the_proxy(small_cluster: Cluster) -> None:
    c = small_cluster
    assert c.proxy is not None
    for name, proc in (("server1", c.servers[1]), ("proxy", c.proxy)):  # the fixture reaps them
        signal_a_side_thread(proc.pid, signal.SIGTERM)
        assert stopped_cleanly(proc) == 0
        assert "Traceback" not in (c.root / f"{name}.log").read_text()
