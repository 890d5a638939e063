"""Share links end to end: a real proxy, real storage servers and filecluster-gateway, fetched with
real HTTP clients (http.client, urllib, curl when present).

tests/integration/test_http_gateway.py proves the gateway's HTTP against a fake proxy and
tests/integration/test_links.py the proxy's link model over the binary protocol; here the two are
wired together as run_cluster.sh runs them: the link `share` prints, its limits, revocation and
deletion as an HTTP client sees them, throttling by the client's own address, and memory."""

from __future__ import annotations

import contextlib
import hashlib
import html
import http.client
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.api import Client
from common.errors import Gone, NotFound
from common.messages import MsgType
from tests.cluster import CHUNK, Cluster, loopback_source, process_memory, reset_peak_memory
from tests.conftest import PASSWORD, new_user

NAME = "résumé 日本.bin"
EVIL = "<script>alert(1)&.html"
SIZE = 3 * CHUNK + 4321  # four chunks
_n = itertools.count(1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("http-links"), servers=2, gateway=True).start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def owner(cluster: Cluster) -> Iterator[Client]:
    client = new_user(cluster, "web")
    yield client
    client.close()


def upload(c: Client, name: str, size: int = SIZE) -> bytes:
    data = os.urandom(size)
    path = Path(c.home) / f"src{next(_n)}"
    path.write_bytes(data)
    c.upload(path, name=name)
    path.unlink()
    return data


def conn(c: Cluster, source: str | None = None) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(
        "127.0.0.1", c.gateway_port, timeout=10, source_address=(source or loopback_source(), 0)
    )


def fetch(
    c: Cluster,
    path: str,
    headers: dict[str, str] | None = None,
    method: str = "GET",
    source: str | None = None,
) -> tuple[http.client.HTTPResponse, bytes]:
    connection = conn(c, source)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response, response.read()
    finally:
        connection.close()


def path_of(link: str) -> str:
    return urllib.parse.urlsplit(link).path


def state_of(c: Client, token: str) -> dict[str, object]:
    return next(link for link in c.links() if link["token"] == token)


def test_share_prints_the_gateways_link_and_a_get_is_byte_exact(cluster: Cluster, owner: Client) -> None:
    data = upload(owner, NAME)
    shared = owner.share(NAME)
    assert shared["link"] == f"{cluster.gateway_url}/s/{shared['token']}"
    assert shared["links"]["http"] == shared["link"] and shared["links"]["filecluster"].startswith(
        "filecluster://"
    )
    response, body = fetch(cluster, path_of(shared["link"]))
    assert response.status == 200 and body == data
    h = response.headers
    assert h["Content-Length"] == str(SIZE) and h["Content-Type"] == "application/octet-stream"
    assert h["ETag"] == f'"{hashlib.sha1(data).hexdigest()}"'
    uploaded = owner.locate(NAME)["uploaded"]
    assert h["Last-Modified"] == time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(uploaded))
    assert h["Content-Disposition"].endswith("filename*=UTF-8''r%C3%A9sum%C3%A9%20%E6%97%A5%E6%9C%AC.bin")
    # urllib too; and the link counts one download
    with urllib.request.urlopen(shared["link"], timeout=10) as reply:
        assert reply.read() == data
    cluster.wait_for(lambda: state_of(owner, shared["token"])["downloads"] == 2, "two downloads counted")


