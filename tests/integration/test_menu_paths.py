"""The menu on a terminal, typed into as a person would: the password from FILECLUSTER_PASSWORD,
paths with ``~``, quotes, backslashes and globs (several files at once), files picked by number
(``1,3-4``), a folder uploaded after asking, and a recursive delete only after asking."""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

from client.output import display_width
from tests.cluster import CHUNK, Cluster
from tests.conftest import PASSWORD
from tests.terminal import Session

_n = itertools.count(1)
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def typed_menu(cluster: Cluster, home: Path, lines: list[str]) -> tuple[int, str, str]:
    """The menu with a terminal for its keyboard (readline is on), every line typed up front."""
    env = {"HOME": str(home), "FILECLUSTER_PASSWORD": PASSWORD}
    with Session(cluster, "menu", home=home / ".filecluster", tty=True, env=env) as menu:
        menu.type("".join(f"{line}\n" for line in lines))
        return menu.finish()


def files(home: Path, tree: dict[str, str]) -> None:
    for rel, text in tree.items():
        path = home / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_paths_as_typed_in_a_shell_and_files_picked_by_number(cluster: Cluster, tmp_path: Path) -> None:
    home = tmp_path / "home"
    files(home, {"My Docs/a b.txt": "ab", "My Docs/c d.txt": "cd", "pics/x.jpg": "x", "pics/y.jpg": "y"})
    out = tmp_path / "out"
    user = f"paths{next(_n)}"
    rc, stdout, shown = typed_menu(
        cluster,
        home,
        [
            "1", user,  # register: the password comes from FILECLUSTER_PASSWORD, no prompt
            "3", "'~/My Docs/a b.txt' ~/pics/*.jpg",  # a quoted path and a glob
            "3", "~/My\\ Docs/c\\ d.txt",  # a backslash-escaped space
            "6", "1,3-4", str(out),  # download three by number
            "7", "2", "y",  # delete the second
            "5", "9",  # share: there is no ninth file (an error, and the menu goes on)
            "5", "3", "tomorrow",  # an expiry it cannot read: an error at once, nothing shared
            "5", "3", "", "0",  # a download limit of 0: the same
            "5", "3", "7d", "2",  # share the third, for a week, at most twice
            "0",
        ],
    )  # fmt: skip
    assert rc == 0, shown
    assert "password" not in stdout and "password" not in shown
    assert f"registered and logged in as {user}\n" in stdout
    for name in ("a b.txt", "x.jpg", "y.jpg", "c d.txt"):
        assert f"uploaded {name}  size=" in stdout
    assert "3 files uploaded, 4 B\n" in stdout
    assert "1. a b.txt  2 B\n2. c d.txt  2 B\n3. x.jpg  1 B\n4. y.jpg  1 B\n" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["a b.txt", "x.jpg", "y.jpg"]
    assert (out / "a b.txt").read_text() == "ab"
    assert "3 files downloaded, 4 B\n" in stdout
    assert "delete 'c d.txt'? [y/N] deleted c d.txt\n" in stdout
    shares = re.findall(r"empty: no limit\): (\S*)", stdout)
    assert len(shares) == 2 and shares[1].startswith(f"filecluster://{cluster.proxy_addr}/s/")
    assert shares[0] == ""  # nothing shared when a question was answered wrong
    assert "error: no file number 9: choose from 1 to 3" in shown and "Traceback" not in shown
    assert "error: expires: 'tomorrow': use 30m, 24h, 7d" in shown
    assert "error: at most how many downloads: a number from 1 to 1,000,000, not '0'" in shown
    assert "at most 2 downloads)" in shown


def test_a_folder_is_uploaded_after_asking_and_deleted_after_asking(cluster: Cluster, tmp_path: Path) -> None:
    home = tmp_path / "home"
    files(home, {"trip/day1/a.jpg": "a", "trip/b.jpg": "bb", "skip/c.txt": "c"})
    user = f"folders{next(_n)}"
    rc, stdout, shown = typed_menu(
        cluster,
        home,
        [
            "1", user,
            "3", "~/trip ~/skip", "y", "n",  # two folders: upload the first, not the second
            "4",
            "7", "trip", "n",  # a recursive delete asks first: no
            "7", "trip", "y",  # yes
            "4",
            "0",
        ],
    )  # fmt: skip
    assert rc == 0, shown
    assert f"{home}/trip is a folder: upload it and everything in it? [y/N] " in stdout
    assert "uploaded trip/b.jpg  size=2 B" in stdout and "uploaded trip/day1/a.jpg  size=1 B" in stdout
    assert "c.txt" not in stdout  # the declined folder stayed home
    assert "trip/day1/a.jpg" in stdout  # the menu's listing shows every file, by path
    assert stdout.count("'trip' is a folder with 2 files: delete it all? [y/N] ") == 2
    assert "no files\n" in stdout.split("deleted trip (2 files)\n", 1)[1]


def test_progress_of_several_files_fits_an_80_column_terminal(cluster: Cluster, tmp_path: Path) -> None:
    """The terminal is 80 columns wide (tests.terminal): every state of every bar fits, each file's
    bar is labelled by its name (cut in the middle), and an overall bar counts the files."""
    home = tmp_path / "home"
    names = ["a photo with a name far too long to fit beside its progress bar.jpg", "b.bin", "c.bin"]
    for name in names:
        (tmp_path / name).write_bytes(os.urandom(3 * CHUNK))
    assert cluster.cli("register", f"bars{next(_n)}", home=home, password=PASSWORD).returncode == 0
    paths = [str(tmp_path / name) for name in names]
    with Session(cluster, "upload", *paths, home=home, tty=True) as upload:
        rc, stdout, shown = upload.finish()
    assert rc == 0 and stdout.splitlines()[-1] == "3 files uploaded, 576.0 KiB"
    drawn = [ANSI.sub("", piece) for piece in re.split(r"[\r\n]", shown) if piece.strip()]
    assert drawn and max(display_width(line) for line in drawn) <= 80
    assert any(re.match(r"sending a photo.*….*\.jpg: +\d+%\|", line) for line in drawn), drawn
    assert any(re.match(r"[0-2]/3 files: +\d+%\|", line) for line in drawn), drawn
    assert "filecluster://" not in shown
    with Session(cluster, "upload", "-q", *paths, home=home, tty=True) as quiet:
        rc, _, shown = quiet.finish()
    assert rc == 0 and shown == ""  # -q: no bars at all
