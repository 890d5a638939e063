"""Command lines whose usage errors are one line.

argparse answers a wrong command line with its whole usage (often three or four lines, wrapped)
and then the error.  Every filecluster command (the client, filecluster-admin, the daemons) says
instead, on one line of stderr, what is wrong and where to read more, and exits with status 2:

    filecluster upload: error: the following arguments are required: PATH (see: filecluster upload --help)

A value that starts with ``-`` (``upload -notes.txt``, ``quota bob -5G``) is taken by argparse
for an option it does not know, and it then complains of the argument that seems missing; the
error names the unknown option instead, and says that such a value goes after ``--``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, NoReturn


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` (its subcommands' parsers too) whose usage errors are one line."""

    _arguments: list[str] | None = None  # what this parser was last asked to parse

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> tuple[Any, list[str]]:
        self._arguments = None if args is None else list(args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        what = " ".join(message.split())  # argparse's messages are one line; a value's newline is not
        unknown = self._unknown_option() if what.startswith("the following arguments are required") else None
        if unknown is not None:
            shown = repr(unknown)[1:-1]  # a newline in it stays on the one line, as \n
            what = f"unrecognized option '{shown}' (a value that starts with '-' goes after '--')"
        more = "" if "(see: " in what else f" (see: {self.prog} --help)"  # it says where to look already
        self.exit(2, f"{self.prog}: error: {what}{more}\n")

    def _unknown_option(self) -> str | None:
        """The first argument that looks like an option this parser does not have, if any."""
        for arg in self._arguments or []:
            if arg == "--":
                return None
            if len(arg) < 2 or not arg.startswith(tuple(self.prefix_chars)) or self._is_known(arg):
                continue
            return arg
        return None

    def _is_known(self, arg: str) -> bool:
        known = self._option_string_actions
        name = arg.split("=", 1)[0]
        if name in known or (arg[1] not in self.prefix_chars and arg[:2] in known):  # -oFILE
            return True
        return arg[1] in self.prefix_chars and any(k.startswith(name) for k in known if len(k) > 2)
