"""./run_cluster.sh as people use it: the menu in a terminal, where Ctrl-C cancels an upload and never
reaches the daemons; start, stop, restart and status, also two at once; FILECLUSTER_HOST; bad settings.

Real processes on ports the OS picks (FILECLUSTER_PORT=0), each test in a data folder of its own.
The daemons run in sessions of their own, out of reach of the parent-death signal tests give what
they start, so they carry FILECLUSTER_EXIT_WITH (this test process) and end with it whatever
happens; every test also stops what it started."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.daemon import process_alive
from tests.cluster import REPO, die_with_parent, established_remote_ports
from tests.conftest import PASSWORD
from tests.terminal import Terminal

SCRIPT = str(REPO / "run_cluster.sh")
SETTINGS = {  # what run_cluster.sh and the client read from the environment
    *("FILECLUSTER_DATA", "FILECLUSTER_PORT", "FILECLUSTER_SERVERS", "FILECLUSTER_HOST"),
    *("FILECLUSTER_BIND", "FILECLUSTER_PROXY", "FILECLUSTER_HOME", "FILECLUSTER_PASSWORD"),
    *("FILECLUSTER_SECRET_FILE", "FILECLUSTER_EXIT_WITH", "FILECLUSTER_SOURCE_ADDRESS"),
}  # fmt: skip
SIX = ["gateway", "proxy", "server1", "server2", "server3", "server4"]  # sorted, as `status` lists them

pytestmark = pytest.mark.skipif(
    not (REPO / ".venv" / "bin" / "filecluster").exists(),
    reason="run_cluster.sh runs the repository's .venv (./run_tests.sh makes it)",
)


# -- the menu, as a person at the terminal sees it ------------------------------------------------
# Everything that depends on the menu's wording is here.
MENU_PROMPT = "choose"  # the menu waits for a choice after this
PROMPT_END = ": "  # how every question an action asks ends
CANCELLED = "cancelled"  # what the menu says when Ctrl-C cancels an action
MENU_LINE = re.compile(r"^\s*(\d+)[.)]\s+(\S.*?)\s*$", re.M)


def menu_choices(shown: str) -> dict[str, str]:
    """The menu's entries in what the terminal showed: label -> the number to type."""
    return {label: number for number, label in MENU_LINE.findall(shown)}


def choose(term: Terminal, choices: dict[str, str], word: str) -> None:
    """Pick the one menu entry whose label has ``word``."""
    [number] = [n for label, n in choices.items() if word in label.lower()]
    term.type(f"{number}\r")


def answer(term: Terminal, *answers: str) -> None:
    """Answer the questions the chosen action asks, one after the other."""
    for text in answers:
        term.expect(PROMPT_END)
        term.type(f"{text}\r")


def wait_menu(term: Terminal) -> str:
    """Wait for the menu to ask for a choice; returns what the terminal showed until then."""
    return term.expect(MENU_PROMPT) + term.expect(PROMPT_END)


def menu_register(term: Terminal, choices: dict[str, str], user: str) -> str:
    choose(term, choices, "register")
    answer(term, user, PASSWORD, PASSWORD)
    return wait_menu(term)


def menu_upload(term: Terminal, choices: dict[str, str], path: Path) -> None:
    choose(term, choices, "upload")
    answer(term, str(path))


# -- processes ------------------------------------------------------------------------------------
def script_env(data: Path, **settings: str) -> dict[str, str]:
    """run_cluster.sh's environment: none of the caller's settings, ports the OS picks, daemons that
    end with this test process."""
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    defaults = {
        "FILECLUSTER_DATA": str(data),
        "FILECLUSTER_PORT": "0",
        "FILECLUSTER_EXIT_WITH": str(os.getpid()),
        "FILECLUSTER_HOME": str(data.parent / "home"),
    }
    return {**env, **defaults, **settings}


def run(data: Path, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SCRIPT, *args],
        capture_output=True,
        text=True,
        env=script_env(data, **settings),
        timeout=60,
        preexec_fn=die_with_parent,
    )


def recorded(data: Path) -> dict[str, int]:
    """The daemons the data folder records: name -> pid."""
    return {f.stem: int(f.read_text()) for f in (data / "run").glob("*.pid")}


def port(data: Path, name: str) -> int:
    return int((data / "run" / f"{name}.port").read_text())


def daemons_of(data: Path) -> set[int]:
    """Every live proxy, storage server or gateway process of this data folder, whatever recorded it."""
    found = set()
    mark = f"FILECLUSTER_DATA={data}".encode()
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes()
            if not any(b"filecluster-" + kind in command for kind in (b"proxy", b"server", b"gateway")):
                continue
            if mark in (proc / "environ").read_bytes().split(b"\0") and process_alive(int(proc.name)):
                found.add(int(proc.name))
        except (OSError, ValueError):
            continue
    return found


