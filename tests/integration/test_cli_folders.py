"""Folders, versions, renames and quotas from the command line (in-process, a cluster of this
module's own): upload -r, list PREFIX / -R, download -r, delete -r, mv, versions, download
--version, restore, whoami's usage and quota, and their --json."""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import Cluster
from tests.inprocess import in_process_cli

_n = itertools.count(1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("cli-folders"), servers=2).start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def run(
    cluster: Cluster, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """`filecluster ARGS` in this process, as a new logged-in user: (exit status, stdout, stderr)."""
    run = in_process_cli(cluster, capsys, monkeypatch, columns=80)
    assert run("register", f"tree{next(_n)}")[0] == 0
    yield run


def tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


PICS = {"2024/a.jpg": b"a" * 100, "2024/b.jpg": b"b" * 200, "c.jpg": b"c", "old/x/y.jpg": b"y" * 5}


def rows(out: str) -> list[list[str]]:
    """A table's rows (header and rule skipped, summary line dropped), cells split on 2+ spaces."""
    return [re.split(r"\s{2,}", line.strip()) for line in out.splitlines()[2:-1]]


def test_a_folder_goes_up_lists_like_ls_and_comes_back(run: Any, tmp_path: Path) -> None:
    pics = tree(tmp_path / "pics", PICS)
    code, out, err = run("upload", "-r", str(pics))
    assert (code, err) == (0, "")
    assert sorted(line.split("  ")[0] for line in out.splitlines()[:-1]) == sorted(
        f"uploaded pics/{rel}" for rel in PICS
    )
    assert out.splitlines()[-1] == "4 files uploaded, 306 B"
    code, out, _ = run("list")
    assert code == 0 and [r[:3] for r in rows(out)] == [["pics/", "4", "306 B"]]
    assert out.splitlines()[-1] == "4 files, 1 folder, 306 B in all"
    code, out, _ = run("ls", "pics/")
    assert [r[:2] for r in rows(out)] == [["2024/", "2"], ["old/", "1"], ["c.jpg", "1 B"]]
    code, out, _ = run("ls", "-R", "pics")
    assert [r[0] for r in rows(out)] == ["2024/a.jpg", "2024/b.jpg", "c.jpg", "old/x/y.jpg"]
    listed = json.loads(run("ls", "pics", "--json")[1])
    assert [(e["type"], e["name"]) for e in listed] == [
        ("folder", "pics/2024/"),
        ("folder", "pics/old/"),
        ("file", "pics/c.jpg"),
    ]
    assert run("ls", "nothing")[0] == 1
    out_dir = tmp_path / "back"
    code, out, err = run("download", "-r", "pics/2024", "pics/c.jpg", "-o", str(out_dir))
    assert (code, err) == (0, "")
    assert (out_dir / "2024" / "a.jpg").read_bytes() == PICS["2024/a.jpg"]
    assert (out_dir / "2024" / "b.jpg").read_bytes() == PICS["2024/b.jpg"]
    assert (out_dir / "c.jpg").read_bytes() == b"c"
    whole = tmp_path / "whole"
    assert run("get", "-r", "pics", "-o", str(whole))[0] == 0
    assert {str(p.relative_to(whole)) for p in whole.rglob("*") if p.is_file()} == {f"pics/{r}" for r in PICS}
    code, _, err = run("download", "pics", "-o", str(whole))  # a folder without -r
    assert code == 1 and "folder" in err and err.count("\n") == 1


def test_mv_and_delete_r(run: Any, tmp_path: Path) -> None:
    run("upload", "-r", str(tree(tmp_path / "pics", PICS)))
    code, out, _ = run("mv", "pics", "photos")
    assert (code, out) == (0, "moved pics to photos (4 files)\n")
    assert json.loads(run("--json", "mv", "photos/c.jpg", "photos/cover.jpg")[1]) == {
        "old": "photos/c.jpg",
        "new": "photos/cover.jpg",
        "moved": 1,
    }
    code, out, _ = run("ls", "photos")
    assert [r[0] for r in rows(out)] == ["2024/", "old/", "cover.jpg"]
    code, _, err = run("rm", "photos")
    assert code == 1 and "folder" in err and err.count("\n") == 1
    code, out, _ = run("rm", "-r", "photos/2024")
    assert (code, out) == (0, "deleted photos/2024 (2 files)\n")
    assert json.loads(run("rm", "-r", "photos", "--json")[1])["deleted"] == [{"name": "photos", "deleted": 2}]
    assert run("ls")[1] == "no files\n"
    assert run("rm", "-r", "photos")[2] == "error: you have no file or folder named 'photos'\n"


def test_versions_download_version_and_restore(run: Any, tmp_path: Path) -> None:
    first, second = tmp_path / "d1" / "a.txt", tmp_path / "d2" / "a.txt"
    for path, text in ((first, b"first"), (second, b"second!")):
        path.parent.mkdir()
        path.write_bytes(text)
    code, out, _ = run("upload", str(first))
    assert code == 0 and out.startswith("uploaded a.txt  size=5 B")
    code, out, _ = run("upload", str(second))  # the same name again: a new version, nothing is lost
    assert code == 0 and out.startswith("updated a.txt (version 2)  size=7 B")
    code, out, _ = run("versions", "a.txt")
    assert [r[:2] for r in rows(out + "\n")] == [["2 (current)", "7 B"], ["1", "5 B"]]
    kept = json.loads(run("versions", "a.txt", "--json")[1])
    assert [(v["version"], v["size"], v["current"]) for v in kept["versions"]] == [
        (2, 7, True),
        (1, 5, False),
    ]
    old = tmp_path / "old"
    assert run("download", "a.txt", "--version", "1", "-o", str(old))[0] == 0
    assert (old / "a.txt").read_bytes() == b"first"
    code, out, _ = run("restore", "a.txt", "--version", "1")
    assert (code, out) == (0, "restored a.txt version 1: it is now version 3\n")
    now = tmp_path / "now"
    assert run("get", "a.txt", "-o", str(now))[0] == 0 and (now / "a.txt").read_bytes() == b"first"
    restored = json.loads(run("--json", "restore", "a.txt", "--version", "2")[1])
    assert restored["restored"] == 2 and restored["file"]["version"] == 4
    code, _, err = run("restore", "a.txt", "--version", "99")
    assert code == 1 and err.count("\n") == 1


def test_upload_as_a_chosen_name(run: Any, tmp_path: Path) -> None:
    src = tmp_path / "notes.txt"
    src.write_text("n")
    code, out, _ = run("upload", str(src), "--as", "work/2024/notes.txt")
    assert code == 0 and out.startswith("uploaded work/2024/notes.txt  ")
    assert (
        json.loads(run("--json", "upload", str(src), "--as", "work/2024/notes.txt")[1])["files"][0]["version"]
        == 2
    )


def test_whoami_shows_usage_and_quota(run: Any, tmp_path: Path) -> None:
    src = tmp_path / "k.bin"
    src.write_bytes(b"k" * 2048)
    run("upload", str(src))
    code, out, _ = run("whoami")
    user, usage = out.splitlines()
    assert code == 0 and user.startswith("tree")
    assert usage.startswith("1 file, 2.0 KiB used of ") and usage.endswith("%)")
    account = json.loads(run("whoami", "--json")[1])
    assert account["usage"] == 2048 and account["files"] == 1 and isinstance(account["quota"], int)


def test_download_into_a_file_is_one_clear_error(run: Any, tmp_path: Path) -> None:
    src = tmp_path / "pics"
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (src / "2024").mkdir(parents=True, exist_ok=True)
        (src / "2024" / name).write_bytes(name.encode())
    assert run("upload", "-r", str(src))[0] == 0
    in_the_way = tmp_path / "afile"
    in_the_way.write_bytes(b"mine")
    for args in (["download", "-r", "pics"], ["download", "pics/2024/a.jpg"]):
        code, out, err = run(*args, "-o", str(in_the_way))
        assert (code, out, err) == (1, "", f"error: cannot save in {in_the_way}: it is not a folder\n")
    assert in_the_way.read_bytes() == b"mine"


def test_a_folder_named_where_a_file_is_wanted_gets_the_command_for_it(run: Any, tmp_path: Path) -> None:
    run("upload", "-r", str(tree(tmp_path / "pics", PICS)))
    for args, hint in [
        (["rm", "pics"], "for all of it: filecluster delete -r pics"),
        (
            ["download", "pics/2024", "-o", str(tmp_path / "out")],
            "for all of it: filecluster download -r pics/2024",
        ),
        (["versions", "pics"], "versions are kept for each of its files: filecluster list pics"),
        (
            ["restore", "pics/old", "--version", "1"],
            "versions are kept for each of its files: filecluster list pics/old",
        ),
    ]:
        code, out, err = run(*args)
        assert (code, out) == (1, "") and err == f"error: '{args[1]}' is a folder; {hint}\n", args
    code, _, err = run("versions", "pics/nope")
    assert code == 1 and err == "error: you have no file named 'pics/nope'\n"
    code, _, err = run("download", "pics/", "-o", str(tmp_path / "out"))  # typed as a folder
    assert code == 1 and err == "error: 'pics' is a folder; for all of it: filecluster download -r pics/\n"
    code, _, err = run("download", "nope/", "-o", str(tmp_path / "out"))
    assert code == 1 and err == "error: you have no folder named 'nope'\n"
    assert run("ls", "pics", "-R")[1].count(".jpg") == len(PICS)  # nothing was deleted
    run("upload", "-r", str(tree(tmp_path / "my pics", PICS)))
    code, _, err = run("rm", "my pics")  # the command to copy names the folder as a shell takes it
    assert (
        code == 1 and err == "error: 'my pics' is a folder; for all of it: filecluster delete -r 'my pics'\n"
    )


def test_names_are_exact_and_partials_are_never_uploaded(run: Any, tmp_path: Path) -> None:
    """A name with a space at either end is refused (it would look like another); a name is never
    trimmed into another file's; a download's unfinished files are not uploaded with its folder."""
    src = tree(tmp_path / "src", {"a.txt": b"mine"})
    assert run("upload", str(src / "a.txt"))[0] == 0
    code, _, err = run("upload", str(src / "a.txt"), "--as", "a.txt ")
    assert code == 2 and "may not start or end with a space" in err and err.count("\n") == 1
    code, _, err = run("download", "a.txt ", "-o", str(tmp_path / "out"))
    assert code == 1 and err == "error: you have no file named 'a.txt '\n"
    (src / ".filecluster-partial").mkdir()
    (src / ".filecluster-partial" / "x.part").write_bytes(b"\0" * 100)
    code, out, _ = run("upload", "-r", str(src), "--as", "backup")
    assert code == 0 and "partial" not in out and out.startswith("uploaded backup/a.txt")


def test_a_file_whose_local_name_has_a_newline_fails_in_one_line(run: Any, tmp_path: Path) -> None:
    mix = tree(tmp_path / "mix", {"good.txt": b"fine", "bad\nname": b"refused"})
    code, out, err = run("upload", "-r", str(mix))
    assert code == 1 and "good.txt" in out
    (line,) = err.splitlines()  # the raw name would break the error over two lines
    assert line.startswith("error: ") and "control characters" in line and "\\n" in line


def test_a_name_typed_from_the_root_is_the_name_and_spaces_are_kept(run: Any, tmp_path: Path) -> None:
    """ "/a.txt" is "a.txt" for every command that takes a name (as "/photos" always was for folders);
    a space is part of a name: delete -r " d" never deletes "d"."""
    src = tree(tmp_path / "src", {"a.txt": b"rooted"})
    assert run("upload", str(src / "a.txt"))[0] == 0
    code, _, _ = run("download", "/a.txt", "-o", str(tmp_path / "out"))
    assert code == 0 and (tmp_path / "out" / "a.txt").read_bytes() == b"rooted"
    assert run("versions", "/a.txt")[0] == 0 and run("share", "/a.txt")[0] == 0
    assert run("mv", "/a.txt", "/d/b.txt")[1] == "moved a.txt to d/b.txt\n"
    code, _, err = run("delete", "-r", " d")
    assert code == 1 and "' d'" in err
    assert run("--json", "list", "d")[1].count('"d/b.txt"') == 1  # still there
    assert run("delete", "/d/b.txt")[1] == "deleted d/b.txt\n"


def test_names_and_passwords_that_are_not_utf8_get_one_clear_line(run: Any, tmp_path: Path) -> None:
    """Bytes of another encoding in a name typed or found, or in a password: said so, once."""
    src = tree(tmp_path / "u8", {"ok.txt": b"fine"})
    (src / os.fsdecode(b"caf\xe9.jpg")).write_bytes(b"x")
    code, out, err = run("upload", "-r", str(src))
    assert code == 1 and "u8/ok.txt" in out
    assert err.count("\n") == 1 and "\\udc" not in err  # the local path, then the name: both as bytes
    assert err.endswith("/u8/caf\\xe9.jpg': invalid file name 'u8/caf\\xe9.jpg': it is not valid UTF-8\n")
    for args in (["list", "q\udcff"], ["unshare", "q\udcff"], ["download", "-r", "q\udcff"]):
        assert run(*args)[1:] == ("", "error: 'q\\xff' is not valid UTF-8\n"), args


def test_the_as_hint_is_given_only_where_as_can_help(run: Any, tmp_path: Path) -> None:
    """A local file whose own name the cluster refuses: upload it with --as; a refused --as name,
    or a refused new name in mv, get no such hint."""
    src = tree(tmp_path / "h", {"trail ": b"x", "ok.txt": b"y"})
    code, _, err = run("upload", str(src / "trail "))
    assert code == 1 and err.endswith("may not start or end with a space (upload it with --as NAME)\n")
    code, _, err = run("upload", str(src / "ok.txt"), "--as", "new ")
    assert code == 2 and "--as NAME" not in err.replace("(see:", "").split("--as:", 1)[1]
    assert run("upload", str(src / "ok.txt"))[0] == 0
    code, _, err = run("mv", "ok.txt", "new ")  # a usage error, said before the proxy is asked
    assert code == 2 and "may not start or end with a space" in err and "--as" not in err


def test_mv_into_a_folder_named_with_a_slash(run: Any, tmp_path: Path) -> None:
    """A NEW ending in "/" is a folder to move into, keeping the base name, as mv does; "/" is the
    top level.  It never makes a file named after the folder."""
    src = tree(tmp_path / "s", {"doc.txt": b"d"})
    assert run("upload", str(src / "doc.txt"), "--as", "in/doc.txt")[0] == 0
    assert run("mv", "in/doc.txt", "d2/")[1] == "moved in/doc.txt to d2/doc.txt\n"
    assert run("mv", "d2/doc.txt", "/")[1] == "moved d2/doc.txt to doc.txt\n"
    assert run("mv", "doc.txt", "pics/")[0] == 0 and run("mv", "pics", "archive/")[0] == 0
    assert [row[0] for row in rows(run("ls", "-R")[1])] == ["archive/pics/doc.txt"]
    assert run("mv", "archive//", "top/")[1] == "moved archive to top/archive\n"  # "archive//": the folder
    code, _, err = run("mv", "archive", "x//")
    assert code == 2 and "NEW:" in err


def test_a_folder_named_with_slashes_is_the_folder(run: Any, tmp_path: Path) -> None:
    """ "pics/" and "/pics/" name the folder pics for unshare; rm of a folder says to use -r; --as
    takes a name from the top level."""
    src = tree(tmp_path / "s", {"z.txt": b"z"})
    assert run("upload", str(src / "z.txt"), "--as", "/pics/z.txt")[1].startswith("uploaded pics/z.txt")
    assert run("share", "pics/")[0] == 0
    assert run("unshare", "/pics/")[1] == "revoked 1 link of pics\n"
    code, _, err = run("rm", "pics/")
    assert code == 1 and err == "error: 'pics' is a folder; for all of it: filecluster delete -r pics/\n"
    assert run("rm", "nothing/")[2] == "error: you have no file or folder named 'nothing'\n"
    assert run("upload", str(src / "z.txt"), "--as", "/")[0] == 2
