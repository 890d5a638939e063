"""The HTTP gateway (filecluster-gateway) as a process, against real storage servers.

Links are resolved by a fake proxy (an in-process frame server holding the cluster secret) that
answers LINK_OPEN from a dict of tokens, with LOCATE replies (and so real GET tickets) the real
proxy gave a logged-in owner; the proxy's own side of links is tested with it elsewhere."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client.proxy_link import ProxyLink
from common.errors import Gone, NotAFrame, NotFound, Throttled
from common.frame_server import FrameServer, Reply, Request, serve_in_thread
from common.messages import MsgType
from common.protocol import encode
from tests.cluster import CHUNK, Cluster, die_with_parent, loopback_source, process_memory, reset_peak_memory
from tests.conftest import new_user

NAME = "résumé 日本.bin"
EVIL = "<script>alert(1)&.html"


class FakeProxy:
    """LINK_OPEN / LINK_CLOSE / GATEWAY_HELLO from a dict; every request seen is kept."""

    def __init__(self, cluster: Cluster) -> None:
        self.links: dict[str, dict[str, Any] | Exception] = {}
        self.grants: dict[str, list[str]] = {}  # token -> the grants its LINK_OPENs were given
        self.seen: list[tuple[MsgType, dict[str, Any]]] = []
        self.lock = threading.Lock()
        handlers = {
            MsgType.LINK_OPEN: self.open,
            MsgType.LINK_CLOSE: self.record,
            MsgType.GATEWAY_HELLO: self.record,
            MsgType.REPORT_BAD: self.record,
        }
        self.server = FrameServer(
            ("127.0.0.1", 0), handlers, max_header=1 << 20, max_payload=0, cluster=cluster.key
        )
        serve_in_thread(self.server, "fake-proxy")

    def record(self, request: Request) -> Reply:
        assert request.type is MsgType.REPORT_BAD or "mac" in request.header["auth"]
        with self.lock:
            self.seen.append((request.type, dict(request.header)))
        return Reply({})

    def open(self, request: Request) -> Reply:
        self.record(request)
        entry = self.links.get(request.header["token"])
        if entry is None:
            raise NotFound("no such link")
        if isinstance(entry, Exception):
            raise entry
        reply = dict(entry)
        reply["grant"] = f"g{len(self.seen)}" if request.header.get("range") is not None else None
        if reply["grant"] is not None:
            with self.lock:
                self.grants.setdefault(request.header["token"], []).append(reply["grant"])
        return Reply(reply)

    def requests(self, msg_type: MsgType) -> list[dict[str, Any]]:
        with self.lock:
            return [h for t, h in self.seen if t is msg_type]


class Setup:
    def __init__(self, cluster: Cluster, fake: FakeProxy, gateway: subprocess.Popen[str], port: int) -> None:
        self.cluster, self.fake, self.gateway, self.port = cluster, fake, gateway, port
        self.data: dict[str, bytes] = {}

    def share(self, token: str, data: bytes, name: str, tmp: Path) -> None:
        owner = new_user(self.cluster, "gw")
        path = tmp / hashlib.sha1(name.encode()).hexdigest()
        path.write_bytes(data)
        owner.upload(path, name=name)
        info = owner.locate(name)
        link = {"created": time.time(), "expires": None, "max_downloads": None, "downloads": 0}
        self.fake.links[token] = {**info, "kind": "file", "link": link}
        self.data[token] = data

    def conn(self, source: str | None = None) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=10, source_address=(source or loopback_source(), 0)
        )

    def get(
        self, path: str, headers: dict[str, str] | None = None, method: str = "GET"
    ) -> tuple[http.client.HTTPResponse, bytes]:
        conn = self.conn()
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        conn.close()
        return response, body


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("gateway")
    cluster = Cluster(root, servers=2, replicas=2, heartbeat=2.0).start()
    fake = FakeProxy(cluster)
    log = open(root / "gateway.log", "a")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--proxy",
            f"127.0.0.1:{fake.server.port}",
            "--connections-per-address",
            "3",
            "--head-deadline",
            "1",
            "--chunk-buffers",
            "4",
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env={**cluster.env, "FILECLUSTER_READ_TIMEOUT": "1"},
        cwd=root,
        preexec_fn=die_with_parent,
    )
    log.close()
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "filecluster gateway listening on 127.0.0.1:" in line, (root / "gateway.log").read_text()
    setup = Setup(cluster, fake, proc, int(line.rsplit(":", 1)[1]))
    tmp = root / "files"
    tmp.mkdir()
    setup.share("plainTOKEN", os.urandom(5 * CHUNK + 1234), NAME, tmp)
    setup.share("evilTOKEN", b"<html>hi</html>", EVIL, tmp)
    setup.share("rotTOKEN", os.urandom(3 * CHUNK), "rot.bin", tmp)
    setup.share("bigTOKEN", os.urandom(32 * CHUNK), "big.bin", tmp)
    try:
        yield setup
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()
        fake.server.stop()
        cluster.stop()


def test_hello_names_the_gateway_url(gw: Setup) -> None:
    hellos = gw.fake.requests(MsgType.GATEWAY_HELLO)
    assert hellos and hellos[0]["url"] == f"http://127.0.0.1:{gw.port}"


def test_full_download_byte_exact_with_headers(gw: Setup) -> None:
    data = gw.data["plainTOKEN"]
    response, body = gw.get("/s/plainTOKEN")
    assert response.status == 200
    assert body == data
    h = response.headers
    assert h["Content-Length"] == str(len(data))
    assert h["Content-Type"] == "application/octet-stream"
    assert h["ETag"] == f'"{hashlib.sha1(data).hexdigest()}"'
    assert h["Last-Modified"].endswith("GMT")
    assert h["Accept-Ranges"] == "bytes"
    assert h["X-Content-Type-Options"] == "nosniff"
    assert h["Connection"] == "close"
    # a non-ASCII name: RFC 6266 filename* with the exact name, and an ASCII fallback
    assert h["Content-Disposition"] == (
        "attachment; filename=\"r_sum_ __.bin\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%E6%97%A5%E6%9C%AC.bin"
    )
    opens = [o for o in gw.fake.requests(MsgType.LINK_OPEN) if o.get("range") == [0, len(data)]]
    assert opens and opens[-1]["client"].startswith("127.")
    gw.cluster.wait_for(
        lambda: any(c["sent"] == len(data) for c in gw.fake.requests(MsgType.LINK_CLOSE)), "LINK_CLOSE"
    )


def test_head_sends_headers_and_reserves_nothing(gw: Setup) -> None:
    before = len(gw.fake.requests(MsgType.LINK_OPEN))
    response, body = gw.get("/s/plainTOKEN", method="HEAD")
    assert response.status == 200 and body == b""
    assert response.headers["Content-Length"] == str(len(gw.data["plainTOKEN"]))
    opens = gw.fake.requests(MsgType.LINK_OPEN)[before:]
    assert len(opens) == 1 and "range" not in opens[0]


@pytest.mark.parametrize(
    ("spec", "start", "end"),
    [
        ("0-0", 0, 1),
        ("-1", 5 * CHUNK + 1233, 5 * CHUNK + 1234),
        (f"{CHUNK - 10}-{CHUNK + 9}", CHUNK - 10, CHUNK + 10),
    ],
)
def test_ranges(gw: Setup, spec: str, start: int, end: int) -> None:
    data = gw.data["plainTOKEN"]
    response, body = gw.get("/s/plainTOKEN", {"Range": f"bytes={spec}"})
    assert response.status == 206
    assert body == data[start:end]
    assert response.headers["Content-Range"] == f"bytes {start}-{end - 1}/{len(data)}"
    assert [start, end] in [o.get("range") for o in gw.fake.requests(MsgType.LINK_OPEN)]


def test_unsatisfiable_range(gw: Setup) -> None:
    size = len(gw.data["plainTOKEN"])
    response, _ = gw.get("/s/plainTOKEN", {"Range": f"bytes={size}-"})
    assert response.status == 416
    assert response.headers["Content-Range"] == f"bytes */{size}"


def test_if_range_resumes_only_the_same_file(gw: Setup) -> None:
    data = gw.data["plainTOKEN"]
    first, _ = gw.get("/s/plainTOKEN", method="HEAD")
    for validator in (first.headers["ETag"], first.headers["Last-Modified"]):
        response, body = gw.get("/s/plainTOKEN", {"Range": "bytes=1000-", "If-Range": validator})
        assert (response.status, body) == (206, data[1000:])
    response, body = gw.get("/s/plainTOKEN", {"Range": "bytes=1000-", "If-Range": '"changed"'})
    assert (response.status, body) == (200, data)


def test_info_and_view(gw: Setup) -> None:
    response, body = gw.get("/s/evilTOKEN?info")
    assert response.status == 200 and response.headers["Content-Type"].startswith("application/json")
    doc = json.loads(body)
    assert doc["name"] == EVIL and doc["size"] == 15 and doc["token"] == "evilTOKEN"
    assert (
        doc["proxy"] == f"127.0.0.1:{gw.fake.server.port}"
        and doc["content_type"] == "text/html; charset=utf-8"
    )
    response, body = gw.get("/s/evilTOKEN?view")
    page = body.decode()
    assert response.status == 200 and "<script>" not in page and "&lt;script&gt;alert(1)&amp;.html" in page
    assert "script-src" not in response.headers["Content-Security-Policy"]
    # the file itself is an attachment, never rendered in the gateway's origin
    response, body = gw.get("/s/evilTOKEN")
    assert response.headers["Content-Disposition"].startswith("attachment;") and body == b"<html>hi</html>"


def test_status_codes(gw: Setup) -> None:
    gw.fake.links["goneTOKEN"] = Gone("this link has expired")
    gw.fake.links["slowTOKEN"] = Throttled("too many unknown links from your address; try again in 7 s")
    for path, status in (
        ("/", 404),
        ("/etc/passwd", 404),
        ("/s/", 404),
        ("/s/../../etc/passwd", 404),
        ("/s/noSuchTOKEN", 404),
        ("/s/plainTOKEN/..", 404),
        ("/s/goneTOKEN", 410),
        ("/s/slowTOKEN", 429),
    ):
        response, body = gw.get(path)
        assert response.status == status, path
        assert b"Traceback" not in body
        if status == 429:
            assert response.headers["Retry-After"] == "7"
    response, _ = gw.get("/s/plainTOKEN", method="POST")
    assert response.status == 405 and response.headers["Allow"] == "GET, HEAD"


def raw(gw: Setup, data: bytes, source: str | None = None) -> bytes:
    with socket.create_connection(
        ("127.0.0.1", gw.port), source_address=(source or loopback_source(), 0)
    ) as s:
        s.settimeout(5)
        s.sendall(data)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
        return answer


def test_oversized_and_malformed_heads(gw: Setup) -> None:
    big = b"GET /s/x HTTP/1.1\r\nHost: h\r\n" + b"".join(b"X%d: %s\r\n" % (i, b"v" * 4000) for i in range(5))
    assert raw(gw, big).startswith(b"HTTP/1.1 431 ")
    assert raw(gw, b"GET /s/x HTTP/1.1\r\n" + b"A: b\r\n" * 70 + b"\r\n").startswith(b"HTTP/1.1 431 ")
    assert raw(gw, b"NONSENSE\r\n\r\n").startswith(b"HTTP/1.1 400 ")


def test_a_filecluster_client_at_the_gateway_port_hears_it_is_not_a_proxy(gw: Setup) -> None:
    """--proxy given the gateway's port: the gateway answers 400 at once (not 408 at its head
    deadline), and the client says which port it was given and what --proxy takes."""
    assert raw(gw, encode(MsgType.REGISTER, {"user": "ana", "password": "x"})).startswith(b"HTTP/1.1 400 ")
    with ProxyLink("127.0.0.1", gw.port) as link, pytest.raises(NotAFrame) as wrong:
        link.call(MsgType.WHOAMI, session=True)
    text = str(wrong.value)
    assert f"127.0.0.1:{gw.port} is not a filecluster proxy" in text and "answered in HTTP" in text


def test_a_slow_head_is_cut_off(gw: Setup) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), source_address=(loopback_source(), 0)) as s:
        s.settimeout(5)
        started = time.monotonic()
        s.sendall(b"GET /s/plainTOKEN HTTP/1.1\r\n")
        answer = b""
        for _ in range(20):  # a header line now and then, never the end of the head
            time.sleep(0.1)
            try:
                s.sendall(b"X: y\r\n")
            except OSError:
                break
        while chunk := s.recv(65536):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started < 3


def test_connections_per_address_are_capped(gw: Setup) -> None:
    source = loopback_source()
    held = [socket.create_connection(("127.0.0.1", gw.port), source_address=(source, 0)) for _ in range(3)]
    try:
        time.sleep(0.2)
        extra = socket.create_connection(("127.0.0.1", gw.port), source_address=(source, 0))
        extra.settimeout(5)
        with extra, contextlib.suppress(ConnectionResetError):
            assert extra.recv(100) == b""  # closed unanswered
        assert raw(gw, b"GET /nothing HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 404 ")  # others go on
    finally:
        for s in held:
            s.close()


def test_a_chunk_with_no_good_copy_ends_the_response_before_its_bytes(gw: Setup) -> None:
    data = gw.data["rotTOKEN"]
    second = hashlib.sha256(data[CHUNK : 2 * CHUNK]).hexdigest()
    copies = [p for p in gw.cluster.chunk_files() if p.name == second]
    assert len(copies) == 2
    for copy in copies:
        raw_bytes = bytearray(copy.read_bytes())
        raw_bytes[10] ^= 0xFF
        copy.write_bytes(bytes(raw_bytes))
    conn = gw.conn()
    conn.request("GET", "/s/rotTOKEN")
    response = conn.getresponse()
    assert response.status == 200
    got = b""
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        while piece := response.read(4096):
            got += piece
        raise http.client.IncompleteRead(got)
    conn.close()
    assert len(got) <= CHUNK and got == data[: len(got)]  # never a byte of the bad chunk
    gw.cluster.wait_for(lambda: gw.fake.requests(MsgType.REPORT_BAD), "REPORT_BAD")
    gw.cluster.wait_for(
        lambda: any(c["sent"] == len(got) for c in gw.fake.requests(MsgType.LINK_CLOSE)), "LINK_CLOSE"
    )


def test_a_hung_server_costs_a_download_one_timeout_not_one_per_chunk(gw: Setup) -> None:
    """SIGSTOP: connections to the server open, then nothing answers (the gateway's read timeout
    is 1 s here).  Half of bigTOKEN's 32 chunks list that server first; once it has timed out,
    the stream reads the other copy first for the rest."""
    hung = gw.cluster.servers[1]
    hung.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        response, body = gw.get("/s/bigTOKEN")
        took = time.monotonic() - started
    finally:
        hung.send_signal(signal.SIGCONT)
    assert response.status == 200 and body == gw.data["bigTOKEN"]
    assert took < 5, f"{took:.1f} s: the hung server was waited on for more than one chunk"


def test_a_first_chunk_with_no_good_copy_is_a_503_before_any_header(gw: Setup) -> None:
    """Nothing of the span can be read (its servers down, its copies rotten): the client is told so
    (503, Retry-After), not sent a 200 and its headers for a body that then stops."""
    data = gw.data["rotTOKEN"]
    second = hashlib.sha256(data[CHUNK : 2 * CHUNK]).hexdigest()
    for copy in [p for p in gw.cluster.chunk_files() if p.name == second]:
        copy.write_bytes(bytes(copy.stat().st_size))  # zeros: wrong, whatever was done to it before
    conn = gw.conn()
    conn.request("GET", "/s/rotTOKEN", headers={"Range": f"bytes={CHUNK}-"})  # starts in that chunk
    response = conn.getresponse()
    body = response.read()
    conn.close()
    assert response.status == 503 and response.getheader("Retry-After") == "30"
    assert body.startswith(b"503 Service Unavailable: this file cannot be read from the storage servers")
    grant = gw.fake.grants["rotTOKEN"][-1]  # this GET's (an earlier test's stream may close after it)

    def closed() -> list[dict[str, Any]]:
        return [c for c in gw.fake.requests(MsgType.LINK_CLOSE) if c["grant"] == grant]

    gw.cluster.wait_for(lambda: bool(closed()), "LINK_CLOSE")
    assert closed()[0]["sent"] == 0  # the reserved bytes go back


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_saves_under_the_links_name(gw: Setup, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "-f",
            "-OJ",
            "--interface",
            loopback_source(),
            f"http://127.0.0.1:{gw.port}/s/plainTOKEN",
        ],
        cwd=tmp_path,
        capture_output=True,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr
    saved = list(tmp_path.iterdir())
    # curl reads only the ASCII fallback `filename` (it ignores filename*), browsers the exact name
    assert [p.name for p in saved] == ["r_sum_ __.bin"]
    assert saved[0].read_bytes() == gw.data["plainTOKEN"]


def test_many_downloads_at_once_keep_memory_flat(gw: Setup) -> None:
    data = gw.data["bigTOKEN"]
    reset_peak_memory(gw.gateway.pid)
    before = process_memory(gw.gateway.pid)["VmRSS"]
    results: list[bool] = []

    def fetch() -> None:
        _, body = gw.get("/s/bigTOKEN")
        results.append(body == data)

    threads = [threading.Thread(target=fetch) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [True] * 20
    peak = process_memory(gw.gateway.pid)["VmHWM"]
    # 20 x 2 MiB went through; at most 4 chunk buffers (64 KiB) are held at once, plus threads' stacks
    assert peak - before < 24 * 1024 * 1024, (before, peak)