def test_the_cli_shares_and_downloads_http_links(cluster: Cluster, tmp_path: Path) -> None:
    home = cluster.new_home()
    assert cluster.cli("register", f"webcli{next(_n)}", home=home, password=PASSWORD).returncode == 0
    src = tmp_path / "notes é.txt"
    src.write_bytes(os.urandom(2 * CHUNK + 7))
    assert cluster.cli("upload", str(src), home=home).returncode == 0
    shared = cluster.cli("share", src.name, "--max-downloads", "3", home=home)
    assert shared.returncode == 0, shared.stderr
    link = shared.stdout.splitlines()[0]
    assert re.fullmatch(rf"{re.escape(cluster.gateway_url)}/s/[A-Za-z0-9_-]{{43}}", link), shared.stdout
    # another user's CLI resolves the proxy through ?info and downloads over the binary protocol
    down = cluster.cli("download", link, "-o", str(tmp_path / "got"), home=cluster.new_home())
    assert down.returncode == 0, down.stderr
    assert (tmp_path / "got" / src.name).read_bytes() == src.read_bytes()
    # and the library, from a client of another proxy address entirely
    reader = Client(("127.0.0.1", 1), cluster.new_home())
    assert reader.download(link, tmp_path / "lib").path.read_bytes() == src.read_bytes()
    info = json.loads(urllib.request.urlopen(f"{link}?info", timeout=10).read())
    assert (info["proxy"], info["downloads"], info["max_downloads"]) == (cluster.proxy_addr, 2, 3)
    assert info["name"] == src.name and info["content_type"] == "text/plain; charset=utf-8"


