"""The interactive numbered menu: the same actions as the subcommands (client.actions), asked for
one question at a time.

Paths are typed as in a shell: ``~`` is expanded, quoted or backslash-escaped paths (what
drag-and-drop gives) and globs work, and Tab completes local paths where readline is available.
Cluster files are picked by number from a list (``3``, ``1,3-5``) or typed by name.  Ctrl-C inside
an action (even mid-transfer) cancels it and returns to the menu.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from client import actions, output
from client.actions import Sink
from client.api import TOKEN_RE, URL_RE, Client, is_link, not_a_link
from client.expiry import parse_expires
from client.listing import folder_of, under
from common.errors import FileClusterError, InvalidRequest, NotFound, local_failure
from common.limits import MAX_DOWNLOADS

OUT = Sink()


def _ask(prompt: str) -> str:
    return input(prompt).strip()


def _yes(prompt: str) -> bool:
    return _ask(f"{prompt} [y/N] ").lower() in ("y", "yes")


# -- local paths ---------------------------------------------------------------------------------


def complete_path(text: str, state: int) -> str | None:
    """readline's completer: local paths starting with ``text`` (``~`` expanded; folders end in /)."""
    expanded = os.path.expanduser(text)
    matches = sorted(glob.glob(glob.escape(expanded) + "*"))
    if text.startswith("~"):
        home = os.path.expanduser("~")
        matches = ["~" + m[len(home) :] if m.startswith(home) else m for m in matches]
    shown = [m + "/" if os.path.isdir(os.path.expanduser(m)) else m for m in matches]
    return shown[state] if state < len(shown) else None


def _enable_line_editing() -> None:
    """readline editing and Tab completion of local paths, on a terminal that has readline."""
    if not sys.stdin.isatty():
        return
    try:
        import readline
    except ImportError:  # not every Python has it; input() then still works
        return
    readline.set_completer_delims(" \t\n\"'")
    readline.set_completer(complete_path)
    readline.parse_and_bind("tab: complete")


def local_paths(line: str) -> list[str]:
    """The paths typed on one line: a path that exists as typed (spaces and all), else words split
    like a shell does (quotes, backslashes), each with ``~`` expanded and globs expanded (a glob
    that matches nothing stays as typed, to be reported)."""
    line = line.strip()
    if not line:
        return []
    if os.path.exists(os.path.expanduser(line)):
        return [os.path.expanduser(line)]
    try:
        words = shlex.split(line)
    except ValueError:  # an unmatched quote: take the line as it is
        words = [line]
    paths: list[str] = []
    for word in words:
        word = os.path.expanduser(word)
        found = sorted(glob.glob(word)) if glob.has_magic(word) and not os.path.exists(word) else []
        paths += found or [word]
    return paths


# -- picking cluster files by number ------------------------------------------------------------

_NUMBERS = re.compile(r"\s*\d+(\s*-\s*\d+)?(\s*,\s*\d+(\s*-\s*\d+)?)*\s*\Z")


def numbers(text: str, count: int) -> list[int] | None:
    """``3``, ``1,3-5``: the 0-based indexes chosen (in order, once each); None if ``text`` is not
    a list of numbers; an error for a number outside 1..count."""
    if not _NUMBERS.match(text):
        return None
    chosen: dict[int, None] = {}  # in order, once each
    for part in text.split(","):
        low, _, high = (side.strip() for side in part.partition("-"))
        ends = (low, high or low)
        for end in ends:  # the number as typed, whatever its size
            if len(end.lstrip("0")) > len(str(count)) or not 1 <= int(end) <= count:
                raise InvalidRequest(f"no file number {_shown(end)}: choose from 1 to {count}")
        first, last = sorted(int(end) for end in ends)
        chosen.update((n - 1, None) for n in range(first, last + 1))
    return list(chosen)


def _shown(number: str) -> str:
    number = number.lstrip("0") or "0"
    return number if len(number) <= 20 else number[:20] + "…"


