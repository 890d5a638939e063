"""Validation of the names users choose: file names (paths of folders) and user names.

A file name may be a path: segments separated by "/" (``photos/2024/a.jpg``).  Every segment
follows the rules one name always had; no segment is empty (so no leading, trailing or doubled
"/"), and the whole name is at most ``MAX_PATH_BYTES`` in UTF-8.  Folders are implicit: a folder
exists while some file's name is under it.
"""

from __future__ import annotations

import re
import unicodedata

from common.errors import InvalidRequest

MAX_NAME_BYTES = 255  # one segment: a file's or a folder's own name
MAX_PATH_BYTES = 1024  # the whole name, folders included
SEPARATOR = "/"
# embedding, override and isolate controls: they can make "exe.txt" display as "txt.exe"
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
INVISIBLE = frozenset({"Cf", "Zs", "Zl", "Zp", "Mn", "Me"})
USER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}\Z")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024


def check_file_name(name: object, *, new: bool = False) -> str:
    """A file name in the cluster: NFC-normalised, printable, made of valid segments.

    ``new``: a name about to be stored also may not mislead (text-direction controls, a segment
    with nothing visible).  Names stored before that rule existed can still be looked up, shared
    and deleted.
    """
    if not isinstance(name, str):
        raise InvalidRequest("a file name must be text")
    name = unicodedata.normalize("NFC", name)
    if not name.strip():
        raise InvalidRequest(
            f"invalid file name {name!r}: it is blank" if name else "a file name cannot be empty"
        )
    if "\\" in name:
        raise InvalidRequest(
            f"invalid file name {name!r}: it may not contain a backslash (folders are separated by '/')"
        )
    plain = name.isascii() and name.isprintable()  # the common case, checked at C speed
    if not plain and any(unicodedata.category(c) == "Cs" for c in name):
        raise InvalidRequest(f"invalid file name {undecodable(name)}: it is not valid UTF-8")
    if not plain and any(unicodedata.category(c) == "Cc" for c in name):
        raise InvalidRequest(f"invalid file name {name!r}: it contains control characters")
    if new and not plain and any(c in BIDI_CONTROLS for c in name):
        raise InvalidRequest(
            f"invalid file name {name!r}: it contains text-direction controls, "
            "which make a name display as something else"
        )
    if len(name.encode("utf-8")) > MAX_PATH_BYTES:
        raise InvalidRequest(f"file name too long (at most {MAX_PATH_BYTES} bytes, folders included)")
    segments = name.split(SEPARATOR)
    for segment in segments:
        _check_segment(name, segment, new=new, alone=len(segments) == 1)
    return name


def undecodable(name: str) -> str:
    """A name with bytes that are not UTF-8 (a local file's, read with surrogateescape), shown with
    those bytes as \\xNN rather than as the lone surrogates Python keeps them as."""
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # surrogates that no byte decodes to: as they are
        return repr(name)
    return repr(raw.decode("utf-8", "backslashreplace")).replace("\\\\", "\\")  # a name has no "\\"


def _check_segment(name: str, segment: str, *, new: bool, alone: bool) -> None:
    if not segment:
        raise InvalidRequest(
            f"invalid file name {name!r}: an empty folder name (a leading, trailing or doubled '/')"
        )
    if not segment.strip():
        raise InvalidRequest(f"invalid file name {name!r}: a folder name cannot be blank")
    if segment in (".", ".."):
        raise InvalidRequest(
            f"invalid file name {name!r}" if alone else f"invalid file name {name!r}: {segment!r} in a path"
        )
    if new and segment != segment.strip():  # "a.txt " would be another file than "a.txt", looking the same
        raise InvalidRequest(
            f"invalid file name {name!r}: a folder or file name may not start or end with a space"
        )
    if new and all(unicodedata.category(c) in INVISIBLE for c in segment):
        raise InvalidRequest(
            f"invalid file name {name!r}: it has no visible character"
            if alone
            else f"invalid file name {name!r}: a folder or file name with no visible character"
        )
    if len(segment.encode("utf-8")) > MAX_NAME_BYTES:
        raise InvalidRequest(
            f"file name too long (at most {MAX_NAME_BYTES} bytes)"
            if alone
            else f"file name too long: each folder or file name is at most {MAX_NAME_BYTES} bytes"
        )


def check_prefix(prefix: object) -> str:
    """A listing's prefix: any text up to a name's length (NFC), matched as a plain string."""
    if not isinstance(prefix, str):
        raise InvalidRequest("a prefix must be text")
    prefix = unicodedata.normalize("NFC", prefix)
    if len(prefix.encode("utf-8")) > MAX_PATH_BYTES + 1:
        raise InvalidRequest(f"prefix too long (at most {MAX_PATH_BYTES + 1} bytes)")
    return prefix


def parents(name: str) -> list[str]:
    """The folders a name is in, outermost first: ``a/b/c`` -> ``["a", "a/b"]``."""
    parts = name.split(SEPARATOR)
    return [SEPARATOR.join(parts[:i]) for i in range(1, len(parts))]


class NameSet:
    """The names of one batch's files and every folder they are in, so that checking a name against
    the batch costs the depth of the name, not the size of the batch (a batch's names must not
    repeat, nor make a file and a folder of one name)."""

    def __init__(self) -> None:
        self.files: set[str] = set()
        self.folders: set[str] = set()

    def conflict(self, name: str) -> str | None:
        """Why ``name`` cannot join the batch (a one-line reason), or None if it can."""
        if name in self.files:
            return f"{name!r} is named twice in one batch; upload it again"
        if name in self.folders:
            return f"{name!r} is a folder"
        clash = next((p for p in parents(name) if p in self.files), None)
        return None if clash is None else f"{clash!r} is a file"

    def add(self, name: str) -> None:
        self.files.add(name)
        self.folders.update(parents(name))


def base_name(name: str) -> str:
    """The last segment of a name: ``photos/a.jpg`` -> ``a.jpg``."""
    return name.rsplit(SEPARATOR, 1)[-1]


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
    if not password.isascii() and any(unicodedata.category(c) == "Cs" for c in password):
        raise InvalidRequest("a password must be valid UTF-8 (it has bytes of another encoding)")
    return password
