"""Which bytes of a file a GET answers with: Range and If-Range (RFC 9110 14), pure.

- no Range, a Range in another unit, or one that does not parse: the whole file, 200 (a
  Range a server cannot parse is ignored, RFC 9110 14.2);
- several ranges (``bytes=0-1,5-9``): the whole file, 200 (allowed; no multipart responses);
- one range: ``bytes=A-B``, ``bytes=A-`` or ``bytes=-N`` (the last N bytes), 206 with the bytes
  that exist; none of them (A past the end, ``-0``, any range of an empty file): 416;
- If-Range: an entity tag must match the file's ETag (strong comparison: a weak tag never
  matches), a date must equal its Last-Modified to the second; otherwise the whole file, 200.
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass

_SPEC = re.compile(r"\s*bytes\s*=\s*(.*?)\s*", re.IGNORECASE)
_ONE = re.compile(r"([0-9]+)?-([0-9]+)?")
_HUGE = 10**19  # past any file: a longer number means "to the end" (or, as a start, past it)


@dataclass(frozen=True)
class Plan:
    """The answer: 200 (the whole file), 206 (bytes ``start`` to ``end``, exclusive) or 416."""

    status: int
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


def plan(size: int, range_header: str | None, if_range: str | None, etag: str, modified: float) -> Plan:
    whole = Plan(200, 0, size)
    if range_header is None:
        return whole
    spec = _SPEC.fullmatch(range_header)
    if spec is None or "," in spec[1]:
        return whole
    one = _ONE.fullmatch(spec[1])
    if one is None or (one[1] is None and one[2] is None):
        return whole
    if if_range is not None and not if_range_matches(if_range, etag, modified):
        return whole
    if one[1] is None:  # the last N bytes
        suffix = _number(one[2])
        if suffix == 0 or size == 0:
            return Plan(416, 0, 0)
        return Plan(206, max(0, size - suffix), size)
    start = _number(one[1])
    last = size - 1 if one[2] is None else _number(one[2])
    if one[2] is not None and last < start:
        return whole  # "bytes=9-5" is invalid: ignored
    if start >= size:
        return Plan(416, 0, 0)
    return Plan(206, start, min(last, size - 1) + 1)


def _number(digits: str) -> int:
    """A position of the header; any number of digits is valid (RFC 9110 14.1.1), and one with more
    than 19 is past the end of any file (no int of thousands of digits is made)."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 19 else _HUGE


def if_range_matches(value: str, etag: str, modified: float) -> bool:
    value = value.strip()
    if value.startswith('"') or value.startswith("W/"):
        return value == etag  # strong comparison: a weak tag never matches
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return False
    if when is None or when.tzinfo is None:
        return False
    try:
        return int(when.timestamp()) == int(modified)
    except (OverflowError, OSError, ValueError):
        return False


def content_range(plan: Plan, size: int) -> str:
    if plan.status == 416:
        return f"bytes */{size}"
    return f"bytes {plan.start}-{plan.end - 1}/{size}"
