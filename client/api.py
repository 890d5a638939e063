"""The client library: everything a user does, as methods, with no printing.

>>> c = Client.from_environment()
>>> c.login("ana", "secret-password")
>>> c.upload(Path("report.pdf"))
>>> link = c.share("report.pdf")
>>> Client.from_environment().download(link, Path("ClientFiles"))

Progress is reported through an optional callback ``(phase, done, total)``;
the command line turns it into progress bars.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client import download as downloader
from client import session as saved
from client import upload as uploader
from client.proxy_link import ProxyLink
from common.config import LINK_SCHEME, client_home, parse_address, proxy_address
from common.errors import AuthError, FileClusterError, InvalidRequest, NotFound
from common.messages import MsgType
from common.names import check_file_name, check_password_rules, check_user_name

LINK_RE = re.compile(rf"{LINK_SCHEME}://(?P<addr>\[[^\]]+\]:\d+|[^/:]+:\d+)/s/(?P<token>[A-Za-z0-9_-]+)/?\Z")
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{22,}\Z")


@dataclass(frozen=True)
class Link:
    host: str
    port: int
    token: str


def parse_link(text: str) -> Link | None:
    """A share link, or None if ``text`` is not one."""
    match = LINK_RE.match(text.strip())
    if not match:
        return None
    host, port = parse_address(match["addr"])
    return Link(host, port, match["token"])


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

    @classmethod
    def from_environment(cls, proxy: str | None = None, home: Path | None = None) -> Client:
        """A client for ``--proxy``/FILECLUSTER_PROXY, resuming the saved session if it is for that proxy."""
        address = proxy_address(proxy)
        home = home or client_home()
        session = saved.load(home)
        if session is not None and session.proxy == f"{address[0]}:{address[1]}":
            return cls(address, home, session.token, session.user)
        return cls(address, home)

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

    def _need_session(self) -> None:
        if not self.proxy.token:
            raise AuthError("not logged in; run: filecluster login USER")

    # -- files ---------------------------------------------------------------------------
    def upload(self, path: Path, progress: uploader.Progress | None = None) -> uploader.UploadResult:
        self._need_session()
        return uploader.upload(self.proxy, Path(path), progress)

    def list(self) -> list[dict[str, Any]]:
        """Your own files (nobody can list another user's)."""
        self._need_session()
        return list(self.proxy.call(MsgType.LIST, session=True)["files"])

    def share(self, name: str) -> str:
        self._need_session()
        return str(self.proxy.call(MsgType.SHARE, {"name": check_file_name(name)}, session=True)["link"])

    def delete(self, name: str) -> None:
        self._need_session()
        self.proxy.call(MsgType.DELETE, {"name": check_file_name(name)}, session=True)

    def status(self) -> dict[str, Any]:
        self._need_session()
        return self.proxy.call(MsgType.STATUS, session=True)

    def locate(self, target: str) -> dict[str, Any]:
        """What LINK_OR_NAME refers to: a link, a bare link token, or one of your own files."""
        target = target.strip()
        if not target:
            raise InvalidRequest("name a file or paste a link")
        link = parse_link(target)
        if link is not None:
            if (link.host, link.port) == (self.proxy.host, self.proxy.port):
                return self.proxy.call(MsgType.LOCATE, {"token": link.token})
            with ProxyLink(link.host, link.port) as other:
                return other.call(MsgType.LOCATE, {"token": link.token})
        if target.startswith(f"{LINK_SCHEME}:"):
            raise InvalidRequest(f"not a valid link: {target}")
        if self.proxy.token:
            try:
                return self.proxy.call(MsgType.LOCATE, {"name": check_file_name(target)}, session=True)
            except (NotFound, InvalidRequest):
                if not TOKEN_RE.match(target):
                    raise
        elif not TOKEN_RE.match(target):
            raise AuthError(f"{target!r} is not a link; to download your own files by name, log in")
        try:
            return self.proxy.call(MsgType.LOCATE, {"token": target})
        except NotFound:
            raise NotFound(f"no file or link {target!r}") from None

    def download(
        self, target: str, out_dir: Path = Path("ClientFiles"), progress: downloader.Progress | None = None
    ) -> downloader.DownloadResult:
        link = parse_link(target.strip())
        if link is not None and (link.host, link.port) != (self.proxy.host, self.proxy.port):
            with ProxyLink(link.host, link.port) as other:  # its lease and reports go to that proxy
                by_link = {"token": link.token}
                info = other.call(MsgType.LOCATE, by_link)
                return downloader.download(
                    info, out_dir, progress, relocate=lambda: other.call(MsgType.LOCATE, by_link), proxy=other
                )
        info = self.locate(target)
        return downloader.download(
            info, out_dir, progress, relocate=lambda: self.locate(target), proxy=self.proxy
        )


__all__ = ["Client", "FileClusterError", "Link", "parse_link"]
