"""What people read: folders like ``ls``, tables that fit 80 columns with wide characters aligned,
local times with their offset, plurals, quotas, progress bars that fit the terminal, and the menu's
way of reading paths and file numbers."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client import menu, output
from client.listing import folder_of, view
from common.errors import InvalidRequest

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def item(name: str, size: int = 1000, uploaded: float = 1_700_000_000, **extra: Any) -> dict[str, Any]:
    return {"name": name, "owner": "ana", "size": size, "sha1": "a" * 40, "uploaded": uploaded, **extra}


FILES = [
    item("photos/2024/a.jpg", 1024),
    item("photos/2024/b.jpg", 2048, uploaded=1_700_000_100),
    item("photos/c.jpg", 10),
    item("photos/old/x/y.jpg", 5, state="lost"),
    item("photos2.txt", 7),
    item("notes.txt", 3),
]


def test_folders_are_shown_like_ls() -> None:
    top = view(FILES, "")
    assert [(e.shown, e.files, e.size) for e in top] == [
        ("photos/", 4, 1024 + 2048 + 10 + 5),
        ("notes.txt", 1, 3),
        ("photos2.txt", 1, 7),
    ]
    assert top[0].state == "lost" and top[0].uploaded == 1_700_000_100  # the worst, the newest
    inside = view(FILES, "photos")
    assert [(e.shown, e.name, e.folder) for e in inside] == [
        ("2024/", "photos/2024", True),
        ("old/", "photos/old", True),
        ("c.jpg", "photos/c.jpg", False),
    ]
    assert [e.shown for e in view(FILES, "photos", recursive=True)] == [
        "2024/a.jpg",
        "2024/b.jpg",
        "c.jpg",
        "old/x/y.jpg",
    ]
    assert [e.shown for e in view(FILES, "notes.txt")] == ["notes.txt"]  # a file lists itself
    assert view(FILES, "phot") == []  # a prefix of a name is not a folder
    assert [folder_of(t) for t in ("photos/", "/photos", ".", "/a/b/")] == ["photos", "photos", "", "a/b"]
    assert folder_of(" a/b/") == " a/b"  # names are exact: a space is part of the name


def test_the_table_says_how_much_is_in_each_folder() -> None:
    entries = view(FILES, "")
    table = output.listing_table(entries)
    lines = table.splitlines()
    assert lines[0].split() == ["name", "files", "size", "modified", "state"]
    assert lines[2].split()[:4] == ["photos/", "4", "3.0", "KiB"]
    assert lines[3].split()[:4] == ["notes.txt", "3", "B", output.local_time(1_700_000_000).split()[0]]
    assert "LOST" in lines[2]
    assert output.listing_summary(entries) == "6 files, 1 folder, 3.0 KiB in all"
    assert output.listing_summary(view(FILES[:1], "photos/2024")) == "1 file, 1.0 KiB in all"


def test_the_default_listing_fits_80_columns_and_long_adds_the_details() -> None:
    long_names = [item("x" * 150 + ".txt", 123456789), item("名前" * 40 + ".jpg"), item("short.txt")]
    entries = view(long_names, "")
    table = output.listing_table(entries, width=80)
    assert max(output.display_width(line) for line in table.splitlines()) <= 80
    assert "…" in table and "short.txt" in table and ".txt" in table
    wide = output.listing_table(entries, long=True, width=80)
    assert "x" * 150 + ".txt" in wide and "a" * 40 in wide
    assert wide.splitlines()[0].split() == ["name", "size", "modified", "owner", "versions", "state", "sha1"]


def test_wide_characters_keep_the_columns_aligned() -> None:
    names = ["写真.jpg", "a.txt", "東京タワーの夜景.png", "ｆｕｌｌ.txt", "mixed名前b.bin"]
    table = output.listing_table(view([item(n, 10**n_) for n_, n in enumerate(names, 1)], ""))
    lines = table.splitlines()

    def size_end(line: str) -> int:  # the display column where the size cell ends ("B" of "KiB")
        match = re.search(r"\d(\.\d)? (B|KiB|MiB)", line)
        assert match, line
        return output.display_width(line[: match.end()])

    assert len({size_end(line) for line in lines[2:]}) == 1
    modified = {output.display_width(line[: line.index("2023")]) for line in lines[2:]}
    assert len(modified) == 1


def test_shorten_cuts_in_the_middle_by_display_width() -> None:
    assert output.shorten("short", 10) == "short"
    assert output.shorten("abcdefghijklmnop", 9) == "abcd…mnop"
    cut = output.shorten("写真写真写真写真写真.jpg", 11)
    assert output.display_width(cut) <= 11 and cut.startswith("写真") and cut.endswith(".jpg")


@pytest.fixture
def tokyo(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_times_are_local_with_their_offset(tokyo: None) -> None:
    assert output.local_time(0) == "1970-01-01 09:00 +0900"
    assert output.iso_time(0) == "1970-01-01T00:00:00Z"  # JSON: UTC


def test_plurals() -> None:
    assert [output.plural(n, "file") for n in (0, 1, 2)] == ["0 files", "1 file", "2 files"]


@pytest.mark.parametrize(
    ("account", "text"),
    [
        ({"user": "ana"}, "ana"),  # a proxy that gives no usage
        (
            {"user": "ana", "usage": 3 * 1024**3 // 2, "quota": 10 * 1024**3, "files": 1},
            "ana\n1 file, 1.5 GiB used of 10.0 GiB (15%)",
        ),
        ({"user": "bo", "usage": 0, "quota": None, "files": 0}, "bo\n0 files, 0 B used (no quota)"),
        ({"user": "cy", "usage": 999, "quota": 1000, "files": 2}, "cy\n2 files, 999 B used of 1000 B (99%)"),
        (  # the quota was lowered below what is stored
            {"user": "di", "usage": 3400, "quota": 3000, "files": 1},
            "di\n1 file, 3.3 KiB used of 2.9 KiB "
            "(113%: over the quota, uploads are refused until some is freed)",
        ),
    ],
)
def test_whoami_shows_usage_and_quota(account: dict[str, Any], text: str) -> None:
    assert output.account_text(account) == text


def drawn(err: str) -> list[str]:
    """Every state of every line the bars drew, escape sequences removed."""
    return [ANSI.sub("", piece) for piece in re.split(r"[\r\n]", err) if piece.strip()]


def test_progress_fits_80_columns_and_is_labelled_by_the_name(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    name = "a holiday video with a very long name from the summer of 2024 (final, really).mp4"
    with output.ProgressBars(name, enabled=True) as progress:
        progress("receiving", 0, 3 * 1024**3)
        progress("receiving", 1024**3, 3 * 1024**3)
    shown = drawn(capsys.readouterr().err)
    assert shown and all(output.display_width(line) <= 80 for line in shown)
    assert any(re.match(r"receiving a holi.*….*\.mp4: +33%\|", line) for line in shown), shown


def test_several_files_get_an_overall_bar(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    sizes = [1000, 3000]
    with output.OverallBar(3, sum(sizes), enabled=True) as overall:
        for size in [*sizes, None]:
            overall.start(size)
            with output.ProgressBars("f.bin", enabled=True, overall=overall) as progress:
                progress("hashing", 500, 1000)  # not counted: only transfers are
                progress("sending", 1000, 2000 if size is None else size)
            overall.finish()
        assert (overall.finished, overall.completed, overall.total) == (3, 6000, 6000)
    shown = drawn(capsys.readouterr().err)
    assert all(output.display_width(line) <= 80 for line in shown)
    assert any(line.startswith("1/3 files:  25%") for line in shown), shown  # 1000 of the 4000 known
    assert any(line.startswith("3/3 files: 100%") for line in shown), shown
    assert any(line.startswith("sending f.bin:") for line in shown)


# -- the menu's input ------------------------------------------------------------------------------


def test_numbers_and_ranges() -> None:
    assert menu.numbers("3", 5) == [2]
    assert menu.numbers(" 1, 3-5 ", 5) == [0, 2, 3, 4]
    assert menu.numbers("4-2,3", 5) == [1, 2, 3]  # a reversed range, each file once
    assert menu.numbers("report.pdf", 5) is None and menu.numbers("2024.jpg", 5) is None
    with pytest.raises(InvalidRequest, match="no file number 6: choose from 1 to 5"):
        menu.numbers("1,6", 5)
    # the number typed is the one named, however big (not the first past the end)
    with pytest.raises(InvalidRequest, match="no file number 99999999999: choose from 1 to 5"):
        menu.numbers("1-99999999999", 5)
    with pytest.raises(InvalidRequest, match="no file number 0: choose from 1 to 5"):
        menu.numbers("0-2", 5)
    with pytest.raises(InvalidRequest, match=r"no file number 9{20}…: choose"):
        menu.numbers("2-" + "9" * 5000, 5)  # past what int() reads: still one line
    assert menu.numbers("0003", 5) == [2]


def test_paths_typed_as_in_a_shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("a b.txt", "c.jpg", "d.jpg", "it's.txt"):
        (tmp_path / name).write_text(name)
    home = str(tmp_path)
    assert menu.local_paths(f"{home}/a b.txt") == [f"{home}/a b.txt"]  # exists as typed, spaces and all
    assert menu.local_paths("~/a\\ b.txt ~/c.jpg") == [f"{home}/a b.txt", f"{home}/c.jpg"]
    assert menu.local_paths(f"'{home}/a b.txt' \"{home}/c.jpg\"") == [f"{home}/a b.txt", f"{home}/c.jpg"]
    assert menu.local_paths("~/*.jpg") == [f"{home}/c.jpg", f"{home}/d.jpg"]
    assert menu.local_paths("~/*.png") == [f"{home}/*.png"]  # no match: kept, to be reported
    assert menu.local_paths(f"{home}/it's.txt") == [f"{home}/it's.txt"]
    assert menu.local_paths("  ") == []


def test_tab_completes_local_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "pics").mkdir()
    (tmp_path / "pictures.txt").write_text("x")
    found: list[str] = []
    while (match := menu.complete_path("~/pic", len(found))) is not None:
        found.append(match)
    assert found == ["~/pics/", "~/pictures.txt"]
    assert menu.complete_path(str(tmp_path / "pics") + "/", 0) is None
    assert menu.complete_path(os.path.join(str(tmp_path), "pictures"), 0) == str(tmp_path / "pictures.txt")


def test_the_links_table_shows_each_link_whole_and_last() -> None:
    """A link is copied whole from the table; it comes last, so a row wider than the terminal
    wraps only the link, and a long name gives way to it."""
    link = "http://files.example:9080/s/" + "T" * 43
    rows = [
        {"name": "n" * 60 + ".txt", "link": link, "created": 0, "expires": None, "downloads": 1,
         "max_downloads": 3, "state": "active"},
        {"name": "pics", "kind": "folder", "link": link[:-1] + "U", "created": 0, "expires": 86400,
         "downloads": 0, "state": "revoked"},
    ]  # fmt: skip
    lines = output.links_table(rows).splitlines()
    assert lines[0].split() == ["name", "created", "expires", "downloads", "state", "link"]
    first, second = lines[1:]
    assert first.endswith(link) and second.endswith(link[:-1] + "U")
    assert first.index(link) == second.index(link[:-1] + "U")  # the columns before it stay aligned
    assert "n" * 60 not in first and "…" in first and "1/3" in first and "active" in first
    assert second.startswith("pics/ ") and "revoked" in second
