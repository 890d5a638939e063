"""Validation of the names users choose: file names and user names."""

from __future__ import annotations

import re
import unicodedata

from common.errors import InvalidRequest

MAX_NAME_BYTES = 255
# embedding, override and isolate controls: they can make "exe.txt" display as "txt.exe"
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
INVISIBLE = frozenset({"Cf", "Zs", "Zl", "Zp", "Mn", "Me"})
USER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}\Z")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024


def check_file_name(name: object, *, new: bool = False) -> str:
    """A file name in the cluster: one path component, NFC-normalised, printable.

    ``new``: a name about to be stored also may not mislead (text-direction controls, nothing
    visible).  Names stored before that rule existed can still be looked up, shared and deleted.
    """
    if not isinstance(name, str):
        raise InvalidRequest("a file name must be text")
    name = unicodedata.normalize("NFC", name)
    if not name.strip():
        raise InvalidRequest("a file name cannot be empty")
    if "/" in name or "\\" in name:
        raise InvalidRequest(f"invalid file name {name!r}: it may not contain a path separator")
    if name in (".", ".."):
        raise InvalidRequest(f"invalid file name {name!r}")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
        raise InvalidRequest(f"invalid file name {name!r}: it contains control characters")
    if new and any(c in BIDI_CONTROLS for c in name):
        raise InvalidRequest(
            f"invalid file name {name!r}: it contains text-direction controls, "
            "which make a name display as something else"
        )
    if new and all(unicodedata.category(c) in INVISIBLE for c in name):
        raise InvalidRequest(f"invalid file name {name!r}: it has no visible character")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise InvalidRequest(f"file name too long (at most {MAX_NAME_BYTES} bytes)")
    return name


def check_user_name(user: object) -> str:
    if not isinstance(user, str) or not USER_RE.match(user):
        raise InvalidRequest(
            "a user name is 1 to 32 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return user


def check_password_rules(password: object, *, new: bool) -> str:
    """A password that follows the rules (``new``: the stricter rules for a new account)."""
    if not isinstance(password, str) or not password:
        raise InvalidRequest("a password cannot be empty")
    if len(password) > MAX_PASSWORD:
        raise InvalidRequest(f"a password is at most {MAX_PASSWORD} characters")
    if new and len(password) < MIN_PASSWORD:
        raise InvalidRequest(f"a password needs at least {MIN_PASSWORD} characters")
    return password
