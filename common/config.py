"""Defaults and environment settings shared by every process."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Final

from common.errors import InvalidRequest

DEFAULT_PROXY_PORT: Final = 9000
DEFAULT_SERVERS: Final = 4
DEFAULT_CHUNK_SIZE: Final = 4 * 1024 * 1024
MIN_CHUNK_SIZE: Final = 64 * 1024
MAX_CHUNK_SIZE: Final = 64 * 1024 * 1024
DEFAULT_REPLICAS: Final = 2
HEARTBEAT_INTERVAL: Final = 2.0
PARALLEL_TRANSFERS: Final = 4
LINK_SCHEME: Final = "filecluster"
TRANSFER_DEADLINE_BASE: Final = 120.0  # seconds: a whole upload or download gets this...
TRANSFER_MIN_RATE: Final = 1024 * 1024  # ...plus a second per this many bytes of its file


def data_dir() -> Path:
    return Path(os.environ.get("FILECLUSTER_DATA", "./data"))


def client_home() -> Path:
    return Path(os.environ.get("FILECLUSTER_HOME", str(Path.home() / ".filecluster")))


def _is_number(text: str) -> bool:
    """1 to 5 ASCII digits: str.isdigit() is also true of "²" and of 5000 nines, which int() refuses."""
    return re.fullmatch(r"[0-9]{1,5}", text) is not None


_NOT_IN_A_HOST = re.compile(r"[\s/?#@\\]")  # a path, a query, a user, a space: a URL or a typo


def parse_address(text: str, default_port: int = DEFAULT_PROXY_PORT) -> tuple[str, int]:
    """``HOST:PORT`` (or ``HOST``, or ``[v6]:PORT``) into a pair; a clear error otherwise."""
    text = text.strip()
    if not text:
        raise InvalidRequest("invalid address '': nothing given; expected HOST:PORT")
    if "://" in text:  # http://…, filecluster://…: the proxy speaks its own protocol, not a URL's
        raise InvalidRequest(f"invalid address {text!r}: expected HOST:PORT, not a URL")
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = text, str(default_port)
    host = host.strip("[]")
    if not host or _NOT_IN_A_HOST.search(host) or not _is_number(port_text) or not 0 < int(port_text) < 65536:
        raise InvalidRequest(f"invalid address {text!r}: expected HOST:PORT")
    return host, int(port_text)


def proxy_port() -> int:
    raw = os.environ.get("FILECLUSTER_PORT", str(DEFAULT_PROXY_PORT))
    if not _is_number(raw) or not 0 <= int(raw) < 65536:
        raise InvalidRequest(f"FILECLUSTER_PORT must be a port number, not {raw!r}")
    return int(raw)


def cluster_host() -> str:
    """FILECLUSTER_HOST: the address ./run_cluster.sh's daemons listen on and advertise (127.0.0.1)."""
    return os.environ.get("FILECLUSTER_HOST", "").strip() or "127.0.0.1"


def source_address() -> str | None:
    """FILECLUSTER_SOURCE_ADDRESS: the local address a client connects from (a host with several)."""
    return os.environ.get("FILECLUSTER_SOURCE_ADDRESS") or None


def proxy_address(override: str | None = None) -> tuple[str, int]:
    """``--proxy``, else FILECLUSTER_PROXY, else FILECLUSTER_HOST (127.0.0.1) at FILECLUSTER_PORT (9000)."""
    if override is not None:  # given, even empty: never silently another
        return parse_address(override)
    return parse_address(os.environ.get("FILECLUSTER_PROXY") or f"{cluster_host()}:{proxy_port()}")


def _seconds_setting(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise InvalidRequest(f"{name} must be a number of seconds, not {raw!r}")
    return seconds


def read_timeout(default: float) -> float:
    """Seconds a storage server may stay silent during a download before its copies are tried last
    (FILECLUSTER_READ_TIMEOUT, else ``default``): short, since every chunk has another copy."""
    return _seconds_setting("FILECLUSTER_READ_TIMEOUT", default)


def transfer_deadline(size: int) -> float:
    """Seconds a whole upload or download of ``size`` bytes may take before it is abandoned:
    ``TRANSFER_DEADLINE_BASE`` plus a second per ``TRANSFER_MIN_RATE`` bytes (120 s + 1 s per MiB),
    unless FILECLUSTER_TRANSFER_DEADLINE gives the seconds outright (for a very slow link)."""
    return _seconds_setting(
        "FILECLUSTER_TRANSFER_DEADLINE", TRANSFER_DEADLINE_BASE + size / TRANSFER_MIN_RATE
    )
