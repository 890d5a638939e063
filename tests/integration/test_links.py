"""Share links the owner controls, on a real cluster: several links per file with their own
limits, expiry, download budgets over LOCATE and over the gateway's LINK_OPEN/LINK_CLOSE (signed
with the cluster secret, as filecluster-gateway sends them), revocation, deletion, moves, folder
links, throttling by the gateway's client address, and the share/links/unshare commands."""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client import api
from client.api import Client
from common.errors import AuthError, Gone, InvalidRequest, NotFound, Throttled
from common.messages import MsgType
from common.transport import Connection
from tests.cluster import CHUNK, Cluster
from tests.conftest import new_user
from tests.inprocess import in_process_cli

SIZE = CHUNK + CHUNK // 2  # two chunks
_n = itertools.count(1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("links"), servers=2).start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def ana(cluster: Cluster) -> Iterator[Client]:
    client = new_user(cluster, "ana")
    yield client
    client.close()


def gateway(c: Cluster, msg_type: MsgType, header: dict[str, Any], *, sign: bool = True) -> dict[str, Any]:
    """One request as filecluster-gateway sends it: signed with the cluster secret."""
    host, port = c.proxy_addr.rsplit(":", 1)
    with Connection.connect(host, int(port), timeout=10) as conn:
        if not sign:
            return conn.request(msg_type, header)
        signed = c.key.sign(msg_type, header)
        return c.key.verify_reply(signed, conn.request(msg_type, signed))


def upload(c: Client, tmp_path: Path, name: str, size: int = SIZE) -> bytes:
    data = os.urandom(size)
    path = tmp_path / f"src{next(_n)}"
    path.write_bytes(data)
    c.upload(path, name=name)
    return data


def locate(c: Cluster, token: str, **more: Any) -> dict[str, Any]:
    with c.client() as anyone:
        return anyone.proxy.call(MsgType.LOCATE, {"token": token, **more})


def by_token(c: Client) -> dict[str, dict[str, Any]]:
    return {link["token"]: link for link in c.links()}


def test_an_updated_file_keeps_its_links_count(cluster: Cluster, ana: Client, tmp_path: Path) -> None:
    """The link follows its name to the new version; the downloads it counted stay as many."""
    upload(ana, tmp_path, "grow.bin", 3 * CHUNK)
    token = ana.share("grow.bin", max_downloads=3)["token"]
    assert locate(cluster, token)["link"]["downloads"] == 1  # a LOCATE by token: one whole download, counted
    for size in (100, 5 * CHUNK):
        upload(ana, tmp_path, "grow.bin", size)
        assert by_token(ana)[token]["downloads"] == 1 and by_token(ana)[token]["state"] == "active"
    located = [locate(cluster, token) for _ in range(2)]
    assert [len(x["chunks"]) for x in located] == [5, 5] and by_token(ana)[token]["state"] == "exhausted"
    with pytest.raises(Gone, match="download limit"):
        locate(cluster, token)


def test_a_refused_link_download_leaves_nothing_behind(cluster: Cluster, ana: Client, tmp_path: Path) -> None:
    """Its limit reached, a link's download fails before a byte comes: no partial file is kept (it
    would hold the file's whole size for days, for nothing to resume)."""
    upload(ana, tmp_path, "once.bin", 3 * CHUNK)
    token = ana.share("once.bin", max_downloads=1)["token"]
    locate(cluster, token)  # its one download
    out = tmp_path / "out"
    with cluster.client() as anyone, pytest.raises(Gone, match="download limit"):
        anyone.download(token, out)
    assert [p.relative_to(out) for p in out.rglob("*")] == []


def test_several_links_per_file_each_with_its_own_limit(
    cluster: Cluster, ana: Client, tmp_path: Path
) -> None:
    data = upload(ana, tmp_path, "a.bin")
    once = ana.share("a.bin", max_downloads=1)
    free = ana.share("a.bin")
    assert once["token"] != free["token"] and once["link"].startswith("filecluster://")
    assert once["max_downloads"] == 1 and free["max_downloads"] is None
    reader = cluster.client()
    assert reader.download(once["link"], tmp_path / "r1").path.read_bytes() == data
    with pytest.raises(Gone, match="download limit"):
        reader.download(once["token"], tmp_path / "r2")
    for i in range(2):
        assert reader.download(free["token"], tmp_path / f"f{i}").path.read_bytes() == data
    links = by_token(ana)
    assert [link["token"] for link in ana.links()] == [free["token"], once["token"]]  # newest first
    assert (links[once["token"]]["state"], links[once["token"]]["downloads"]) == ("exhausted", 1)
    assert (links[free["token"]]["state"], links[free["token"]]["downloads"]) == ("active", 2)


