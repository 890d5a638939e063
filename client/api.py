"""The client library: everything a user does, as methods, with no printing.

>>> c = Client.from_environment()
>>> c.login("ana", "secret-password")
>>> c.upload(Path("report.pdf"))                              # as report.pdf (version 1)
>>> c.upload(Path("report.pdf"), name="work/report.pdf")     # a name may be a path
>>> c.list("work/")                                          # names starting with work/
>>> link = c.share("report.pdf")
>>> Client.from_environment().download(link, Path("ClientFiles"))

Progress is reported through an optional callback ``(phase, done, total)``;
the command line turns it into progress bars.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from client import listing
from client import session as saved
from client.proxy_link import ProxyLink
from common.config import LINK_SCHEME, client_home, parse_address, proxy_address
from common.errors import (
    AuthError,
    FileClusterError,
    Gone,
    InvalidRequest,
    NotFound,
    Throttled,
    Unavailable,
)
from common.messages import MsgType
from common.names import check_file_name, check_password_rules, check_user_name

if TYPE_CHECKING:  # each command imports what it uses when it runs: a process starts sooner
    from client import download as downloader
    from client import upload as uploader
    from client import upload_batch as batcher

# a link's tail: /s/TOKEN, then in a folder link the path of a file or folder in it (percent-encoded),
# then the gateway's ?view or ?info (what a browser's address bar shows: the same link), and a
# #fragment, which a browser never sends, so it is no part of the link
_LINK_TAIL = r"/s/(?P<token>[A-Za-z0-9_-]+)(?:/(?P<path>[^?#\s]*))?(?:\?(?:view|info))?(?:#\S*)?\Z"
LINK_RE = re.compile(rf"(?i:{LINK_SCHEME})://(?P<addr>\[[^\]]+\]:\d+|[^/:]+:\d+){_LINK_TAIL}")  # any case
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{22,}\Z")
HTTP_LINK_RE = re.compile(
    rf"(?P<base>(?P<scheme>(?i:https?))://(?:\[[^\]]+\]|[^/:?#\s]+)(?::\d+)?){_LINK_TAIL}"
)
URL_RE = re.compile(rf"(?:https?://|{LINK_SCHEME}:)", re.IGNORECASE)  # never a file name ('//')
GATEWAY_TIMEOUT = 10.0  # seconds to wait for a gateway's ?info


@dataclass(frozen=True)
class Link:
    host: str
    port: int
    token: str
    path: str | None = None  # a file or folder in a folder link


def link_path(raw: str | None) -> str | None:
    """The path in a link (``/s/TOKEN/PATH``: percent-encoded UTF-8; a trailing ``/`` is ignored)."""
    if not raw or not raw.strip("/"):
        return None
    import urllib.parse

    try:
        text = urllib.parse.unquote_to_bytes(raw.rstrip("/")).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("the path in this link is not UTF-8") from None
    return check_file_name(text)


def parse_link(text: str) -> Link | None:
    """A ``filecluster://`` share link, or None if ``text`` is not one."""
    match = LINK_RE.match(text.strip())
    if not match:
        return None
    host, port = parse_address(match["addr"])
    return Link(host, port, match["token"], link_path(match["path"]))


def not_a_link(text: str) -> InvalidRequest:
    """The error for a URL that is no share link (mistyped, cut short, another site's)."""
    return InvalidRequest(
        f"not a share link: {text.strip()} (a share link looks like http://HOST:PORT/s/TOKEN)"
    )


def is_link(text: str) -> bool:
    """Whether ``text`` is a share link of either form (http(s):// or filecluster://)."""
    return parse_link(text) is not None or HTTP_LINK_RE.match(text.strip()) is not None


