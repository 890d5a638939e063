"""``--expires``: a duration from now (30m, 24h, 7d) or a date or date-time in local time."""

from __future__ import annotations

import re
import time
from datetime import datetime

from common.errors import InvalidRequest
from common.limits import MAX_LINK_LIFETIME

_DURATION = re.compile(r"(\d{1,12})([mhd])\Z")
_UNITS = {"m": 60, "h": 3600, "d": 86400}


def parse_expires(text: str, now: float | None = None, label: str = "--expires") -> float:
    """The Unix time ``text`` names: ``30m``/``24h``/``7d`` from ``now``, or an ISO date
    (``2026-12-31``: the end of that day) or date-time (``2026-12-31T18:00``), local time.
    ``label`` starts an error: the option, or the menu's question."""
    now = time.time() if now is None else now
    text = text.strip()
    match = _DURATION.match(text)
    if match:
        seconds = int(match[1]) * _UNITS[match[2]]
        if seconds <= 0:
            raise InvalidRequest(f"{label} {text}: the link would expire at once")
        return _within_limit(label, text, now + seconds, now)
    try:
        if "T" in text or " " in text:
            when = datetime.fromisoformat(text).timestamp()
        else:
            day = datetime.fromisoformat(text)
            when = day.replace(hour=23, minute=59, second=59).timestamp()
    except ValueError:
        raise InvalidRequest(
            f"{label} {text!r}: use 30m, 24h, 7d, a date (2026-12-31) or a date-time (2026-12-31T18:00)"
        ) from None
    if when <= now:
        raise InvalidRequest(f"{label} {text}: that is in the past")
    return _within_limit(label, text, when, now)


def _within_limit(label: str, text: str, when: float, now: float) -> float:
    if when >= now + MAX_LINK_LIFETIME:
        raise InvalidRequest(f"{label} {text}: a link can last at most 100 years")
    return when