def test_a_link_holder_learns_the_file_not_its_owner(cluster: Cluster, ana: Client, tmp_path: Path) -> None:
    """Whoever holds a link (maybe with no account) learns the file's name, size, SHA-1 and upload
    time: not the owner's user name (a name to try passwords on), nor how many versions it has."""
    upload(ana, tmp_path, "d/v.bin", 100)
    upload(ana, tmp_path, "d/v.bin", 100)
    token = ana.share("d/v.bin")["token"]
    folder = ana.share("d/")["token"]
    got = [
        locate(cluster, token),
        locate(cluster, token, peek=True),
        locate(cluster, folder, path="v.bin"),
        gateway(cluster, MsgType.LINK_OPEN, {"token": token, "client": "10.1.1.9"}),
        gateway(cluster, MsgType.LINK_OPEN, {"token": token, "client": "10.1.1.9", "range": [0, 100]}),
    ]
    with cluster.client() as anyone:
        got += anyone.proxy.call(MsgType.LOCATE_MANY, {"token": folder, "paths": ["v.bin"]})["files"]
    for reply in got:
        assert reply["name"] == "v.bin" and reply["size"] == 100 and reply["sha1"], reply
        assert not {"owner", "version", "versions"} & set(reply), reply


def test_gateway_ranges_reserve_and_close_refunds(cluster: Cluster, ana: Client, tmp_path: Path) -> None:
    upload(ana, tmp_path, "r.bin")
    token = ana.share("r.bin", max_downloads=1)["token"]
    info = gateway(cluster, MsgType.LINK_OPEN, {"token": token, "client": "10.1.1.1"})  # HEAD: free
    assert (info["kind"], info["size"], info["grant"], info["name"]) == ("file", SIZE, None, "r.bin")
    first = gateway(cluster, MsgType.LINK_OPEN, {"token": token, "client": "10.1.1.1", "range": [0, SIZE]})
    assert first["grant"] and len(first["chunks"]) == 2 and first["chunks"][0]["servers"][0]["ticket"]
    with pytest.raises(Gone, match="download limit"):  # a second download at once cannot pass a limit of 1
        gateway(cluster, MsgType.LINK_OPEN, {"token": token, "client": "10.1.1.2", "range": [0, SIZE]})
    gateway(cluster, MsgType.LINK_CLOSE, {"grant": first["grant"], "sent": 1000})  # cut short
    assert by_token(ana)[token]["state"] == "active"
    rest = gateway(cluster, MsgType.LINK_OPEN, {"token": token, "client": "10.1.1.1", "range": [1000, SIZE]})
    assert rest["link"]["downloads"] == 1  # the resumed range costs only what it sends
    gateway(cluster, MsgType.LINK_CLOSE, {"grant": rest["grant"], "sent": SIZE - 1000})
    with pytest.raises(NotFound):  # a grant closes once
        gateway(cluster, MsgType.LINK_CLOSE, {"grant": rest["grant"], "sent": 0})
    with pytest.raises(Gone, match="download limit"):  # used up: nothing more opens
        gateway(cluster, MsgType.LINK_OPEN, {"token": token, "client": "10.1.1.1", "range": [0, SIZE]})
    # a check is for a download under way, which reserved its bytes when it opened: the budget it
    # used up itself never stops it (a link of one download is exhausted by that very download)
    assert gateway(cluster, MsgType.LINK_OPEN, {"token": token, "client": "10.1.1.1", "check": True})
    assert by_token(ana)[token]["state"] == "exhausted"


def test_expiry_revocation_deletion_and_moves(cluster: Cluster, ana: Client, tmp_path: Path) -> None:
    upload(ana, tmp_path, "e.bin")
    short = ana.share("e.bin", expires=time.time() + 1.0)["token"]
    by_link, by_tok, by_name = (ana.share("e.bin") for _ in range(3))
    assert locate(cluster, short)["size"] == SIZE
    assert ana.unshare(by_link["links"]["filecluster"]) == 1
    assert ana.unshare(by_tok["token"]) == 1
    for token in (by_link["token"], by_tok["token"]):
        with pytest.raises(Gone, match="revoked"):
            locate(cluster, token)
        with pytest.raises(Gone, match="revoked"):
            gateway(cluster, MsgType.LINK_OPEN, {"token": token, "client": "10.2.2.2", "check": True})
    ana.move("e.bin", "moved/e.bin")  # the links follow the file
    assert locate(cluster, by_name["token"])["name"] == "e.bin" and ana.links()[0]["name"] == "moved/e.bin"
    time.sleep(max(0.0, 1.05 - (time.time() - ana.links()[-1]["created"])))
    with pytest.raises(Gone, match="expired"):
        locate(cluster, short)
    assert ana.unshare(short) == 0  # it had ended already: it stays expired, not revoked
    assert by_token(ana)[short]["state"] == "expired"
    ana.delete("moved/e.bin")
    with pytest.raises(Gone, match="deleted"):
        gateway(cluster, MsgType.LINK_OPEN, {"token": by_name["token"], "client": "10.2.2.2"})
    states = {link["token"]: link["state"] for link in ana.links()}
    assert states == {
        short: "deleted",
        by_link["token"]: "revoked",
        by_tok["token"]: "revoked",
        by_name["token"]: "deleted",
    }
    with pytest.raises(NotFound):
        ana.unshare("moved/e.bin")  # no live link left


