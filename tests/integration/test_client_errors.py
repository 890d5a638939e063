"""The client library against a real cluster when things are not as they should be: links and names
in every form, sessions that end or cannot be kept, LOCATE replies that lie, a disk that fails under
a download or an upload, files that change while they are sent, a proxy that restarts.

Faults are injected only into the client's own disk and OS calls; the network is always real."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from client import destination
from client import download as downloader
from client import session as saved
from client import upload as uploader
from client.api import Client
from client.chunk_sources import Trouble
from client.proxy_link import ProxyLink
from common.errors import (
    AuthError,
    Conflict,
    CorruptData,
    InvalidRequest,
    NotFound,
    ProtocolError,
    Unavailable,
)
from common.limits import MAX_CHUNKS_PER_FILE
from common.messages import MsgType
from tests.cluster import CHUNK, Cluster
from tests.conftest import PASSWORD, new_user


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def names(client: Client) -> list[str]:
    return [f["name"] for f in client.list()]


def half_received(cluster: Cluster) -> list[Path]:
    """Chunks a storage server is still receiving (its temp files)."""
    return [
        p for i in cluster.servers for p in (cluster.root / f"server{i}" / "ServerFiles" / "tmp").iterdir()
    ]


def free_port() -> int:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def oserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))


# -- finding what to download ----------------------------------------------------------------------


def test_a_link_is_fetched_from_the_proxy_it_names(cluster: Cluster, user: Client, tmp_path: Path) -> None:
    user.upload(write(tmp_path / "far.txt", b"kept over there"))
    link = user.share("far.txt")["link"]
    by_other_name = link.replace("//127.0.0.1:", "//localhost:")  # the same proxy, spelled otherwise
    dead = free_port()
    with cluster.client() as reader:  # its own proxy is 127.0.0.1:port
        assert reader.download(by_other_name, tmp_path / "a").path.read_bytes() == b"kept over there"
        with pytest.raises(Unavailable, match=re.escape(f"cannot reach the proxy at 127.0.0.1:{dead}")):
            reader.download(link.replace(f":{cluster.proxy_port}/", f":{dead}/"), tmp_path / "b")
    assert nothing_in(tmp_path / "b")


def test_bare_tokens_names_and_garbage(
    cluster: Cluster, user: Client, other_user: Client, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    user.upload(write(tmp_path / "tok.txt", b"shared by token"))
    token = user.share("tok.txt")["link"].rsplit("/", 1)[1]
    anonymous = cluster.client()
    request.addfinalizer(anonymous.close)
    assert anonymous.download(token, tmp_path / "a").path.read_bytes() == b"shared by token"
    # logged in, but the token is not one of their names: it is tried as a link token next
    assert other_user.download(f"  {token} ", tmp_path / "b").path.read_bytes() == b"shared by token"
    not_a_link = "'tok.txt' is not a link; to download your own files by name, log in"
    with pytest.raises(AuthError, match=re.escape(not_a_link)):
        anonymous.locate("tok.txt")
    with pytest.raises(NotFound, match=re.escape("you have no file named 'tok.txt'")):
        other_user.locate("tok.txt")  # not token-like: the name's own error
    with pytest.raises(NotFound, match=re.escape("no file or link 'AAAAAAAAAAAAAAAAAAAAAAAA'")):
        other_user.locate("A" * 24)
    with pytest.raises(NotFound, match=re.escape("no file or link")):
        anonymous.locate("A" * 24)
    with pytest.raises(InvalidRequest, match=re.escape("name a file or paste a link")):
        anonymous.locate("  ")
    for garbage in ("filecluster:/x", "filecluster://host/s/" + token, f"filecluster://h:1/s/{token}?x"):
        with pytest.raises(InvalidRequest, match=re.escape("not a share link")):
            other_user.locate(garbage)


def test_your_own_file_wins_over_a_token_of_the_same_spelling(
    cluster: Cluster, user: Client, tmp_path: Path
) -> None:
    name = "Quarterly_report_2024-final"  # 27 link-token characters: it could be a token
    user.upload(write(tmp_path / name, b"mine"))
    assert user.download(name, tmp_path / "a").path.read_bytes() == b"mine"
    with cluster.client() as anonymous, pytest.raises(NotFound, match=re.escape("no file or link")):
        anonymous.download(name, tmp_path / "b")  # logged out, it can only be a token


# -- sessions ------------------------------------------------------------------------------------


def test_logout_when_not_logged_in_and_after_the_session_ended_elsewhere(
    cluster: Cluster, request: pytest.FixtureRequest
) -> None:
    ana = new_user(cluster, "ana")
    request.addfinalizer(ana.close)
    token = ana.proxy.token
    second_window = Client.from_environment(cluster.proxy_addr, ana.home)  # the same saved session
    request.addfinalizer(second_window.close)
    assert second_window.whoami() == ana.user
    assert ana.logout() is True
    assert not (ana.home / saved.SESSION_FILE).exists()
    with ProxyLink("127.0.0.1", cluster.proxy_port, token=token) as link, pytest.raises(AuthError):
        link.call(MsgType.WHOAMI, session=True)  # the token is dead on the proxy, not just forgotten
    assert ana.logout() is False  # nothing to end
    assert second_window.logout() is True  # its session was already ended: still a clean logout
    assert (second_window.user, second_window.proxy.token) == (None, None)
    with pytest.raises(AuthError, match=re.escape("not logged in")):
        second_window.whoami()


def test_a_login_that_cannot_keep_its_session_ends_it(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with new_user(cluster, "ana") as ana:
        user = ana.user
    assert user is not None
    issued: list[str] = []
    real_save = saved.save

    def watch(home: Path, session: saved.SavedSession) -> None:
        issued.append(session.token)
        real_save(home, session)

    monkeypatch.setattr(saved, "save", watch)
    not_a_folder = write(tmp_path / "afile", b"x")
    with Client.from_environment(cluster.proxy_addr, not_a_folder) as client:
        with pytest.raises(InvalidRequest, match=r"cannot keep the session in .*\(FILECLUSTER_HOME\)"):
            client.login(user, PASSWORD)
        assert (client.user, client.proxy.token) == (None, None)
    assert len(issued) == 1
    with ProxyLink("127.0.0.1", cluster.proxy_port, token=issued[0]) as link, pytest.raises(AuthError):
        link.call(MsgType.WHOAMI, session=True)  # nobody can use that session: it was ended


def test_a_client_outlives_a_proxy_restart(tmp_path: Path) -> None:
    c = Cluster(tmp_path / "c", servers=2).start()
    try:
        with new_user(c, "ana") as ana:
            ana.upload(write(tmp_path / "before.txt", b"before"))
            assert names(ana) == ["before.txt"]  # the client now holds an idle connection to the proxy
            c.restart_proxy()
            assert names(ana) == ["before.txt"]  # the same Client noticed the dropped connection, redialled
            ana.upload(write(tmp_path / "after.txt", b"after"))
            assert sorted(names(ana)) == ["after.txt", "before.txt"]
    finally:
        c.stop()


# -- downloads: LOCATE replies that do not match what the servers hold ---------------------------------


@pytest.fixture
def two_chunks(user: Client, tmp_path: Path) -> tuple[Client, bytes, dict[str, Any]]:
    """A user's file of two chunks, and its LOCATE reply."""
    data = os.urandom(CHUNK + 1000)
    user.upload(write(tmp_path / "src" / "two.bin", data))
    info = user.locate("two.bin")
    assert [c["size"] for c in info["chunks"]] == [CHUNK, 1000]
    return user, data, info


