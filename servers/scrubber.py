"""The scrubber: re-read every chunk in the background and quarantine the ones that rotted.

Swift's object auditor, for one server.  A pass walks a snapshot of the store's ids and calls
``store.verify`` on each (a full re-read and SHA-256; a bad copy is quarantined and its id queued
for the next heartbeat, so the proxy repairs it); ids deleted since the snapshot are skipped.
Reads are paced by a token bucket, so scrubbing never starves clients of the disk:

    rate = min(--scrub-rate cap, max(used bytes / --scrub-period, 1 MiB/s))

which covers a full disk within the period (default: 32 MiB/s cap, 3 days).  A pass starts at most
once per period (a small store is not re-read over and over); ``--scrub-rate 0`` disables the
scrubber.  At the end of each pass it calls ``on_pass`` (membership sends an inventory then).  No
store lock is held while reading; ``stop()`` returns within about a second.  ``run_once`` is what
tests call, ``start`` runs passes in a thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from common.errors import FileClusterError
from servers.chunk_store import ChunkStore
from servers.memory_store import MemoryChunkStore

log = logging.getLogger(__name__)

MIB = 1024 * 1024
MIN_RATE = 1.0 * MIB  # bytes/s: the floor of the rate a large period would give
DEFAULT_RATE_CAP = 32.0 * MIB
DEFAULT_PERIOD = 3 * 86400.0

Store = ChunkStore | MemoryChunkStore


class _Stopped(Exception):
    """Raised out of a pass (through store.verify's pace callback) when the scrubber stops."""


def scrub_rate(cap: float, period: float, used: int) -> float:
    """Bytes per second: enough to cover ``used`` bytes in ``period``, at least 1 MiB/s, at most ``cap``."""
    return min(cap, max(used / period, MIN_RATE))


class TokenBucket:
    """Paces reads to ``rate()`` bytes a second, with no burst: each read waits for its bytes."""

    def __init__(self, rate: Callable[[], float], stop: threading.Event, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.stop = stop
        self.clock = clock
        self.tokens = 0.0
        self.last = clock()

    def reset(self) -> None:
        self.tokens, self.last = 0.0, self.clock()

    def take(self, n: int) -> None:
        rate = self.rate()
        now = self.clock()
        self.tokens = min(0.0, self.tokens + (now - self.last) * rate) - n
        self.last = now
        if self.tokens < 0 and self.stop.wait(-self.tokens / rate):
            raise _Stopped


class Scrubber:
    def __init__(
        self,
        store: Store,
        *,
        rate_cap: float = DEFAULT_RATE_CAP,
        period: float = DEFAULT_PERIOD,
        on_pass: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_cap <= 0 or period <= 0:
            raise ValueError("the scrub rate cap and period must be positive")
        self.store = store
        self.rate_cap = rate_cap
        self.period = period
        self.on_pass = on_pass  # called after each pass (membership: send an inventory now)
        self.clock = clock
        self._stop = threading.Event()
        self._bucket = TokenBucket(self.rate, self._stop, clock)
        self._lock = threading.Lock()  # the figures below, for progress()
        self.passes = 0
        self.checked = 0
        self.total = 0
        self.bad = 0
        self.last_pass_seconds: float | None = None
        self._thread: threading.Thread | None = None

    def rate(self) -> float:
        return scrub_rate(self.rate_cap, self.period, self.store.used)

    def progress(self) -> dict[str, Any]:
        with self._lock:
            return {
                "passes": self.passes,
                "checked": self.checked,
                "total": self.total,
                "rate": round(self.rate()),
                "bad": self.bad,
                "last_pass_seconds": self.last_pass_seconds,
            }

    def _count(self, n: int) -> None:
        self._bucket.take(n)
        with self._lock:
            self.checked += n

    def run_once(self) -> int:
        """One whole pass over the store; returns how many bad copies it found (and quarantined)."""
        started = self.clock()
        ids = list(self.store.ids())
        with self._lock:
            self.checked, self.total = 0, self.store.used
        self._bucket.reset()
        found = 0
        for chunk_id in ids:
            if self._stop.is_set():
                raise _Stopped
            try:
                verdict = self.store.verify(chunk_id, self._count)
            except FileClusterError as exc:  # a disk error other than EIO: note it, go on
                log.warning("scrub: cannot verify chunk %s: %s", chunk_id, exc)
                continue
            if verdict == "bad":
                found += 1
                with self._lock:
                    self.bad += 1
        with self._lock:
            self.passes += 1
            self.last_pass_seconds = round(self.clock() - started, 3)
        log.log(
            logging.WARNING if found else logging.INFO,
            "scrub pass %d: %d chunk(s), %d bad, %.1f s",
            self.passes,
            len(ids),
            found,
            self.last_pass_seconds,
        )
        if self.on_pass is not None:
            self.on_pass()
        return found

    def run_forever(self) -> None:
        while not self._stop.is_set():
            started = self.clock()
            try:
                self.run_once()
            except _Stopped:
                return
            except Exception:  # a bug must not end scrubbing for good
                log.exception("scrub pass failed")
            self._stop.wait(max(started + self.period - self.clock(), 0.1))

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run_forever, name="scrubber", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
