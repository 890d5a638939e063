"""Command lines whose usage errors are one line.

argparse answers a wrong command line with its whole usage (often three or four lines, wrapped)
and then the error.  Every filecluster command (the client, filecluster-admin, the daemons) says
instead, on one line of stderr, what is wrong and where to read more, and exits with status 2:

    filecluster upload: error: the following arguments are required: PATH (see: filecluster upload --help)
"""

from __future__ import annotations

import argparse
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` (its subcommands' parsers too) whose usage errors are one line."""

    def error(self, message: str) -> NoReturn:
        what = " ".join(message.split())  # argparse's messages are one line; a value's newline is not
        more = "" if "(see: " in what else f" (see: {self.prog} --help)"  # it says where to look already
        self.exit(2, f"{self.prog}: error: {what}{more}\n")