def resolve_http_link(text: str) -> Link | None:
    """The proxy and token behind an ``http(s)://HOST:PORT/s/TOKEN`` link, asked of its gateway
    (``?info`` names the proxy it uses); None if ``text`` is not such a link."""
    match = HTTP_LINK_RE.match(text.strip())
    if not match:
        return None
    base = match["scheme"].lower() + match["base"][len(match["scheme"]) :]
    url = f"{base}/s/{match['token']}?info"
    import urllib.error  # here, not at start-up: only http links need them (~10 ms of imports)
    import urllib.parse
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=GATEWAY_TIMEOUT) as reply:
            info = json.loads(reply.read(1 << 20))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise NotFound(_http_reason(exc, "unknown link (it may have been deleted)")) from None
        if exc.code == 410:
            raise Gone(_http_reason(exc, "this link no longer serves")) from None
        if exc.code == 429:
            raise Throttled(_http_reason(exc, "too many tries from your address; wait")) from None
        raise Unavailable(f"the link's gateway answered {exc.code}") from None
    except (OSError, ValueError) as exc:
        why = getattr(exc, "reason", None) or exc  # urlopen's URLError: the reason, not its repr
        why = getattr(why, "strerror", None) or why
        raise Unavailable(f"cannot reach the link's gateway {match['base']}: {why}") from None
    proxy = info.get("proxy") if isinstance(info, dict) else None
    if not isinstance(proxy, str):
        raise Unavailable("the link's gateway did not say which proxy serves it")
    host, port = parse_address(proxy)
    if host in ("", "0.0.0.0", "::"):
        host = urllib.parse.urlsplit(match["base"]).hostname or host
    return Link(host, port, match["token"], link_path(match["path"]))


if TYPE_CHECKING:
    import urllib.error

_HTTP_ERROR_BODY = re.compile(r"[0-9]{3} [A-Za-z -]+: ([^\x00-\x1f\x7f-\x9f]{1,300})\n?\Z")


def _http_reason(exc: urllib.error.HTTPError, default: str) -> str:
    """Why the gateway refused: its error body is one line, ``410 Gone: this link has expired``."""
    with contextlib.suppress(OSError, ValueError):
        match = _HTTP_ERROR_BODY.match(exc.read(4096).decode("utf-8"))
        if match:
            return match[1].strip()
    return default