def test_ranges_resume_and_head(cluster: Cluster, owner: Client) -> None:
    name = f"r{next(_n)}.bin"
    data = upload(owner, name)
    token = owner.share(name)["token"]
    path = f"/s/{token}"
    for spec, start, end in (
        ("0-0", 0, 1),
        (f"{SIZE - 1}-", SIZE - 1, SIZE),
        ("-1", SIZE - 1, SIZE),
        (f"{CHUNK - 5}-{2 * CHUNK + 4}", CHUNK - 5, 2 * CHUNK + 5),  # across two chunk boundaries
    ):
        response, body = fetch(cluster, path, {"Range": f"bytes={spec}"})
        assert (response.status, body) == (206, data[start:end]), spec
        assert response.headers["Content-Range"] == f"bytes {start}-{end - 1}/{SIZE}"
    response, _ = fetch(cluster, path, {"Range": f"bytes={SIZE}-"})
    assert response.status == 416 and response.headers["Content-Range"] == f"bytes */{SIZE}"
    # HEAD: the headers, no body, no download counted
    response, body = fetch(cluster, path, method="HEAD")
    assert (response.status, body, response.headers["Content-Length"]) == (200, b"", str(SIZE))
    etag = response.headers["ETag"]
    # a download cut short, resumed from where it stopped
    first = conn(cluster)
    first.request("GET", path)
    reply = first.getresponse()
    got = reply.read(CHUNK + 100)
    first.close()
    response, rest = fetch(cluster, path, {"Range": f"bytes={len(got)}-", "If-Range": etag})
    assert response.status == 206 and got + rest == data
    response, body = fetch(cluster, path, {"Range": f"bytes={len(got)}-", "If-Range": '"other"'})
    assert (response.status, body) == (200, data)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_resumes_with_continue_at(cluster: Cluster, owner: Client, tmp_path: Path) -> None:
    name = f"c{next(_n)}.bin"
    data = upload(owner, name)
    link = owner.share(name)["link"]
    out = tmp_path / "part.bin"
    out.write_bytes(data[:12345])  # what an interrupted download left
    result = subprocess.run(
        ["curl", "-sS", "-f", "--interface", loopback_source(), "-C", "-", "-o", str(out), link],
        capture_output=True,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == data


def test_info_and_view_of_a_name_with_markup(cluster: Cluster, owner: Client) -> None:
    path = Path(owner.home) / "evil"
    path.write_bytes(b"x" * 15)
    owner.upload(path, name=EVIL)
    token = owner.share(EVIL)["token"]
    response, body = fetch(cluster, f"/s/{token}?info")
    doc = json.loads(body)
    assert response.status == 200 and doc["name"] == EVIL and doc["size"] == 15
    assert (doc["proxy"], doc["downloads"], doc["expires"]) == (cluster.proxy_addr, 0, None)
    response, body = fetch(cluster, f"/s/{token}?view")
    page = body.decode()
    assert response.status == 200 and "<script>" not in page and html.escape(EVIL) in page
    assert f'href="/s/{token}"' in page
    # HEAD, ?info and ?view cost nothing: a link for one download still serves it whole afterwards
    once = owner.share(EVIL, max_downloads=1)["token"]
    for query, method in (("", "HEAD"), ("", "HEAD"), ("?info", "GET"), ("?view", "GET"), ("?view", "HEAD")):
        assert fetch(cluster, f"/s/{once}{query}", method=method)[0].status == 200
    assert fetch(cluster, f"/s/{once}")[1] == b"x" * 15
    assert fetch(cluster, f"/s/{once}", method="HEAD")[0].status == 410


def test_expiry_and_download_limits(cluster: Cluster, owner: Client) -> None:
    name = f"lim{next(_n)}.bin"
    data = upload(owner, name)
    short = owner.share(name, expires=time.time() + 1.5)
    twice = owner.share(name, max_downloads=2)
    once = owner.share(name, max_downloads=1)
    assert fetch(cluster, path_of(short["link"]))[0].status == 200
    for _ in range(2):
        response, body = fetch(cluster, path_of(twice["link"]))
        assert (response.status, body) == (200, data)
    response, body = fetch(cluster, path_of(twice["link"]))
    assert response.status == 410 and b"download limit" in body
    # a download in two ranges costs one download: each part only what it sent
    split = CHUNK + 1
    assert fetch(cluster, path_of(once["link"]), {"Range": f"bytes=0-{split - 1}"})[1] == data[:split]
    assert fetch(cluster, path_of(once["link"]), {"Range": f"bytes={split}-"})[1] == data[split:]
    assert fetch(cluster, path_of(once["link"]))[0].status == 410
    assert (state_of(owner, once["token"])["downloads"], state_of(owner, once["token"])["state"]) == (
        1,
        "exhausted",
    )
    time.sleep(max(0.0, short["expires"] - time.time() + 0.05))
    response, body = fetch(cluster, path_of(short["link"]))
    assert response.status == 410 and b"expired" in body


def test_a_probe_first_leaves_a_link_of_one_download_its_download(cluster: Cluster, owner: Client) -> None:
    """A browser or a download manager that asks for a byte first (``Range: bytes=0-0``) still gets
    the whole file after it; the link is then used up, and ``?info`` still describes it."""
    name = f"probe{next(_n)}.bin"
    data = upload(owner, name)
    once = owner.share(name, max_downloads=1)
    probe, first = fetch(cluster, path_of(once["link"]), {"Range": "bytes=0-0"})
    assert (probe.status, first) == (206, data[:1])
    assert state_of(owner, once["token"])["state"] == "active"
    response, body = fetch(cluster, path_of(once["link"]))
    assert (response.status, body) == (200, data)
    assert fetch(cluster, path_of(once["link"]))[0].status == 410
    assert state_of(owner, once["token"])["state"] == "exhausted"
    response, body = fetch(cluster, path_of(once["link"]) + "?info")
    assert response.status == 200 and json.loads(body)["downloads"] == 1


def test_each_download_of_a_small_files_link_may_follow_a_probe(
    cluster: Cluster, owner: Client, tmp_path: Path
) -> None:
    """Probe, download, probe, download on a link of two downloads of a 6-byte file: both served;
    then Gone, as ``links`` says.  An empty file's link is counted by the client's download too."""
    name = f"six{next(_n)}.txt"
    data = upload(owner, name, 6)
    twice = owner.share(name, max_downloads=2)
    for _ in range(2):
        assert fetch(cluster, path_of(twice["link"]), {"Range": "bytes=0-0"})[0].status == 206
        assert state_of(owner, twice["token"])["state"] == "active"
        assert fetch(cluster, path_of(twice["link"]))[1] == data
    assert fetch(cluster, path_of(twice["link"]))[0].status == 410
    assert state_of(owner, twice["token"])["state"] == "exhausted"
    empty = f"empty{next(_n)}.txt"
    upload(owner, empty, 0)
    once = owner.share(empty, max_downloads=1)
    assert fetch(cluster, path_of(once["link"]))[0].status == 200
    with pytest.raises(Gone, match="download limit"):
        owner.download(once["link"], tmp_path / "e")
    assert not (tmp_path / "e" / empty).exists()


def test_revocation_and_deletion_answer_410_on_both_protocols(cluster: Cluster, owner: Client) -> None:
    name = f"rev{next(_n)}.bin"
    upload(owner, name, 1000)
    by_link, by_token, by_name = (owner.share(name) for _ in range(3))
    for shared in (by_link, by_token, by_name):
        assert fetch(cluster, path_of(shared["link"]))[0].status == 200
    assert owner.unshare(by_link["link"]) == 1
    assert owner.unshare(by_token["token"]) == 1
    assert owner.unshare(name) == 1
    anyone = cluster.client()
    for shared in (by_link, by_token, by_name):
        response, body = fetch(cluster, path_of(shared["link"]))
        assert response.status == 410 and b"revoked" in body
        with pytest.raises(Gone, match="revoked"):
            anyone.proxy.call(MsgType.LOCATE, {"token": shared["token"]})
    fresh = owner.share(name)
    owner.delete(name)
    response, body = fetch(cluster, path_of(fresh["link"]))
    assert response.status == 410 and b"deleted" in body
    # the CLI says why a link no longer serves
    down = cluster.cli("download", fresh["link"], "-o", str(cluster.root / "nowhere"))
    assert down.returncode != 0 and "deleted" in down.stderr and "Traceback" not in down.stderr


def test_a_folder_link_lists_and_serves_its_files(cluster: Cluster, owner: Client) -> None:
    top = f"web{next(_n)}"
    files = {
        "a.txt": upload(owner, f"{top}/a.txt", 10),
        "sub/<b> & é.bin": upload(owner, f"{top}/sub/<b> & é.bin"),
    }
    token = owner.share(f"{top}/")["token"]
    response, body = fetch(cluster, f"/s/{token}")
    page = body.decode()
    assert response.status == 200 and response.headers["Content-Type"].startswith("text/html")
    assert "<b>" not in page and html.escape("sub/<b> & é.bin") in page
    hrefs = [html.unescape(h) for h in re.findall(r'href="([^"]+)"', page)]
    assert len(hrefs) == 2
    for href in hrefs:
        rel = urllib.parse.unquote(href.split("/", 3)[3])
        response, body = fetch(cluster, href)
        assert (response.status, body) == (200, files[rel])
    response, body = fetch(cluster, f"/s/{token}/a.txt")
    assert (response.status, body) == (200, files["a.txt"])
    response, body = fetch(cluster, f"/s/{token}/nope.txt")
    assert response.status == 404 and b"no file or folder 'nope.txt'" in body  # the link itself is fine
    response, body = fetch(cluster, "/s/" + "x" * 43)
    assert response.status == 404 and b"unknown link" in body
    doc = json.loads(fetch(cluster, f"/s/{token}?info")[1])
    assert doc["kind"] == "folder" and sorted(f["name"] for f in doc["files"]) == sorted(files)
    # a folder in the link lists its own files, each still served by its path in the link
    for sub in ("sub", "sub/"):
        response, body = fetch(cluster, f"/s/{token}/{sub}")
        page = body.decode()
        assert response.status == 200 and "<h1>sub/</h1>" in page and "a.txt" not in page
        assert html.escape("<b> & é.bin") in page and html.escape("sub/<b>") not in page
        hrefs = [html.unescape(h) for h in re.findall(r'href="([^"]+)"', page)]
        assert f"/s/{token}" in hrefs  # back to the whole folder
        (deep,) = [h for h in hrefs if h != f"/s/{token}"]
        assert fetch(cluster, deep)[1] == files["sub/<b> & é.bin"]
    doc = json.loads(fetch(cluster, f"/s/{token}/sub?info")[1])
    assert doc["path"] == "sub" and [f["name"] for f in doc["files"]] == ["sub/<b> & é.bin"]
    # the library downloads the folder through its http link
    got = cluster.client().download(f"{cluster.gateway_url}/s/{token}", cluster.root / f"out{top}")
    assert got.size == sum(map(len, files.values()))
    assert all((got.path / rel).read_bytes() == data for rel, data in files.items())
    # and a folder in it, or one of its files, by the links the gateway's pages show
    base = f"{cluster.gateway_url}/s/{token}"
    got = cluster.client().download(f"{base}/sub/", cluster.root / f"sub{top}")
    assert got.path == cluster.root / f"sub{top}" / "sub" and got.size == len(files["sub/<b> & é.bin"])
    assert (got.path / "<b> & é.bin").read_bytes() == files["sub/<b> & é.bin"]
    for link in (f"{base}/a.txt?view", f"filecluster://{cluster.proxy_addr}/s/{token}/a.txt"):
        got = cluster.client().download(link, cluster.root / f"one{next(_n)}")
        assert got.path.name == "a.txt" and got.path.read_bytes() == files["a.txt"]
    with pytest.raises(NotFound, match="no file or folder 'nope'"):
        cluster.client().download(f"{base}/nope", cluster.root / "never")
    # once the folder is deleted, its link says so (a folder, not a file)
    owner.delete(top, recursive=True)
    response, body = fetch(cluster, f"/s/{token}")
    assert response.status == 410 and b"folder was deleted" in body


def slow_stream(cluster: Cluster, token: str) -> tuple[socket.socket, bytes]:
    """A GET of link ``token`` from a reader with a small receive buffer: the socket, once the
    response head (200) arrived, and the body bytes that came with it."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    sock.bind((loopback_source(), 0))
    sock.settimeout(10)
    sock.connect(("127.0.0.1", cluster.gateway_port))
    sock.sendall(f"GET /s/{token} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1024)
    assert head.startswith(b"HTTP/1.1 200 ")
    return sock, head.split(b"\r\n\r\n", 1)[1]


def test_revoking_stops_a_stream_in_progress(cluster: Cluster, owner: Client) -> None:
    name = f"big{next(_n)}.bin"
    size = 128 * CHUNK  # 8 MiB: more than the sockets' buffers hold
    upload(owner, name, size)
    token = owner.share(name)["token"]
    sock, first = slow_stream(cluster, token)
    received = len(first)
    with sock:
        owner.unshare(token)
        revoked = time.monotonic()
        try:
            while piece := sock.recv(16 * 1024):
                received += len(piece)
                time.sleep(0.02)  # a slow reader (< 1 MiB/s): the sockets' buffers hold up to ~4 MiB
        except ConnectionResetError:
            pass
        ended = time.monotonic() - revoked
    assert received < size and ended < 5.0, (received, ended)


def test_the_last_download_a_link_allows_is_served_whole_however_long_it_takes(
    cluster: Cluster, owner: Client
) -> None:
    """The gateway re-checks the link every 2 s while it streams.  That download's own reservation
    uses up a link of one download: the check must not take that for the link being exhausted."""
    name = f"slow{next(_n)}.bin"
    size = 128 * CHUNK  # 8 MiB: more than the sockets' buffers hold
    data = upload(owner, name, size)
    token = owner.share(name, max_downloads=1)["token"]
    sock, first = slow_stream(cluster, token)
    with sock:
        body = bytearray(first)
        time.sleep(2.5)  # a slow reader: the stream outlives a check
        while len(body) < size and (piece := sock.recv(256 * 1024)):
            body += piece
    assert bytes(body) == data
    assert state_of(owner, token)["state"] == "exhausted"
    response, _ = fetch(cluster, f"/s/{token}")
    assert response.status == 410  # and no more


def test_guessing_from_one_address_never_slows_another(cluster: Cluster, owner: Client) -> None:
    name = f"t{next(_n)}.txt"
    data = upload(owner, name, 100)
    good = path_of(owner.share(name)["link"])
    statuses = []
    for i in range(40):
        response, _ = fetch(cluster, f"/s/guess{i:040d}", source="127.0.0.2")
        statuses.append(response.status)
        if response.status == 429:
            assert int(response.headers["Retry-After"]) >= 1
            break
    assert statuses[0] == 404 and statuses[-1] == 429, statuses
    started = time.monotonic()
    response, body = fetch(cluster, good, source="127.0.0.1")
    assert (response.status, body) == (200, data) and time.monotonic() - started < 2


def test_after_the_wait_real_links_open_from_an_address_that_guessed(cluster: Cluster, owner: Client) -> None:
    """Typos earn a wait; once it is over, the same address opens real links again, one after
    another (each GET is two lookups), without a success ever restarting the wait."""
    name = f"t{next(_n)}.txt"
    data = upload(owner, name, 100)
    good = path_of(owner.share(name)["link"])
    for i in range(40):
        if fetch(cluster, f"/s/typo{i:040d}", source="127.0.0.3")[0].status == 429:
            break
    time.sleep(1.1)  # "try again in 1 s"
    for _ in range(5):
        response, body = fetch(cluster, good, source="127.0.0.3")
        assert (response.status, body) == (200, data)
        assert fetch(cluster, good + "?info", source="127.0.0.3")[0].status == 200


def test_nothing_outside_links_is_served(cluster: Cluster) -> None:
    for path in ("/", "/s/", "/etc/passwd", "/s/../x", "/s/%2e%2e/x"):
        response, body = fetch(cluster, path)
        assert response.status == 404 and b"Traceback" not in body, path
    response, _ = fetch(cluster, "/s/abc", method="POST")
    assert response.status == 405 and response.headers["Allow"] == "GET, HEAD"


def raw(c: Cluster, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", c.gateway_port), source_address=(loopback_source(), 0)) as s:
        s.settimeout(15)
        try:
            s.sendall(data)
            # nothing more comes: no head deadline to wait for (the gateway may have answered and
            # closed already, refusing a head too large: then there is nothing left to shut down)
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_WR)
            answer = b""
            while piece := s.recv(65536):
                answer += piece
        except (ConnectionResetError, BrokenPipeError):
            return b""
        return answer


def test_garbage_never_breaks_the_gateway(cluster: Cluster, owner: Client) -> None:
    name = f"g{next(_n)}.txt"
    data = upload(owner, name, 50)
    good = path_of(owner.share(name)["link"])
    answers = [
        raw(cluster, os.urandom(3000) + b"\r\n\r\n"),
        raw(cluster, b"GET /s/x HTTP/1.1\r\nHost: h\r\nX: " + b"a" * 20000 + b"\r\n\r\n"),
        raw(cluster, b"GET " + good.encode() + b" HTTP/1.1\r\n\r\n"),
        raw(cluster, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(200)),  # a TLS hello
    ]
    for answer in answers:
        assert answer == b"" or re.match(rb"HTTP/1\.1 4\d\d ", answer), answer[:100]
        assert b"Traceback" not in answer
    assert answers[2].startswith(b"HTTP/1.1 400 ")  # HTTP/1.1 without Host
    response, body = fetch(cluster, good)
    assert (response.status, body) == (200, data)
    assert cluster.gateway is not None and cluster.gateway.poll() is None


def test_twenty_downloads_at_once_keep_the_proxy_flat(cluster: Cluster, owner: Client) -> None:
    name = f"many{next(_n)}.bin"
    data = upload(owner, name, 16 * CHUNK)
    path = path_of(owner.share(name)["link"])
    assert cluster.proxy is not None and cluster.gateway is not None
    fetch(cluster, path)  # warm both up: threads, connections, code paths
    for pid in (cluster.proxy.pid, cluster.gateway.pid):
        reset_peak_memory(pid)
    before = {pid: process_memory(pid)["VmRSS"] for pid in (cluster.proxy.pid, cluster.gateway.pid)}
    results: list[bool] = []

    def one() -> None:
        _, body = fetch(cluster, path)
        results.append(body == data)

    threads = [threading.Thread(target=one) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [True] * 20
    proxy_growth = process_memory(cluster.proxy.pid)["VmHWM"] - before[cluster.proxy.pid]
    gateway_growth = process_memory(cluster.gateway.pid)["VmHWM"] - before[cluster.gateway.pid]
    # 20 MiB went out; the proxy only answered LINK_OPEN/LINK_CLOSE, the gateway held at most 16 chunks
    assert proxy_growth < 4 * 1024 * 1024, proxy_growth
    assert gateway_growth < 24 * 1024 * 1024, gateway_growth


def test_links_name_the_gateway_right_after_a_proxy_restart(cluster: Cluster, owner: Client) -> None:
    """The gateway says hello every 30 s; a restarted proxy must not print filecluster:// links
    meanwhile (it keeps the gateway's URL in its catalog).  Last: it restarts the module's proxy."""
    name = f"restart{next(_n)}.txt"
    data = upload(owner, name, 100)
    cluster.restart_proxy()
    link = owner.share(name)["link"]
    assert link.startswith(f"{cluster.gateway_url}/s/"), link
    response, body = fetch(cluster, path_of(link))
    assert (response.status, body) == (200, data)


def test_an_interrupted_download_of_a_one_download_link_can_be_resumed(
    cluster: Cluster, owner: Client
) -> None:
    """The client reads a little and goes away; what sat in the kernels' buffers is not charged as
    downloaded, so `Range: bytes=N-` (curl -C -, a browser) still fits the link's one download."""
    name = f"once{next(_n)}.bin"
    data = upload(owner, name, 8 * 1024 * 1024)
    shared = owner.share(name, max_downloads=1)
    sock = socket.create_connection(("127.0.0.1", cluster.gateway_port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.sendall(f"GET {path_of(shared['link'])} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    got = b""
    while len(got) < 300_000:
        got += sock.recv(65536)
    sock.close()  # unread data: the kernel resets the connection
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    etag = f'"{hashlib.sha1(data).hexdigest()}"'
    cluster.wait_for(lambda: state_of(owner, shared["token"])["state"] == "active", "the link still active")
    response, rest = fetch(
        cluster, path_of(shared["link"]), {"Range": f"bytes={len(body)}-", "If-Range": etag}
    )
    assert response.status == 206 and body + rest == data
    cluster.wait_for(lambda: state_of(owner, shared["token"])["state"] == "exhausted", "the link used up")
    assert fetch(cluster, path_of(shared["link"]))[0].status == 410


def status_of(c: Cluster, path: str, headers: dict[str, str] | None = None) -> int:
    """The status of a GET, its body left unread (a 200 that would be cut short raises nothing)."""
    connection = conn(c)
    try:
        connection.request("GET", path, headers=headers or {})
        return connection.getresponse().status
    finally:
        connection.close()


def test_a_file_on_servers_that_are_down_is_503_before_any_byte(tmp_path: Path) -> None:
    """The proxy knows which servers are down: a range with a chunk only on those is answered 503
    with Retry-After up front (no 200 cut short where that chunk begins), and costs the link none
    of its budget; a range clear of those chunks still opens."""
    c = Cluster(tmp_path / "down", servers=2, replicas=1, gateway=True).start()
    try:
        ana = new_user(c, "down")
        for _ in range(20):  # a file whose first chunk is on one server and a later one on the other
            upload(ana, "d.bin")
            where = [chunk["servers"][0]["id"] for chunk in ana.locate("d.bin")["chunks"]]
            if len(set(where)) == 2:
                break
        assert len(set(where)) == 2, "placement put every chunk on one server 20 times"
        free = path_of(ana.share("d.bin")["link"])
        once = ana.share("d.bin", max_downloads=1)
        down = next(server for server in where if server != where[0])
        c.kill_server(down)
        c.wait_for(lambda: status_of(c, free) == 503, "the proxy to see the server down")
        response, body = fetch(c, path_of(once["link"]))
        assert response.status == 503 and response.getheader("Retry-After") and b"try again" in body
        link = state_of(ana, once["token"])
        assert (link["downloads"], link["state"]) == (0, "active")
        response, body = fetch(c, free, {"Range": "bytes=0-99"})  # the first chunk's server is up
        assert response.status == 206 and len(body) == 100
        ana.close()
    finally:
        c.stop()
