"""The `filecluster` command: outputs, exit codes, and one clear line for every user mistake."""

from __future__ import annotations

import hashlib
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import pytest

from client.api import Client
from client.download import PARTIAL_DIR, STALE_PART_SECONDS
from client.output import human_size
from common.errors import InvalidRequest
from tests.cluster import CHUNK, Cluster, die_with_parent
from tests.conftest import PASSWORD

_n = iter(range(1, 1000))


def one_line_error(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def home(cluster: Cluster) -> Path:
    """A logged-in CLI user's FILECLUSTER_HOME."""
    home = cluster.new_home()
    result = cluster.cli("register", f"cli{next(_n)}", home=home, password=PASSWORD)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("registered and logged in as")
    return home


def test_session_file_is_private(cluster: Cluster, home: Path) -> None:
    assert (home / "session.json").stat().st_mode & 0o777 == 0o600
    whoami = cluster.cli("whoami", home=home)
    assert whoami.returncode == 0 and whoami.stdout.strip().startswith("cli")


def test_full_user_story(cluster: Cluster, home: Path, tmp_path: Path) -> None:
    data = os.urandom(200_000)
    src = tmp_path / "my report.pdf"
    src.write_bytes(data)
    up = cluster.cli("upload", str(src), home=home)
    assert up.returncode == 0, up.stderr
    sha1 = hashlib.sha1(data).hexdigest()
    size = human_size(len(data))
    assert up.stdout.strip() == f"uploaded my report.pdf  size={size}  sha1={sha1}  sent={size}"

    table = cluster.cli("list", home=home)
    assert "my report.pdf" in table.stdout and size in table.stdout
    assert table.stdout.splitlines()[0].split() == ["name", "size", "modified"]
    assert sha1 in cluster.cli("list", "-l", home=home).stdout

    listed = json.loads(cluster.cli("list", "--json", home=home).stdout)
    assert len(listed) == 1
    assert set(listed[0]) >= {"type", "name", "owner", "size", "sha1", "uploaded", "state"}
    assert listed[0]["state"] == "ok"
    assert listed[0]["name"] == "my report.pdf" and listed[0]["size"] == len(data)

    share = cluster.cli("share", "my report.pdf", home=home)
    link = share.stdout.strip()
    assert share.stdout == link + "\n" and link.startswith(f"filecluster://{cluster.proxy_addr}/s/")

    other = cluster.new_home()
    assert cluster.cli("register", f"reader{next(_n)}", home=other, password=PASSWORD).returncode == 0
    down = cluster.cli("download", link, "-o", str(tmp_path / "got"), home=other)
    assert down.returncode == 0, down.stderr
    assert (tmp_path / "got" / "my report.pdf").read_bytes() == data

    default_dir = cluster.cli("download", "my report.pdf", home=home, cwd=tmp_path)
    assert default_dir.returncode == 0, default_dir.stderr
    assert (tmp_path / "ClientFiles" / "my report.pdf").read_bytes() == data

    assert cluster.cli("delete", "my report.pdf", home=home).returncode == 0
    assert json.loads(cluster.cli("list", "--json", home=home).stdout) == []
    gone = cluster.cli("download", link, "-o", str(tmp_path / "late"), home=other)
    assert "was deleted" in one_line_error(gone)

    status = cluster.cli("status", home=home)
    assert status.returncode == 0 and status.stdout.count(" up ") >= 4
    assert cluster.cli("logout", home=home).stdout.strip() == "logged out"
    assert "not logged in" in one_line_error(cluster.cli("list", home=home))


def test_download_never_overwrites_a_different_file(cluster: Cluster, home: Path, tmp_path: Path) -> None:
    src = tmp_path / "src" / "same.txt"
    src.parent.mkdir()
    src.write_bytes(b"cluster version")
    cluster.cli("upload", str(src), home=home)
    out = tmp_path / "out"
    out.mkdir()
    (out / "same.txt").write_bytes(b"my precious local edits")
    result = cluster.cli("download", "same.txt", "-o", str(out), home=home)
    assert result.returncode == 0, result.stderr
    assert (out / "same.txt").read_bytes() == b"my precious local edits"
    assert (out / "same (1).txt").read_bytes() == b"cluster version"
    again = cluster.cli("download", "same.txt", "-o", str(out), home=home)
    assert again.stdout.startswith("already there:")
    assert sorted(p.name for p in out.iterdir()) == ["same (1).txt", "same.txt"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["upload", "/definitely/not/here.txt"], "no such file: /definitely/not/here.txt"),
        (["upload", "{tmp}"], "is a folder; to upload all of it: upload -r"),
        (["share", "nope.txt"], "you have no file or folder named 'nope.txt'"),
        (["delete", "nope.txt"], "you have no file named 'nope.txt'"),
        (["delete", "a\\b.txt"], "backslash"),
        (["delete", "a//b.txt"], "empty folder name"),
        (["download", "nope.txt"], "you have no file named 'nope.txt'"),
        (["download", "filecluster://{proxy}/s/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"], "unknown link"),
        (["download", "filecluster://nonsense"], "not a share link: filecluster://nonsense"),
        (["download", "http://{proxy}/x/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"], "not a share link: http://"),
        (["download", "HTTPS://example.invalid/s/"], "not a share link: HTTPS://example.invalid/s/ ("),
        (["unshare", "http://{proxy}/"], "not a share link: http://"),
    ],
)
def test_user_mistakes_get_one_clear_line(
    cluster: Cluster, home: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    args = [a.format(tmp=tmp_path, proxy=cluster.proxy_addr) for a in args]
    before = cluster.cli("list", "--all", "--json", home=home).stdout
    assert message in one_line_error(cluster.cli(*args, home=home))
    assert cluster.cli("list", "--all", "--json", home=home).stdout == before


def test_account_mistakes(cluster: Cluster, home: Path) -> None:
    user = cluster.cli("whoami", home=home).stdout.splitlines()[0]
    taken = cluster.cli("register", user, home=cluster.new_home(), password=PASSWORD)
    assert f"the user name '{user}' is taken" in one_line_error(taken)
    wrong = cluster.cli("login", user, home=cluster.new_home(), password="not the password")
    assert "wrong user name or password" in one_line_error(wrong)
    short = cluster.cli("register", "shorty", home=cluster.new_home(), password="123")
    assert "at least 8 characters" in one_line_error(short)
    bad_name = cluster.cli("register", "../root", home=cluster.new_home(), password=PASSWORD)
    assert "a user name is" in one_line_error(bad_name, 2)  # a usage error: no account has such a name
    shouted = cluster.cli("login", user.upper(), home=cluster.new_home(), password=PASSWORD)
    assert shouted.returncode == 0 and shouted.stdout == f"logged in as {user}\n"  # the account's name


def test_an_upload_of_several_paths_reports_each(cluster: Cluster, home: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.txt"
    good.write_text("fine")
    result = cluster.cli("upload", str(good), str(tmp_path / "missing.txt"), home=home)
    assert result.returncode == 1
    assert result.stdout.startswith("uploaded good.txt")
    assert "missing.txt" in one_line_error(result)
    twice = cluster.cli("upload", str(good), f"{tmp_path}/./good.txt", str(good), home=home)
    assert twice.returncode == 0 and twice.stdout.startswith("updated good.txt (version 2)")  # once
    listed = json.loads(cluster.cli("--json", "versions", "good.txt", home=home).stdout)
    assert [v["version"] for v in listed["versions"]] == [2, 1]


def test_two_files_that_would_get_one_name_refuse_the_upload(
    cluster: Cluster, home: Path, tmp_path: Path
) -> None:
    """`upload */README.md` would make each an older version of the next (and past the versions
    kept, lose the first ones): nothing is uploaded, and the error names both files."""
    for d in ("p1", "p2", "p3"):
        (tmp_path / d / "pics").mkdir(parents=True)
        (tmp_path / d / "README.md").write_text(f"readme of {d}")
        (tmp_path / d / "pics" / f"{d}.jpg").write_text(d)
    (tmp_path / "p3" / "pics" / "p1.jpg").write_text("another p1.jpg")
    mixed = cluster.cli("upload", *(str(tmp_path / d / "README.md") for d in ("p1", "p2")), home=home)
    assert mixed.returncode == 1 and mixed.stdout == ""
    assert one_line_error(mixed) == (
        f"error: {tmp_path}/p1/README.md and {tmp_path}/p2/README.md would both be uploaded as README.md; "
        "nothing was uploaded (upload them one at a time, each with --as NAME)"
    )
    merged = cluster.cli(
        "upload", "-r", str(tmp_path / "p1" / "pics"), str(tmp_path / "p2" / "pics"), home=home
    )
    assert merged.returncode == 0, merged.stderr  # two folders, no file in both: they merge
    clash = cluster.cli(
        "upload", "-r", str(tmp_path / "p1" / "pics"), str(tmp_path / "p3" / "pics"), home=home
    )
    assert clash.returncode == 1 and "would both be uploaded as pics/p1.jpg" in clash.stderr
    listed = json.loads(cluster.cli("--json", "ls", "-R", home=home).stdout)
    names = sorted(f["name"] for f in listed)
    assert "README.md" not in names and "pics/p3.jpg" not in names
    assert [n for n in names if n.startswith("pics/")] == ["pics/p1.jpg", "pics/p2.jpg"]


def test_usage_errors_exit_2(cluster: Cluster) -> None:
    result = cluster.cli("upload")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (
        "filecluster upload: error: the following arguments are required: PATH"
        " (see: filecluster upload --help)\n"
    )
    wrong = cluster.cli("frobnicate")
    assert wrong.returncode == 2 and len(wrong.stderr.splitlines()) == 1


def test_proxy_down_is_one_clear_line(cluster: Cluster, tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = cluster.cli("--proxy", f"127.0.0.1:{port}", "login", "ana", password=PASSWORD)
    error = one_line_error(result)
    assert error.startswith(f"error: cannot reach the proxy at 127.0.0.1:{port} (Connection refused)")
    assert error.rstrip().endswith("--proxy HOST:PORT or FILECLUSTER_PROXY")  # where to look, what to set


def test_proxy_addresses_that_are_no_proxy(cluster: Cluster, home: Path) -> None:
    """--proxy given a URL, nothing, or a storage server's port: one line that says what it takes."""
    for given, said, code in (
        (f"http://{cluster.proxy_addr}", "--proxy: invalid address", 2),  # never taken for host "http"
        (f"filecluster://{cluster.proxy_addr}", "expected HOST:PORT, not a URL", 2),
        ("", "--proxy: invalid address '': nothing given; expected HOST:PORT", 2),  # not FILECLUSTER_PROXY
        ("files lan:9000", "--proxy: invalid address", 2),
        (f"127.0.0.1:{cluster.server_ports[1]}", "is not the filecluster proxy (LOGIN is not a request", 1),
    ):
        result = cluster.cli("--proxy", given, "login", "ana", home=home, password=PASSWORD)
        assert said in one_line_error(result, code), (given, result.stderr)
    assert (
        "this is a filecluster storage server" in result.stderr
        and "take the proxy's HOST:PORT" in result.stderr
    )


def test_menu_drives_the_same_actions(cluster: Cluster, home: Path, tmp_path: Path) -> None:
    src = tmp_path / "menu file.txt"
    src.write_text("from the menu")
    script = f"3\n{src}\n4\n5\nmenu file.txt\n\n\n42\n0\n"  # share: no expiry, no limit
    result = cluster.cli("menu", home=home, stdin=script)
    assert result.returncode == 0, result.stderr
    assert "uploaded menu file.txt" in result.stdout
    assert f"filecluster://{cluster.proxy_addr}/s/" in result.stdout
    assert "choose a number from 0 to" in result.stdout
    assert "Traceback" not in result.stderr


def test_long_name_collision_gets_a_shortened_name(cluster: Cluster, home: Path, tmp_path: Path) -> None:
    name = "n" * 251 + ".txt"  # 255 bytes: "name (1).txt" would not fit
    src = tmp_path / "src" / name
    src.parent.mkdir()
    src.write_bytes(b"from the cluster")
    assert cluster.cli("upload", str(src), home=home).returncode == 0
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_bytes(b"local")
    result = cluster.cli("download", name, "-o", str(out), home=home)
    assert result.returncode == 0, result.stderr
    saved = [p for p in out.iterdir() if p.name != name]
    assert len(saved) == 1 and saved[0].name.endswith(" (1).txt")
    assert len(saved[0].name.encode()) <= 255 and saved[0].read_bytes() == b"from the cluster"


def test_a_bad_session_folder_is_one_line_and_left_alone(
    cluster: Cluster, home: Path, tmp_path: Path
) -> None:
    not_a_folder = tmp_path / "afile"
    not_a_folder.write_text("x")
    user = cluster.cli("whoami", home=home).stdout.splitlines()[0]
    result = cluster.cli("login", user, home=not_a_folder, password=PASSWORD)
    assert "FILECLUSTER_HOME" in one_line_error(result)
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    assert cluster.cli("login", user, home=shared, password=PASSWORD).returncode == 0
    assert shared.stat().st_mode & 0o777 == 0o755  # an existing folder keeps its mode
    assert (shared / "session.json").stat().st_mode & 0o777 == 0o600


def test_a_killed_download_leaves_its_part_only_in_the_hidden_folder_and_stale_parts_are_swept(
    fresh_cluster: Cluster, tmp_path: Path
) -> None:
    c = fresh_cluster
    home = c.new_home()
    assert c.cli("register", "ana", home=home, password=PASSWORD).returncode == 0
    data = os.urandom(64 * CHUNK)
    src = tmp_path / "sweep.bin"
    src.write_bytes(data)
    assert c.cli("upload", str(src), home=home).returncode == 0
    out = tmp_path / "out"
    out.mkdir()
    with c.servers_stopped():  # the download connects, then waits mid-transfer
        proc = c.cli_process("download", "sweep.bin", "-o", str(out), home=home)
        try:
            c.wait_for(lambda: list(out.iterdir()) or proc.poll() is not None, "the hidden temp file")
            c.wait_until_transferring(proc, "the download to connect to a storage server")
            proc.kill()  # killed outright: no chance to clean up
            proc.communicate()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    partial = out / PARTIAL_DIR
    assert [p.name for p in out.iterdir()] == [PARTIAL_DIR]  # nothing visible appeared
    assert partial.stat().st_mode & 0o777 == 0o700
    left = list(partial.iterdir())
    assert len(left) == 1 and re.fullmatch(r"[0-9a-f]{32}\.part", left[0].name), left
    killed = left[0]
    long_ago = time.time() - STALE_PART_SECONDS - 60
    os.utime(killed, (long_ago, long_ago))  # the killed download's, untouched for over an hour
    running = partial / "0123456789abcdef.part"  # a concurrent download's, written just now
    running.write_bytes(b"x" * 1000)
    recent = partial / "fedcba9876543210.part"  # another's, untouched for under an hour
    recent.write_bytes(b"y" * 1000)
    a_while_ago = time.time() - STALE_PART_SECONDS + 300
    os.utime(recent, (a_while_ago, a_while_ago))
    # the user's own files, named like the temp files of older versions, old: never the sweep's
    mine = [out / ".filecluster-0123456789abcdef.part", out / "0123456789abcdef.part"]
    for path in mine:
        path.write_bytes(b"mine")
        os.utime(path, (long_ago, long_ago))
    again = c.cli("download", "sweep.bin", "-o", str(out), home=home)
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [PARTIAL_DIR, "sweep.bin", *(p.name for p in mine)]
    )
    assert sorted(p.name for p in partial.iterdir()) == sorted([recent.name, running.name])
    assert all(path.read_bytes() == b"mine" for path in mine)
    assert (out / "sweep.bin").read_bytes() == data


def test_upload_too_large_for_the_cluster_is_refused_up_front(user: Client) -> None:
    from common.limits import MAX_CHUNKS_PER_FILE
    from common.messages import MsgType

    chunk = user.proxy.call(MsgType.HELLO)["chunk_size"]
    with pytest.raises(InvalidRequest, match="file too large"):
        user.proxy.call(
            MsgType.UPLOAD_BEGIN,
            {
                "name": "huge.img",
                "size": chunk * (MAX_CHUNKS_PER_FILE + 1),
                "sha1": "0" * 40,
                "chunk_size": chunk,
                "chunks": [],
            },
            session=True,
        )


def read_until(stream: IO[bytes], text: bytes, timeout: float = 15.0) -> bytes:
    """Read a pipe until ``text`` has appeared (a prompt ends no line, so readline would wait)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while text not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([stream], [], [], left)[0]:
            raise TimeoutError(f"waited for {text!r}, got {seen!r}")
        piece = os.read(stream.fileno(), 4096)
        if not piece:
            raise AssertionError(f"the output ended before {text!r}: {seen!r}")
        seen += piece
    return seen


def test_sigterm_ends_the_menu(cluster: Cluster, home: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "client", "menu"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cluster.cli_env(home),
        preexec_fn=die_with_parent,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"3\n")  # "upload": it asks for paths, and waits
        proc.stdin.flush()
        read_until(
            proc.stdout, b"to upload (globs like *.jpg work): "
        )  # main() set the SIGTERM handler first
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 143
        assert err == b"terminated\n"  # one line, no traceback
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
