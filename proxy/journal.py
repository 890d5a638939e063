"""Durable state for the catalog: a JSON-lines journal plus periodic snapshots.

Theory of operation
-------------------
Every change is one JSON object, numbered (``seq``), appended to
``journal.jsonl`` and fsynced before the change is applied or answered.  Now
and then the whole state is written to ``catalog.json`` atomically (temp
file, fsync, rename, fsync the folder) with the ``seq`` of the last change it
contains, and a fresh empty journal replaces the old one the same way.  On
start, the snapshot is loaded and every journal entry with a higher ``seq``
is replayed.  A crash between the two renames is harmless: entries already
in the snapshot are skipped.  A torn last line (a crash in the middle of an
append, never acknowledged) is dropped; damage anywhere else refuses to
start rather than guess.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
from pathlib import Path
from typing import Any

from common.atomic import PRIVATE_FILE, fsync_dir, make_private_dir, open_private, tighten, write_atomic
from common.errors import CorruptData, InsufficientStorage, StorageIOError

log = logging.getLogger(__name__)

SNAPSHOT = "catalog.json"
JOURNAL = "journal.jsonl"


class Journal:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        make_private_dir(self.folder)  # 0700, and every file in it 0600: users' password hashes
        self.snapshot_path = self.folder / SNAPSHOT
        self.journal_path = self.folder / JOURNAL
        self.seq = 0
        self.entries_since_snapshot = 0
        self._file: Any = None
        self._broken = ""  # why appends are refused, after a failed write that could not be undone
        self._good = 0  # the journal's length after its last complete entry (what a repair cuts back to)

    def load(self) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """The last snapshot (or None) and the journal entries that came after it."""
        snapshot = None
        for path in (self.snapshot_path, self.journal_path):  # made by an older version: tighten
            if path.exists():
                tighten(path, PRIVATE_FILE)
        if self.snapshot_path.exists():
            try:
                snapshot = json.loads(self.snapshot_path.read_bytes())
                if not isinstance(snapshot, dict) or not isinstance(snapshot.get("seq", 0), int):
                    raise ValueError("not a catalog snapshot")
            except ValueError as exc:
                raise CorruptData(f"{self.snapshot_path} is damaged: {exc}") from None
            self.seq = snapshot.get("seq", 0)
        entries = self._read_journal()
        fresh = [e for e in entries if e["seq"] > self.seq]
        for entry in fresh:
            if entry["seq"] != self.seq + 1:
                raise CorruptData(f"{self.journal_path}: change {self.seq + 1} is missing")
            self.seq = entry["seq"]
        self.entries_since_snapshot = len(fresh)
        self._file = open(self.journal_path, "ab", opener=open_private)
        fsync_dir(self.folder)  # a journal created just now must survive a crash too
        return snapshot, fresh

    def _read_journal(self) -> list[dict[str, Any]]:
        if not self.journal_path.exists():
            return []
        raw = self.journal_path.read_bytes()
        lines = raw.split(b"\n")
        entries = []
        for number, line in enumerate(lines, 1):
            if not line:
                continue
            try:
                entry = json.loads(line)
                if not isinstance(entry, dict) or not isinstance(entry.get("seq"), int):
                    raise ValueError("not a journal entry")
            except ValueError:
                if number == len(lines):  # no newline after it: an append cut short by a crash
                    log.warning("dropping a torn last journal entry (%d bytes)", len(line))
                    self._truncate(len(raw) - len(line))
                    break
                raise CorruptData(f"{self.journal_path} is damaged at line {number}") from None
            entries.append(entry)
        if raw and not raw.endswith(b"\n") and entries:  # complete, but its newline was cut off
            with open(self.journal_path, "ab", opener=open_private) as f:
                f.write(b"\n")
                f.flush()
                os.fsync(f.fileno())
        return entries

    def _truncate(self, size: int) -> None:
        with open(self.journal_path, "r+b") as f:
            f.truncate(size)
            f.flush()
            os.fsync(f.fileno())

    def append(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Number, write and fsync one change; only then may it be applied.  After a failure that
        could not be undone at once (a full disk), each new change first tries the repair again, so
        the journal recovers on its own once the disk has room."""
        if self._broken and not self._repair():
            raise StorageIOError(f"the catalog journal could not be repaired after: {self._broken}")
        entry = {"seq": self.seq + 1, **entry}
        line = json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        good = self._file.tell()
        self._good = good
        try:
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            self._roll_back(good, exc)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise InsufficientStorage("the proxy's disk is full; nothing was changed") from None
            raise StorageIOError(f"the proxy could not write its catalog ({exc.strerror})") from None
        self.seq += 1
        self.entries_since_snapshot += 1
        return entry

    def append_many(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Number, write and fsync several changes at once: one write and ONE fsync for them all
        (a batch of uploads' commits).  All or none: a failure cuts every one of them off again."""
        if not entries:
            return []
        if self._broken and not self._repair():
            raise StorageIOError(f"the catalog journal could not be repaired after: {self._broken}")
        numbered = [{"seq": self.seq + i, **entry} for i, entry in enumerate(entries, 1)]
        data = b"".join(
            json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
            for entry in numbered
        )
        good = self._file.tell()
        self._good = good
        try:
            self._file.write(data)
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            self._roll_back(good, exc)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise InsufficientStorage("the proxy's disk is full; nothing was changed") from None
            raise StorageIOError(f"the proxy could not write its catalog ({exc.strerror})") from None
        self.seq += len(numbered)
        self.entries_since_snapshot += len(numbered)
        return numbered

    def _roll_back(self, good: int, cause: OSError) -> None:
        """Cut a failed append off, so no torn line ends up in the middle of the journal."""
        try:
            # closing flushes what is still buffered of the failed line, which fails again when the
            # write failed (a full disk); the file is closed all the same, and that line is cut below
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = open(self.journal_path, "r+b")
            self._file.truncate(good)
            self._file.seek(good)
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = open(self.journal_path, "ab", opener=open_private)
        except OSError:
            self._broken = str(cause)
            self._file = None
            log.error(
                "catalog journal could not be cut back after a failed write; refusing changes until it can"
            )

    def _repair(self) -> bool:
        """Cut the journal back to its last complete entry and reopen it; True if that worked."""
        try:
            if self._file is not None:
                with contextlib.suppress(OSError):
                    self._file.close()
                self._file = None
            with open(self.journal_path, "r+b") as f:
                if os.fstat(f.fileno()).st_size > self._good:
                    f.truncate(self._good)
                os.fsync(f.fileno())
            self._file = open(self.journal_path, "ab", opener=open_private)
        except OSError as exc:
            log.warning("catalog journal still cannot be repaired: %s", exc)
            return False
        log.warning("catalog journal repaired after: %s", self._broken)
        self._broken = ""
        return True

    def snapshot(self, state: dict[str, Any]) -> None:
        """Write the whole state (as of ``self.seq``) and start an empty journal."""
        data = json.dumps({**state, "seq": self.seq}, separators=(",", ":"), ensure_ascii=False).encode()
        write_atomic(self.snapshot_path, data, mode=0o600)
        write_atomic(self.journal_path, b"", mode=0o600)
        self._good = 0  # the snapshot holds every change; the new journal starts empty
        try:
            new = open(self.journal_path, "ab", opener=open_private)
        except OSError as exc:  # the old handle points at a replaced file: appending there is lost
            self._broken = f"cannot reopen the journal after a snapshot: {exc}"
            log.error("%s; refusing further changes", self._broken)
            raise
        if self._file is not None:
            self._file.close()
        self._file = new
        fsync_dir(self.folder)
        self.entries_since_snapshot = 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