def nothing_in(folder: Path) -> bool:
    return not folder.exists() or list(folder.iterdir()) == []


def only_a_partial_in(folder: Path) -> bool:
    """Nothing visible: only the hidden folder, with the partial file kept for the next try."""
    hidden = folder / downloader.PARTIAL_DIR
    return [p.name for p in folder.iterdir()] == [hidden.name] and len(list(hidden.glob("*.part"))) == 1


def test_a_chunk_list_that_does_not_add_up_is_refused(
    two_chunks: tuple[Client, bytes, dict[str, Any]], tmp_path: Path
) -> None:
    _, _, info = two_chunks
    with pytest.raises(ProtocolError, match=re.escape("does not add up to the file size")):
        downloader.download({**info, "size": info["size"] + 1}, tmp_path / "out")
    assert nothing_in(tmp_path / "out")  # not even the temp file


def test_a_wrong_whole_file_sha1_saves_nothing(
    two_chunks: tuple[Client, bytes, dict[str, Any]], tmp_path: Path
) -> None:
    user, data, info = two_chunks
    wrong = hashlib.sha1(b"another file").hexdigest()
    with pytest.raises(CorruptData, match=re.escape("does not match its SHA-1; nothing was saved")):
        downloader.download({**info, "sha1": wrong}, tmp_path / "out")
    assert nothing_in(tmp_path / "out")
    assert user.download("two.bin", tmp_path / "out").path.read_bytes() == data  # the honest reply works


