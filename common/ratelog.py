"""Warnings about misbehaving peers, rate-limited so that an attack cannot fill the disk with logs."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Window:
    start: float
    logged: int = 0
    held_back: int = 0


class RateLimitedLog:
    """At most ``burst`` warnings of each kind (the same format string) per ``interval`` seconds;
    the rest are counted, and the count is logged in one line with the first warning of that kind
    in a later interval."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = 10,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.burst = burst
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}

    def warning(self, message: str, *args: object) -> None:
        with self._lock:
            now = self._clock()
            window = self._windows.get(message)
            if window is None or now - window.start >= self.interval:
                if window is not None and window.held_back:
                    self.logger.warning(
                        "%d more warnings like %r were not logged (at most %d every %g s)",
                        window.held_back,
                        message,
                        self.burst,
                        self.interval,
                    )
                window = self._windows[message] = _Window(now)
            if window.logged >= self.burst:
                window.held_back += 1
                return
            window.logged += 1
        self.logger.warning(message, *args)
