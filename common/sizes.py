"""Sizes people type and read: ``500M``, ``10G``, ``1T``, ``unlimited``; ``1.2 GiB``.

Units are binary (K = 1024 bytes, M = 1024 K, ...), with or without a trailing ``B`` or ``iB``
(``10G``, ``10GB`` and ``10GiB`` are the same), case-insensitive; a bare number is bytes.
"""

from __future__ import annotations

import re

from common.errors import InvalidRequest

UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
UNLIMITED = "unlimited"
MAX_SIZE = 1 << 60  # 1 EiB: anything larger is a typo
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgtp]?)(?:i?b)?\s*", re.IGNORECASE)


def parse_size(text: str) -> int | None:
    """Bytes, or None for ``unlimited``; a clear one-line error for anything else."""
    if text.strip().lower() == UNLIMITED:
        return None
    match = _SIZE_RE.fullmatch(text)
    if match is None:
        raise InvalidRequest(f"invalid size {text!r}: expected e.g. 500M, 10G, 1T or {UNLIMITED}")
    if match[2] == "" and text.strip().lower().endswith("ib"):  # "10iB": a unit is missing
        raise InvalidRequest(f"invalid size {text!r}: expected e.g. 500M, 10G, 1T or {UNLIMITED}")
    value = float(match[1]) * UNITS[match[2].lower()]
    if value > MAX_SIZE:
        raise InvalidRequest(f"invalid size {text!r}: at most {human_size(MAX_SIZE)}")
    return int(value)


def human_size(n: int) -> str:
    """``512 B``, ``1.5 KiB``, ``10.0 GiB``: for messages."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < (1024 if unit == "B" else 1023.95) or unit == "TiB":  # never "1024.0 KiB"
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
