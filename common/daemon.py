"""What both daemons share when run from the command line: logging, signals, the ready line,
the cluster secret, and the watchdog that ends a daemon with the process it serves."""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import re
import signal
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from common.cluster_auth import ClusterKey, parse_secret
from common.config import data_dir
from common.errors import InvalidRequest
from common.limits import ServerLimits
from common.sizes import parse_size

SECRET_ENV = "FILECLUSTER_SECRET_FILE"
EXIT_WITH_ENV = "FILECLUSTER_EXIT_WITH"
SECRET_FILE = "cluster.secret"

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """A positive duration: seconds, or a number with a unit: ``90``, ``90s``, ``15m``, ``12h``, ``7d``."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*", text)
    if match is None or float(match[1]) <= 0:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: expected e.g. 3600, 90s, 15m, 12h or 7d"
        )
    return float(match[1]) * _UNITS[match[2]]


def quota_size(text: str) -> int | None:
    """A size for an option: bytes, ``500M``, ``10G``, ``1T``, or None for ``unlimited``."""
    try:
        return parse_size(text)
    except InvalidRequest as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_secret_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--secret-file",
        type=Path,
        default=None,
        help=f"the cluster secret, 64 hex characters in a file only its owner can read "
        f"(default: ${SECRET_ENV}, else $FILECLUSTER_DATA/{SECRET_FILE}; ./run_cluster.sh creates it)",
    )


def secret_path(override: Path | None) -> Path:
    if override is not None:
        return override
    env = os.environ.get(SECRET_ENV)
    return Path(env) if env else data_dir() / SECRET_FILE


def load_cluster_key(path: Path) -> ClusterKey:
    """The cluster key from the secret file; a missing, unreadable or exposed file is one clear line."""
    try:
        info = path.stat()
        text = path.read_text()
    except FileNotFoundError:
        raise InvalidRequest(
            f"no cluster secret at {path}: ./run_cluster.sh creates one, or write 64 hex characters "
            f"there (mode 0600), e.g. python3 -c 'import secrets; print(secrets.token_hex(32))'"
        ) from None
    except OSError as exc:
        raise InvalidRequest(f"cannot read the cluster secret {path}: {exc.strerror or exc}") from None
    try:
        secret = parse_secret(text)
    except InvalidRequest as exc:  # a mistyped path (/etc/passwd) is no secret: no chmod advice for it
        raise InvalidRequest(f"{path} is not a cluster secret: {exc}") from None
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise InvalidRequest(f"the cluster secret {path} is readable by others: chmod 600 {path}")
    return ClusterKey(secret)


def setup_logging(name: str, verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format=f"%(asctime)s {name} %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def exit_with() -> int | None:
    """FILECLUSTER_EXIT_WITH=PID: the process whose end also ends this daemon, or None.

    For tests: ./run_cluster.sh starts daemons in a session of their own, out of reach of the
    parent-death signal a test gives what it starts; this way they still end with the test run."""
    raw = os.environ.get(EXIT_WITH_ENV, "").strip()
    if not raw:
        return None
    if not re.fullmatch(r"[0-9]{1,9}", raw) or int(raw) < 1:
        raise InvalidRequest(f"{EXIT_WITH_ENV} must be a process id, not {raw!r}")
    return int(raw)


def process_alive(pid: int) -> bool:
    """Does process ``pid`` run?  A zombie (ended, not yet reaped by its parent) does not."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        if Path("/proc/self").is_dir():
            return False
    except (OSError, IndexError):
        pass
    try:  # no /proc here: ask the kernel (which counts a zombie as a process)
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def wait_for_signal() -> None:
    """Block until SIGTERM or SIGINT, or until the FILECLUSTER_EXIT_WITH process is gone.

    Python runs a signal handler in the main thread, between bytecodes; but the kernel may deliver
    the signal to any thread, and then nothing interrupts what the main thread waits for.  So it
    sleeps a quarter of a second at a time: the handler runs that soon however the signal came (a
    wait of an hour let a daemon with busy threads ignore SIGTERM for that hour).  The handler only
    sets a flag: taking a lock there could deadlock with the code it interrupted."""
    received: list[int] = []

    def _stop(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    watched = exit_with()
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while not received:
        if watched is not None and not process_alive(watched):
            logging.getLogger(__name__).info("process %d is gone (%s): stopping", watched, EXIT_WITH_ENV)
            return
        time.sleep(0.25)


def announce(what: str, host: str, port: int) -> None:
    """The one line on stdout that says the daemon is ready, and where (tests and ./run_cluster.sh
    read it).  One write, so a log line from another thread cannot land inside it."""
    sys.stdout.write(f"{what} listening on {host}:{port}\n")
    sys.stdout.flush()


# glibc's mallopt parameter: allocations of at least this many bytes get their own mapping
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024


def give_back_big_buffers() -> None:
    """Have glibc map every allocation of 128 KiB or more on its own, so it returns to the OS when
    freed.  By default glibc raises that threshold to the size of the biggest buffer freed so far
    (up to 32 MiB), after which big header buffers and parsed headers are carved from per-thread
    heaps that keep their pages: 16 connections sending 4.6 MB headers one after the other then
    leave the proxy ~60 MiB bigger for good.  Setting the threshold turns that adjustment off.
    Elsewhere than glibc this does nothing."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def run_daemon(what: str, run: Callable[[], int]) -> int:
    """Run a daemon's main loop; a failure to start (port taken, no secret...) is one line."""
    give_back_big_buffers()
    try:
        exit_with()  # a bad FILECLUSTER_EXIT_WITH is refused before anything starts
        return run()
    except OSError as exc:
        print(f"error: cannot start the {what}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except InvalidRequest as exc:
        print(f"error: cannot start the {what}: {exc}", file=sys.stderr)
        return 1


def add_limit_options(parser: argparse.ArgumentParser) -> None:
    """Hidden options to change a daemon's resource limits (common.limits), for tests and trials."""
    defaults = ServerLimits()
    for option, default in (
        ("--max-connections", defaults.max_connections),
        ("--connections-per-address", defaults.per_address),
        ("--reserved-connections", defaults.reserved),
    ):
        parser.add_argument(option, type=int, default=default, help=argparse.SUPPRESS)
    for option, seconds in (
        ("--head-deadline", defaults.head_deadline),
        ("--payload-deadline", defaults.payload_deadline),
    ):
        parser.add_argument(option, type=float, default=seconds, help=argparse.SUPPRESS)


def server_limits(args: argparse.Namespace) -> ServerLimits:
    """The limits the options ask for (InvalidRequest, one line from run_daemon, if they make no sense)."""
    return ServerLimits(
        max_connections=args.max_connections,
        per_address=args.connections_per_address,
        reserved=args.reserved_connections,
        head_deadline=args.head_deadline,
        payload_deadline=args.payload_deadline,
    )