class Client:
    def __init__(
        self,
        proxy: tuple[str, int],
        home: Path | None = None,
        token: str | None = None,
        user: str | None = None,
    ) -> None:
        self.home = home or client_home()
        self.proxy = ProxyLink(*proxy, token=token)
        self.user = user
        self._chunk_size: int | None = None  # the cluster's, once a HELLO said it
        self.session_elsewhere: str | None = None  # the proxy a saved session is for, if another

    @classmethod
    def from_environment(cls, proxy: str | None = None, home: Path | None = None) -> Client:
        """A client for ``--proxy``/FILECLUSTER_PROXY, resuming the saved session if it is for that proxy."""
        address = proxy_address(proxy)
        home = home or client_home()
        session = saved.load(home)
        if session is not None and session.proxy == f"{address[0]}:{address[1]}":
            return cls(address, home, session.token, session.user)
        client = cls(address, home)
        if session is not None:
            client.session_elsewhere = session.proxy
        return client

    def close(self) -> None:
        self.proxy.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- accounts ------------------------------------------------------------------------
    def register(self, user: str, password: str) -> None:
        check_user_name(user)
        check_password_rules(password, new=True)
        self.proxy.call(MsgType.REGISTER, {"user": user, "password": password})

    def login(self, user: str, password: str) -> None:
        check_password_rules(password, new=False)
        reply = self.proxy.call(MsgType.LOGIN, {"user": user, "password": password})
        self.proxy.token, self.user = reply["session"], reply["user"]
        try:
            saved.save(self.home, saved.SavedSession(self.proxy.address, reply["user"], reply["session"]))
        except FileClusterError:
            with contextlib.suppress(FileClusterError):  # a session nobody can use: end it
                self.proxy.call(MsgType.LOGOUT, session=True)
            self.proxy.token, self.user = None, None
            raise

    def logout(self) -> bool:
        """End the session on the proxy and forget it here; False if there was none."""
        if not self.proxy.token:
            saved.clear(self.home)
            return False
        try:
            self.proxy.call(MsgType.LOGOUT, session=True)
        except AuthError:
            pass
        finally:
            saved.clear(self.home)
            self.proxy.token, self.user = None, None
        return True

    def whoami(self) -> str:
        self._need_session()
        return str(self.proxy.call(MsgType.WHOAMI, session=True)["user"])

    def account(self) -> dict[str, Any]:
        """WHOAMI's reply: ``user``, ``usage`` (bytes, every kept version counted), ``quota``
        (bytes, None: unlimited) and ``files``."""
        self._need_session()
        return self.proxy.call(MsgType.WHOAMI, session=True)

    def _need_session(self) -> None:
        if not self.proxy.token and self.session_elsewhere:  # FILECLUSTER_PROXY / --proxy changed
            raise AuthError(
                f"not logged in at {self.proxy.address}; your session is for {self.session_elsewhere} "
                f"(--proxy or FILECLUSTER_PROXY picks it); or run: filecluster login USER"
            )
        if not self.proxy.token:
            raise AuthError("not logged in; run: filecluster login USER")

    # -- files ---------------------------------------------------------------------------
    def upload(
        self, path: Path, progress: uploader.Progress | None = None, *, name: str | None = None
    ) -> uploader.UploadResult:
        """Upload a file as ``name`` (default: its base name; a path makes folders).  An existing
        name gets a new version: the result's ``version`` says which."""
        self._need_session()
        from client import upload as uploader

        return uploader.upload(self.proxy, Path(path), progress, name=name, chunk_size=self.chunk_size())

    def upload_many(self, items: Sequence[batcher.BatchItem], done: batcher.Done) -> None:
        """Upload many files in batches (client.upload_batch): ``done(index, outcome)`` hears each
        one's UploadResult, or the error that failed it alone, in order."""
        self._need_session()
        from client import upload_batch as batcher

        batcher.upload_many(self.proxy, items, self.chunk_size(), done)

    def chunk_size(self) -> int:
        """The cluster's chunk size (one HELLO per client)."""
        if self._chunk_size is None:
            self._chunk_size = int(self.proxy.call(MsgType.HELLO)["chunk_size"])
        return self._chunk_size

    def versions(self, name: str) -> list[dict[str, Any]]:
        """Every kept version of a file, newest first: ``version``, ``size``, ``sha1``,
        ``uploaded``, ``current``."""
        self._need_session()
        header = {"name": check_file_name(listing.rooted(name))}
        reply = self.proxy.call(MsgType.VERSIONS, header, session=True)
        return list(reply["versions"])

    def restore(self, name: str, version: int) -> dict[str, Any]:
        """Make version ``version``'s content the file's new current version; the file as LIST
        shows it."""
        self._need_session()
        header = {"name": check_file_name(listing.rooted(name)), "version": version}
        return dict(self.proxy.call(MsgType.RESTORE, header, session=True)["file"])

    def move(self, old: str, new: str) -> int:
        """Rename a file, or a folder with everything in it; how many files moved."""
        self._need_session()
        header = {
            "old": check_file_name(typed_folder(old)),
            "new": check_file_name(moved_name(old, new), new=True),
        }
        return int(self.proxy.call(MsgType.MOVE, header, session=True)["moved"])

    def list(self, prefix: str = "") -> list[dict[str, Any]]:
        """Your own files (nobody can list another user's) whose names start with ``prefix``
        ("photos/" for what is in the folder photos), sorted by name."""
        self._need_session()
        return listing.fetch_all(lambda header: self.proxy.call(MsgType.LIST, header, session=True), prefix)

    def is_folder(self, name: str) -> bool:
        """Whether ``name`` is one of your folders (one file under it is enough: a LIST of one)."""
        name = typed_folder(name)
        if not name or not self.proxy.token:
            return False
        reply = self.proxy.call(MsgType.LIST, {"prefix": name + "/", "limit": 1}, session=True)
        return bool(reply.get("files"))

    def share(
        self, name: str, expires: float | None = None, max_downloads: int | None = None
    ) -> dict[str, Any]:
        """A new link to a file or folder (each call makes another): ``token``, ``link`` (http if the
        cluster has a gateway), ``links`` (every form), ``expires`` (Unix time), ``max_downloads``."""
        self._need_session()
        header: dict[str, Any] = {"name": check_file_name(typed_folder(name))}
        if name.endswith("/"):  # "pics/": the folder, never a file of that name
            header["folder"] = True
        if expires is not None:
            header["expires"] = expires
        if max_downloads is not None:
            header["max_downloads"] = max_downloads
        return self.proxy.call(MsgType.SHARE, header, session=True)

    def links(self) -> builtins.list[dict[str, Any]]:
        """Your links, newest first: ``token``, ``name``, ``kind``, ``link``, ``created``,
        ``expires``, ``max_downloads``, ``downloads``, ``state``."""
        self._need_session()
        return list(self.proxy.call(MsgType.LINKS, session=True)["links"])

    def unshare(self, target: str) -> int:
        """Revoke a link (its URL or token), or every link of a name; how many were revoked."""
        return int(self.revoke(target)["revoked"])

    def revoke(self, target: str) -> dict[str, Any]:
        """As :meth:`unshare`, with what the proxy took ``target`` for: ``revoked`` (how many) and
        ``by`` ("link": a link or its token; "name": every live link of that file or folder)."""
        self._need_session()
        if not target.strip():
            raise InvalidRequest("name a link, a token or a file")
        if URL_RE.match(target.strip()) and not is_link(target):
            raise not_a_link(target)
        header: dict[str, Any] = {}
        if not URL_RE.match(target.strip()) and "/" in target:  # a name: "/pics/" is the folder pics
            if target.endswith("/") and target.strip("/"):
                header["folder"] = True  # as SHARE: never the links of a file of that name
            target = typed_folder(target)
        header["target"] = target.strip()
        reply = self.proxy.call(MsgType.UNSHARE, header, session=True)
        by = reply.get("by", "link" if is_link(target) else "name")  # a proxy from before "by"
        return {"revoked": int(reply["revoked"]), "by": by}

    def delete(self, name: str, recursive: bool = False) -> int:
        """Delete a file (every version); ``recursive``: also everything in the folder ``name``.
        How many files were deleted."""
        self._need_session()
        name = listing.rooted(name)
        header: dict[str, Any] = {"name": check_file_name(_folder(name) if recursive else name)}
        if recursive:
            header["recursive"] = True
        reply = self.proxy.call(MsgType.DELETE, header, session=True)
        return int(reply.get("deleted", 1))  # a proxy from before folders deletes one file

    def status(self) -> dict[str, Any]:
        self._need_session()
        return self.proxy.call(MsgType.STATUS, session=True)

    def locate(self, target: str, version: int | None = None, *, peek: bool = False) -> dict[str, Any]:
        """What LINK_OR_NAME refers to: a link, a bare link token, or one of your own files (its
        current version, or ``version``).  ``peek``: a link's file is only described (no tickets),
        which costs the link no download (see download).  A link or a token may come with white
        space around it (pasted); a name is taken exactly as given ("a.txt " is not "a.txt")."""
        name, target = listing.rooted(target), target.strip()
        if not target:
            raise InvalidRequest("name a file or paste a link")
        link = parse_link(target)
        if version is not None:
            if link is not None:
                raise InvalidRequest("a link always gives the current version; name one of your files")
            self._need_session()
            header = {"name": check_file_name(name), "version": version}
            return self.proxy.call(MsgType.LOCATE, header, session=True)
        if link is not None:
            header = _by_token(link.token, link.path, peek)
            if (link.host, link.port) == (self.proxy.host, self.proxy.port):
                return self.proxy.call(MsgType.LOCATE, header)
            with ProxyLink(link.host, link.port) as other:
                return other.call(MsgType.LOCATE, header)
        if URL_RE.match(target):
            raise not_a_link(target)
        if self.proxy.token:
            try:
                return self.proxy.call(MsgType.LOCATE, {"name": check_file_name(name)}, session=True)
            except (NotFound, InvalidRequest):
                if not TOKEN_RE.match(target):
                    raise
        elif not TOKEN_RE.match(target):
            raise AuthError(f"{target!r} is not a link; to download your own files by name, log in")
        try:
            return self.proxy.call(MsgType.LOCATE, _by_token(target, None, peek))
        except NotFound:
            raise NotFound(f"no file or link {target!r}") from None

    def download(
        self,
        target: str,
        out_dir: Path = Path("ClientFiles"),
        progress: downloader.Progress | None = None,
        *,
        version: int | None = None,
        save_as: str | None = None,
    ) -> downloader.DownloadResult:
        """A link, a bare token, or one of your own files by name (its current version, or
        ``version``) into ``out_dir``, as ``save_as`` (a relative path; default: the base name)."""
        from client import download as downloader

        link = parse_link(target.strip()) or resolve_http_link(target)
        if link is not None and version is not None:
            raise InvalidRequest("a link always gives the current version; name one of your files")
        if link is not None:
            same = (link.host, link.port) == (self.proxy.host, self.proxy.port)
            if same:
                return self._download_link(self.proxy, link.token, out_dir, progress, save_as, path=link.path)
            with ProxyLink(link.host, link.port) as other:  # its lease and reports go to that proxy
                return self._download_link(other, link.token, out_dir, progress, save_as, path=link.path)
        info = self.locate(target, version, peek=True)
        if info.get("kind") in ("folder", "file") and TOKEN_RE.match(target.strip()):  # a bare token
            return self._download_link(self.proxy, target.strip(), out_dir, progress, save_as, info)
        return downloader.download(
            info,
            out_dir,
            progress,
            relocate=lambda: self.locate(target, version),
            proxy=self.proxy,
            save_as=save_as,
        )

    def _download_link(
        self,
        proxy: ProxyLink,
        token: str,
        out_dir: Path,
        progress: downloader.Progress | None,
        save_as: str | None,
        info: dict[str, Any] | None = None,
        *,
        path: str | None = None,
    ) -> downloader.DownloadResult:
        """A link's file, or every file of a folder link (or of the folder ``path`` in it) into a
        folder named after it (the result then sums them up: its ``sha1`` is empty); ``path``: a
        file or folder in a folder link.  A file link is peeked at first, and located (a download
        of the link's budget) only if some of it must be fetched (client.download); a folder link's
        files, which count against no budget, are located and fetched many at once."""
        from client import download as downloader

        header = _by_token(token, path)
        info = info or proxy.call(MsgType.LOCATE, {**header, "peek": True})
        if info.get("kind") != "folder":
            return downloader.download(
                info,
                out_dir,
                progress,
                relocate=lambda: proxy.call(MsgType.LOCATE, header),
                proxy=proxy,
                save_as=save_as,
                link=True,
            )
        folder = save_as or str(info["name"])
        skip = len(path) + 1 if path else 0  # the files are named by their path in the link
        return _download_folder_link(proxy, token, info["files"], out_dir, progress, folder, skip)


