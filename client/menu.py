"""The interactive numbered menu: the same actions as the subcommands, one at a time."""

from __future__ import annotations

import getpass
import sys
from collections.abc import Callable
from pathlib import Path

from client import output
from client.api import Client
from common.errors import FileClusterError


def _ask(prompt: str) -> str:
    return input(prompt).strip()


def _password(confirm: bool = False) -> str:
    ask = getpass.getpass if sys.stdin.isatty() else input
    password = ask("password: ")
    if confirm and ask("password again: ") != password:
        raise FileClusterError("the two passwords differ")
    return password


def _register(c: Client) -> None:
    user = _ask("user name: ")
    password = _password(confirm=True)
    c.register(user, password)
    c.login(user, password)
    print(f"registered and logged in as {user}")


def _login(c: Client) -> None:
    user = _ask("user name: ")
    c.login(user, _password())
    print(f"logged in as {user}")


def _upload(c: Client) -> None:
    path = Path(_ask("path of the file to upload: "))
    with output.ProgressBars(path.name) as bars:
        r = c.upload(path, bars)
    print(f"uploaded {r.name}  size={r.size}  sha1={r.sha1}  sent={r.sent}")


def _list(c: Client) -> None:
    print(output.files_table(c.list()))


def _share(c: Client) -> None:
    print(c.share(_ask("name of your file to share: ")))


def _download(c: Client) -> None:
    target = _ask("link, or the name of one of your files: ")
    folder = _ask("folder [ClientFiles]: ") or "ClientFiles"
    with output.ProgressBars(target) as bars:
        r = c.download(target, Path(folder), bars)
    print(f"{'saved' if r.fetched else 'already there:'} {r.path}  size={r.size}  sha1={r.sha1}")


def _delete(c: Client) -> None:
    name = _ask("name of your file to delete: ")
    if _ask(f"delete {name!r}? [y/N] ").lower() in ("y", "yes"):
        c.delete(name)
        print(f"deleted {name}")


def _whoami(c: Client) -> None:
    print(c.whoami())


def _logout(c: Client) -> None:
    print("logged out" if c.logout() else "not logged in")


ACTIONS: list[tuple[str, Callable[[Client], None]]] = [
    ("register", _register),
    ("login", _login),
    ("upload a file", _upload),
    ("list my files", _list),
    ("share a file (sharelink)", _share),
    ("download a link or one of my files", _download),
    ("delete a file", _delete),
    ("storage servers status", lambda c: print(output.status_table(c.status()))),
    ("who am I", _whoami),
    ("logout", _logout),
]


def run_menu(client: Client) -> int:
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
        if choice in ("0", "q", "quit", "exit"):
            return 0
        if not choice.isdigit() or not 1 <= int(choice) <= len(ACTIONS):
            print(f"choose a number from 0 to {len(ACTIONS)}")
            continue
        try:
            ACTIONS[int(choice) - 1][1](client)
        except FileClusterError as exc:
            print(f"error: {exc}", file=sys.stderr)
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print("\ncancelled", file=sys.stderr)


__all__ = ["run_menu"]
