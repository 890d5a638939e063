"""Every user action, once: the command line (client.cli) parses arguments and calls these, and the
menu (client.menu) asks questions and calls the same functions, so no message is written twice.

Each action takes the Client, plain parameters and a :class:`Sink` (human text or ``--json``,
progress bars or none), writes its results, and returns the exit status.  An error that ends the
action is raised (a FileClusterError: the caller prints it as one line); an action over several
files reports each failure on stderr, goes on with the others, and returns 1 at the end.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
import threading
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from client import output
from client.api import Client, is_link, moved_name
from client.destination import check_out_dir
from client.listing import folder_of, rooted, under, view
from client.partial import PARTIAL_DIR
from common.errors import Conflict, FileClusterError, InvalidRequest, NotFound
from common.names import check_user_name, undecodable

if TYPE_CHECKING:  # what one command needs is imported when it runs: the others start sooner
    from client.batch import Wanted
    from client.download import DownloadResult
    from client.upload import UploadResult

PASSWORD_ENV = "FILECLUSTER_PASSWORD"
DEFAULT_FOLDER = "ClientFiles"


class Sink:
    """Where an action's results go: text for a person or one JSON document on stdout; errors as
    one line each on stderr; progress bars on stderr (only on a terminal, and not when quiet)."""

    def __init__(self, json_mode: bool = False, progress: bool = True) -> None:
        self.json = json_mode
        self.progress = progress

    def say(self, text: str) -> None:
        """A line for a person (nothing in JSON mode)."""
        if not self.json:
            print(text)

    def emit(self, document: Any) -> None:
        """The JSON document of the action (nothing in text mode)."""
        if self.json:
            print(json.dumps(document, ensure_ascii=False, indent=2))

    def note(self, text: str) -> None:
        """A remark for a person that is not the result, on stderr (so ``$(filecluster share …)``
        captures the link alone); nothing in JSON mode."""
        if not self.json:
            print(text, file=sys.stderr)

    def error(self, text: str) -> None:
        print(f"error: {text}", file=sys.stderr)

    def bars(self, label: str, overall: output.OverallBar | None = None) -> output.ProgressBars:
        return output.ProgressBars(label, None if self.progress else False, overall)

    def overall(self, count: int, total: int = 0) -> output.OverallBar:
        """The bar over several files (none for a single file)."""
        return output.OverallBar(count, total, None if self.progress and count > 1 else False)


# -- accounts -----------------------------------------------------------------------------------


def read_password(confirm: bool = False, interactive: bool = False) -> str:
    """FILECLUSTER_PASSWORD, else a prompt without echo on a terminal; ``interactive`` (the menu)
    also reads it as a line from a stdin that is not a terminal."""
    password = os.environ.get(PASSWORD_ENV)
    if password is not None:
        return password
    if sys.stdin.isatty():
        ask: Callable[[str], str] = getpass.getpass
    elif interactive:
        ask = input
    else:
        raise InvalidRequest(f"no password: set {PASSWORD_ENV} or run on a terminal")
    password = ask("password: ")
    if confirm and ask("password again: ") != password:
        raise InvalidRequest("the two passwords differ")
    return password


def register(c: Client, out: Sink, user: str, interactive: bool = False) -> int:
    check_user_name(user)  # before a password is asked for
    password = read_password(confirm=True, interactive=interactive)
    c.register(user, password)
    c.login(user, password)
    out.say(f"registered and logged in as {user}")
    out.emit({"user": user})
    return 0


def login(c: Client, out: Sink, user: str, interactive: bool = False) -> int:
    check_user_name(user)  # before a password is asked for (no account has such a name)
    c.login(user, read_password(interactive=interactive))
    user = c.user or user  # the account's name as registered ("ANA" logs in as ana)
    out.say(f"logged in as {user}")
    out.emit({"user": user})
    return 0


def logout(c: Client, out: Sink) -> int:
    was = c.logout()
    out.say("logged out" if was else "not logged in")
    out.emit({"logged_out": was})
    return 0


def whoami(c: Client, out: Sink) -> int:
    account = c.account()
    out.say(output.account_text(account))
    out.emit(account)
    return 0


# -- several files at once -------------------------------------------------------------------------


@dataclass
class Tally:
    """The outcome of an action over several files: what worked, what failed (each already said)."""

    out: Sink
    count: int
    done: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)

    def fail(self, what: str, exc: FileClusterError, key: str = "path") -> None:
        message = str(exc)
        shown = _shown(what)  # a newline, bytes not UTF-8: one line
        self.out.error(message if what in message or shown in message else f"{shown}: {message}")
        self.failed.append({key: what, "error": message})

    def finish(self, verb: str) -> int:
        """Say how it went over several files, print the JSON document, and the exit status."""
        size = sum(int(d.get("size", 0)) for d in self.done)
        if self.failed and self.count > 1:
            self.out.say(
                f"{len(self.done)} of {output.plural(self.count, 'file')} {verb}; {len(self.failed)} failed"
            )
        elif self.count > 1:
            there = sum(1 for d in self.done if d.get("fetched") is False)  # a download found in place
            note = f" ({there} already there)" if there else ""
            self.out.say(f"{output.plural(len(self.done), 'file')} {verb}, {output.human_size(size)}{note}")
        self.out.emit({"files": self.done, "failed": self.failed})
        return 1 if self.failed else 0


# -- upload ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Upload:
    path: Path
    name: str | None  # None: the base name
    size: int | None


def _walk(folder: Path, base: str, tally: Tally) -> Iterator[_Upload]:
    """Every file under ``folder`` named ``base/relative/path``, in name order; symlinks to
    folders are not followed."""

    def unreadable(exc: OSError) -> None:
        tally.fail(str(exc.filename or folder), InvalidRequest(f"cannot read {exc.filename}: {exc.strerror}"))

    for top, dirs, files in os.walk(folder, onerror=unreadable):
        dirs[:] = sorted(d for d in dirs if d != PARTIAL_DIR)  # a download's unfinished files: not yours
        rel = Path(top).relative_to(folder).parts
        for name in sorted(files):
            path = Path(top) / name
            try:
                size: int | None = path.stat().st_size
            except OSError:
                size = None  # the upload itself says what is wrong
            yield _Upload(path, "/".join([base, *rel, name]), size)


def _upload_plan(paths: Sequence[str], recursive: bool, as_name: str | None, tally: Tally) -> list[_Upload]:
    plan: list[_Upload] = []
    for raw in paths:
        path = Path(raw)
        try:
            is_dir = path.is_dir()
        except OSError as exc:  # a folder on the way that may not be looked in
            tally.fail(raw, InvalidRequest(f"cannot read {raw}: {exc.strerror or exc}"))
            continue
        if is_dir:
            if not recursive:
                tally.fail(
                    raw, InvalidRequest(f"{raw} is a folder; to upload all of it: upload -r {_quoted(raw)}")
                )
                continue
            base = as_name or Path(os.path.abspath(path)).name
            if not base:
                tally.fail(
                    raw, InvalidRequest(f"name the folder in the cluster: upload -r {_quoted(raw)} --as NAME")
                )
                continue
            failed = len(tally.failed)
            found = list(_walk(path, folder_of(base), tally))
            if not found and len(tally.failed) == failed:  # else what could not be read is said
                tally.fail(raw, InvalidRequest(f"{raw} has no files to upload"))
            plan += found
            continue
        try:
            size: int | None = path.stat().st_size
        except OSError:
            size = None
        plan.append(_Upload(path, as_name, size))
    return _once_each(plan)


def _once_each(plan: list[_Upload]) -> list[_Upload]:
    """The plan with a file named twice under the same name (``upload a.txt ./a.txt``) once: a
    second upload of it would only make a second, identical version.  Two different files that
    would get the same name (``upload */README.md``, ``upload -r a/pics b/pics`` with a file in
    both) refuse the whole upload: one would silently become an older version of the other."""

    def named(item: _Upload) -> str:  # as the cluster will name it
        return unicodedata.normalize("NFC", item.name or item.path.name)

    names = Counter(named(item) for item in plan)
    first: dict[str, tuple[Path, Path]] = {}  # a name given twice: the first file's real path, as given
    kept: list[_Upload] = []
    for item in plan:
        name = named(item)
        if names[name] > 1:  # only a name given twice can be the same file twice (realpath: 4 stats)
            real = Path(os.path.realpath(item.path))
            if name in first:
                if first[name][0] == real:
                    continue
                raise InvalidRequest(
                    f"{_shown(str(first[name][1]))} and {_shown(str(item.path))} would both be uploaded as "
                    f"{_shown(name)}; nothing was uploaded (upload them one at a time, each with --as NAME)"
                )
            first[name] = (real, item.path)
        kept.append(item)
    return kept


def _shown(what: str) -> str:
    """A local path or a name in an error: as it is if printable, else with its odd bytes escaped."""
    return what if what.isprintable() else undecodable(what)


def upload_line(r: UploadResult) -> str:
    what = f"updated {r.name} (version {r.version})" if r.version > 1 else f"uploaded {r.name}"
    return f"{what}  size={output.human_size(r.size)}  sha1={r.sha1}  sent={output.human_size(r.sent)}"


def upload(
    c: Client, out: Sink, paths: Sequence[str], recursive: bool = False, as_name: str | None = None
) -> int:
    """Upload files (``recursive``: folders too, keeping paths under the folder's base name, or
    under ``as_name``); ``as_name`` names a single file."""
    tally = Tally(out, 0)
    plan = _upload_plan(paths, recursive, as_name, tally)
    tally.count = len(plan) + len(tally.failed)
    alone = tally.count == 1 and bool(plan)  # a single file: its error is the command's
    with out.overall(len(plan), sum(u.size or 0 for u in plan)) as overall:
        for batched, run in _runs(plan, batch=len(plan) > 1):
            if batched:
                _upload_batched(c, out, run, overall, tally)
                continue
            item = run[0]
            overall.start(item.size)
            try:
                with out.bars(item.name or item.path.name, overall) as bars:
                    r = c.upload(item.path, bars, name=item.name)
            except FileClusterError as exc:
                if alone and not out.json:  # in JSON mode the document still says what failed
                    raise
                tally.fail(str(item.path), exc)
                continue
            finally:
                overall.finish()
            _uploaded(out, tally, item, r)
    return tally.finish("uploaded")


def _runs(plan: list[_Upload], batch: bool) -> Iterator[tuple[bool, list[_Upload]]]:
    """The plan in order, as runs of small files to upload in batches (when ``batch``), and the
    other files one by one (with their own progress bars)."""
    from client.upload_batch import SMALL_FILE

    run: list[_Upload] = []
    for item in plan:
        if batch and item.size is not None and item.size <= SMALL_FILE:
            run.append(item)
            continue
        if run:
            yield True, run
            run = []
        yield False, [item]
    if run:
        yield True, run


def _upload_batched(
    c: Client, out: Sink, run: list[_Upload], overall: output.OverallBar, tally: Tally
) -> None:
    """Small files in batches: each reported as it would be alone, in order."""
    from client.upload_batch import BatchItem

    def done(index: int, outcome: UploadResult | FileClusterError) -> None:
        item = run[index]
        overall.start(item.size)
        try:
            if not isinstance(outcome, FileClusterError):  # its bar, as a file alone draws it, once stored
                with out.bars(item.name or item.path.name, overall) as bars:
                    bars("sending", outcome.size, outcome.size)
        finally:
            overall.finish()
        if isinstance(outcome, FileClusterError):
            tally.fail(str(item.path), outcome)
        else:
            _uploaded(out, tally, item, outcome)

    c.upload_many([BatchItem(u.path, u.name) for u in run], done)


def _uploaded(out: Sink, tally: Tally, item: _Upload, r: UploadResult) -> None:
    out.say(upload_line(r))
    tally.done.append(
        {
            "path": str(item.path),
            "name": r.name,
            "size": r.size,
            "sha1": r.sha1,
            "sent": r.sent,
            "version": r.version,
        }
    )


# -- listing --------------------------------------------------------------------------------------


def list_files(c: Client, out: Sink, prefix: str = "", recursive: bool = False, long: bool = False) -> int:
    """Your files, like ``ls``: the folder ``prefix`` (default: the top), its sub-folders with how
    much is in them, and its files; ``recursive``: every file under it."""
    base = folder_of(prefix)
    files = under(c.list(base), base)
    if base and not files:
        raise NotFound(f"you have no file or folder named {base!r}")
    entries = view(files, base, recursive)
    out.emit(output.entries_json(entries))
    out.say(output.listing_table(entries, long=long, width=output.terminal_width()))
    if entries:
        out.say(output.listing_summary(entries))
    return 0


def share(
    c: Client, out: Sink, name: str, expires: str | None = None, max_downloads: int | None = None
) -> int:
    """A new link to a file or folder, printed (the http one when the cluster has a gateway)."""
    from client.expiry import parse_expires

    when = parse_expires(expires) if expires else None  # its bounds: cli.usage_problem, then the proxy's
    reply = c.share(name, expires=when, max_downloads=max_downloads)
    out.say(str(reply["link"]))
    limits = []
    if reply.get("expires"):
        limits.append(f"expires {output.local_time(reply['expires'])}")
    if reply.get("max_downloads"):
        limits.append(f"at most {output.plural(reply['max_downloads'], 'download')}")
    if limits:
        out.note("(" + ", ".join(limits) + ")")
    out.emit(output.link_json({"name": name, **reply}))
    return 0


def links(c: Client, out: Sink) -> int:
    """Your links, newest first, with their state."""
    rows = c.links()
    out.say(output.links_table(rows) if rows else "you have no links (make one with: filecluster share NAME)")
    out.emit({"links": [output.link_json(row) for row in rows]})
    return 0


def unshare(c: Client, out: Sink, target: str) -> int:
    """Revoke a link (its URL or token), or every link of a file or folder."""
    reply = c.revoke(target)
    revoked = int(reply["revoked"])
    if reply["by"] == "name":  # every live link of a file or folder (none: an error, NotFound)
        out.say(f"revoked {output.plural(revoked, 'link')} of {folder_of(target.strip())}")
    else:  # the link is never shown: it is long, and a secret
        out.say("revoked the link" if revoked else "that link had already ended")
    out.emit({"target": target, "revoked": revoked})
    return 0


# -- download -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Download:
    target: str  # a link, a token or a name
    save_as: str | None
    size: int | None


def _download_plan(c: Client, targets: Sequence[str], recursive: bool, tally: Tally) -> list[_Download]:
    plan: list[_Download] = []
    for target in targets:
        if not recursive or is_link(target):
            plan.append(_Download(target, None, None))
            continue
        base = folder_of(target)
        try:
            files = under(c.list(base), base)
        except FileClusterError as exc:
            tally.fail(target, exc, "target")
            continue
        if not files:
            tally.fail(target, NotFound(f"you have no file or folder named {base!r}"), "target")
        top = base.rsplit("/", 1)[-1]
        for f in sorted(files, key=lambda f: str(f["name"])):
            name = str(f["name"])
            save_as = None if name == base else (f"{top}/{name[len(base) + 1 :]}" if base else name)
            plan.append(_Download(name, save_as, int(f["size"])))
    return plan


def download_line(r: DownloadResult, save_as: str | None = None) -> str:
    if not r.sha1:  # a folder link: every file of it
        return f"saved {r.path}  size={output.human_size(r.size)}"
    sized = f"size={output.human_size(r.size)}  sha1={r.sha1}"
    if not r.fetched:
        return f"already there: {r.path}  {sized}"
    leaf = (save_as or r.name).rsplit("/", 1)[-1]
    notes = [f"resumed: {output.human_size(r.resumed)} were already here"] if r.resumed else []
    if r.path.name != leaf:
        notes.append(f"a different {leaf} was already there")
    return f"saved {r.path}  {sized}" + "".join(f"  ({note})" for note in notes)


def download(
    c: Client,
    out: Sink,
    targets: Sequence[str],
    recursive: bool = False,
    version: int | None = None,
    out_dir: Path = Path(DEFAULT_FOLDER),
) -> int:
    """Download links, tokens or your files by name into ``out_dir`` (``recursive``: whole folders,
    keeping their paths under the folder's base name; ``version``: an older version of one file,
    which the command line checks it is given for one name alone, cli.usage_problem)."""
    check_out_dir(out_dir)  # said once for the command, not once for each file
    tally = Tally(out, 0)
    plan = _download_plan(c, targets, recursive, tally)
    tally.count = len(plan) + len(tally.failed)
    alone = tally.count == 1 and bool(plan)
    with out.overall(len(plan), sum(d.size or 0 for d in plan)) as overall:
        by_name = [d for d in plan if not is_link(d.target)] if version is None and c.proxy.token else []
        if len(by_name) > 1:  # your own files, many: all at once (client.batch)
            _download_together(c, out, by_name, out_dir, tally, overall)
            plan = [d for d in plan if is_link(d.target)]
        for item in plan:
            overall.start(item.size)
            label = (item.save_as or item.target).rsplit("/", 1)[-1]
            if is_link(item.target):
                label = "shared file"  # never the link: it is long, and a secret
            try:
                with out.bars(label, overall) as bars:
                    r = c.download(item.target, out_dir, bars, version=version, save_as=item.save_as)
            except FileClusterError as exc:
                exc = _folder_hint(c, item.target, exc, "download -r")
                if alone and not out.json:  # in JSON mode the document still says what failed
                    raise exc from None
                tally.fail(item.target, exc, "target")
                continue
            finally:
                overall.finish()
            _downloaded(out, tally, r, item.save_as)
    return tally.finish("downloaded")


def _downloaded(out: Sink, tally: Tally, r: DownloadResult, save_as: str | None) -> None:
    out.say(download_line(r, save_as))
    tally.done.append(
        {
            "name": r.name,
            "path": str(r.path),
            "size": r.size,
            "sha1": r.sha1,
            "fetched": r.fetched,
            "resumed": r.resumed,
        }
    )


def _download_together(
    c: Client, out: Sink, plan: list[_Download], out_dir: Path, tally: Tally, overall: output.OverallBar
) -> None:
    """Your own files, many at once (client.batch); each reported in the plan's order at the end."""
    from client.batch import Wanted, download_many

    results: dict[Wanted, DownloadResult | FileClusterError] = {}
    lock = threading.Lock()

    def outcome(item: Wanted, result: DownloadResult | FileClusterError) -> None:
        with lock:
            results[item] = result
            overall.start(0 if isinstance(result, FileClusterError) else result.size)
            overall.finish()

    wanted = [Wanted(d.target, d.save_as) for d in plan]
    download_many(c.proxy, wanted, out_dir, outcome)
    for item in wanted:
        result = results[item]
        if isinstance(result, FileClusterError):
            tally.fail(item.name, _folder_hint(c, item.name, result, "download -r"), "target")
        else:
            _downloaded(out, tally, result, item.save_as)


