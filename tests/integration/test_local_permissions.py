"""Local folders and files the user may not read, search or list: one line and no traceback, from
the command line and from the menu (which goes on), and a folder one may write in but not list
(mode 0311) takes downloads.

File modes bind only a user without CAP_DAC_OVERRIDE: run as root, each command runs under
``setpriv`` with those capabilities dropped from its bounding set (so the modes bind it as they
bind anyone else)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path

import pytest

from tests.cluster import Cluster
from tests.conftest import PASSWORD

_n = count(1)
_CAPS = "-dac_override,-dac_read_search,-fowner"
Run = Callable[..., subprocess.CompletedProcess[str]]


def _unprivileged() -> list[str]:
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("run as root without setpriv (util-linux): file modes cannot bind the client")
    return [setpriv, "--bounding-set", _CAPS]


@pytest.fixture
def cli(cluster: Cluster, tmp_path: Path) -> Iterator[Run]:
    """``filecluster ARGS`` as a logged-in user whom file modes bind: the completed process."""
    home = cluster.new_home()
    assert cluster.cli("register", f"perm{next(_n)}", home=home, password=PASSWORD).returncode == 0
    prefix = _unprivileged()

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*prefix, sys.executable, "-m", "client", *args],
            capture_output=True,
            text=True,
            env=cluster.cli_env(home),
            cwd=tmp_path,
            input=stdin,
            timeout=120,
        )

    yield run
    for path in tmp_path.rglob("*"):  # so that pytest may remove them
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def _folder(path: Path, mode: int) -> Path:
    path.mkdir()
    path.chmod(mode)
    return path


def test_downloads_into_folders_that_cannot_be_read(cli: Run, tmp_path: Path) -> None:
    src = tmp_path / "src" / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "ok.txt").write_bytes(b"ok")
    (src / "sub" / "f.txt").write_bytes(b"f")
    assert cli("upload", "-r", str(src)).returncode == 0
    closed = _folder(tmp_path / "closed", 0o000)
    assert _one_line(cli("get", "tree/ok.txt", "-o", str(closed))).endswith(": Permission denied")
    got = cli("get", "-r", "tree", "-o", str(closed))
    assert got.returncode == 1 and "Traceback" not in got.stderr
    assert all(line.endswith("Permission denied") or "failed" in line for line in got.stderr.splitlines())
    write_only = _folder(tmp_path / "write-only", 0o311)  # one may write in it, not list it
    got = cli("get", "tree/ok.txt", "-o", str(write_only))
    assert got.returncode == 0 and got.stdout.startswith(f"saved {write_only}/ok.txt"), got.stderr
    got = cli("get", "-r", "tree", "-o", str(write_only))
    assert got.returncode == 0, got.stderr
    write_only.chmod(0o755)
    assert (write_only / "ok.txt").read_bytes() == b"ok"
    assert (write_only / "tree" / "sub" / "f.txt").read_bytes() == b"f"


def test_uploads_from_folders_that_cannot_be_searched(cli: Run, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "f.txt").write_bytes(b"f")
    locked.chmod(0o000)
    line = _one_line(cli("upload", str(locked / "f.txt")))
    assert line == f"error: cannot read {locked / 'f.txt'}: Permission denied"
    line = _one_line(cli("upload", "-r", str(locked)))  # said once, not also "has no files"
    assert line == f"error: cannot read {locked}: Permission denied"
    assert cli("--json", "ls").stdout.strip() == "[]"


def test_the_menu_goes_on_after_a_folder_that_cannot_be_read(cli: Run, tmp_path: Path) -> None:
    src = tmp_path / "note.txt"
    src.write_bytes(b"n")
    assert cli("upload", str(src)).returncode == 0
    closed = _folder(tmp_path / "closed", 0o000)
    locked = _folder(tmp_path / "locked", 0o000)
    got = cli(stdin=f"6\nnote.txt\n{closed}\n3\n{locked}/x.txt\n9\n0\n")
    assert got.returncode == 0, got.stderr
    assert "Traceback" not in got.stderr
    assert "Permission denied" in got.stderr
    assert got.stdout.count("choose:") == 4  # after each action, the menu again; then 0 quits
