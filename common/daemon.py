"""What both daemons share when run from the command line: logging, signals, the ready line."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType


def setup_logging(name: str, verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format=f"%(asctime)s {name} %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def wait_for_signal() -> None:
    """Block until SIGTERM or SIGINT."""
    done = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while not done.wait(3600):
        pass


def announce(what: str, host: str, port: int) -> None:
    """The one line on stdout that says the daemon is ready, and where (tests read it)."""
    print(f"{what} listening on {host}:{port}", flush=True)


def run_daemon(what: str, run: Callable[[], int]) -> int:
    """Run a daemon's main loop; a failure to start (port taken, folder unwritable) is one line."""
    try:
        return run()
    except OSError as exc:
        print(f"error: cannot start the {what}: {exc.strerror or exc}", file=sys.stderr)
        return 1