def _quoted(word: str) -> str:
    """``word`` as a shell takes it back in a command to copy ("my pics" -> 'my pics')."""
    import shlex

    return shlex.quote(word)


def _folder_hint(
    c: Client, name: str, exc: FileClusterError, command: str, what: str = "for all of it"
) -> FileClusterError:
    """A "no such file" (or a "that is a folder", or a name typed as a folder's, "pics/") for a
    folder's name becomes a hint to use ``command``."""
    as_folder = (  # "pics/": refused as a file's name
        isinstance(exc, InvalidRequest) and str(exc).startswith("invalid file name") and name.endswith("/")
    )
    if (isinstance(exc, (NotFound, Conflict)) or as_folder) and not is_link(name):
        try:
            if c.is_folder(folder_of(name)):
                hint = f"{what}: filecluster {command} {_quoted(name)}"
                return InvalidRequest(f"{folder_of(name)!r} is a folder; {hint}")
            if as_folder:
                return NotFound(f"you have no folder named {folder_of(name)!r}")
        except FileClusterError:
            pass
    return exc


# -- changes --------------------------------------------------------------------------------------


def delete(c: Client, out: Sink, names: Sequence[str], recursive: bool = False) -> int:
    """Delete files (every version); ``recursive``: folders and everything under them too."""
    tally = Tally(out, len(names))
    for name in names:
        target = folder_of(name) if recursive else rooted(name)
        try:
            if not recursive and name.endswith("/"):  # a folder's name: delete -r, if it is one
                raise NotFound(f"you have no file or folder named {folder_of(name)!r}")
            n = c.delete(target, recursive=recursive)
        except FileClusterError as exc:
            exc = _folder_hint(c, name, exc, "delete -r") if not recursive else exc
            if len(names) == 1 and not out.json:  # in JSON mode the document still says what failed
                raise exc from None
            tally.fail(name, exc, "name")
            continue
        out.say(f"deleted {target}" + (f" ({output.plural(n, 'file')})" if recursive else ""))
        tally.done.append({"name": target, "deleted": n})
    if tally.failed or len(names) > 1:
        deleted = output.plural(sum(int(d["deleted"]) for d in tally.done), "file")
        out.say(f"{deleted} deleted; {len(tally.failed)} failed" if tally.failed else f"{deleted} deleted")
    out.emit({"deleted": tally.done, "failed": tally.failed})
    return 1 if tally.failed else 0


