"""Command-line presentation: tables, sizes, times and progress bars (tqdm, tabulate live here)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from tabulate import tabulate
from tqdm import tqdm


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def iso_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def local_time(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def files_table(files: list[dict[str, Any]]) -> str:
    if not files:
        return "no files"
    rows = [[f["name"], f["owner"], f["size"], f["sha1"], local_time(f["uploaded"])] for f in files]
    return tabulate(
        rows,
        headers=["name", "owner", "size", "sha1", "uploaded"],
        colalign=("left", "left", "right", "left", "left"),
        preserve_whitespace=True,  # a name's leading or trailing spaces are part of it
    )


def files_json(files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "name": f["name"],
            "owner": f["owner"],
            "size": f["size"],
            "sha1": f["sha1"],
            "uploaded": iso_time(f["uploaded"]),
        }
        for f in files
    ]


def status_table(status: dict[str, Any]) -> str:
    rows = [
        [s["id"], f"{s['host']}:{s['port']}", "up" if s["up"] else "DOWN", s["chunks"], human_size(s["used"])]
        for s in status["servers"]
    ]
    table = tabulate(rows, headers=["id", "address", "state", "chunks", "used"])
    up = sum(1 for s in status["servers"] if s["up"])
    return (
        f"{table}\n{up} of {len(status['servers'])} storage servers up; "
        f"{status['replicas']} copies of every chunk, {human_size(status['chunk_size'])} chunks"
    )


class ProgressBars:
    """A progress callback that shows one tqdm bar per phase, only on a terminal."""

    def __init__(self, label: str, enabled: bool | None = None) -> None:
        self.label = label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bar: Any = None
        self._phase = ""

    def __call__(self, phase: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if phase != self._phase:
            self.close()
            self._phase = phase
            self._bar = tqdm(
                total=total,
                desc=f"{phase} {self.label}",
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                leave=False,
                file=sys.stderr,
            )
        self._bar.n = done
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Callable[[str, int, int], None]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
