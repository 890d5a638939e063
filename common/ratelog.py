"""Warnings about misbehaving peers, rate-limited so that an attack cannot fill the disk with logs."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


class RateLimitedLog:
    """At most ``burst`` warnings per ``interval`` seconds; the rest are counted, and the count is
    logged as one line with the first warning of a later interval."""

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
        self._window = -interval
        self._logged = 0
        self._held_back = 0

    def warning(self, message: str, *args: object) -> None:
        with self._lock:
            now = self._clock()
            if now - self._window >= self.interval:
                if self._held_back:
                    self.logger.warning(
                        "%d more warnings like these were not logged (at most %d every %g s)",
                        self._held_back,
                        self.burst,
                        self.interval,
                    )
                self._window, self._logged, self._held_back = now, 0, 0
            if self._logged >= self.burst:
                self._held_back += 1
                return
            self._logged += 1
        self.logger.warning(message, *args)
