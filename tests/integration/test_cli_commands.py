"""`filecluster` commands run in-process (client.cli.main) against a cluster of this module's own:
--json on every command, several downloads in one command, exit statuses, 80-column listings."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.output import display_width, human_size
from tests.cluster import CHUNK, Cluster
from tests.inprocess import Cli, in_process_cli

_n = itertools.count(1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three servers: one may be stopped for a moment (status), and two still hold every chunk."""
    c = Cluster(tmp_path_factory.mktemp("cli-commands"), servers=3).start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def run(cluster: Cluster, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    return in_process_cli(cluster, capsys, monkeypatch)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_json_on_every_command(run: Cli, tmp_path: Path) -> None:
    user = f"json{next(_n)}"
    assert run.json("register", user) == {"user": user}
    assert run.json("logout") == {"logged_out": True}
    assert run.json("login", user) == {"user": user}
    assert run.json("whoami")["user"] == user
    a = write(tmp_path / "a.txt", b"alpha")
    b = write(tmp_path / "b.bin", os.urandom(3 * CHUNK + 1))
    up = run.json("upload", str(a), str(b))
    assert up["failed"] == []
    assert [(f["name"], f["size"], f["sent"], f["path"]) for f in up["files"]] == [
        ("a.txt", 5, 5, str(a)),
        ("b.bin", 3 * CHUNK + 1, 3 * CHUNK + 1, str(b)),  # exact bytes
    ]
    assert up["files"][1]["sha1"] == hashlib.sha1(b.read_bytes()).hexdigest()
    listed = run.json("ls")
    assert [(f["type"], f["name"], f["size"]) for f in listed] == [
        ("file", "a.txt", 5),
        ("file", "b.bin", 3 * CHUNK + 1),
    ]
    assert listed[0]["uploaded"].endswith("Z") and listed[0]["owner"] == user
    shared = run.json("share", "b.bin")
    assert shared["name"] == "b.bin" and shared["link"].startswith("filecluster://")
    down = run.json("download", shared["link"], "a.txt", "-o", str(tmp_path / "out"))
    assert [(f["name"], f["path"], f["fetched"]) for f in down["files"]] == [
        ("b.bin", str(tmp_path / "out" / "b.bin"), True),
        ("a.txt", str(tmp_path / "out" / "a.txt"), True),
    ]
    assert run.json("delete", "a.txt") == {"deleted": [{"name": "a.txt", "deleted": 1}], "failed": []}
    status = run.json("status")
    assert len(status["servers"]) == 3 and all(isinstance(s["free"], int) for s in status["servers"])
    code, out, err = run("status", "--json")  # after the command, too
    assert code == 0 and set(json.loads(out)) == set(status)
    assert run.json("logout") == {"logged_out": True}
    assert run.json("logout") == {"logged_out": False}
    code, out, err = run("--json", "whoami")  # a failure: still one document on stdout
    assert err == "error: not logged in; run: filecluster login USER\n"
    assert code == 1 and json.loads(out) == {"error": "not logged in; run: filecluster login USER"}


def test_json_says_what_failed_for_a_single_file_too(run: Cli, tmp_path: Path) -> None:
    """One target that fails gives the document several would: the error in ``failed``."""
    run("register", f"jsonfail{next(_n)}")
    missing = str(tmp_path / "missing.txt")
    for args, key, target in (
        (["upload", missing], "path", missing),
        (["download", "nope.txt", "-o", str(tmp_path)], "target", "nope.txt"),
        (["delete", "nope.txt"], "name", "nope.txt"),
    ):
        code, out, err = run("--json", *args)
        document = json.loads(out)
        assert code == 1 and err.count("\n") == 1 and err.startswith("error: "), (args, err)
        assert document["failed"] == [{key: target, "error": err[len("error: ") : -1]}]


def test_several_downloads_in_one_command(run: Cli, tmp_path: Path) -> None:
    run("register", f"multi{next(_n)}")
    files = {name: os.urandom(size) for name, size in (("one.bin", 2 * CHUNK), ("two.txt", 10), ("3.dat", 1))}
    for name, data in files.items():
        write(tmp_path / "src" / name, data)
    code, out, _ = run("upload", *(str(tmp_path / "src" / name) for name in files))
    assert code == 0 and out.splitlines()[-1] == f"3 files uploaded, {human_size(2 * CHUNK + 11)}"
    _, link, _ = run("share", "two.txt")
    out_dir = tmp_path / "got"
    code, out, err = run("get", "one.bin", link.strip(), "3.dat", "-o", str(out_dir))
    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == f"3 files downloaded, {human_size(2 * CHUNK + 11)}"
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == files
    code, out, _ = run("get", "one.bin", link.strip(), "3.dat", "-o", str(out_dir))  # all there already
    assert out.splitlines()[-1] == f"3 files downloaded, {human_size(2 * CHUNK + 11)} (3 already there)"
    again = tmp_path / "again"  # one target fails: the others still come, and the status says so
    code, out, err = run("download", "one.bin", "missing.txt", "3.dat", "-o", str(again))
    assert code == 1
    assert err == "error: you have no file named 'missing.txt'\n"
    assert out.splitlines()[-1] == "2 of 3 files downloaded; 1 failed"
    assert sorted(p.name for p in again.iterdir()) == ["3.dat", "one.bin"]


def test_exit_statuses(run: Cli, cluster: Cluster, tmp_path: Path) -> None:
    run("register", f"codes{next(_n)}")
    assert run("upload")[0] == 2  # usage
    assert run("frobnicate")[0] == 2
    code, out, err = run("delete", "nope.txt")
    assert (code, out, err) == (1, "", "error: you have no file named 'nope.txt'\n")
    code, out, err = run("upload", str(tmp_path))  # a folder without -r
    assert code == 1 and out == "" and err.count("\n") == 1 and "upload -r" in err
    assert run("status")[0] == 0
    cluster.kill_server(3)
    try:
        code, out, err = run("status")
        assert code == 1 and err == ""
        assert "2 of 3 storage servers up" in out and " DOWN " in out
        assert run("--json", "status")[0] == 1
    finally:
        cluster.start_server(3)
    assert run("status")[0] == 0


def test_the_listing_fits_80_columns(run: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run("register", f"cols{next(_n)}")
    names = ["a long name for a report that nobody wants to retype, version 12 (final).pdf", "短い.txt"]
    for name in names:
        write(tmp_path / name, name.encode())
    assert run("upload", *(str(tmp_path / name) for name in names))[0] == 0
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run("list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["name", "size", "modified"]
    assert max(display_width(line) for line in lines) <= 80
    assert "…" in out and "短い.txt" in out and lines[-1].startswith("2 files, ")
    code, out, _ = run("list", "-l")
    assert names[0] in out and max(display_width(line) for line in out.splitlines()) > 80
