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
start rather than guess.  The snapshot's format is proxy.snapshot's.

Snapshots in the background
---------------------------
Serialising a big catalog takes seconds, too long to hold the catalog's lock.
:meth:`Journal.start_snapshot` forks: the child holds a copy-on-write image of
the state as of ``seq`` S, serialises it and writes the snapshot atomically,
then exits; the parent goes on appending to the same journal at once.  When
the child has exited, :meth:`Journal.finish_snapshot` (under the catalog's
lock, so no append runs) cuts the journal down to the entries after S, the
bytes appended since the fork, written atomically like any journal cut.  At
every moment the files on disk hold every acknowledged change: before the
child's rename, the old snapshot and the whole journal; after it, the new
snapshot and a journal whose entries up to S are skipped at load.  A child
that fails leaves the old snapshot and the whole journal; the next one tries
again.  The child only serialises and writes (no lock, no logging): safe to
run after a fork from a threaded process.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.atomic import PRIVATE_FILE, fsync_dir, make_private_dir, open_private, tighten, write_atomic
from common.errors import CorruptData, InsufficientStorage, StorageIOError
from proxy import snapshot as snapshot_format

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
        self.pending: tuple[int, int, int] | None = None  # a snapshot child: (pid, its seq, journal offset)

    def load(self) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """The last snapshot (or None) and the journal entries that came after it."""
        snapshot = None
        for path in (self.snapshot_path, self.journal_path):  # made by an older version: tighten
            if path.exists():
                tighten(path, PRIVATE_FILE)
        if self.snapshot_path.exists():
            try:
                snapshot = snapshot_format.read(self.snapshot_path)
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
        return self.append_many([entry])[0]

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

    def snapshot(self, encode: Callable[[int], bytes]) -> None:
        """Write the whole state (``encode(seq)``, as of ``self.seq``) and start an empty journal."""
        write_atomic(self.snapshot_path, encode(self.seq), mode=0o600)
        self._cut(b"")

    def _cut(self, tail: bytes) -> None:
        """Replace the journal with ``tail`` (the entries a new snapshot does not hold)."""
        write_atomic(self.journal_path, tail, mode=0o600)
        self._good = len(tail)  # the snapshot and the new journal hold every change
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
        self.entries_since_snapshot = tail.count(b"\n")

    def start_snapshot(self, encode: Callable[[int], bytes]) -> int:
        """Fork a child that writes the snapshot of the state as of now (``encode(seq)``, run in
        the child); the child's pid.  The caller holds the catalog's lock, so the state is whole."""
        if self.pending is not None:
            raise RuntimeError("a snapshot is already being written")
        if self._broken or self._file is None:
            raise OSError(f"the journal is not usable: {self._broken}")
        seq, offset = self.seq, self._file.tell()
        pid = os.fork()
        if pid == 0:  # the child: serialise, write, exit; never return into the proxy's code
            code = 1
            try:
                write_atomic(self.snapshot_path, encode(seq), mode=0o600)
                code = 0
            finally:
                os._exit(code)
        self.pending = (pid, seq, offset)
        return pid

    def finish_snapshot(self, written: bool) -> None:
        """The snapshot child has exited: if it wrote its snapshot, cut the journal down to the
        entries after it.  Called under the catalog's lock (no append runs meanwhile)."""
        if self.pending is None:
            return
        _, seq, offset = self.pending
        self.pending = None
        if not written or self._broken or self._file is None:
            return
        self._file.flush()
        with open(self.journal_path, "rb") as f:
            f.seek(offset)
            tail = f.read()
        self._cut(tail)
        self.entries_since_snapshot = self.seq - seq

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