def move(c: Client, out: Sink, old: str, new: str) -> int:
    """Rename a file or a folder (metadata only: versions and links follow)."""
    old = folder_of(old)  # "pics//" and "./pics/" are the folder pics, as before a NEW could end in "/"
    n = c.move(old, new)
    new = moved_name(old, new)
    out.say(f"moved {old} to {new}" + (f" ({output.plural(n, 'file')})" if n != 1 else ""))
    out.emit({"old": old, "new": new, "moved": n})
    return 0


_PER_FILE = "versions are kept for each of its files"


def versions(c: Client, out: Sink, name: str) -> int:
    try:
        kept = c.versions(name)
    except FileClusterError as exc:
        raise _folder_hint(c, name, exc, "list", _PER_FILE) from None
    out.say(output.versions_table(kept))
    out.emit({"name": name, "versions": [output.version_json(v) for v in kept]})
    return 0


def restore(c: Client, out: Sink, name: str, version: int) -> int:
    try:
        item = c.restore(name, version)
    except FileClusterError as exc:
        raise _folder_hint(c, name, exc, "list", _PER_FILE) from None
    out.say(f"restored {name} version {version}: it is now version {item.get('version', '?')}")
    out.emit({"file": output.file_json(item), "restored": version})
    return 0


def status(c: Client, out: Sink) -> int:
    """The storage servers and the chunks' health; 1 when a server is not up or data is at risk."""
    reply = c.status()
    out.say(output.status_table(reply))
    out.emit(output.status_json(reply))
    return 0 if output.cluster_sound(reply) else 1