def children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def pending_sigint(pid: int) -> bool:
    """Is a SIGINT waiting for process ``pid`` (one that is stopped, say)?"""
    bit = 1 << (signal.SIGINT - 1)
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, mask = line.partition(":")
        if key in ("SigPnd", "ShdPnd") and int(mask, 16) & bit:
            return True
    return False


@pytest.fixture
def data(tmp_path: Path) -> Iterator[Path]:
    """A data folder whose daemons are all stopped at the end of the test, whatever happened."""
    folder = tmp_path / "data"
    try:
        yield folder
    finally:
        run(folder, "stop")
        for pid in daemons_of(folder):  # what stop missed: the test fails, but leaves nothing behind
            os.kill(pid, signal.SIGKILL)


def cli(data: Path, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """A `filecluster` command for the cluster of this data folder, which it finds by its default
    proxy address (FILECLUSTER_HOST, else 127.0.0.1, at FILECLUSTER_PORT)."""
    env = script_env(
        data, FILECLUSTER_PASSWORD=PASSWORD, FILECLUSTER_PORT=str(port(data, "proxy")), **settings
    )
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [str(REPO / ".venv" / "bin" / "filecluster"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        preexec_fn=die_with_parent,
    )


# -- tests ----------------------------------------------------------------------------------------
def test_ctrl_c_in_the_menu_cancels_the_upload_and_never_reaches_the_daemons(
    data: Path, tmp_path: Path
) -> None:
    small = tmp_path / "small.txt"
    small.write_bytes(b"kept\n")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(4 * 1024 * 1024))  # one chunk at run_cluster.sh's chunk size
    with Terminal([SCRIPT], env=script_env(data)) as term:
        shown = wait_menu(term)
        choices = menu_choices(shown)
        daemons = recorded(data)
        assert sorted(daemons) == SIX and daemons_of(data) == set(daemons.values())
        for name in SIX:
            assert re.search(rf"^{name} started \(pid {daemons[name]}, port \d+\)$", shown, re.M)
        menu_register(term, choices, "ctrlc")
        menu_upload(term, choices, small)
        assert "error" not in wait_menu(term)

        # The storage servers are stopped (SIGSTOP) for the upload: it is sure to be in flight
        # when Ctrl-C comes, however fast this machine is.  A SIGINT sent to them now would wait.
        servers = [daemons[f"server{i}"] for i in range(1, 5)]
        server_ports = {port(data, f"server{i}") for i in range(1, 5)}
        for pid in servers:
            os.kill(pid, signal.SIGSTOP)
        try:
            menu_upload(term, choices, big)
            [menu] = children(term.proc.pid) - set(daemons.values())
            deadline = time.monotonic() + 30
            while not established_remote_ports(menu) & server_ports:
                assert time.monotonic() < deadline, f"the upload never reached a server: {term.screen}"
                term.pump()
                time.sleep(0.01)
            term.ctrl_c()
            assert CANCELLED in wait_menu(term)
            assert not any(pending_sigint(pid) for pid in daemons.values())
        finally:
            for pid in servers:
                os.kill(pid, signal.SIGCONT)
        assert all(process_alive(pid) for pid in daemons.values())

        choose(term, choices, "list")  # the next action works
        listed = wait_menu(term)
        assert "small.txt" in listed and "error" not in listed
        assert recorded(data) == daemons and daemons_of(data) == set(daemons.values())

        choose(term, choices, "register")
        term.expect("user name: ")
        term.type("\x04")  # Ctrl-D at an action's question cancels it: the menu and the cluster go on
        assert CANCELLED in wait_menu(term) and "Traceback" not in term.screen
        assert all(process_alive(pid) for pid in daemons.values())

        term.type("\x04")  # Ctrl-D at the menu's prompt: leave the menu
        rc, shown = term.finish()
    assert rc == 0
    for name in SIX:
        assert f"{name} stopped (pid {daemons[name]})" in shown
    assert shown.index("server1 stopped") < shown.index("proxy stopped")
    assert recorded(data) == {} and daemons_of(data) == set()


def test_closing_the_terminal_stops_what_the_menu_started(data: Path) -> None:
    with Terminal([SCRIPT], env=script_env(data)) as term:
        wait_menu(term)
        daemons = recorded(data)
        assert sorted(daemons) == SIX
        assert term.hang_up() == 128 + signal.SIGHUP
    assert daemons_of(data) == set() and recorded(data) == {}


def test_concurrent_starts_leave_one_cluster_that_stop_stops(data: Path) -> None:
    env = script_env(data)
    starts = [
        subprocess.Popen(
            [SCRIPT, "start"], stdout=subprocess.PIPE, text=True, env=env, preexec_fn=die_with_parent
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60)[0] for p in starts]
    assert [p.returncode for p in starts] == [0, 0]
    daemons = recorded(data)
    assert sorted(daemons) == SIX and daemons_of(data) == set(daemons.values())
    assert sum(out.count(" started (pid ") for out in outs) == 6  # each daemon started once
    assert sum(out.count(" already runs (pid ") for out in outs) == 6

    status = run(data, "status")
    assert status.returncode == 0
    assert status.stdout.splitlines() == [
        f"{name}: running (pid {daemons[name]}, port {port(data, name)})" for name in SIX
    ]

    # the menu of a cluster that already ran stops nothing when left
    menu = subprocess.run(
        [SCRIPT], input="", capture_output=True, text=True, env=env, timeout=60, preexec_fn=die_with_parent
    )
    assert menu.returncode == 0 and "keeps running" in menu.stdout
    assert recorded(data) == daemons and daemons_of(data) == set(daemons.values())

    stop = run(data, "stop")
    assert stop.returncode == 0 and stop.stderr == ""
    assert [line.split(" (")[0] for line in stop.stdout.splitlines()] == [
        f"{name} stopped" for name in ["gateway", "server4", "server3", "server2", "server1", "proxy"]
    ]
    assert daemons_of(data) == set() and recorded(data) == {}
    status = run(data, "status")
    assert status.returncode == 1 and status.stdout.count(": stopped") == 6
    assert run(data, "stop").stdout == "nothing was running\n"


def test_a_proxy_that_died_comes_back_where_its_servers_look_for_it(data: Path) -> None:
    """With ports the OS picks, `start` after the proxy died gives it the port the running servers
    and gateway were told, so the cluster works again (and sessions stay valid)."""
    assert run(data, "start").returncode == 0
    daemons, old = recorded(data), port(data, "proxy")
    assert cli(data, "register", "keeper").returncode == 0
    os.kill(daemons["proxy"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while process_alive(daemons["proxy"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    again = run(data, "start")
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"proxy started (pid {recorded(data)['proxy']}, port {old})" in again.stdout
    assert {k: v for k, v in recorded(data).items() if k != "proxy"} == {
        k: v for k, v in daemons.items() if k != "proxy"
    }
    deadline = time.monotonic() + 30
    while (status := cli(data, "status")).returncode != 0:  # the servers register again
        assert time.monotonic() < deadline, status.stdout + status.stderr
        time.sleep(0.5)
    assert "4 of 4 storage servers up" in status.stdout


def test_a_plain_stop_stops_a_cluster_started_with_more_servers(data: Path) -> None:
    assert run(data, "start", FILECLUSTER_SERVERS="6").returncode == 0
    assert len(daemons_of(data)) == 8
    stop = run(data, "stop")  # FILECLUSTER_SERVERS is 4 again
    assert stop.returncode == 0
    assert "server6 stopped" in stop.stdout and "server5 stopped" in stop.stdout
    assert daemons_of(data) == set()


def test_status_lists_the_daemons_the_data_folder_runs_whatever_the_server_count_says_now(
    data: Path,
) -> None:
    assert run(data, "start", FILECLUSTER_SERVERS="1").returncode == 0
    daemons = recorded(data)
    status = run(data, "status")  # FILECLUSTER_SERVERS is 4 again: servers 2-4 are none of this folder's
    assert status.returncode == 0, status.stdout
    assert sorted(line.split(":")[0] for line in status.stdout.splitlines()) == sorted(daemons)
    assert len(daemons) == 3  # proxy, server1, gateway
    assert run(data, "stop").returncode == 0


def test_restart_with_a_host_name_in_links_and_server_addresses(data: Path, tmp_path: Path) -> None:
    assert run(data, "start").returncode == 0
    before = recorded(data)
    doc = tmp_path / "doc.txt"
    doc.write_bytes(b"survives a restart\n")
    assert cli(data, "register", "restarter").returncode == 0
    assert cli(data, "upload", str(doc)).returncode == 0

    restart = run(data, "restart", FILECLUSTER_HOST="localhost")
    assert restart.returncode == 0, restart.stderr
    after = recorded(data)
    assert sorted(after) == SIX and daemons_of(data) == set(after.values())
    assert not set(before.values()) & set(after.values())
    assert f"proxy at localhost:{port(data, 'proxy')}," in restart.stdout

    assert cli(data, "login", "restarter", FILECLUSTER_HOST="localhost").returncode == 0
    assert "doc.txt" in cli(data, "list", FILECLUSTER_HOST="localhost").stdout
    link = cli(data, "share", "doc.txt", FILECLUSTER_HOST="localhost").stdout.strip()
    status = cli(data, "status", FILECLUSTER_HOST="localhost").stdout
    assert link.startswith(f"http://localhost:{port(data, 'gateway')}/s/")  # the gateway's address
    assert f"localhost:{port(data, 'server1')}" in status


def test_a_shared_link_downloads_over_http_from_another_address(data: Path, tmp_path: Path) -> None:
    """The cluster on 127.0.0.1; the link `share` prints, fetched from 127.0.0.2 (http.client, and
    `curl -OJ` when there is one): the same bytes, under the file's name."""
    assert run(data, "start").returncode == 0
    doc = tmp_path / "report 2026.txt"
    doc.write_bytes(os.urandom(200_000))
    assert cli(data, "register", "sharer").returncode == 0
    assert cli(data, "upload", str(doc)).returncode == 0
    link = cli(data, "share", doc.name).stdout.strip()
    url = urllib.parse.urlsplit(link)
    assert (url.scheme, url.hostname, url.port) == ("http", "127.0.0.1", port(data, "gateway"))
    conn = http.client.HTTPConnection("127.0.0.1", url.port, timeout=10, source_address=("127.0.0.2", 0))
    try:
        conn.request("GET", url.path)
        reply = conn.getresponse()
        assert reply.status == 200 and reply.read() == doc.read_bytes()
        assert "filename*=UTF-8''report%202026.txt" in reply.getheader("Content-Disposition", "")
    finally:
        conn.close()
    curl = shutil.which("curl")
    if curl is not None:
        out = tmp_path / "curl"
        out.mkdir()
        fetched = subprocess.run(
            [curl, "-sS", "-f", "--interface", "127.0.0.2", "-OJ", link],
            cwd=out,
            capture_output=True,
            timeout=30,
        )
        assert fetched.returncode == 0, fetched.stderr
        assert [p.read_bytes() for p in out.iterdir()] == [doc.read_bytes()]


def test_daemons_end_with_the_process_they_serve(data: Path) -> None:
    """FILECLUSTER_EXIT_WITH: what keeps an interrupted test run from leaving daemons behind."""
    keeper = subprocess.Popen(["sleep", "60"], preexec_fn=die_with_parent)
    try:
        assert run(data, "start", FILECLUSTER_EXIT_WITH=str(keeper.pid)).returncode == 0
        assert len(daemons_of(data)) == 6
    finally:
        keeper.kill()
        keeper.wait()
    deadline = time.monotonic() + 15
    while daemons_of(data) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert daemons_of(data) == set()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"FILECLUSTER_PORT": "70000"}, "FILECLUSTER_PORT must leave room"),
        ({"FILECLUSTER_PORT": "abc"}, "FILECLUSTER_PORT must be a port number, not 'abc'"),
        ({"FILECLUSTER_SERVERS": "x"}, "FILECLUSTER_SERVERS must be a number"),
        ({"FILECLUSTER_HOST": "0.0.0.0"}, "FILECLUSTER_BIND=0.0.0.0"),
        ({"FILECLUSTER_HOST": "two words"}, "FILECLUSTER_HOST must be a host name or an IPv4 address"),
        ({"FILECLUSTER_BIND": "a/b"}, "FILECLUSTER_BIND must be a host name or an IPv4 address"),
        ({"FILECLUSTER_EXIT_WITH": "me"}, "FILECLUSTER_EXIT_WITH must be a process id"),
    ],
)
def test_a_bad_setting_is_one_line(data: Path, settings: dict[str, str], message: str) -> None:
    result = run(data, "start", **settings)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert not (data / "run").exists()


def test_help_and_usage(data: Path) -> None:
    shown = run(data, "--help")
    assert shown.returncode == 0 and shown.stderr == ""
    for word in ("start", "stop", "restart", "status", "FILECLUSTER_HOST", "FILECLUSTER_BIND"):
        assert word in shown.stdout
    wrong = run(data, "launch")
    assert wrong.returncode == 2 and wrong.stdout == "" and wrong.stderr.startswith("usage: ")


def test_status_and_stop_of_a_folder_that_does_not_exist_make_none(tmp_path: Path) -> None:
    """They only look: a mistyped FILECLUSTER_DATA is not made into a folder."""
    missing = tmp_path / "no" / "such-data"
    status = run(missing, "status")
    assert status.returncode == 1 and "proxy: stopped" in status.stdout
    stop = run(missing, "stop")
    assert stop.returncode == 0 and stop.stdout == f"nothing was running (no data folder {missing})\n"
    assert not (tmp_path / "no").exists()
