"""Settings the daemons and run_cluster.sh share: FILECLUSTER_HOST as the client's default proxy host,
the proxy's --advertise, and the FILECLUSTER_EXIT_WITH watchdog."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest

from common.config import proxy_address
from common.daemon import exit_with, process_alive, wait_for_signal
from common.errors import InvalidRequest
from proxy.daemon import advertised


def test_the_default_proxy_is_filecluster_host_at_filecluster_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FILECLUSTER_PROXY", raising=False)
    monkeypatch.setenv("FILECLUSTER_PORT", "9100")
    monkeypatch.delenv("FILECLUSTER_HOST", raising=False)
    assert proxy_address() == ("127.0.0.1", 9100)
    monkeypatch.setenv("FILECLUSTER_HOST", "files.lan")
    assert proxy_address() == ("files.lan", 9100)
    monkeypatch.setenv("FILECLUSTER_PROXY", "other.lan:7000")  # an explicit address still wins
    assert proxy_address() == ("other.lan", 7000)


def test_the_proxy_advertises_a_host_alone_at_the_port_clients_used() -> None:
    assert advertised("files.lan") == ("files.lan", 0)
    assert advertised("files.lan:9443") == ("files.lan", 9443)
    with pytest.raises(InvalidRequest):
        advertised(" ")
    with pytest.raises(InvalidRequest):
        advertised("files.lan:99999")


def test_exit_with_takes_a_process_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FILECLUSTER_EXIT_WITH", raising=False)
    assert exit_with() is None
    monkeypatch.setenv("FILECLUSTER_EXIT_WITH", " 1234 ")
    assert exit_with() == 1234
    for bad in ("0", "-5", "me", "12345678901"):
        monkeypatch.setenv("FILECLUSTER_EXIT_WITH", bad)
        with pytest.raises(InvalidRequest, match="FILECLUSTER_EXIT_WITH must be a process id"):
            exit_with()


def test_a_zombie_is_not_alive() -> None:
    child = subprocess.Popen(["sleep", "60"])
    try:
        assert process_alive(child.pid) and process_alive(os.getpid())
        child.kill()
        deadline = time.monotonic() + 10
        while process_alive(child.pid):  # killed, not yet reaped: a zombie, which counts as gone
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert os.waitpid(child.pid, os.WNOHANG)[0] == child.pid  # it was still there to reap
    finally:
        child.kill()
        child.wait()
    assert not process_alive(child.pid)


def test_wait_for_signal_returns_once_the_watched_process_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    child = subprocess.Popen(["sleep", "60"])
    monkeypatch.setenv("FILECLUSTER_EXIT_WITH", str(child.pid))
    threading.Timer(0.3, child.kill).start()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    started = time.monotonic()
    try:
        wait_for_signal()  # in the main thread: it installs signal handlers, put back below
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        child.kill()
        child.wait()
    assert 0.3 <= time.monotonic() - started < 5
