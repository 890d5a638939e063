"""Command-line presentation: tables, sizes, times and progress bars (tqdm, tabulate live here)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from client.listing import Entry
from common.sizes import human_size as human_size  # sizes in tables and messages alike

WIDTH = 80  # status's summary lines wrap at this width
ELLIPSIS = "…"


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 file``, ``2 files``, ``0 files``."""
    return f"{n} {word if n == 1 else many or word + 's'}"


def iso_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def local_time(epoch: float) -> str:
    """Local time with its offset from UTC, to the minute: ``2024-05-01 14:03 +0200``."""
    return time.strftime("%Y-%m-%d %H:%M %z", time.localtime(epoch))


def display_width(text: str) -> int:
    """Columns ``text`` takes on a terminal (East Asian wide characters take two)."""
    from wcwidth import wcswidth  # tabulate, tqdm and wcwidth load when first used (~35 ms at start-up)

    width = wcswidth(text)
    return width if width >= 0 else len(text)


def shorten(text: str, width: int) -> str:
    """``text`` cut in the middle with an ellipsis so that it takes at most ``width`` columns (the
    end, where a file name's extension is, keeps half of them)."""
    if display_width(text) <= width:
        return text
    room = max(width, 2) - 1
    tail_room, head_room = room // 2, room - room // 2
    head = ""
    for char in text:
        if display_width(head + char) > head_room:
            break
        head += char
    tail = ""
    for char in reversed(text[len(head) :]):
        if display_width(char + tail) > tail_room:
            break
        tail = char + tail
    return head + ELLIPSIS + tail


def terminal_width(stream: Any = None) -> int:
    """The width of the terminal ``stream`` (default stdout) is on: COLUMNS if set, else the
    terminal's own, else 80."""
    raw = os.environ.get("COLUMNS", "")
    if raw.isascii() and raw.isdigit() and int(raw) > 0:
        return int(raw)
    try:
        return os.get_terminal_size((stream or sys.stdout).fileno()).columns or WIDTH
    except (OSError, ValueError, AttributeError):
        return WIDTH