def _numbered(files: list[dict[str, Any]]) -> None:
    width = output.terminal_width()
    digits = len(str(len(files)))
    for n, f in enumerate(files, 1):
        size = output.human_size(int(f["size"]))
        name = output.shorten(str(f["name"]), max(output.NAME_MIN, width - digits - len(size) - 6))
        print(f"{n:>{digits}}. {name}  {size}")


def _pick(c: Client, prompt: str, many: bool, links: bool = False) -> list[str]:
    """Show your files numbered, and read which: numbers (``1,3-5`` when ``many``), or a name (or a
    link, with ``links``).  An empty answer picks nothing."""
    logged_in = c.user is not None or not links  # a link needs no login; your files do
    files = sorted(c.list(), key=lambda f: str(f["name"])) if logged_in else []
    if files:
        _numbered(files)
    elif not links:
        print("no files")
        return []
    answer = _ask(prompt)
    if not answer:
        return []
    chosen = numbers(answer, len(files))
    if chosen is None:  # a name or a link: refused now if it can be, before any other question
        if links and URL_RE.match(answer.strip()) and not is_link(answer):
            raise not_a_link(answer)
        a_link = links and (is_link(answer) or TOKEN_RE.match(answer.strip()) is not None)
        if logged_in and not a_link and not under(files, folder_of(answer)):
            raise NotFound(f"you have no file or folder named {answer!r}")
        return [answer]
    if len(chosen) > 1 and not many:
        raise InvalidRequest("choose one file")
    return [str(files[i]["name"]) for i in chosen]


# -- the actions ----------------------------------------------------------------------------------


def _register(c: Client) -> None:
    actions.register(c, OUT, _ask("user name: "), interactive=True)


def _login(c: Client) -> None:
    actions.login(c, OUT, _ask("user name: "), interactive=True)


def _upload(c: Client) -> None:
    paths = local_paths(_ask("files or folders to upload (globs like *.jpg work): "))
    if not paths:
        return
    files = [p for p in paths if not os.path.isdir(p)]
    folders = [p for p in paths if os.path.isdir(p)]
    for folder in folders:
        if _yes(f"{folder} is a folder: upload it and everything in it?"):
            files.append(folder)
    if files:
        actions.upload(c, OUT, files, recursive=bool(folders))


def _list(c: Client) -> None:
    actions.list_files(c, OUT, recursive=True)


def _share(c: Client) -> None:
    for name in _pick(c, "file to share (number or name): ", many=False):
        expires = _ask("expires (30m, 24h, 7d, a date like 2026-12-31; empty: never): ") or None
        if expires:
            parse_expires(expires, label="expires:")  # a mistake is said before the next question
        limit = _ask("at most how many downloads (empty: no limit): ")
        actions.share(c, OUT, name, expires, download_limit(limit) if limit else None)


def download_limit(text: str) -> int:
    """A share's download limit as typed: a whole number from 1 to MAX_DOWNLOADS."""
    if text.isascii() and text.isdigit() and len(text) <= 9 and 1 <= int(text) <= MAX_DOWNLOADS:
        return int(text)
    shown = text if len(text) <= 20 else text[:20] + "…"
    raise InvalidRequest(f"at most how many downloads: a number from 1 to {MAX_DOWNLOADS:,}, not {shown!r}")


def _links(c: Client) -> None:
    actions.links(c, OUT)


def _unshare(c: Client) -> None:
    target = _ask("link, token or file whose links to revoke: ")
    if target:
        actions.unshare(c, OUT, target)


def _download(c: Client) -> None:
    targets = _pick(c, "files to download (numbers like 1,3-5, a name or a link): ", many=True, links=True)
    if not targets:
        return
    folder = _ask(f"folder [{actions.DEFAULT_FOLDER}]: ") or actions.DEFAULT_FOLDER
    single = targets[0]
    recursive = (
        len(targets) == 1
        and not is_link(single)
        and c.user is not None
        and bool(under(c.list(folder_of(single) + "/"), folder_of(single)))
    )
    actions.download(c, OUT, targets, recursive=recursive, out_dir=Path(os.path.expanduser(folder)))


