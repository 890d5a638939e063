"""``filecluster``: the command line.  One clear line on stderr for any error, no traceback.

Exit status: 0 success, 1 an error, 2 a usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from client import output
from client.api import Client
from common.errors import FileClusterError, InvalidRequest

PASSWORD_ENV = "FILECLUSTER_PASSWORD"


def read_password(confirm: bool = False) -> str:
    password = os.environ.get(PASSWORD_ENV)
    if password is not None:
        return password
    if not sys.stdin.isatty():
        raise InvalidRequest(f"no password: set {PASSWORD_ENV} or run on a terminal")
    password = getpass.getpass("password: ")
    if confirm and getpass.getpass("password again: ") != password:
        raise InvalidRequest("the two passwords differ")
    return password


def cmd_register(c: Client, a: argparse.Namespace) -> int:
    password = read_password(confirm=True)
    c.register(a.user, password)
    c.login(a.user, password)
    print(f"registered and logged in as {a.user}")
    return 0


def cmd_login(c: Client, a: argparse.Namespace) -> int:
    c.login(a.user, read_password())
    print(f"logged in as {a.user}")
    return 0


def cmd_logout(c: Client, a: argparse.Namespace) -> int:
    print("logged out" if c.logout() else "not logged in")
    return 0


def cmd_whoami(c: Client, a: argparse.Namespace) -> int:
    print(c.whoami())
    return 0


def cmd_upload(c: Client, a: argparse.Namespace) -> int:
    failed = 0
    for raw in a.paths:
        path = Path(raw)
        try:
            with output.ProgressBars(path.name) as bars:
                r = c.upload(path, bars)
        except FileClusterError as exc:
            if len(a.paths) == 1:
                raise
            print(f"error: {raw}: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"uploaded {r.name}  size={r.size}  sha1={r.sha1}  sent={r.sent}")
    return 1 if failed else 0


def cmd_list(c: Client, a: argparse.Namespace) -> int:
    files = c.list()
    if a.json:
        print(json.dumps(output.files_json(files), ensure_ascii=False, indent=2))
    else:
        print(output.files_table(files))
    return 0


def cmd_share(c: Client, a: argparse.Namespace) -> int:
    print(c.share(a.name))
    return 0


def cmd_download(c: Client, a: argparse.Namespace) -> int:
    with output.ProgressBars(a.target) as bars:
        r = c.download(a.target, Path(a.output), bars)
    if not r.fetched:
        print(f"already there: {r.path}  size={r.size}  sha1={r.sha1}")
    else:
        note = "" if r.path.name == r.name else f"  (a different {r.name} was already there)"
        print(f"saved {r.path}  size={r.size}  sha1={r.sha1}{note}")
    return 0


def cmd_delete(c: Client, a: argparse.Namespace) -> int:
    c.delete(a.name)
    print(f"deleted {a.name}")
    return 0


def cmd_status(c: Client, a: argparse.Namespace) -> int:
    """Exit status 1 if a server is not up or a chunk is lost or unavailable (the output says which)."""
    status = c.status()
    if a.json:
        print(json.dumps(output.status_json(status), ensure_ascii=False, indent=2))
    else:
        print(output.status_table(status))
    return 0 if output.cluster_sound(status) else 1


def cmd_menu(c: Client, a: argparse.Namespace) -> int:
    from client.menu import run_menu

    return run_menu(c)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="filecluster", description="A small self-hosted file cluster. With no command, opens the menu."
    )
    parser.add_argument(
        "--proxy", default=None, help="proxy HOST:PORT (default: FILECLUSTER_PROXY or 127.0.0.1:9000)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(
        name: str, func: Callable[[Client, argparse.Namespace], int], help_text: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    add("register", cmd_register, "create an account and log in").add_argument("user")
    add("login", cmd_login, "log in (password from FILECLUSTER_PASSWORD or a prompt)").add_argument("user")
    add("logout", cmd_logout, "end the session")
    add("whoami", cmd_whoami, "print the logged-in user")
    add("upload", cmd_upload, "upload files (the name in the cluster is the base name)").add_argument(
        "paths", nargs="+", metavar="PATH"
    )
    p = add("list", cmd_list, "list your files")
    p.add_argument("--json", action="store_true", help="a JSON array instead of a table")
    add("share", cmd_share, "print a download link for one of your files").add_argument("name")
    p = add("download", cmd_download, "download a shared link, or one of your files by name")
    p.add_argument("target", metavar="LINK_OR_NAME")
    p.add_argument("-o", "--output", default="ClientFiles", help="folder (default: ./ClientFiles)")
    add("delete", cmd_delete, "delete one of your files").add_argument("name")
    p = add("status", cmd_status, "show the storage servers and the chunks' health")
    p.add_argument("--json", action="store_true", help="the proxy's figures as a JSON object")
    p.epilog = "Exit status 1 when a server is not up or a chunk is lost or unavailable."
    add("menu", cmd_menu, "the interactive menu")
    return parser


class Terminated(BaseException):
    """SIGTERM: unwind (an upload aborts, a download removes its temp file), then exit 143.
    Not a KeyboardInterrupt, so the menu's Ctrl-C handling cannot swallow it."""


def _interrupt_on_sigterm() -> None:
    def handler(signum: int, frame: object) -> None:
        raise Terminated

    signal.signal(signal.SIGTERM, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _interrupt_on_sigterm()
        with Client.from_environment(args.proxy) as client:
            func = args.func if args.command else cmd_menu
            status = func(client, args)
        sys.stdout.flush()  # a reader that has gone away shows up here, not at exit
        return status
    except FileClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated", file=sys.stderr)
        return 143
    except BrokenPipeError:  # `filecluster list | head`: nobody reads the rest, and nothing to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # what is still buffered goes nowhere, without a complaint
        os.close(devnull)
        return 1