def test_unshare_by_name_revokes_only_links_that_still_serve(
    cluster: Cluster, ana: Client, tmp_path: Path
) -> None:
    """An expired link stays expired and is not counted; an exhausted one is revoked (a bigger new
    version would make it serve again); with nothing left to revoke, the name is not found."""
    upload(ana, tmp_path, "u.bin", 100)
    short = ana.share("u.bin", expires=time.time() + 0.5)["token"]
    once = ana.share("u.bin", max_downloads=1)["token"]
    live = ana.share("u.bin")["token"]
    cluster.client().download(once, tmp_path / "got")
    time.sleep(max(0.0, 0.55 - (time.time() - by_token(ana)[short]["created"])))
    assert [by_token(ana)[t]["state"] for t in (short, once, live)] == ["expired", "exhausted", "active"]
    assert ana.unshare("u.bin") == 2
    assert [by_token(ana)[t]["state"] for t in (short, once, live)] == ["expired", "revoked", "revoked"]
    with pytest.raises(NotFound, match=r"no live link of yours names 'u\.bin'"):
        ana.unshare("u.bin")


def test_guessing_is_throttled_per_client_and_the_gateway_must_sign(cluster: Cluster, ana: Client) -> None:
    token = ana.share(upload_name(ana))["token"]
    guess = {"token": "x" * 43, "client": "10.3.3.3"}
    with pytest.raises(Throttled):
        for _ in range(40):
            with pytest.raises(NotFound):
                gateway(cluster, MsgType.LINK_OPEN, guess)
    # another address with a valid link is not slowed, and a check never counts
    assert gateway(cluster, MsgType.LINK_OPEN, {"token": token, "client": "10.3.3.4"})["kind"] == "file"
    with pytest.raises(NotFound):
        gateway(cluster, MsgType.LINK_OPEN, {**guess, "check": True})
    with pytest.raises(AuthError):
        gateway(cluster, MsgType.LINK_OPEN, {"token": token, "client": "10.3.3.4"}, sign=False)
    with pytest.raises(AuthError):
        gateway(cluster, MsgType.GATEWAY_HELLO, {"url": "http://evil:1"}, sign=False)


def upload_name(c: Client) -> str:
    name = f"t{next(_n)}.txt"
    path = Path(c.home) / name
    path.write_bytes(b"hello")
    c.upload(path, name=name)
    return name


def test_folder_links(cluster: Cluster, ana: Client, tmp_path: Path) -> None:
    a = upload(ana, tmp_path, "d/a.bin", 100)
    b = upload(ana, tmp_path, "d/sub/b.bin", 200)
    with pytest.raises(InvalidRequest, match="not a folder"):
        ana.share("d", max_downloads=2)
    token = ana.share("d/")["token"]
    listing = locate(cluster, token)
    assert listing["kind"] == "folder" and listing["name"] == "d"
    assert [(f["name"], f["size"]) for f in listing["files"]] == [("a.bin", 100), ("sub/b.bin", 200)]
    assert locate(cluster, token, path="sub/b.bin")["size"] == 200
    with pytest.raises(NotFound):
        gateway(cluster, MsgType.LINK_OPEN, {"token": token, "client": "10.4.4.4", "path": "nope"})
    got = cluster.client().download(token, tmp_path / "out")
    assert (tmp_path / "out/d/a.bin").read_bytes() == a and (tmp_path / "out/d/sub/b.bin").read_bytes() == b
    assert got.size == 300
    with pytest.raises(NotFound, match=r"you have no folder named 'd/a\.bin'"):
        ana.share("d/a.bin/")  # a trailing "/" names a folder: never the file of that name
    assert ana.share("/d/a.bin")["kind"] == "file"
    with pytest.raises(NotFound, match=r"no live link of yours names the folder 'd/a\.bin'"):
        ana.unshare("d/a.bin/")  # nor are the file's links revoked by it
    assert [link["state"] for link in ana.links()] == ["active", "active"]
    assert ana.unshare("d/a.bin") == 1
    ana.delete("d", recursive=True)
    with pytest.raises(Gone):
        locate(cluster, token)