def _delete(c: Client) -> None:
    names = _pick(c, "files to delete (numbers like 1,3-5, or a name): ", many=True)
    if not names:
        return
    if len(names) == 1:
        base = folder_of(names[0])
        inside = [f for f in under(c.list(base + "/"), base) if f["name"] != base]
        if inside:
            if _yes(f"{base!r} is a folder with {output.plural(len(inside), 'file')}: delete it all?"):
                actions.delete(c, OUT, [base], recursive=True)
            return
        question = f"delete {names[0]!r}?"
    else:
        question = f"delete these {len(names)} files?"
    if _yes(question):
        actions.delete(c, OUT, names)


def _move(c: Client) -> None:
    old = _pick(c, "file or folder to rename or move (number or name): ", many=False)
    if old:
        actions.move(c, OUT, old[0], _ask(f"new name for {old[0]}: "))


def _versions(c: Client) -> None:
    name = _pick(c, "file whose versions to see (number or name): ", many=False)
    if not name:
        return
    actions.versions(c, OUT, name[0])
    chosen = _ask("version to restore (Enter: none): ")
    if chosen:
        if not chosen.isascii() or not chosen.isdigit():
            raise InvalidRequest("a version is a number")
        actions.restore(c, OUT, name[0], int(chosen))


ACTIONS: list[tuple[str, Callable[[Client], object]]] = [
    ("register", _register),
    ("login", _login),
    ("upload files or folders", _upload),
    ("list my files", _list),
    ("share a file (sharelink)", _share),
    ("download links or my files", _download),
    ("delete files", _delete),
    ("storage servers status", lambda c: actions.status(c, OUT)),
    ("who am I", lambda c: actions.whoami(c, OUT)),
    ("logout", lambda c: actions.logout(c, OUT)),
    ("rename or move (mv)", _move),
    ("versions of a file (restore one)", _versions),
    ("links: my share links", _links),
    ("unshare: revoke a link", _unshare),
]


# what the command line says to do, and the menu's item that does it
_COMMANDS = {"run: filecluster login USER": "choose 2 (login) or 1 (register)"}


def in_menu_words(message: str) -> str:
    """An error as the menu says it: an advice to run a command names the menu's item instead."""
    for command, item in _COMMANDS.items():
        message = message.replace(command, item)
    return message


def run_menu(client: Client) -> int:
    _enable_line_editing()
    print(
        f"filecluster — proxy {client.proxy.address}"
        + (f", logged in as {client.user}" if client.user else "")
    )
    while True:
        print()
        for number, (label, _) in enumerate(ACTIONS, 1):
            print(f"{number:>2}. {label}")
        print(" 0. quit")
        try:
            choice = _ask("choose: ")
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:  # a Ctrl-C too many must not end the menu (and the cluster with it)
            print("\n(to leave the menu, choose 0 or press Ctrl-D)", file=sys.stderr)
            continue
        if choice in ("0", "q", "quit", "exit"):
            return 0
        if not choice.isascii() or not choice.isdigit() or not 1 <= int(choice) <= len(ACTIONS):
            print(f"choose a number from 0 to {len(ACTIONS)}")
            continue
        try:
            ACTIONS[int(choice) - 1][1](client)
        except FileClusterError as exc:
            OUT.error(in_menu_words(str(exc)))
        except OSError as exc:  # a local file or folder no more particular message caught: one line
            OUT.error(str(local_failure(exc)))
        except (EOFError, KeyboardInterrupt):  # Ctrl-D or Ctrl-C at an action's question: back here
            print("\ncancelled", file=sys.stderr)


__all__ = ["complete_path", "in_menu_words", "local_paths", "numbers", "run_menu"]
