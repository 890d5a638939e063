"""The gateway's door: when every connection is in use, the addresses holding the most give way.

No HTTP client authenticates, so a few addresses that open connections and send nothing (or read
slowly) could otherwise hold all of them; here 2 addresses fill a gateway of 6 and a third still
gets its answer."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import cast

import pytest

from gateway.proxy_calls import ProxyCalls
from gateway.server import GatewayServer
from tests.cluster import loopback_source


@pytest.fixture
def gateway() -> Iterator[GatewayServer]:
    server = GatewayServer(
        ("127.0.0.1", 0), cast(ProxyCalls, object()), max_connections=6, per_address=3, head_deadline=30
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop()
        thread.join(10)


def answer(port: int, source: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as s:
        s.sendall(b"GET /nothing HTTP/1.0\r\n\r\n")
        got = b""
        while piece := s.recv(4096):
            got += piece
        return got


def was_closed(s: socket.socket) -> bool:
    s.settimeout(0.5)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_a_newcomer_takes_the_place_of_an_address_holding_many(gateway: GatewayServer) -> None:
    held: list[socket.socket] = []
    try:
        for source in (loopback_source(), loopback_source()):
            for _ in range(3):
                held.append(socket.create_connection(("127.0.0.1", gateway.port), source_address=(source, 0)))
        deadline = time.monotonic() + 10
        while gateway.admission.open < 6 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert gateway.admission.open == 6  # full
        assert answer(gateway.port, loopback_source()).startswith(b"HTTP/1.1 404 ")
        assert sum(was_closed(s) for s in held) == 1  # one of the idle ones gave way
    finally:
        for s in held:
            s.close()


def test_an_address_cannot_take_the_place_of_its_own_or_of_one_as_small(gateway: GatewayServer) -> None:
    held: list[socket.socket] = []
    sources = [loopback_source() for _ in range(6)]
    try:
        for source in sources:  # six addresses, one connection each: nobody holds two more
            held.append(socket.create_connection(("127.0.0.1", gateway.port), source_address=(source, 0)))
        deadline = time.monotonic() + 10
        while gateway.admission.open < 6 and time.monotonic() < deadline:
            time.sleep(0.02)
        try:
            refused = answer(gateway.port, loopback_source())
        except ConnectionResetError:
            refused = b""
        assert refused == b""  # closed unanswered
    finally:
        for s in held:
            s.close()
