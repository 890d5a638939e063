"""The client's small parts, no network: addresses and settings, password rules, links, the saved
session, and what the command line prints (sizes, tables, progress bars)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client import output
from client import session as saved
from client.api import Client, is_link, parse_link
from client.listing import view
from common.config import (
    DEFAULT_PROXY_PORT,
    client_home,
    data_dir,
    parse_address,
    proxy_address,
    proxy_port,
)
from common.errors import AuthError, InvalidRequest
from common.names import MAX_PASSWORD, MIN_PASSWORD, check_file_name, check_password_rules

# -- addresses and settings --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("example.org:8080", ("example.org", 8080)),
        ("  10.0.0.5:9001 ", ("10.0.0.5", 9001)),
        ("example.org", ("example.org", DEFAULT_PROXY_PORT)),
        ("[::1]:9000", ("::1", 9000)),
        ("[fe80::1%eth0]:1", ("fe80::1%eth0", 1)),
        ("h:65535", ("h", 65535)),
    ],
)
def test_addresses_users_write(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


def test_a_bare_host_gets_the_callers_default_port() -> None:
    assert parse_address("storage7", default_port=9100) == ("storage7", 9100)


@pytest.mark.parametrize(
    "text",
    [
        "",
        ":9000",
        "[]:9000",
        "host:",
        "host:0",
        "host:65536",
        "host:http",
        "host:-1",
        "host: 90",
        "host:9o00",
        "http://host:9000",  # a URL: never host "http://host"
        "filecluster://host:9000",
        "host/files:9000",
        "me@host:9000",
        "host:²",  # a digit to str.isdigit, not to int()
        "host:٣",  # an Arabic-Indic three: not a port anyone types on purpose
        pytest.param("host:" + "9" * 5000, id="host:5000-nines"),  # more digits than int() converts
    ],
)
def test_bad_addresses_are_one_clear_error(text: str) -> None:
    with pytest.raises(InvalidRequest, match=r"invalid address .*expected HOST:PORT"):
        parse_address(text)


@pytest.mark.parametrize("raw", ["http", "-1", "65536", "", "9 000", "²"])
def test_a_bad_filecluster_port_is_refused(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("FILECLUSTER_PORT", raw)
    with pytest.raises(InvalidRequest, match="FILECLUSTER_PORT must be a port number"):
        proxy_port()
    monkeypatch.delenv("FILECLUSTER_PROXY", raising=False)
    with pytest.raises(InvalidRequest, match="FILECLUSTER_PORT"):  # the client reads it too
        proxy_address()


def test_proxy_address_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--proxy``, else FILECLUSTER_PROXY, else FILECLUSTER_HOST (127.0.0.1) at FILECLUSTER_PORT (9000)."""
    for name in ("FILECLUSTER_PROXY", "FILECLUSTER_PORT", "FILECLUSTER_HOST"):
        monkeypatch.delenv(name, raising=False)
    assert proxy_address() == ("127.0.0.1", 9000)
    monkeypatch.setenv("FILECLUSTER_PORT", "9500")
    assert proxy_port() == 9500
    assert proxy_address() == ("127.0.0.1", 9500)
    monkeypatch.setenv("FILECLUSTER_HOST", "files.lan")
    assert proxy_address() == ("files.lan", 9500)
    monkeypatch.setenv("FILECLUSTER_PROXY", "proxy.lan:7000")
    assert proxy_address() == ("proxy.lan", 7000)
    assert proxy_address("other:7001") == ("other", 7001)
    monkeypatch.setenv("FILECLUSTER_PORT", "junk")  # not even read when an address is given
    assert proxy_address() == ("proxy.lan", 7000)


