"""`filecluster` as used from a terminal and from shell pipelines: password prompts, progress bars,
Ctrl-C in the middle of an upload, a reader that goes away (`| head`), and bad settings.  Every
mistake is one line on stderr and no traceback."""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from client import pool
from client.output import human_size
from tests.cluster import CHUNK, Cluster, die_with_parent
from tests.conftest import PASSWORD
from tests.terminal import Session

_n = itertools.count(1)


def one_line_error(result: tuple[int, str, str] | subprocess.CompletedProcess[str], code: int = 1) -> str:
    rc, stdout, stderr = (
        (result.returncode, result.stdout, result.stderr)
        if isinstance(result, subprocess.CompletedProcess)
        else result
    )
    assert rc == code, (stdout, stderr)
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def run(cluster: Cluster, *args: str, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The CLI with no terminal at all (stdin is an empty pipe) and ``env`` on top of the cluster's."""
    full_env = {**cluster.env, "FILECLUSTER_PROXY": cluster.proxy_addr, "FILECLUSTER_HOME": str(home), **env}
    return subprocess.run(
        [sys.executable, "-m", "client", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cluster.root,
        input="",
        timeout=60,
        preexec_fn=die_with_parent,
    )


@pytest.fixture
def home(cluster: Cluster) -> Path:
    """A FILECLUSTER_HOME where a new user is logged in."""
    home = cluster.new_home()
    assert cluster.cli("register", f"term{next(_n)}", home=home, password=PASSWORD).returncode == 0
    return home


# -- passwords ---------------------------------------------------------------------------------------


def test_register_and_login_ask_for_the_password_on_a_terminal(cluster: Cluster) -> None:
    user, home = f"term{next(_n)}", cluster.new_home()
    with Session(cluster, "register", user, home=home, tty=True) as register:
        register.expect("password: ")
        register.type(PASSWORD + "\n")
        register.expect("password again: ")
        register.type(PASSWORD + "\n")
        rc, stdout, shown = register.finish()
    assert (rc, stdout) == (0, f"registered and logged in as {user}\n")
    assert PASSWORD not in shown  # typed without echo
    assert run(cluster, "logout", home=home).stdout == "logged out\n"
    with Session(cluster, "login", user, home=home, tty=True) as login:
        login.expect("password: ")
        login.type(PASSWORD + "\n")
        rc, stdout, shown = login.finish()
    assert (rc, stdout) == (0, f"logged in as {user}\n")
    assert shown.count("password") == 1 and PASSWORD not in shown
    assert run(cluster, "whoami", home=home).stdout.splitlines()[0] == user


def test_two_different_passwords_register_nobody(cluster: Cluster) -> None:
    user, home = f"term{next(_n)}", cluster.new_home()
    with Session(cluster, "register", user, home=home, tty=True) as register:
        register.expect("password: ")
        register.type(PASSWORD + "\n")
        register.expect("password again: ")
        register.type(PASSWORD + "!\n")
        rc, stdout, shown = register.finish()
    assert (rc, stdout) == (1, "")
    assert shown.splitlines()[-1] == "error: the two passwords differ" and "Traceback" not in shown
    wrong = run(cluster, "login", user, home=home, FILECLUSTER_PASSWORD=PASSWORD)
    assert "wrong user name or password" in one_line_error(wrong)


def test_ctrl_d_at_a_password_prompt_is_one_line(cluster: Cluster) -> None:
    user, home = f"term{next(_n)}", cluster.new_home()
    for args, prompts in (["register", user], 1), (["register", user], 2), (["login", user], 1):
        with Session(cluster, *args, home=home, tty=True) as asked:
            for i in range(prompts):
                asked.expect("password: " if i == 0 else "password again: ")
                asked.type(PASSWORD + "\n" if i < prompts - 1 else "\x04")  # Ctrl-D at the last
            rc, stdout, shown = asked.finish()
        assert (rc, stdout) == (1, ""), args
        assert shown.splitlines()[-1] == "cancelled: no answer (end of input)" and "Traceback" not in shown
    assert "wrong user name or password" in one_line_error(
        run(cluster, "login", user, home=home, FILECLUSTER_PASSWORD=PASSWORD)
    )  # nobody was registered


def test_no_terminal_and_no_password_variable(cluster: Cluster) -> None:
    result = run(cluster, "login", "someone", home=cluster.new_home())
    assert one_line_error(result) == "error: no password: set FILECLUSTER_PASSWORD or run on a terminal"


# -- progress bars and Ctrl-C --------------------------------------------------------------------------


def test_progress_bars_on_a_terminal_only(cluster: Cluster, home: Path, tmp_path: Path) -> None:
    data = os.urandom(5 * CHUNK)
    sha1 = hashlib.sha1(data).hexdigest()
    src = tmp_path / "bars.bin"
    src.write_bytes(data)
    with Session(cluster, "upload", str(src), home=home, tty=True) as upload:
        rc, stdout, shown = upload.finish()
    size = human_size(len(data))
    assert (rc, stdout) == (0, f"uploaded bars.bin  size={size}  sha1={sha1}  sent={size}\n")
    phases = shown.split("\r")  # each redraw of a bar starts at the beginning of the line
    assert any(p.startswith("hashing bars.bin: 100%") for p in phases)
    assert any(p.startswith("sending bars.bin: 100%") for p in phases)
    assert re.search(r"\r {40,}\r\Z", shown)  # the last bar was wiped: the terminal is left clean
    out = tmp_path / "out"
    with Session(cluster, "download", "bars.bin", "-o", str(out), home=home, tty=True) as download:
        rc, stdout, shown = download.finish()
    assert (rc, stdout) == (0, f"saved {out / 'bars.bin'}  size={size}  sha1={sha1}\n")
    assert any(p.startswith("receiving bars.bin: 100%") for p in shown.split("\r"))
    piped = run(cluster, "download", "bars.bin", "-o", str(tmp_path / "quiet"), home=home)
    assert (piped.returncode, piped.stderr) == (0, "")  # not a terminal: no bars
    assert (tmp_path / "quiet" / "bars.bin").read_bytes() == data


def test_ctrl_c_during_an_upload_stores_nothing(tmp_path: Path) -> None:
    # heartbeats every 30 s: the proxy keeps believing in servers that are stopped for a moment
    c = Cluster(tmp_path / "c", servers=2, heartbeat=30.0).start()
    try:
        home = c.new_home()
        assert c.cli("register", "ana", home=home, password=PASSWORD).returncode == 0
        src = tmp_path / "big.bin"
        src.write_bytes(os.urandom(2048 * CHUNK))  # 128 MiB: sending takes a good part of a second
        try:
            with Session(c, "upload", str(src), home=home, tty=True) as upload:
                upload.expect("sending big.bin")
                # the servers stop once chunks flow (stopped before, they would not answer the proxy's
                # proof requests, and it would count them down): the upload hangs mid-way
                for server in c.servers.values():
                    server.send_signal(signal.SIGSTOP)
                time.sleep(0.3)
                pressed = time.monotonic()
                upload.interrupt()
                rc, stdout, shown = upload.finish()
                waited = time.monotonic() - pressed
        finally:
            for server in c.servers.values():
                server.send_signal(signal.SIGCONT)
        assert (rc, stdout) == (130, "")
        assert waited < pool.TIMEOUT / 2  # at once, not after the storage servers' time-out
        assert shown.rstrip().endswith("interrupted") and "Traceback" not in shown
        assert c.cli("list", "--json", home=home).stdout == "[]\n"
        again = c.cli("upload", str(src), home=home)
        assert again.returncode == 0 and again.stdout.startswith("uploaded big.bin")
    finally:
        c.stop()


# -- pipelines --------------------------------------------------------------------------------------


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
def test_a_reader_that_goes_away_is_not_reported(cluster: Cluster, home: Path, buffered: bool) -> None:
    """`filecluster list | head -0`: the output has nowhere to go; that is no error to shout about."""
    env = {**cluster.env, "FILECLUSTER_PROXY": cluster.proxy_addr, "FILECLUSTER_HOME": str(home)}
    if buffered:  # as for anyone who has not set PYTHONUNBUFFERED
        env.pop("PYTHONUNBUFFERED", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "client", "list", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
        preexec_fn=die_with_parent,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the client has written anything
    try:
        err = proc.stderr.read()
        assert proc.wait(timeout=60) == 1
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert err == ""


# -- settings --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--proxy", "files.lan:http"], {}, "invalid address 'files.lan:http': expected HOST:PORT"),
        (["--proxy", "files.lan:²"], {}, "invalid address 'files.lan:²': expected HOST:PORT"),
        (["--proxy", ":9000"], {}, "invalid address ':9000': expected HOST:PORT"),
        (
            [],
            {"FILECLUSTER_PROXY": "files.lan:99999"},
            "invalid address 'files.lan:99999': expected HOST:PORT",
        ),
        ([], {"FILECLUSTER_PROXY": "", "FILECLUSTER_PORT": "nine"}, "FILECLUSTER_PORT must be a port number"),
    ],
)
def test_bad_proxy_settings_are_one_line(
    cluster: Cluster, home: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    """A bad --proxy is a usage error (exit 2: the command's usage, then why); a bad setting in the
    environment is one line (exit 1)."""
    result = run(cluster, *args, "whoami", home=home, **env)
    if args:
        assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
        assert (
            result.stderr
            == f"filecluster whoami: error: --proxy: {message} (see: filecluster whoami --help)\n"
        )
    else:
        assert one_line_error(result).startswith(f"error: {message}")


def test_the_proxy_flag_beats_the_environment(cluster: Cluster, home: Path) -> None:
    result = run(cluster, "--proxy", cluster.proxy_addr, "whoami", home=home, FILECLUSTER_PROXY="nowhere:1")
    assert result.returncode == 0 and result.stdout.startswith("term")


def test_a_session_folder_that_is_a_file(cluster: Cluster, tmp_path: Path) -> None:
    not_a_folder = tmp_path / "home"
    not_a_folder.write_text("x")
    result = run(cluster, "logout", home=not_a_folder)
    assert one_line_error(result) == (
        f"error: cannot remove the session in {not_a_folder} (FILECLUSTER_HOME): Not a directory"
    )
