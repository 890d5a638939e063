"""Writing a download's bytes to disk while it runs, so that its last fsync is short.

A download writes into its partial file through the page cache; without help the kernel keeps most
of it dirty until the fsync before the file is linked into place, and that fsync then waits for all
of it.  A :class:`Flusher` is a thread that ``fdatasync``\\ s the partial each time another
:data:`FLUSH_BYTES` have been written, overlapping the disk's work with the transfer.  It adds no
guarantee and removes none: the download still fsyncs the whole file before linking it into place.
"""

from __future__ import annotations

import contextlib
import os
import threading

FLUSH_BYTES = 32 * 1024 * 1024  # written since the last flush before the next one starts


class Flusher:
    """Flushes ``fd`` in a thread of its own as :meth:`wrote` is told of bytes written to it."""

    def __init__(self, fd: int, every: int = FLUSH_BYTES) -> None:
        self._fd = fd
        self._every = every
        self._unflushed = 0
        self._wake = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def wrote(self, n: int) -> None:
        with self._wake:
            self._unflushed += n
            if self._unflushed < self._every:
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="flusher", daemon=True)
                self._thread.start()
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopped and self._unflushed < self._every:
                    self._wake.wait()
                if self._stopped:
                    return
                self._unflushed = 0
            with contextlib.suppress(OSError):  # a failing disk fails the final fsync too
                os.fdatasync(self._fd)

    def stop(self) -> None:
        """End the thread (after the flush under way, if any); the caller then fsyncs and closes."""
        with self._wake:
            self._stopped = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> Flusher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