def test_data_and_home_folders(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FILECLUSTER_DATA", raising=False)
    assert data_dir() == Path("./data")
    monkeypatch.setenv("FILECLUSTER_DATA", str(tmp_path / "d"))
    assert data_dir() == tmp_path / "d"
    monkeypatch.delenv("FILECLUSTER_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    assert client_home() == tmp_path / "me" / ".filecluster"
    monkeypatch.setenv("FILECLUSTER_HOME", str(tmp_path / "h"))
    assert client_home() == tmp_path / "h"


# -- names and passwords -----------------------------------------------------------------------


def test_password_rules() -> None:
    for new in (True, False):
        with pytest.raises(InvalidRequest, match="cannot be empty"):
            check_password_rules("", new=new)
        with pytest.raises(InvalidRequest, match="cannot be empty"):
            check_password_rules(None, new=new)
        with pytest.raises(InvalidRequest, match=f"at most {MAX_PASSWORD} characters"):
            check_password_rules("x" * (MAX_PASSWORD + 1), new=new)
        assert check_password_rules("x" * MAX_PASSWORD, new=new) == "x" * MAX_PASSWORD
    short = "x" * (MIN_PASSWORD - 1)
    with pytest.raises(InvalidRequest, match=f"at least {MIN_PASSWORD} characters"):
        check_password_rules(short, new=True)
    assert check_password_rules(short, new=False) == short  # an old account's short password still logs in


def test_a_file_name_must_be_text() -> None:
    with pytest.raises(InvalidRequest, match="must be text"):
        check_file_name(42)


@pytest.mark.parametrize("control", ["\u202a", "\u202b", "\u202d", "\u2066", "\u2067", "\u2068", "\u2069"])
def test_every_text_direction_control_is_refused_in_new_names(control: str) -> None:
    with pytest.raises(InvalidRequest, match="text-direction"):
        check_file_name(f"invoice{control}fdp.exe", new=True)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("\u00a0", "it is blank"),  # a no-break space is white space
        ("\u2028", "it is blank"),
        (" ", "invalid file name ' ': it is blank"),
        ("\u0301\u0301", "no visible character"),  # combining accents on nothing
        ("\u200d\ufeff\u2060", "no visible character"),  # joiners and zero-width no-breaks
    ],
)
def test_names_with_nothing_visible_are_refused(name: str, why: str) -> None:
    with pytest.raises(InvalidRequest, match=why):
        check_file_name(name, new=True)


# -- links --------------------------------------------------------------------------------------

TOKEN = "AbCdEfGhIjKlMnOpQrStUv_-12"


def test_share_links_are_parsed() -> None:
    link = parse_link(f"  filecluster://files.lan:9000/s/{TOKEN}/ ")
    assert link is not None and (link.host, link.port, link.token) == ("files.lan", 9000, TOKEN)
    v6 = parse_link(f"filecluster://[::1]:9000/s/{TOKEN}")
    assert v6 is not None and (v6.host, v6.port) == ("::1", 9000)
    # a #fragment is never part of a link (a browser does not send it): pasted with one, it still works
    framed = parse_link(f"filecluster://files.lan:9000/s/{TOKEN}/sub/a%20b.txt#page=2")
    assert framed is not None and (framed.token, framed.path) == (TOKEN, "sub/a b.txt")
    assert is_link(f"http://files.lan:9000/s/{TOKEN}?view#top") and not is_link(f"http://files.lan/x/{TOKEN}")
    # a URL's scheme is not case-sensitive: a link typed or pasted in capitals is the same link
    shouted = parse_link(f"FileCluster://files.lan:9000/s/{TOKEN}")
    assert shouted is not None and shouted.token == TOKEN
    assert is_link(f"HTTP://files.lan:9000/s/{TOKEN}") and is_link(f"Https://files.lan/s/{TOKEN}")
    assert not is_link(f"http://files.lan:9000/S/{TOKEN}")  # the path is: /S/ is no link's


@pytest.mark.parametrize(
    "text",
    [
        TOKEN,
        "report.pdf",
        f"http://files.lan:9000/s/{TOKEN}",
        f"filecluster://files.lan/s/{TOKEN}",
        f"filecluster://files.lan:9000/x/{TOKEN}",
        f"filecluster://files.lan:9000/s/{TOKEN}?x=1",
        f"filecluster://a/b:9000/s/{TOKEN}",
    ],
)
def test_what_is_not_a_link(text: str) -> None:
    assert parse_link(text) is None


# -- the saved session ---------------------------------------------------------------------------


def test_session_round_trip_and_resume(tmp_path: Path) -> None:
    home = tmp_path / "new" / "home"
    saved.save(home, saved.SavedSession("127.0.0.1:9123", "ana", "tok"))
    assert home.stat().st_mode & 0o777 == 0o700  # a folder made for it is private
    assert saved.load(home) == saved.SavedSession("127.0.0.1:9123", "ana", "tok")
    same = Client.from_environment("127.0.0.1:9123", home)  # resumed: same proxy
    assert (same.user, same.proxy.token) == ("ana", "tok")
    other = Client.from_environment("127.0.0.1:9124", home)  # another proxy: not logged in there
    assert (other.user, other.proxy.token) == (None, None)
    with pytest.raises(AuthError) as refused:  # and told which proxy the session is for
        other.whoami()
    assert str(refused.value) == (
        "not logged in at 127.0.0.1:9124; your session is for 127.0.0.1:9123 "
        "(--proxy or FILECLUSTER_PROXY picks it); or run: filecluster login USER"
    )
    assert "\n" not in str(refused.value)
    saved.clear(home)
    saved.clear(home)  # twice is fine
    assert saved.load(home) is None


