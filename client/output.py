"""Command-line presentation: tables, sizes, times and progress bars (tqdm, tabulate live here)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from tabulate import tabulate
from tqdm import tqdm

WIDTH = 80  # status's summary lines wrap at this width


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
    headers = ["name", "owner", "size", "sha1", "uploaded"]
    align = ["left", "left", "right", "left", "left"]
    if any(f.get("state", "ok") != "ok" for f in files):  # a file not whole right now says so
        for row, f in zip(rows, files, strict=True):
            row.append(FILE_STATES.get(f.get("state", "ok"), f.get("state", "")))
        headers.append("state")
        align.append("left")
    return tabulate(
        rows,
        headers=headers,
        colalign=align,
        preserve_whitespace=True,  # a name's leading or trailing spaces are part of it
    )


# a file's state, as LIST gives it: shown only when some file is not "ok"
FILE_STATES = {
    "ok": "ok",
    "degraded": "degraded (repairing)",
    "unavailable": "UNAVAILABLE (servers down)",
    "lost": "LOST",
}


def files_json(files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "name": f["name"],
            "owner": f["owner"],
            "size": f["size"],
            "sha1": f["sha1"],
            "uploaded": iso_time(f["uploaded"]),
            **({"state": f["state"]} if "state" in f else {}),
        }
        for f in files
    ]


def since(seconds: float) -> str:
    """A duration in its largest whole unit: "0s", "45s", "12m", "3h", "2d"."""
    s = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


# how a server's state shows in the table: the states an operator must look at are in capitals
_STATE_SHOWN = {"up": "up", "down": "DOWN", "dead": "DEAD", "draining": "draining", "drained": "drained"}


def _server_row(s: dict[str, Any]) -> list[Any]:
    state = s.get("state") or "up"  # older proxies send only `up`
    if not s.get("up") and state not in ("down", "dead"):
        state = "down"  # it did not answer the proxy just now, whatever its heartbeats last said
    free, seen, quarantined = s.get("free"), s.get("last_seen"), s.get("quarantined")
    return [
        s["id"],
        f"{s['host']}:{s['port']}",
        _STATE_SHOWN.get(state, state),
        s["chunks"] if isinstance(s.get("chunks"), int) else "-",
        human_size(s["used"]) if isinstance(s.get("used"), int) else "-",
        human_size(free) if isinstance(free, int) else "-",
        f"{since(seen)} ago" if isinstance(seen, (int, float)) else "-",
        quarantined if isinstance(quarantined, int) else "-",
    ]


def _listed(phrases: list[str]) -> str:
    """Phrases joined with commas, wrapped between phrases (never inside one) at :data:`WIDTH`."""
    lines = [phrases[0]]
    for phrase in phrases[1:]:
        if len(lines[-1]) + 2 + len(phrase) > WIDTH:
            lines[-1] += ","
            lines.append("  " + phrase)
        else:
            lines[-1] += ", " + phrase
    return "\n".join(lines)


def _health_lines(health: dict[str, Any], some_down: bool) -> list[str]:
    lines = []
    if "chunks" in health:
        counts = [
            f"chunks: {health.get('healthy', 0)} healthy",
            f"{health.get('under_replicated', 0)} under-replicated",
            f"{health.get('unavailable', 0)} unavailable",
            f"{health.get('lost', 0)} LOST",
        ]
        if health.get("over_replicated"):
            counts.append(f"{health['over_replicated']} over-replicated")
        lines.append(_listed(counts))
    else:
        lines.append("chunks: not checked yet (no repair round so far)")
    repair = health.get("repair")
    if isinstance(repair, dict):
        work = [f"repair: {repair.get('queued', 0)} queued", f"{repair.get('running', 0)} running"]
        if repair.get("failed"):
            work.append(f"{repair['failed']} failed")
        work.append(
            f"{repair.get('copies_made', 0)} copies made ({human_size(repair.get('bytes_copied', 0))})"
        )
        rate = repair.get("rate") or 0
        work.append(f"rate limit {human_size(int(rate))}/s" if rate > 0 else "no rate limit")
        lines.append(_listed(work))
        grace = repair.get("grace")
        if some_down and isinstance(grace, (int, float)):
            lines.append(f"a server down for {since(grace)} counts as dead: repair then replaces its copies")
    return lines


def _aligned(headers: list[str], rows: list[list[str]], align: tuple[str, ...]) -> str:
    """Columns two spaces apart under a rule of dashes, each as wide as its widest cell (tabulate's
    own headers widen every column by two, which an 80-column table cannot spare)."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    rule = ["-" * w for w in widths]
    return tabulate([headers, rule, *rows], tablefmt="plain", colalign=align, disable_numparse=True)


def status_table(status: dict[str, Any]) -> str:
    """The STATUS reply for a person: one row per storage server, then the cluster's health.
    Every field but a server's id, host and port may be missing (older proxies send fewer)."""
    servers = status["servers"]
    table = _aligned(
        ["id", "address", "state", "chunks", "used", "free", "seen", "quarantined"],
        [[str(cell) for cell in _server_row(s)] for s in servers],
        ("right", "left", "left", "right", "right", "right", "right", "right"),
    )
    up = sum(1 for s in servers if s.get("up"))
    lines = [
        table,
        f"{up} of {len(servers)} storage servers up; "
        f"{status['replicas']} copies of every chunk, {human_size(status['chunk_size'])} chunks",
    ]
    health = status.get("health")
    if isinstance(health, dict):
        lines += _health_lines(health, any(s.get("state") == "down" for s in servers))
    return "\n".join(lines)


def status_json(status: dict[str, Any]) -> dict[str, Any]:
    """What ``status --json`` prints: the proxy's reply as it came (it is plain JSON already)."""
    return status


def cluster_sound(status: dict[str, Any]) -> bool:
    """Every server up and no chunk lost or unavailable: what ``status`` exits 0 for."""
    health = status.get("health")
    health = health if isinstance(health, dict) else {}
    return (
        all(s.get("up") for s in status["servers"])
        and not health.get("lost")
        and not health.get("unavailable")
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