def _aligned(
    headers: list[str], rows: list[list[str]], align: Sequence[str], *, keep_spaces: bool = False
) -> str:
    """Columns two spaces apart under a rule of dashes, each as wide as its widest cell (tabulate's
    own headers widen every column by two, which an 80-column table cannot spare).  Wide
    characters count double (tabulate does the same with wcwidth installed)."""
    widths = [max(display_width(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    rule = ["-" * w for w in widths]
    from tabulate import tabulate

    return tabulate(
        [headers, rule, *rows],
        tablefmt="plain",
        colalign=align,
        disable_numparse=True,
        preserve_whitespace=keep_spaces,  # a name's leading or trailing spaces are part of it
    )


# a file's state, as LIST gives it
FILE_STATES = {
    "ok": "ok",
    "degraded": "degraded (repairing)",
    "unavailable": "UNAVAILABLE (servers down)",
    "lost": "LOST",
}

NAME_MIN = 12  # a name column is never cut narrower than this


def listing_table(entries: list[Entry], long: bool = False, width: int = WIDTH) -> str:
    """``list``'s table: folders (``name/``, with how many files) and files; name, size and time,
    fitted to ``width`` columns (names cut in the middle); ``long`` adds owner, versions, state and
    the SHA-1, and cuts nothing.  A file that is not whole right now says so even when not long."""
    if not entries:
        return "no files"
    folders = any(e.folder for e in entries)
    troubled = long or any(e.state != "ok" for e in entries)
    headers = ["name", *(["files"] if folders else []), "size", "modified"]
    align = ["left", *(["right"] if folders else []), "right", "left"]
    rows: list[list[str]] = []
    for e in entries:
        row = [e.shown, *([str(e.files) if e.folder else ""] if folders else [])]
        row += [human_size(e.size), local_time(e.uploaded)]
        rows.append(row)
    if long:
        headers += ["owner", "versions", "state", "sha1"]
        align += ["left", "right", "left", "left"]
        for row, e in zip(rows, entries, strict=True):
            row += [e.owner, str(e.versions) if not e.folder else "", _state(e), e.sha1]
    elif troubled:
        headers.append("state")
        align.append("left")
        for row, e in zip(rows, entries, strict=True):
            row.append(_state(e))
    if not long:
        others = sum(max(display_width(r[i]) for r in [headers, *rows]) + 2 for i in range(1, len(headers)))
        room = max(NAME_MIN, width - others)
        for row in rows:
            row[0] = shorten(row[0], room)
    return _aligned(headers, rows, align, keep_spaces=True)


def _state(e: Entry) -> str:
    return "" if e.folder and e.state == "ok" else FILE_STATES.get(e.state, e.state)


def listing_summary(entries: list[Entry]) -> str:
    """The line under ``list``'s table: what it holds in all."""
    files = sum(e.files for e in entries)
    size = sum(e.size for e in entries)
    folders = sum(1 for e in entries if e.folder)
    parts = [plural(files, "file")] + ([plural(folders, "folder")] if folders else [])
    return f"{', '.join(parts)}, {human_size(size)} in all"


def file_json(f: dict[str, Any]) -> dict[str, Any]:
    """One file item for ``--json``: exact bytes, UTC times in ISO 8601."""
    item = {
        "type": "file",
        "name": f["name"],
        "owner": f["owner"],
        "size": f["size"],
        "sha1": f["sha1"],
        "uploaded": iso_time(f["uploaded"]),
        **({"state": f["state"]} if "state" in f else {}),
    }
    for key in ("version", "versions"):
        if key in f:
            item[key] = f[key]
    return item


def entries_json(entries: list[Entry]) -> list[dict[str, Any]]:
    """``list --json``: the listing's entries; a folder's ``name`` ends with ``/``."""
    return [
        {
            "type": "folder",
            "name": e.name + "/",
            "files": e.files,
            "size": e.size,
            "uploaded": iso_time(e.uploaded),
        }
        if e.folder or e.item is None
        else file_json(e.item)
        for e in entries
    ]


def _downloads(link: dict[str, Any]) -> str:
    limit = link.get("max_downloads")
    return f"{link['downloads']}/{limit}" if limit is not None else str(link["downloads"])


def links_table(rows: list[dict[str, Any]], width: int = 80) -> str:
    """The LINKS table: name, created, expires, downloads (``3/10``), state, link.  Links are shown
    whole, to be copied (to open, or to ``unshare``), and last: where a row is wider than the
    terminal, only the link wraps and the other columns stay aligned.  The name is shortened so a
    row fits ``width`` columns where the link leaves room."""
    table = []
    for r in rows:
        expires = r.get("expires")
        table.append(
            [
                r["name"] + ("/" if r.get("kind") == "folder" else ""),
                time.strftime("%Y-%m-%d", time.localtime(r["created"])),
                time.strftime("%Y-%m-%d %H:%M", time.localtime(expires)) if expires else "never",
                _downloads(r),
                r["state"],
                r["link"],
            ]
        )
    fixed = 10 + 16 + 9 + 9 + 5 * 2  # created, expires, downloads, state, and the gaps
    link_w = max((display_width(t[-1]) for t in table), default=4)
    name_w = max(12, width - fixed - link_w)
    for t in table:
        t[0] = shorten(t[0], name_w)
    headers = ["name", "created", "expires", "downloads", "state", "link"]
    from tabulate import tabulate

    return str(tabulate(table, headers=headers, tablefmt="plain", disable_numparse=True))


def versions_table(versions: list[dict[str, Any]]) -> str:
    if not versions:
        return "no versions"
    rows = [
        [
            f"{v['version']}{' (current)' if v.get('current') else ''}",
            human_size(v["size"]),
            local_time(v["uploaded"]),
            v["sha1"][:12],
        ]
        for v in versions
    ]
    return _aligned(["version", "size", "uploaded", "sha1"], rows, ("right", "right", "left", "left"))


def version_json(v: dict[str, Any]) -> dict[str, Any]:
    return {**v, "uploaded": iso_time(v["uploaded"])}


def account_text(account: dict[str, Any]) -> str:
    """``whoami``: the user, then how much they store against their quota."""
    lines = [str(account["user"])]
    usage, quota, files = account.get("usage"), account.get("quota"), account.get("files")
    if isinstance(usage, int):
        stored = f"{plural(files, 'file')}, " if isinstance(files, int) else ""
        if isinstance(quota, int) and quota > 0:
            share = usage * 100 // quota  # rounded down: 100% only when it is full
            over = ": over the quota, uploads are refused until some is freed" if usage > quota else ""
            lines.append(f"{stored}{human_size(usage)} used of {human_size(quota)} ({share}%{over})")
        else:
            lines.append(f"{stored}{human_size(usage)} used (no quota)")
    return "\n".join(lines)


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
        human_size(free) if isinstance(free, int) and state not in ("down", "dead") else "-",  # stale
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
    taking = [
        s for s in servers if s.get("up") and s.get("state", "up") == "up" and isinstance(s.get("free"), int)
    ]
    if taking:  # where new chunks can go
        free, disks = free_space(taking)
        copies = max(1, int(status["replicas"]))
        where = f"{plural(len(taking), 'server')} taking new chunks"
        if disks < len(taking):  # servers sharing a disk share its free space: counted once
            where = f"{plural(disks, 'disk')} shared by {where}"
        lines.append(
            _listed(
                [
                    f"free: {human_size(free)} on {where}",
                    f"room for about {human_size(free // copies)} of files",
                ]
            )
        )
    health = status.get("health")
    if isinstance(health, dict):
        lines += _health_lines(health, any(s.get("state") == "down" for s in servers))
    return "\n".join(lines)


def free_space(servers: list[dict[str, Any]]) -> tuple[int, int]:
    """The free bytes of ``servers`` and how many disks hold them: servers that report the same
    ``disk`` (one filesystem) count its free space once (the least any of them reports); a server
    that names no disk counts as a disk of its own."""
    by_disk: dict[object, int] = {}
    for s in servers:
        key = s.get("disk") or ("server", s.get("id"))
        by_disk[key] = min(int(s["free"]), by_disk.get(key, int(s["free"])))
    return sum(by_disk.values()), len(by_disk)


def link_json(link: dict[str, Any]) -> dict[str, Any]:
    """A link (SHARE's reply, a LINKS row) for --json: its times in ISO 8601 UTC, like every time."""
    times = {key: link[key] for key in ("created", "expires") if isinstance(link.get(key), (int, float))}
    return {**link, **{key: iso_time(when) for key, when in times.items()}}


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


PROGRESS_RIGHT = 56  # columns tqdm needs right of the label: percentage, a short bar, sizes, times, speed
TRANSFER_PHASES = frozenset({"sending", "receiving"})  # the phases whose bytes an overall bar counts


def _bar(desc: str, total: int, position: int, width: int) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        leave=False,
        file=sys.stderr,
        ncols=width,
        position=position,
    )


class OverallBar:
    """One bar over the files of a multi-file command: bytes of the files done, plus the current
    file's transfer.  A file whose size was not known up front adds it once its transfer starts."""

    def __init__(self, count: int, total: int = 0, enabled: bool | None = None) -> None:
        self.count = count
        self.total = total
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.finished = 0  # files done (or failed)
        self.completed = 0  # their bytes
        self._current: int | None = None  # the size of the file under way, once known
        self._counted = False  # whether that size is in `total` already
        self._bar: Any = None

    def _desc(self) -> str:
        return f"{self.finished}/{plural(self.count, 'file')}"

    def start(self, size: int | None) -> None:
        """A file begins; ``size`` if known up front (then already part of ``total``)."""
        self._current, self._counted = size, size is not None
        self._draw(0)

    def advance(self, done: int, total: int) -> None:
        if self._current is None:
            self._current = total
        if not self._counted:
            self.total += self._current
            self._counted = True
        self._draw(done)

    def finish(self) -> None:
        """The file under way is done (or failed): the bar moves past it."""
        self.finished += 1
        self.completed += self._current or 0
        self._current = None
        self._draw(0)

    def _draw(self, done: int) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            self._bar = _bar(self._desc(), self.total, 0, terminal_width(sys.stderr))
        self._bar.total = max(self.total, 1)
        self._bar.set_description_str(self._desc(), refresh=False)
        self._bar.n = min(self.completed + done, self._bar.total)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> OverallBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ProgressBars:
    """A progress callback that shows one tqdm bar per phase, only on a terminal.  Its label is the
    file's name, cut to leave the bar room on the terminal; with an ``overall`` bar, it draws on
    the line below it and feeds it."""

    def __init__(self, label: str, enabled: bool | None = None, overall: OverallBar | None = None) -> None:
        self.label = label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.overall = overall
        self._bar: Any = None
        self._phase = ""

    def __call__(self, phase: str, done: int, total: int) -> None:
        if self.overall is not None and phase in TRANSFER_PHASES:
            self.overall.advance(done, total)
        if not self.enabled:
            return
        if phase != self._phase:
            self.close()
            self._phase = phase
            width = terminal_width(sys.stderr)
            label = shorten(self.label, max(NAME_MIN, width - PROGRESS_RIGHT - len(phase) - 1))
            position = 1 if self.overall is not None and self.overall.enabled else 0
            self._bar = _bar(f"{phase} {label}", total, position, width)
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