def test_a_server_answering_with_other_bytes_than_asked_is_skipped(
    two_chunks: tuple[Client, bytes, dict[str, Any]], tmp_path: Path
) -> None:
    _, _, info = two_chunks
    first, second = info["chunks"]
    skewed = [{**first, "size": CHUNK - 10}, {**second, "size": 1010}]  # still adds up to the size
    with pytest.raises(Unavailable, match=re.escape("cannot be read from any copy")) as caught:
        downloader.download({**info, "chunks": skewed}, tmp_path / "out")
    assert str(caught.value).count("got something else") == len(first["servers"])  # every copy was tried
    assert only_a_partial_in(tmp_path / "out")


def test_a_reply_naming_a_path_is_refused(
    two_chunks: tuple[Client, bytes, dict[str, Any]], tmp_path: Path
) -> None:
    _, _, info = two_chunks
    for evil in ("../escaped.bin", "/etc/evil", "..", "a\x00b"):
        with pytest.raises(InvalidRequest, match=r"invalid file name|path separator|control"):
            downloader.download({**info, "name": evil}, tmp_path / "inside" / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # nothing written anywhere


# -- downloads: the local disk --------------------------------------------------------------------


def test_an_output_folder_that_cannot_be_made(user: Client, tmp_path: Path) -> None:
    user.upload(write(tmp_path / "f.txt", b"data"))
    a_file = write(tmp_path / "plain", b"not a folder")
    with pytest.raises(
        InvalidRequest, match=re.escape(f"cannot create folder {a_file}/sub: Not a directory")
    ):
        user.download("f.txt", a_file / "sub")
    with pytest.raises(InvalidRequest, match=re.escape(f"cannot save in {a_file}: it is not a folder")):
        user.download("f.txt", a_file)
    assert a_file.read_bytes() == b"not a folder"


def test_a_full_disk_when_the_download_starts(
    user: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user.upload(write(tmp_path / "f.txt", b"data"))
    out = tmp_path / "out"
    real_open = os.open

    def full(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if str(path).endswith(".part"):
            raise oserror(errno.ENOSPC)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", full)
    with pytest.raises(InvalidRequest, match=re.escape(f"cannot write in {out}: No space left on device")):
        user.download("f.txt", out)
    assert nothing_in(out)


def test_a_download_that_cannot_fit_is_refused_before_it_fills_the_disk(
    two_chunks: tuple[Client, bytes, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user, data, _ = two_chunks
    out = tmp_path / "out"
    real = os.fstatvfs

    def small(fd: int) -> Any:
        fs = real(fd)
        free = (len(data) // 2) // fs.f_frsize  # room for half of the file
        return os.statvfs_result((*fs[:4], free, *fs[5:]))

    monkeypatch.setattr(os, "fstatvfs", small)
    wrote: list[int] = []
    monkeypatch.setattr(downloader._Transfer, "write", lambda self, d, o: wrote.append(o))
    with pytest.raises(InvalidRequest, match=re.escape(f"not enough room in {out} for two.bin: it needs ")):
        user.download("two.bin", out)
    assert wrote == [] and nothing_in(out)  # not a byte fetched, no partial kept for a retry
    monkeypatch.setattr(os, "fstatvfs", real)
    monkeypatch.undo()
    assert user.download("two.bin", out).path.read_bytes() == data  # once there is room


def test_a_disk_that_fills_during_the_download_is_said_to_be_full_and_no_server_is_blamed(
    two_chunks: tuple[Client, bytes, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user, _, _ = two_chunks
    out = tmp_path / "out"
    blamed: list[Any] = []
    monkeypatch.setattr(Trouble, "failed", lambda self, server: blamed.append(server))

    def full(*args: Any, **kwargs: Any) -> int:
        raise oserror(errno.ENOSPC)

    monkeypatch.setattr(os, "pwrite", full)  # the partial is open: its chunks cannot be written
    monkeypatch.setattr(downloader, "write_direct", full)
    with pytest.raises(InvalidRequest, match=re.escape(f"cannot write in {out}: No space left on device")):
        user.download("two.bin", out)
    assert blamed == [] and only_a_partial_in(out)  # kept: the download goes on once there is room


def test_a_disk_that_fills_after_a_chunk_says_where_the_kept_part_is(
    two_chunks: tuple[Client, bytes, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The partial keeps the chunk that arrived (the next try goes on from it), and the error says
    where it is: it holds disk space the user may want back."""
    user, _, _ = two_chunks
    out = tmp_path / "out"
    real_write = downloader._Transfer.write
    writes: list[int] = []
    lock = threading.Lock()

    def filling(self: Any, data: memoryview, offset: int) -> None:
        with lock:  # the chunks are written from several threads: the first one whole, then no room
            if writes:
                raise oserror(errno.ENOSPC)
            writes.append(len(data))
        real_write(self, data, offset)

    monkeypatch.setattr(downloader._Transfer, "write", filling)
    kept = out / downloader.PARTIAL_DIR
    with pytest.raises(
        InvalidRequest, match=re.escape(f"No space left on device (what arrived is kept in {kept}")
    ):
        user.download("two.bin", out)
    assert only_a_partial_in(out)


def test_an_unreadable_file_of_the_same_name_and_size(
    user: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user.upload(write(tmp_path / "f.txt", b"data"))
    out = tmp_path / "out"
    write(out / "f.txt", b"DATA")  # same size: the download must read it to know if it is the same

    def failing_disk(path: Any, *args: Any, **kwargs: Any) -> Any:
        raise oserror(errno.EIO)

    monkeypatch.setattr(destination, "open", failing_disk, raising=False)
    with pytest.raises(InvalidRequest, match=re.escape(f"cannot look in {out}: Input/output error")):
        user.download("f.txt", out)
    assert sorted(p.name for p in out.iterdir()) == ["f.txt"]


@pytest.fixture
def no_hard_links(monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system without hard links (FAT, some network and FUSE mounts): link() gives EPERM."""

    def link(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        raise oserror(errno.EPERM)

    monkeypatch.setattr(os, "link", link)


@pytest.mark.usefixtures("no_hard_links")
def test_without_hard_links_a_download_still_never_replaces_a_file(user: Client, tmp_path: Path) -> None:
    user.upload(write(tmp_path / "src" / "notes.txt", b"from the cluster"))
    out = tmp_path / "out"
    write(out / "notes.txt", b"my own notes")
    result = user.download("notes.txt", out)
    assert result.fetched and result.path == out / "notes (1).txt"
    assert result.path.read_bytes() == b"from the cluster"
    assert (out / "notes.txt").read_bytes() == b"my own notes"
    assert sorted(p.name for p in out.iterdir()) == ["notes (1).txt", "notes.txt"]  # no temp file left


def test_a_disk_error_when_naming_the_download(
    user: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user.upload(write(tmp_path / "src" / "notes.txt", b"from the cluster"))

    def link(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        raise oserror(errno.EIO)

    monkeypatch.setattr(os, "link", link)
    out = tmp_path / "out"
    with pytest.raises(InvalidRequest, match=re.escape(f"cannot write {out}/notes.txt: Input/output error")):
        user.download("notes.txt", out)
    assert only_a_partial_in(out)  # complete and verified: the next try only checks it
    monkeypatch.undo()
    result = user.download("notes.txt", out)
    assert result.resumed == result.size and result.path.read_bytes() == b"from the cluster"


def test_collisions_count_up_and_fit_long_extensions(user: Client, tmp_path: Path) -> None:
    user.upload(write(tmp_path / "src" / "a.txt", b"cluster"))
    out = tmp_path / "out"
    write(out / "a.txt", b"mine")
    write(out / "a (1).txt", b"mine too")
    assert user.download("a.txt", out).path == out / "a (2).txt"
    long_ext = "a." + "x" * 250  # 252 bytes, nearly all "extension": the counter goes at the end
    user.upload(write(tmp_path / "src" / long_ext, b"cluster"))
    write(out / long_ext, b"mine")
    saved_as = user.download(long_ext, out).path
    assert saved_as.name.endswith(" (1)") and len(saved_as.name.encode()) <= 255
    assert saved_as.read_bytes() == b"cluster"


def test_a_temp_file_of_a_download_in_progress_is_left_alone(user: Client, tmp_path: Path) -> None:
    user.upload(write(tmp_path / "src" / "f.txt", b"data"))
    out = tmp_path / "out"
    running = write(
        out / downloader.PARTIAL_DIR / "0123456789abcdef.part", b"another download, still running"
    )
    assert user.download("f.txt", out).path.read_bytes() == b"data"
    assert running.exists()  # only temp files untouched for an hour are swept


# -- uploads: what the client reads ----------------------------------------------------------------


def test_only_regular_files_are_uploaded(user: Client, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(InvalidRequest, match=re.escape(f"{fifo} is not a regular file")):
        user.upload(fifo)  # refused before it is opened: opening a FIFO would block
    under_a_file = write(tmp_path / "plain", b"x") / "inside.txt"
    with pytest.raises(InvalidRequest, match=re.escape(f"cannot read {under_a_file}: Not a directory")):
        user.upload(under_a_file)
    assert names(user) == []


def test_a_file_the_os_will_not_open(user: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = write(tmp_path / "secret.txt", b"locked")

    def denied(path: Any, *args: Any, **kwargs: Any) -> Any:
        raise oserror(errno.EACCES)  # what chmod 000 gives a user who is not root

    monkeypatch.setattr(uploader, "open", denied, raising=False)
    with pytest.raises(InvalidRequest, match=re.escape(f"cannot read {src}: Permission denied")):
        user.upload(src)
    assert names(user) == []


class FailingReads:
    """An open file whose reads fail with EIO after ``good`` successful ones (a dying disk)."""

    def __init__(self, file: Any, good: int) -> None:
        self._file = file
        self._good = good

    def readinto(self, buffer: Any) -> int:
        if self._good <= 0:
            raise oserror(errno.EIO)
        self._good -= 1
        return int(self._file.readinto(buffer))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)

    def __enter__(self) -> FailingReads:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()


def test_a_read_error_while_hashing(user: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = write(tmp_path / "bad-sector.bin", os.urandom(3 * CHUNK))
    real_open = open
    monkeypatch.setattr(uploader, "open", lambda *a, **k: FailingReads(real_open(*a, **k), 1), raising=False)
    with pytest.raises(InvalidRequest, match=re.escape(f"cannot read {src}: Input/output error")):
        user.upload(src)
    assert names(user) == []


def test_a_file_that_shrinks_while_it_is_hashed(user: Client, tmp_path: Path) -> None:
    src = write(tmp_path / "log.txt", os.urandom(3 * CHUNK))

    def truncate_midway(phase: str, done: int, total: int) -> None:
        if phase == "hashing" and done < total and src.stat().st_size == total:
            os.truncate(src, 100)  # rotated by another program

    with pytest.raises(Conflict, match=re.escape("changed while it was being read; try again")):
        user.upload(src, truncate_midway)
    assert names(user) == []


@pytest.mark.parametrize("change", ["rewritten", "truncated"])
def test_a_file_that_changes_while_it_is_sent(
    cluster: Cluster, user: Client, tmp_path: Path, change: str
) -> None:
    data = os.urandom(3 * CHUNK)
    src = write(tmp_path / "live.db", data)

    def change_once_sending(phase: str, done: int, total: int) -> None:
        if phase == "sending" and done == 0:  # hashed already, not a byte sent yet
            if change == "rewritten":
                src.write_bytes(os.urandom(len(data)))
            else:
                os.truncate(src, CHUNK // 2)

    with pytest.raises(
        Conflict, match=re.escape("changed while it was being uploaded; nothing was stored, try again")
    ):
        user.upload(src, change_once_sending)
    assert names(user) == []
    # and no server, head or replica, keeps a half-received chunk (or a connection waiting for the rest)
    cluster.wait_for(lambda: not half_received(cluster), "the servers to drop the half-sent chunks")
    src.write_bytes(data)
    assert user.upload(src).sha1 == hashlib.sha1(data).hexdigest()  # running it again works


def test_a_file_too_large_for_the_cluster_is_refused_before_it_is_read(user: Client, tmp_path: Path) -> None:
    src = tmp_path / "disk.img"
    limit = CHUNK * MAX_CHUNKS_PER_FILE
    with open(src, "wb") as f:
        f.truncate(limit + 1)  # sparse: takes no room
    phases: list[str] = []
    with pytest.raises(InvalidRequest, match=re.escape(f"too large for this cluster: at most {limit} bytes")):
        user.upload(src, lambda phase, done, total: phases.append(phase))
    assert phases == []  # not a byte hashed
    assert names(user) == []


def test_an_upload_tries_a_fresh_placement_once_then_gives_up(tmp_path: Path) -> None:
    # one copy of each chunk; heartbeats every 30 s, so the proxy has not noticed the deaths yet
    c = Cluster(tmp_path / "c", servers=2, replicas=1, heartbeat=30.0).start()
    try:
        with new_user(c, "ana") as ana:
            for i in (1, 2):
                c.kill_server(i)
            src = write(tmp_path / "one-chunk.txt", b"a single chunk goes to a single server")
            # the chunk is re-placed on the other server, which fails too; then there is nowhere left
            with pytest.raises(Unavailable, match="storage server") as caught:
                ana.upload(src)
            assert "\n" not in str(caught.value)  # one line for the user
            assert names(ana) == []
            # each attempt reported its server; the proxy checked, and now lists both as down
            assert [s["up"] for s in ana.status()["servers"]] == [False, False]
    finally:
        c.stop()