def _download_folder_link(
    proxy: ProxyLink,
    token: str,
    files: list[dict[str, Any]],
    out_dir: Path,
    progress: downloader.Progress | None,
    folder: str,
    skip: int,
) -> downloader.DownloadResult:
    """Every file of a folder link, many at once (client.batch, LOCATE_MANY with the token), into
    ``folder``; one progress bar for them all.  A file that fails does not stop the others; the
    first failure is raised once they are done."""
    import threading

    from client import download as downloader
    from client.batch import Wanted, download_many

    wanted = [Wanted(str(f["name"]), f"{folder}/{str(f['name'])[skip:]}") for f in files]
    total = sum(int(f.get("size", 0)) for f in files)
    done: dict[str, int] = {}
    failed: list[FileClusterError] = []
    lock = threading.Lock()

    def report(name: str, n: int) -> None:
        with lock:
            done[name] = n
            if progress is not None:
                progress("receiving", sum(done.values()), total)

    def outcome(item: Wanted, result: downloader.DownloadResult | FileClusterError) -> None:
        if isinstance(result, FileClusterError):
            with lock:
                failed.append(result)
        else:
            report(item.name, result.size)

    def each(item: Wanted) -> downloader.Progress:
        def receiving(phase: str, n: int, _size: int) -> None:
            if phase == "receiving":
                report(item.name, n)

        return receiving

    download_many(proxy, wanted, out_dir, outcome, token=token, progress=each)
    if failed:
        raise failed[0]
    return downloader.DownloadResult(folder, out_dir / folder, sum(done.values()), "", True)


