"""The interactive menu (`filecluster` with no command, or `filecluster menu`), driven through its
stdin like a person typing: every action, mistakes, Ctrl-C inside an action, EOF, quitting."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from pathlib import Path

import pytest

from tests.cluster import Cluster
from tests.conftest import PASSWORD
from tests.terminal import Session

_n = itertools.count(1)
NAME_RULE = "a user name is 1 to 32 letters, digits, '.', '_' or '-', starting with a letter or digit"


def table(text: str) -> list[list[str]]:
    """The rows of a table the menu printed (columns are two or more spaces apart), header first."""
    lines = text.splitlines()
    return [re.split(r"\s{2,}", line.strip()) for line in lines[:1] + lines[2:]]


def replies(stdout: str) -> list[str]:
    """What the menu showed after each choice, up to the next menu listing (prompts included)."""
    parts = stdout.split("choose: ")[1:]
    return [p.split("\n 1. register\n")[0] for p in parts]


@pytest.fixture
def home(cluster: Cluster) -> Path:
    """A FILECLUSTER_HOME where a new user is logged in."""
    home = cluster.new_home()
    assert cluster.cli("register", f"menu{next(_n)}", home=home, password=PASSWORD).returncode == 0
    return home


def home_user(home: Path) -> str:
    return str(json.loads((home / "session.json").read_text())["user"])


def run_menu(cluster: Cluster, home: Path, typed: list[str]) -> tuple[int, str, str]:
    result = cluster.cli("menu", home=home, stdin="".join(f"{line}\n" for line in typed))
    assert "Traceback" not in result.stderr
    return result.returncode, result.stdout, result.stderr


def test_every_action_of_the_menu(cluster: Cluster, tmp_path: Path) -> None:
    user = f"menu{next(_n)}"
    src = tmp_path / "menu doc.txt"
    src.write_bytes(b"typed into the menu\n")
    sha1 = hashlib.sha1(src.read_bytes()).hexdigest()
    out = tmp_path / "out"
    home = cluster.new_home()
    first = [
        "1", user, PASSWORD, PASSWORD,  # register (and log in)
        "9",  # who am I
        "3", str(src),  # upload
        "4",  # list my files
        "5", "1", "", "",  # share: the first file of the list, no expiry, no download limit
        "0",
    ]  # fmt: skip
    rc, stdout, stderr = run_menu(cluster, home, first)
    assert (rc, stderr) == (0, "")
    assert stdout.startswith(f"filecluster — proxy {cluster.proxy_addr}\n")
    r = replies(stdout)
    assert len(r) == 6
    assert r[0].endswith(f"registered and logged in as {user}\n")
    assert r[0].count("password") == 2  # asked twice, to catch a typo
    assert r[1].startswith(f"{user}\n")
    assert r[2].endswith(f"uploaded menu doc.txt  size=20 B  sha1={sha1}  sent=20 B\n")
    mine = table(r[3])
    assert mine[0] == ["name", "size", "modified"]
    assert [row[:2] for row in mine[1:]] == [["menu doc.txt", "20 B"], ["1 file, 20 B in all"]]
    numbered, asked_line = r[4].rstrip("\n").split("\n")
    assert numbered == "1. menu doc.txt  20 B"
    asked, link = asked_line.rsplit(": ", 1)
    assert asked == (
        "file to share (number or name): expires (30m, 24h, 7d, a date like 2026-12-31; empty: never): "
        "at most how many downloads (empty: no limit)"
    )
    assert link.startswith(f"filecluster://{cluster.proxy_addr}/s/")
    assert r[5] == ""  # quit: nothing more

    second = [
        "6", link, str(out),  # download the link
        "6", "1", "",  # by number, into the default folder
        "6", "menu doc.txt", str(out),  # again: it is already there
        "7", "menu doc.txt", "n",  # delete: no
        "4",
        "7", "1", "yes",  # delete: yes
        "4",
        "8",  # storage servers status
        "10",  # logout
        "10",  # logout again
        "9",  # who am I, logged out: an error, and the menu goes on
        "2", user, PASSWORD,  # login
        "9",
        "q",
    ]  # fmt: skip
    rc, stdout, stderr = run_menu(cluster, home, second)
    assert rc == 0
    assert stdout.startswith(f"filecluster — proxy {cluster.proxy_addr}, logged in as {user}\n")
    r = replies(stdout)
    saved = out / "menu doc.txt"
    assert (
        r[0].endswith(f"saved {saved}  size=20 B  sha1={sha1}\n") and saved.read_bytes() == src.read_bytes()
    )
    default = cluster.root / "ClientFiles" / "menu doc.txt"  # relative to the menu's working folder
    assert r[1].endswith(f"saved ClientFiles/menu doc.txt  size=20 B  sha1={sha1}\n")
    assert default.read_bytes() == src.read_bytes()
    default.unlink()
    assert r[2].endswith(f"already there: {saved}  size=20 B  sha1={sha1}\n")
    assert r[3] == (  # nothing deleted
        "1. menu doc.txt  20 B\n"
        "files to delete (numbers like 1,3-5, or a name): delete 'menu doc.txt'? [y/N] "
    )
    assert "menu doc.txt" in r[4]
    assert r[5].endswith("deleted menu doc.txt\n")
    assert r[6] == "no files\n"
    assert "4 of 4 storage servers up" in r[7]
    assert (r[8], r[9]) == ("logged out\n", "not logged in\n")
    assert r[10] == ""  # the error went to stderr
    assert stderr == "error: not logged in; choose 2 (login) or 1 (register)\n"
    assert r[11].endswith(f"logged in as {user}\n") and r[12].startswith(f"{user}\n")
    assert json.loads((home / "session.json").read_text())["user"] == user


def test_menu_mistakes_get_one_line_and_the_menu_goes_on(cluster: Cluster, tmp_path: Path) -> None:
    home = cluster.new_home()
    user = f"menu{next(_n)}"
    typed = [
        "1", user, PASSWORD, PASSWORD + "x",  # the two passwords differ
        "1", user, "short", "short",  # too short
        "1", "bad name",  # no password is asked for a name no account can have
        "2", "no/such",
        "",  # nothing chosen
        "x",
        "15",
        "-1",
        "3", str(tmp_path / "missing.txt"),
        "exit",
    ]  # fmt: skip
    rc, stdout, stderr = run_menu(cluster, home, typed)
    assert rc == 0
    assert stderr.splitlines() == [
        "error: the two passwords differ",
        "error: a password needs at least 8 characters",
        f"error: {NAME_RULE}",
        f"error: {NAME_RULE}",
        "error: not logged in; choose 2 (login) or 1 (register)",
    ]
    r = replies(stdout)
    assert r[2:4] == ["user name: "] * 2  # and back to the menu: no "password: "
    assert r[4:8] == ["choose a number from 0 to 14\n"] * 4
    assert not (home / "session.json").exists()
    login = cluster.cli("login", user, home=cluster.new_home(), password=PASSWORD)
    assert "wrong user name or password" in login.stderr  # the account was never made


def test_end_of_input_leaves_the_menu_quietly(cluster: Cluster) -> None:
    home = cluster.new_home()
    at_choice = cluster.cli("menu", home=home, stdin="9\n")  # input ends at "choose:"
    assert at_choice.returncode == 0 and at_choice.stdout.endswith("choose: \n")
    in_action = cluster.cli(home=home, stdin="1\nsomeone\n")  # no command: the menu; ends at "password:"
    assert in_action.returncode == 0, in_action.stderr
    # the end of input cancels the question (back to the menu), then ends the menu at its prompt
    assert "password: \n" in in_action.stdout and in_action.stdout.endswith("choose: \n")
    assert in_action.stderr == "\ncancelled\n"


def test_ctrl_c_inside_an_action_cancels_it_and_returns_to_the_menu(cluster: Cluster, home: Path) -> None:
    with Session(cluster, "menu", home=home) as menu:
        menu.expect("choose: ")
        menu.type("3\n")  # upload: it asks which files
        menu.expect("files or folders to upload (globs like *.jpg work): ")
        menu.interrupt()
        menu.expect("choose: ")  # back at the menu
        menu.type("9\n0\n")
        rc, stdout, stderr = menu.finish()
    assert rc == 0
    assert stderr == "\ncancelled\n"
    assert replies(stdout)[-2].startswith(f"{home_user(home)}\n")  # the menu still works, still logged in


def test_ctrl_c_at_the_menu_prompt_does_not_end_the_menu(cluster: Cluster, home: Path) -> None:
    """A Ctrl-C too many (after cancelling a transfer) must not end the menu: ./run_cluster.sh stops
    the cluster when its menu ends.  0 or Ctrl-D leave."""
    with Session(cluster, "menu", home=home) as menu:
        menu.expect("choose: ")
        menu.interrupt()
        menu.expect("choose: ")
        menu.type("0\n")
        rc, _, stderr = menu.finish()
    assert (rc, stderr) == (0, "\n(to leave the menu, choose 0 or press Ctrl-D)\n")


def test_a_wrong_name_or_link_is_refused_before_the_next_question(
    cluster: Cluster, home: Path, tmp_path: Path
) -> None:
    """A name you have no file or folder of, a URL that is no share link, a number past the list:
    said at once, in one line, without asking for an expiry or a folder first."""
    src = tmp_path / "kept.txt"
    src.write_bytes(b"kept")
    assert cluster.cli("upload", str(src), home=home).returncode == 0
    typed = [
        "5", "nosuch.txt",  # share
        "6", "http://127.0.0.1:9/nothing",  # download
        "6", "nosuch.txt",
        "6", "1-99999999999",
        "exit",
    ]  # fmt: skip
    rc, stdout, stderr = run_menu(cluster, home, typed)
    assert rc == 0
    assert stderr.splitlines() == [
        "error: you have no file or folder named 'nosuch.txt'",
        "error: not a share link: http://127.0.0.1:9/nothing (a share link looks like http://HOST:PORT/s/TOKEN)",
        "error: you have no file or folder named 'nosuch.txt'",
        "error: no file number 99999999999: choose from 1 to 1",
    ]
    assert "expires" not in stdout and "folder [" not in stdout


def test_a_bad_expiry_is_refused_before_the_download_limit_is_asked(
    cluster: Cluster, home: Path, tmp_path: Path
) -> None:
    """In the words of the menu's question, not of the command line's --expires."""
    src = tmp_path / "kept.txt"
    src.write_bytes(b"kept")
    assert cluster.cli("upload", str(src), home=home).returncode == 0
    rc, stdout, stderr = run_menu(cluster, home, ["5", "1", "yesterday", "5", "kept.txt", "0m", "0"])
    assert rc == 0
    assert stderr.splitlines() == [
        "error: expires: 'yesterday': use 30m, 24h, 7d, a date (2026-12-31) or a date-time "
        "(2026-12-31T18:00)",
        "error: expires: 0m: the link would expire at once",
    ]
    assert "at most how many downloads" not in stdout
    assert "kept.txt" in cluster.cli("ls", home=home).stdout
    links = cluster.cli("links", "--json", home=home)
    assert links.returncode == 0 and '"token"' not in links.stdout  # no link was made