def test_a_folder_links_files_download_many_at_once(
    cluster: Cluster, ana: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Located a batch at a time (LOCATE_MANY with the token), not two requests a file; one
    progress bar over the whole folder; a file that cannot be had does not stop the others."""
    from client.proxy_link import ProxyLink

    data = {f"many/f{i:02d}.txt": upload(ana, tmp_path, f"many/f{i:02d}.txt", 100 + i) for i in range(40)}
    big = upload(ana, tmp_path, "many/sub/big.bin", 3 * CHUNK + 5)
    token = ana.share("many/")["token"]
    calls: list[MsgType] = []
    real_call = ProxyLink.call

    def counted(self: ProxyLink, msg_type: MsgType, *args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append(msg_type)
        return real_call(self, msg_type, *args, **kwargs)

    monkeypatch.setattr(ProxyLink, "call", counted)
    seen: list[tuple[str, int, int]] = []
    got = cluster.client().download(token, tmp_path / "out", lambda *a: seen.append(a))
    total = sum(len(d) for d in data.values()) + len(big)
    assert got.size == total and (tmp_path / "out/many/sub/big.bin").read_bytes() == big
    for name, content in data.items():
        assert (tmp_path / "out" / name).read_bytes() == content
    assert calls.count(MsgType.LOCATE) <= 2 and 1 <= calls.count(MsgType.LOCATE_MANY) <= 3, calls
    assert seen[-1] == ("receiving", total, total) and all(t == total for _, _, t in seen)

    listing = [{"name": name[len("many/") :], "size": len(d)} for name, d in data.items()]
    gone = [{"name": "f05.txt", "size": 105}]  # deleted after the folder was listed
    ana.delete("many/f05.txt")
    with pytest.raises(NotFound):
        api._download_folder_link(ana.proxy, token, gone + listing, tmp_path / "again", None, "many", 0)
    saved = sorted(p.name for p in (tmp_path / "again/many").iterdir())
    assert saved == sorted(n[len("many/") :] for n in data if n != "many/f05.txt")  # the others all came


def test_share_links_unshare_commands(
    cluster: Cluster, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = in_process_cli(cluster, capsys, monkeypatch)
    home = run.home
    user = f"cmd{next(_n)}"
    assert run("register", user)[0] == 0 and run("login", user)[0] == 0
    (home / "n.txt").write_text("hi")
    assert run("upload", str(home / "n.txt"))[0] == 0
    code, out, err = run("share", "n.txt", "--expires", "1h", "--max-downloads", "2")
    assert code == 0 and out.startswith("filecluster://") and out.count("\n") == 1  # the link alone
    assert "at most 2 downloads" in err
    code, _, err = run("share", "n.txt", "--expires", "2001-01-01")  # a usage error: one line
    assert (
        code == 2
        and err
        == "filecluster share: error: --expires 2001-01-01: that is in the past"
        " (see: filecluster share --help)\n"
    )
    gateway(cluster, MsgType.GATEWAY_HELLO, {"url": "http://127.0.0.1:9080"})
    shared = json.loads(run("--json", "share", "n.txt")[1])
    assert shared["link"] == f"http://127.0.0.1:9080/s/{shared['token']}"
    assert shared["links"]["filecluster"].endswith(shared["token"])
    code, table, _ = run("links")
    assert code == 0 and shared["link"] in table  # whole, to copy (the name column gives way)
    assert "0/2" in table and "active" in table
    listed = json.loads(run("--json", "links")[1])["links"]
    assert listed[0]["token"] == shared["token"] and len(listed) == 2
    iso = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\Z")  # times in --json are ISO 8601 UTC
    assert shared["expires"] is None and all(iso.match(link["created"]) for link in listed)
    assert iso.match(listed[1]["expires"]) and listed[0]["expires"] is None
    limited = json.loads(run("--json", "share", "n.txt", "--expires", "2099-12-31")[1])
    assert re.match(r"2099-12-3\dT", limited["expires"])
    assert run("unshare", limited["token"])[0] == 0  # a bare token never starts with "-" (an option)
    for mistyped in (shared["link"].replace("/s/", "/x/"), "http://127.0.0.1:9080/", "https://h/s/"):
        code, _, err = run("unshare", mistyped)  # a URL that is no link: never taken for a name
        assert code == 1 and err.startswith(f"error: not a share link: {mistyped} (") and err.count("\n") == 1
    code, out, _ = run("unshare", shared["link"] + "?view#top")  # as a browser's address bar shows it
    assert code == 0 and out == "revoked the link\n"  # never echoed: a link is a secret
    code, out, _ = run("unshare", shared["link"])
    assert code == 0 and out == "that link had already ended\n"
    code, out, _ = run("unshare", "n.txt")
    assert code == 0 and out == "revoked 1 link of n.txt\n"
    assert run("share", "n.txt")[0] == 0
    assert json.loads(run("--json", "unshare", "n.txt")[1]) == {"target": "n.txt", "revoked": 1}
    assert {link["state"] for link in json.loads(run("--json", "links")[1])["links"]} == {"revoked"}