def _by_token(token: str, path: str | None, peek: bool = False) -> dict[str, Any]:
    """LOCATE's header for a link: its token, the path of a file or folder in a folder link, and
    whether only to peek (describe a file, reserve nothing)."""
    header: dict[str, Any] = {"token": token} if path is None else {"token": token, "path": path}
    return {**header, "peek": True} if peek else header


def moved_name(old: str, new: str) -> str:
    """The name ``old`` gets when moved to ``new`` as typed: a ``new`` ending in "/" is a folder to
    move it into, keeping its base name, as ``mv`` does ("archive/" -> "archive/a.txt"; "/": the
    top level); any other ``new`` is the new name itself."""
    if not new.endswith("/"):
        return typed_folder(new)
    into, base = typed_folder(new), listing.folder_of(old).rsplit("/", 1)[-1]
    return f"{into}/{base}" if into else base


def typed_folder(name: str) -> str:
    """A name as typed ("/photos/", "photos/", "a.txt") as the cluster knows it ("photos", "a.txt")."""
    return _folder(listing.rooted(name))


def _folder(name: str) -> str:
    """A folder named with a trailing "/" ("photos/") is the folder ("photos")."""
    return name[:-1] if name.endswith("/") and len(name) > 1 else name


__all__ = [
    "Client",
    "FileClusterError",
    "Link",
    "is_link",
    "moved_name",
    "parse_link",
    "resolve_http_link",
    "typed_folder",
]
