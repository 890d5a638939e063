"""Deadlines for whole frames on the receiving side of a server's connection.  No sockets here:
the decoder's state and a clock in, the time the next read may wait out.

Theory of operation
-------------------
A per-read timeout lets a peer hold a connection forever by sending a byte just before each
read times out.  So the receiver bounds each part of a frame as a whole:

- *idle*, between frames (nothing of the next frame has arrived): ``idle`` seconds;
- *head*: the prefix and header must be in within ``head`` seconds of the frame's first byte,
  plus a second per ``min_rate`` bytes of the header once the prefix has said how long it is;
- *payload*: within ``payload`` seconds of when the receiver first waits for it (not of when the
  header ended, since a handler may first do work of its own, like connecting to the next
  server of a chain), plus a second per ``min_rate`` bytes of it.

The transport sets each read's socket timeout to what is left (common.transport).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from common.protocol import FrameDecoder

IDLE: Final = "idle"
HEAD: Final = "head"
PAYLOAD: Final = "payload"


@dataclass(frozen=True)
class FrameDeadlines:
    """How long a peer may take over the frames it sends, in seconds (and bytes per second)."""

    head: float  # prefix and header, from the frame's first byte...
    payload: float  # ...payload, from when the receiver first waits for it...
    min_rate: float  # ...each plus a second per this many bytes of it
    idle: float  # between frames


class FrameTimer:
    """Which part of a frame one connection waits for, and until when."""

    def __init__(self, deadlines: FrameDeadlines, clock: Callable[[], float] = time.monotonic) -> None:
        self.deadlines = deadlines
        self.idle = deadlines.idle  # between frames; a connection on probation gets less
        self.phase = IDLE
        self._clock = clock
        self._started = 0.0  # when the frame's first byte was seen
        self._due = 0.0  # when the current part's deadline passes
        self._header_len = 0

    def timeout(self, decoder: FrameDecoder, payload_len: int) -> float:
        """Seconds the next read may wait: the idle timeout between frames, else what is left of
        the deadline of the part being received (0 or less: it has passed).  ``payload_len`` is
        the length of the frame whose payload is being received."""
        now = self._clock()
        limits = self.deadlines
        if decoder.in_payload:
            if self.phase != PAYLOAD:
                self.phase = PAYLOAD
                self._due = now + limits.payload + payload_len / limits.min_rate
        elif decoder.frame_started:
            if self.phase != HEAD:
                self.phase, self._started, self._header_len = HEAD, now, 0
            head = decoder.peek()
            if head is not None:  # (after a refused header, the length it had)
                self._header_len = head.header_len
            self._due = self._started + limits.head + self._header_len / limits.min_rate
        else:
            self.phase = IDLE
            return self.idle
        return self._due - now

    def frame_done(self) -> None:
        self.phase = IDLE
