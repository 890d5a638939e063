"""Where a download lands: the folder and name ``save_as`` asks for, made without ever leaving the
output folder, and the free name the verified file is linked to (never over an existing file).

``save_as`` is a path relative to the output folder (default: the base name of the file's name).
Every segment is checked by the file name rules (no empty, ".", ".." segment, no "\\", no control
characters), and every folder is created and then opened relative to its parent with O_NOFOLLOW,
so neither a hostile name nor a symlink planted in the output folder can take the file elsewhere;
the folder reached is checked, by its real path, to be inside the output folder.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from common.errors import InvalidRequest
from common.hashing import READ_SIZE
from common.names import MAX_NAME_BYTES, check_file_name

MAX_SAVE_AS_BYTES = 1024
# only to make folders in (mkdir, open relative to it): O_PATH needs no read permission, so a folder
# one may write in but not list (mode 0311) takes them as well
_FOLDER_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC


def destination(
    out_dir: Path, name: str, save_as: str | None, made: dict[tuple[str, ...], Path] | None = None
) -> tuple[Path, str]:
    """The folder the file goes to (created under ``out_dir``) and its name there.

    ``save_as`` is a path relative to ``out_dir``; every segment is checked by the file name rules
    (no "", ".", "..", "\\", control characters), and every folder is created and then opened
    without following symlinks, so the file can only land inside ``out_dir``.  With ``made``, the
    folders made for files saved together (a group of small files, client.small_files), a folder
    made and checked for one of them is not made and checked again for the next."""
    if save_as is None:
        segments = [name.rsplit("/", 1)[-1]]
    else:
        if not isinstance(save_as, str) or len(save_as.encode("utf-8", "replace")) > MAX_SAVE_AS_BYTES:
            raise InvalidRequest(f"cannot save as {save_as!r}: at most {MAX_SAVE_AS_BYTES} bytes")
        if save_as.startswith("/") or "" in save_as.split("/"):
            raise InvalidRequest(f"cannot save as {save_as!r}: give a path relative to the output folder")
        try:
            segments = [check_file_name(segment) for segment in save_as.split("/")]
        except InvalidRequest as exc:
            raise InvalidRequest(f"cannot save as {save_as!r}: {exc}") from None
    segments[-1] = check_file_name(segments[-1])
    key = tuple(segments[:-1])
    if made is not None and key in made:
        return made[key], segments[-1]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a file (or a broken symlink) has the name
        raise not_a_folder(out_dir) from None
    except OSError as exc:
        raise InvalidRequest(f"cannot create folder {out_dir}: {exc.strerror}") from None
    if not out_dir.is_dir():
        raise not_a_folder(out_dir)
    folder = make_folders(out_dir, segments[:-1])
    if made is not None:
        made[key] = folder
    return folder, segments[-1]


def check_out_dir(out_dir: Path) -> None:
    """Refuse an output folder whose name something else has (a file, a broken symlink)."""
    if os.path.lexists(out_dir) and not out_dir.is_dir():
        raise not_a_folder(out_dir)


def not_a_folder(out_dir: Path) -> InvalidRequest:
    return InvalidRequest(f"cannot save in {out_dir}: it is not a folder")


def make_folders(out_dir: Path, segments: list[str]) -> Path:
    """``out_dir/a/b/...``: each folder created if missing, then opened relative to its parent
    with O_NOFOLLOW, so a symlink (or a file) in the way is refused, never followed."""
    folder = out_dir
    if not segments:
        return folder
    try:
        fd = os.open(out_dir, _FOLDER_FLAGS)
    except OSError as exc:
        raise InvalidRequest(f"cannot write in {out_dir}: {exc.strerror or exc}") from None
    try:
        for segment in segments:
            folder = folder / segment
            try:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(segment, 0o777, dir_fd=fd)
                inner = os.open(segment, _FOLDER_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise InvalidRequest(
                        f"cannot save in {folder}: it is not a folder (a file or a symlink)"
                    ) from None
                raise InvalidRequest(f"cannot create folder {folder}: {exc.strerror}") from None
            os.close(fd)
            fd = inner
    finally:
        os.close(fd)
    inside = os.path.realpath(out_dir)
    if os.path.commonpath([inside, os.path.realpath(folder)]) != inside:  # swapped meanwhile
        raise InvalidRequest(f"cannot save in {folder}: it leads out of {out_dir}")
    return folder


def file_sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(READ_SIZE):
            digest.update(block)
    return digest.hexdigest()


def holds(path: Path, size: int, sha1: str) -> bool:
    """Whether ``path`` is a file with this content already (its size, then its SHA-1)."""
    return path.is_file() and path.stat().st_size == size and file_sha1(path) == sha1


def _holds_or_unknown(path: Path, same: tuple[int, str]) -> bool:
    try:
        return holds(path, *same)
    except OSError:  # cannot be read: not known to be the file, so it is left alone
        return False


def link_into_place(tmp: Path, out_dir: Path, name: str, same: tuple[int, str] | None = None) -> Path:
    """Give the verified partial file its name without ever replacing an existing file.

    ``same``: the file's (size, SHA-1).  A name taken meanwhile by a file with that content (the
    same download, run twice at once into one folder) is where the file is: no ``name (1).ext``."""
    for candidate in candidates(out_dir, name):
        try:
            os.link(tmp, candidate)
            return candidate
        except FileExistsError:
            if same is not None and _holds_or_unknown(candidate, same):
                return candidate
            continue
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise InvalidRequest(f"cannot write {candidate}: {exc.strerror}") from None
            if candidate.exists():  # no hard links here: check, then rename
                continue
            os.replace(tmp, candidate)
            return candidate
    raise AssertionError("unreachable")


def candidates(folder: Path, name: str) -> Iterator[Path]:
    """``name``, then ``stem (1).ext``, ``stem (2).ext``...; the stem shortened to fit 255 bytes."""
    yield folder / name
    stem, dot, suffix = name.partition(".") if not name.startswith(".") else (name, "", "")
    if len(f"{dot}{suffix}".encode()) > 200:  # a name that is nearly all extension
        stem, dot, suffix = name, "", ""
    n = 1
    while True:
        tail = f" ({n}){dot}{suffix}"
        room = MAX_NAME_BYTES - len(tail.encode())
        short = stem.encode()[:room].decode("utf-8", "ignore")
        yield folder / f"{short}{tail}"
        n += 1
