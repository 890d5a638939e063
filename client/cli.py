"""``filecluster``: the command line.  It parses arguments and calls client.actions, which says
everything.  One clear line on stderr for any error, no traceback.

Exit status: 0 success, 1 an error, 2 a usage error, 130 interrupted, 143 terminated.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client import actions
from client.actions import Sink
from client.api import Client, is_link, moved_name
from client.listing import folder_of, rooted
from common.config import parse_address
from common.errors import FileClusterError, InvalidRequest, local_failure
from common.limits import MAX_DOWNLOADS
from common.names import check_file_name, check_user_name
from common.protocol import MAX_INT
from common.usage import OneLineParser

PACKAGE_VERSION = "0.1.0"  # pyproject's; used when the package is run from a source tree


def version() -> str:
    from importlib import metadata  # here, not at start-up: ~20 ms that only --version needs

    try:
        return metadata.version("filecluster")
    except metadata.PackageNotFoundError:
        return PACKAGE_VERSION


class _Version(argparse.Action):
    """``--version``: the version is looked up only when asked for, not by every command."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **_: Any) -> None:
        super().__init__(
            option_strings, dest, default=argparse.SUPPRESS, nargs=0, help="show the version and exit"
        )

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(f"filecluster {version()}")
        parser.exit()


Run = Callable[[Client, Sink, argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    name: str
    run: Run
    help: str
    examples: str
    aliases: tuple[str, ...] = ()


PROXY_HELP = (
    "the proxy, HOST:PORT (default: $FILECLUSTER_PROXY if set, else $FILECLUSTER_HOST (127.0.0.1) "
    "at $FILECLUSTER_PORT (9000))"
)


def _common(parser: argparse.ArgumentParser, top: bool) -> None:
    """Options every command takes, before or after its name (after it, they default to nothing, so
    one given before the command stands)."""
    flag = False if top else argparse.SUPPRESS
    parser.add_argument(
        "--json", action="store_true", default=flag, help="print JSON (exact bytes, UTC times)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", default=flag, help="no progress bars")
    parser.add_argument(
        "--proxy", metavar="HOST:PORT", default=None if top else argparse.SUPPRESS, help=PROXY_HELP
    )


def _run_completion(c: Client, out: Sink, a: argparse.Namespace) -> int:
    raise AssertionError("completion runs without a client")


def _run_menu(c: Client, out: Sink, a: argparse.Namespace) -> int:
    from client.menu import run_menu

    return run_menu(c)


COMMANDS = [
    Command(
        "register",
        lambda c, out, a: actions.register(c, out, a.user),
        "create an account and log in",
        "  filecluster register ana\n  FILECLUSTER_PASSWORD=... filecluster register ana   # no prompt",
    ),
    Command(
        "login",
        lambda c, out, a: actions.login(c, out, a.user),
        "log in (the password from FILECLUSTER_PASSWORD, else a prompt)",
        "  filecluster login ana",
    ),
    Command("logout", lambda c, out, a: actions.logout(c, out), "end the session", "  filecluster logout"),
    Command(
        "whoami",
        lambda c, out, a: actions.whoami(c, out),
        "show who is logged in, how much they store and their quota",
        "  filecluster whoami\n  filecluster whoami --json",
    ),
    Command(
        "upload",
        lambda c, out, a: actions.upload(c, out, a.paths, a.recursive, a.as_name),
        "upload files, or folders with -r (a name already there gets a new version)",
        "  filecluster upload report.pdf photos/*.jpg   # named report.pdf, a.jpg, ...\n"
        "  filecluster upload -r ~/pics                 # pics/2024/a.jpg, ...\n"
        "  filecluster upload notes.txt --as work/notes.txt",
    ),
    Command(
        "list",
        lambda c, out, a: actions.list_files(c, out, a.prefix, a.recursive, a.long),
        "list your files and folders, like ls",
        "  filecluster list              # the top: folders (with what is in them) and files\n"
        "  filecluster ls pics/2024      # one folder\n"
        "  filecluster ls -R -l pics     # every file under pics, with owner, versions, state, SHA-1",
        aliases=("ls",),
    ),
    Command(
        "share",
        lambda c, out, a: actions.share(c, out, a.name, a.expires, a.max_downloads),
        "make a new download link for one of your files or folders, and print it",
        "  filecluster share report.pdf                       # http://HOST:PORT/s/TOKEN\n"
        "  filecluster share report.pdf --expires 7d --max-downloads 3\n"
        "  filecluster share pics/2024 --expires 2026-12-31   # a folder: a listing page\n\n"
        "Each call makes another link; see them with: filecluster links.",
    ),
    Command(
        "links",
        lambda c, out, a: actions.links(c, out),
        "list your links: file, created, expires, downloads, state, link",
        "  filecluster links\n  filecluster links --json      # the links whole",
    ),
    Command(
        "unshare",
        lambda c, out, a: actions.unshare(c, out, a.target),
        "revoke a link (by link or token), or every link of a file or folder",
        "  filecluster unshare http://10.0.0.5:9080/s/TOKEN\n"
        "  filecluster unshare report.pdf   # all its links",
    ),
    Command(
        "download",
        lambda c, out, a: actions.download(c, out, a.targets, a.recursive, a.version, Path(a.output)),
        "download links or your files (by name), or folders with -r",
        "  filecluster download http://127.0.0.1:9080/s/TOKEN\n"
        "  filecluster download filecluster://127.0.0.1:9000/s/TOKEN\n"
        "  filecluster get report.pdf notes.txt -o ~/Downloads\n"
        "  filecluster get -r pics                      # ClientFiles/pics/2024/a.jpg, ...\n"
        "  filecluster get report.pdf --version 2       # an older version",
        aliases=("get",),
    ),
    Command(
        "delete",
        lambda c, out, a: actions.delete(c, out, a.names, a.recursive),
        "delete files (with every version), or folders with -r",
        "  filecluster delete report.pdf old.txt\n  filecluster rm -r pics/2023   # a folder and all in it",
        aliases=("rm",),
    ),
    Command(
        "mv",
        lambda c, out, a: actions.move(c, out, a.old, a.new),
        "rename or move a file or a folder (versions and share links follow)",
        "  filecluster mv report.pdf work/report.pdf\n  filecluster mv pics photos",
        aliases=("move", "rename"),
    ),
    Command(
        "versions",
        lambda c, out, a: actions.versions(c, out, a.name),
        "list the kept versions of a file, newest first",
        "  filecluster versions report.pdf",
    ),
    Command(
        "restore",
        lambda c, out, a: actions.restore(c, out, a.name, a.version),
        "make an older version current again (as a new version; nothing is lost)",
        "  filecluster restore report.pdf --version 2",
    ),
    Command(
        "status",
        lambda c, out, a: actions.status(c, out),
        "show the storage servers, the chunks' health and the free space",
        "  filecluster status\n  filecluster status >/dev/null || echo trouble\n\n"
        "Exit status 1 when a server is not up or a chunk is lost or unavailable.",
    ),
    Command("menu", _run_menu, "the interactive menu (also: no command at all)", "  filecluster menu"),
    Command(
        "completion",
        _run_completion,
        "print a shell completion script",
        "  source <(filecluster completion bash)      # in ~/.bashrc\n"
        "  source <(filecluster completion zsh)       # in ~/.zshrc, after compinit",
    ),
]


def _arguments(name: str, p: argparse.ArgumentParser) -> None:
    """Each command's own arguments."""
    recursive = ("-r", "-R", "--recursive")
    if name in ("register", "login"):
        p.add_argument("user", metavar="USER", help="user name: 1-32 letters, digits, '.', '_' or '-'")
    elif name == "upload":
        p.add_argument("paths", nargs="+", metavar="PATH", help="files to upload (folders with -r)")
        p.add_argument(
            *recursive,
            dest="recursive",
            action="store_true",
            help="upload folders with everything in them, named FOLDER/relative/path",
        )
        p.add_argument(
            "--as",
            dest="as_name",
            metavar="NAME",
            help="the name in the cluster (a path like work/a.txt) for a single PATH; with -r, the folder's",
        )
    elif name == "list":
        p.add_argument(
            "prefix", nargs="?", default="", metavar="FOLDER", help="the folder to list (default: all)"
        )
        p.add_argument("-R", "--recursive", action="store_true", help="every file under the folder, by path")
        p.add_argument(
            "-l", "--long", action="store_true", help="also owner, versions, state and SHA-1 (wider)"
        )
    elif name == "share":
        p.add_argument("name", metavar="NAME", help="one of your files or folders")
        p.add_argument(
            "--expires",
            metavar="WHEN",
            help="when the link stops: 30m, 24h, 7d, or a local date/time (2026-12-31, 2026-12-31T18:00)",
        )
        p.add_argument(
            "--max-downloads", type=int, metavar="N", help="at most N whole downloads (files only)"
        )
    elif name == "unshare":
        p.add_argument(
            "target", metavar="LINK|TOKEN|NAME", help="a link, its token, or a file (all its links)"
        )
    elif name == "versions":
        p.add_argument("name", metavar="NAME", help="the name of one of your files")
    elif name == "download":
        p.add_argument(
            "targets",
            nargs="+",
            metavar="TARGET",
            help="a link (http://HOST:PORT/s/TOKEN or filecluster://HOST:PORT/s/TOKEN), a bare token, "
            "or one of your files by name",
        )
        p.add_argument(
            *recursive,
            dest="recursive",
            action="store_true",
            help="TARGETs are folders: download all of them",
        )
        p.add_argument("--version", type=int, metavar="N", help="an older version of a single file")
        p.add_argument(
            "-o",
            "--output",
            default=actions.DEFAULT_FOLDER,
            metavar="DIR",
            help="folder to save to (default: ./ClientFiles)",
        )
    elif name == "delete":
        p.add_argument("names", nargs="+", metavar="NAME", help="your files (folders with -r)")
        p.add_argument(
            *recursive, dest="recursive", action="store_true", help="delete folders and everything in them"
        )
    elif name == "mv":
        p.add_argument("old", metavar="OLD", help="a file or folder of yours")
        p.add_argument("new", metavar="NEW", help="its new name (no file or folder may have it)")
    elif name == "restore":
        p.add_argument("name", metavar="NAME", help="the name of one of your files")
        p.add_argument(
            "--version", type=int, required=True, metavar="N", help="the version to restore (see versions)"
        )
    elif name == "completion":
        p.add_argument("shell", choices=("bash", "zsh"), help="the shell to complete for")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; ``only``: a command's name or alias, whose parser is then the only
    one built (what parsing its arguments needs: a command starts ~7 ms sooner)."""
    parser = OneLineParser(
        prog="filecluster",
        description="A small self-hosted file cluster. With no command, opens the menu.",
        epilog="Run 'filecluster COMMAND --help' for a command's options and examples.\n"
        "Exit status: 0 success, 1 an error, 2 a usage error, 130 interrupted.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version)
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for command in COMMANDS:
        if only is not None and only != command.name and only not in command.aliases:
            continue
        p = sub.add_parser(
            command.name,
            aliases=list(command.aliases),
            help=command.help,
            description=command.help,
            epilog="examples:\n" + command.examples,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _arguments(command.name, p)
        _common(p, top=False)
        p.set_defaults(run=command.run, command_name=command.name)
    return parser


def command_names(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every command name and alias, with its parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def command_word(argv: Sequence[str]) -> str:
    """The word of ``argv`` that names the command ("" if none does)."""
    words = iter(argv)
    for word in words:
        if word == "--proxy":
            next(words, None)
        elif word == "--":
            return next(words, "")
        elif not word.startswith("-"):
            return word
    return ""


GLUED = ("--expires", "--as")  # options whose value may start with "-": "--expires -5d", "--as -draft.txt"


def glued(argv: list[str]) -> list[str]:
    """``argv`` with ``--expires -5d`` as ``--expires=-5d``: argparse would take a value that starts
    with "-" for an option and say "expected one argument", not what is wrong with the value."""
    out: list[str] = []
    words = iter(argv)
    for word in words:
        if word == "--":
            out += [word, *words]
            break
        if word in GLUED:
            value = next(words, None)
            if value is not None and value.startswith("-") and value != "--" and not value.startswith("--"):
                out.append(f"{word}={value}")
                continue
            out.append(word)
            if value is not None:
                out.append(value)
            continue
        out.append(word)
    return out


def _known(word: str) -> bool:
    return any(word == c.name or word in c.aliases for c in COMMANDS)


def _check_command(parser: argparse.ArgumentParser, word: str) -> None:
    """An unknown command (``word``, from command_word) gets a suggestion ("did you mean ...?") and
    exit status 2."""
    known = command_names(parser)
    if word and word not in known:
        import difflib  # only for a mistyped command

        close = difflib.get_close_matches(word, list(known), n=1)
        hint = (
            f" (did you mean '{close[0]}'?)"
            if close
            else f"; commands: {', '.join(c.name for c in COMMANDS)}"
        )
        parser.error(f"unknown command '{word}'{hint}")


def usage_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the values of a command's options, said before anything is asked of the
    cluster (a usage error: exit status 2), or None."""
    name = getattr(args, "command_name", None)
    if getattr(args, "proxy", None) is not None:
        try:
            parse_address(args.proxy)
        except InvalidRequest as exc:
            return f"--proxy: {exc}"
    for dest, metavar in _NAMED:
        values = getattr(args, dest, None)
        for value in values if isinstance(values, list) else [values]:
            if isinstance(value, str) and (not value if dest == "paths" else not value.strip()):
                return f"{metavar}: {value!r} names nothing"  # a local file may be named " ", no file of ours
    if name == "mv":
        try:
            check_file_name(moved_name(args.old, args.new), new=True)
        except InvalidRequest as exc:
            return f"NEW: {exc}"
    if name == "upload" and args.as_name is not None:
        if len(args.paths) != 1:
            return "--as names a single PATH"
        return _as_problem(args.as_name, args.recursive and os.path.isdir(args.paths[0]))
    if name in ("register", "login"):
        try:
            check_user_name(args.user)
        except InvalidRequest as exc:
            return f"{args.user!r}: {exc}"
    if name in ("download", "restore") and args.version is not None and not 1 <= args.version <= MAX_INT:
        why = "versions are numbered from 1" if args.version < 1 else "no file has that many versions"
        return f"--version {args.version}: {why} (see: filecluster versions NAME)"
    if name == "download" and not args.output.strip():
        return "-o: name a folder to save to (-o . for this one)"
    if name == "download" and args.version is not None and (args.recursive or len(args.targets) != 1):
        return "--version takes a single file name"
    if name == "download" and args.version is not None and is_link(args.targets[0]):
        return "--version: a link always gives the current version; name one of your files"
    if name == "share":
        if args.max_downloads is not None and not 1 <= args.max_downloads <= MAX_DOWNLOADS:
            return f"--max-downloads {args.max_downloads}: it must be 1 to {MAX_DOWNLOADS:,}"
        if args.expires is not None:
            from client.expiry import parse_expires

            try:
                parse_expires(args.expires)
            except InvalidRequest as exc:
                return str(exc)
    return None


# the positional arguments that name a file, folder, link or path: never empty or only white space
_NAMED = (
    ("paths", "PATH"),
    ("targets", "TARGET"),
    ("names", "NAME"),
    ("name", "NAME"),
    ("target", "TARGET"),
    ("old", "OLD"),
    ("new", "NEW"),
)


def _as_problem(as_name: str, folder: bool) -> str | None:
    """What is wrong with ``--as NAME``: a file's name, or (``folder``) the folder's in the cluster."""
    name = folder_of(as_name) if folder else as_name
    if folder and not name:
        return f"--as {as_name!r}: give the folder a name in the cluster (--as NAME)"
    try:
        check_file_name(name, new=True)
    except InvalidRequest as exc:
        return f"--as: {exc}"
    return None


class Terminated(BaseException):
    """SIGTERM: unwind (an upload aborts, a download removes its temp file), then exit 143.
    Not a KeyboardInterrupt, so the menu's Ctrl-C handling cannot swallow it."""


def _interrupt_on_sigterm() -> None:
    def handler(signum: int, frame: object) -> None:
        raise Terminated

    signal.signal(signal.SIGTERM, handler)


def main_failed(exc: FileClusterError, out: Sink) -> int:
    """Say why the command failed, in one line (and in JSON mode a document on stdout too)."""
    print(f"error: {exc}", file=sys.stderr)
    if out.json:  # a script reading stdout gets a document too
        out.emit({"error": str(exc)})
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = glued(list(sys.argv[1:] if argv is None else argv))
    word = command_word(argv)
    # a known command: only its parser (completion describes them all); else all, to say what is wrong
    parser = build_parser(word if _known(word) and word != "completion" else None)
    _check_command(parser, word)
    args, extra = parser.parse_known_args(argv)
    name = getattr(args, "command_name", None)
    command = command_names(parser).get(word, parser) if name else parser  # says its own usage
    if extra:
        command.error(f"unrecognized arguments: {' '.join(extra)}")
    if name == "completion":
        from client import completion

        print(completion.script(parser, args.shell), end="")
        return 0
    if name == "upload" and args.as_name is not None:
        args.as_name = rooted(args.as_name)  # "--as /docs/a.txt": from the top level, as every name
    problem = usage_problem(args)
    if problem:
        command.error(problem)
    out = Sink(json_mode=args.json, progress=not args.quiet)
    try:
        _interrupt_on_sigterm()
        with Client.from_environment(args.proxy) as client:
            status = args.run(client, out, args) if name else _run_menu(client, out, args)
        sys.stdout.flush()  # a reader that has gone away shows up here, not at exit
        return int(status)
    except FileClusterError as exc:
        return main_failed(exc, out)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except EOFError:  # Ctrl-D (or no more input) where a question was asked: a password
        print("\ncancelled: no answer (end of input)", file=sys.stderr)
        return 1
    except Terminated:
        print("terminated", file=sys.stderr)
        return 143
    except BrokenPipeError:  # `filecluster list | head`: nobody reads the rest, and nothing to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # what is still buffered goes nowhere, without a complaint
        os.close(devnull)
        return 1
    except OSError as exc:  # a local file or folder no more particular message caught: still one line
        return main_failed(local_failure(exc), out)