@pytest.mark.parametrize("content", ["", "{", "[]", '{"proxy": "p"}', json.dumps({"user": 1})])
def test_a_damaged_session_file_means_logged_out(tmp_path: Path, content: str) -> None:
    (tmp_path / saved.SESSION_FILE).write_text(content)
    assert saved.load(tmp_path) is None


def test_a_session_that_cannot_be_kept_or_removed_is_a_clear_error(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    with pytest.raises(InvalidRequest, match=r"cannot keep the session in .* \(FILECLUSTER_HOME\)"):
        saved.save(not_a_folder, saved.SavedSession("p:1", "ana", "tok"))
    with pytest.raises(InvalidRequest, match=r"cannot remove the session in .* \(FILECLUSTER_HOME\)"):
        saved.clear(not_a_folder)


# -- what the command line prints ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (5 * 1024**2, "5.0 MiB"),
        (3 * 1024**3 + 1024**3 // 2, "3.5 GiB"),
        (2 * 1024**4, "2.0 TiB"),
        (5 * 1024**5, "5120.0 TiB"),  # no unit past TiB
    ],
)
def test_human_sizes(n: int, text: str) -> None:
    assert output.human_size(n) == text


def test_an_empty_listing_says_so() -> None:
    assert output.listing_table([]) == "no files"
    assert output.entries_json([]) == []


def test_listing_keeps_spaces_in_names_and_right_aligns_sizes() -> None:
    files = [
        {"name": " padded ", "owner": "ana", "size": 5, "sha1": "a" * 40, "uploaded": 0},
        {"name": "b", "owner": "bo", "size": 12345, "sha1": "b" * 40, "uploaded": 0},
    ]
    lines = output.listing_table(view(files, "")).splitlines()
    assert lines[0].split() == ["name", "size", "modified"]
    assert lines[2].startswith(" padded  ")
    size_end = lines[3].index("12.1 KiB") + len("12.1 KiB")
    assert lines[2][size_end - 1] == "B" and lines[2][size_end - 4 : size_end] == " 5 B"  # aligned right
    assert output.entries_json(view(files, ""))[0]["uploaded"] == "1970-01-01T00:00:00Z"
    assert output.entries_json(view(files, ""))[1]["size"] == 12345  # exact bytes in JSON


def test_progress_bars_draw_on_a_terminal_and_close_between_phases(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bars = output.ProgressBars("big.iso", enabled=True)
    with bars as progress:
        progress("hashing", 0, 4096)
        progress("hashing", 4096, 4096)
        first = bars._bar
        progress("sending", 2048, 4096)
        assert first is not None and first.disable  # the hashing bar was closed...
        assert bars._bar is not first  # ...and a new one opened for sending
    assert bars._bar is None  # leaving the block closes the last bar
    err = capsys.readouterr().err
    assert "hashing big.iso" in err and "sending big.iso" in err
    assert "4.00k/4.00k" in err and "50%" in err
    assert err.rstrip(" ").endswith("\r")  # leave=False: the bar's line is wiped, not left behind


def test_no_progress_bars_unless_on_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    with output.ProgressBars("quiet.txt") as progress:  # stderr is not a terminal under pytest
        progress("hashing", 10, 100)
    with output.ProgressBars("off.txt", enabled=False) as progress:
        progress("hashing", 10, 100)
    assert capsys.readouterr().err == ""


def test_the_listing_shows_a_state_column_only_when_a_file_is_not_whole() -> None:
    base = {"owner": "ana", "size": 1, "sha1": "a" * 40, "uploaded": 0}
    fine = [{**base, "name": "a", "state": "ok"}]
    assert "state" not in output.listing_table(view(fine, "")).splitlines()[0]
    mixed = [*fine, {**base, "name": "b", "state": "lost"}]
    table = output.listing_table(view(mixed, ""))
    assert "state" in table.splitlines()[0] and "LOST" in table
    assert output.entries_json(view(mixed, ""))[1]["state"] == "lost"


def test_a_session_file_others_can_read_is_made_private_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved.save(tmp_path, saved.SavedSession("127.0.0.1:9000", "ana", "t" * 43))
    path = tmp_path / saved.SESSION_FILE
    path.chmod(0o644)
    assert saved.load(tmp_path) == saved.SavedSession("127.0.0.1:9000", "ana", "t" * 43)
    assert path.stat().st_mode & 0o777 == 0o600
    err = capsys.readouterr().err
    assert err.startswith(f"warning: {path} could be read by other users; it is private again")
    assert saved.load(tmp_path) is not None and capsys.readouterr().err == ""  # said once
