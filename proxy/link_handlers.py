"""What the proxy does with share links: SHARE, LINKS, UNSHARE, LOCATE by token, and the HTTP
gateway's GATEWAY_HELLO, LINK_OPEN and LINK_CLOSE.

Who may send what: SHARE, LINKS and UNSHARE need the owner's session; LOCATE by token needs only
the token (throttled per client address: unknown tokens count, known ones are refunded); the
gateway's three messages are signed with the cluster secret (checked at the door), and LINK_OPEN
is throttled by the address of the gateway's own client (``client``), never the gateway's, so
guessing from one address never slows another.  What a link may still serve is proxy.links'.

A *grant* is a gateway's download in progress: the bytes it reserved, the lease over the chunks.
Grants live in memory only (the reservation itself is journaled), at most :data:`GRANTS`, each
for at most :data:`GRANT_TTL` s; a grant dropped or forgotten (a proxy restart) is never refunded.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from common.admission import client_key
from common.errors import Gone, InvalidRequest, NotFound, Unavailable
from common.frame_server import Handler, Reply, Request
from common.limits import MAX_DOWNLOADS, MAX_LINK_LIFETIME
from common.messages import MsgType
from common.names import SEPARATOR, check_file_name
from proxy import links
from proxy.auth import LinkThrottle, new_token
from proxy.catalog import Catalog
from proxy.leases import Lease, Leases
from proxy.upload_handlers import principal

log = logging.getLogger(__name__)

GRANTS = 20_000  # downloads through gateways in progress at once; past it the oldest grant goes
GRANT_TTL = 24 * 3600.0  # seconds a grant may wait for its LINK_CLOSE
MAX_LINKS = 10_000  # links one user may hold (tombstones included)
MAX_URL = 256
_SHOWN = ("size", "sha1", "uploaded")  # what a link holder learns of its file, besides its base name
URL_RE = re.compile(r"https?://[^\s/?#]+(/[^\s?#]*)?\Z")
# a link as UNSHARE takes it: /s/TOKEN, as a browser's address bar may show it (?view, ?info, #...)
TOKEN_IN_LINK = re.compile(
    r"\A(?i:[a-z+]+)://[^/]+/s/(?P<token>[A-Za-z0-9_-]+)/?(?:\?(?:view|info))?(?:#\S*)?\Z"
)
ANY_URL = re.compile(r"\A[a-z+]+://", re.IGNORECASE)

Located = Callable[[Lease], dict[str, Any]]
Readable = Callable[[str], bool]  # a chunk id -> whether a server believed up holds a copy of it


@dataclass
class Grant:
    token: str
    reserved: int
    lease: str
    expires: float


class Grants:
    """The gateways' downloads in progress, bounded in number and in time."""

    def __init__(self, limit: int = GRANTS, ttl: float = GRANT_TTL) -> None:
        self.limit, self.ttl = limit, ttl
        self._grants: OrderedDict[str, Grant] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, token: str, reserved: int, lease: str) -> str:
        grant_id = new_token()
        with self._lock:
            self._purge()
            while len(self._grants) >= self.limit:
                self._grants.popitem(last=False)
            self._grants[grant_id] = Grant(token, reserved, lease, time.monotonic() + self.ttl)
        return grant_id

    def pop(self, grant_id: str) -> Grant | None:
        with self._lock:
            self._purge()
            return self._grants.pop(grant_id, None)

    def _purge(self) -> None:
        now = time.monotonic()
        while self._grants and next(iter(self._grants.values())).expires <= now:
            self._grants.popitem(last=False)


@dataclass(frozen=True)
class Target:
    """What a token opens: the link, and the file (None: a folder link's listing)."""

    token: str
    link: dict[str, Any]
    owner: str
    name: str  # the file's full name (or the folder's)
    size: int  # the file's (0 for a folder listing)
    listing: str | None = None  # a folder to list: its path in the link ("" the link's own folder)


class LinkHandlers:
    def __init__(
        self,
        catalog: Catalog,
        leases: Leases,
        throttle: LinkThrottle,
        located: Located,
        advertise: tuple[str, int] | None,
        link_url: str | None = None,
        readable: Readable = lambda chunk_id: True,
    ) -> None:
        self.catalog = catalog
        self.readable = readable  # the service's: the registry knows which servers are up
        self.leases = leases
        self.throttle = throttle
        self.located = located  # a lease -> LOCATE's reply (chunks, tickets), the service's
        self.advertise = advertise
        self.link_url = link_url  # --link-url: wins over what gateways say
        self.grants = Grants()

    def handlers(self) -> Mapping[MsgType, Handler]:
        return {
            MsgType.SHARE: self.share,
            MsgType.LINKS: self.list_links,
            MsgType.UNSHARE: self.unshare,
            MsgType.GATEWAY_HELLO: self.gateway_hello,
            MsgType.LINK_OPEN: self.link_open,
            MsgType.LINK_CLOSE: self.link_close,
        }

    # -- link addresses ----------------------------------------------------------------------
    def forms(self, local: tuple[str, int], token: str) -> dict[str, str]:
        """A link's URLs: ``filecluster`` always, ``http`` once a gateway (or --link-url) is known."""
        host, port = self.advertise or local
        port = port or local[1]  # an advertised HOST alone keeps the port clients used
        if ":" in host:
            host = f"[{host}]"
        forms = {"filecluster": f"filecluster://{host}:{port}/s/{token}"}
        base = self.link_url or self.catalog.gateway_url  # the most recent GATEWAY_HELLO's
        if base:
            forms["http"] = f"{base.rstrip('/')}/s/{token}"
        return forms

    def preferred(self, local: tuple[str, int], token: str) -> str:
        forms = self.forms(local, token)
        return forms.get("http") or forms["filecluster"]

    # -- the owner's requests ----------------------------------------------------------------
    def share(self, req: Request) -> Reply:
        """A new link each time (a file or folder may have many, with different limits)."""
        h = req.header
        owner = principal(req)
        name = check_file_name(h["name"])
        expires, limit = h.get("expires"), h.get("max_downloads")
        if expires is not None and not time.time() < expires < time.time() + MAX_LINK_LIFETIME:
            raise InvalidRequest("the expiry must be a time in the future, within 100 years")
        if limit is not None and not 1 <= limit <= MAX_DOWNLOADS:
            raise InvalidRequest(f"the download limit must be 1..{MAX_DOWNLOADS}")
        only_folder = h.get("folder") is True  # "pics/" as typed: never a file of that name
        token = new_token()
        with self.catalog.lock:
            if not only_folder and self.catalog.file(owner, name) is not None:
                kind = "file"
            elif self.catalog.tree.is_folder(owner, name):
                kind = "folder"
                if limit is not None:
                    raise InvalidRequest("a download limit applies to a file's links, not a folder's")
            else:
                what = "folder" if only_folder else "file or folder"
                raise NotFound(f"you have no {what} named {name!r}")
            if len(self.catalog.tree.book.by_owner.get(owner, ())) >= MAX_LINKS:
                raise InvalidRequest(f"you have {MAX_LINKS} links; unshare some first")
            self.catalog.add_share(
                token,
                owner,
                name,
                kind=kind,
                expires=float(expires) if expires else None,
                max_downloads=limit,
            )
        forms = self.forms(req.local, token)
        return Reply(
            {
                "token": token,
                "link": forms.get("http") or forms["filecluster"],
                "links": forms,
                "kind": kind,
                "expires": expires,
                "max_downloads": limit,
            }
        )

    def list_links(self, req: Request) -> Reply:
        """The user's links, newest first, with their state; tombstones included."""
        owner = principal(req)
        now = time.time()
        rows = []
        with self.catalog.lock:
            for token, link in self.catalog.links_of(owner):
                entry = self.catalog.file(owner, link["name"])
                size = entry["size"] if entry else 0
                rows.append(
                    {
                        "token": token,
                        "name": link["name"],
                        "kind": link.get("kind", "file"),
                        "link": self.preferred(req.local, token),
                        **links.describe(link, size),
                        "state": links.state(link, size, now),
                    }
                )
        return Reply({"links": rows})

    def unshare(self, req: Request) -> Reply:
        """Revoke a link (by URL or token) or every link of a name; stops new requests at once."""
        owner = principal(req)
        target = req.header["target"].strip()
        match = TOKEN_IN_LINK.match(target)
        token = match["token"] if match else target
        with self.catalog.lock:
            link = self.catalog.share(token)
            by = "link"
            if link is not None and link["owner"] == owner:
                over = links.state(link, 0, time.time()) in links.OVER  # an expired link stays expired
                tokens = [] if over else [token]
            elif match:
                raise NotFound("you have no such link")
            elif ANY_URL.match(target):
                raise InvalidRequest(
                    f"not a share link: {target[:200]} (one looks like http://HOST:PORT/s/TOKEN)"
                )
            else:
                name, by = check_file_name(target), "name"
                only_folder = req.header.get("folder") is True  # "pics/" as typed: never a file's links
                now = time.time()
                tokens = [  # an expired link stays expired; an exhausted one is revoked (a new
                    t  # version could make it serve again)
                    for t in self.catalog.tree.book.live(owner, name)
                    if (link := self.catalog.share(t)) is not None
                    and links.state(link, 0, now) not in links.OVER
                    and (not only_folder or link.get("kind") == "folder")
                ]
                if not tokens and only_folder:
                    raise NotFound(f"no live link of yours names the folder {name!r}")
                if not tokens:
                    raise NotFound(f"no live link of yours names {name!r}")
            self.catalog.end_links(owner, tokens)
        return Reply({"revoked": len(tokens), "by": by})

    # -- opening a link ----------------------------------------------------------------------
    def _target(self, token: str, path: str | None, address: str | None, *, reserved: bool = False) -> Target:
        """What ``token`` (and ``path``, in a folder link) opens, if the link still serves; with an
        ``address``, unknown tokens count against it.  ``reserved``: a check for a download under
        way (links.check_serves)."""
        attempt = self.throttle.attempt(address) if address is not None else None
        link = self.catalog.share(token)
        if link is None:
            raise NotFound("unknown link (it may have been deleted)")
        if address is not None:
            self.throttle.found(address, attempt)
        owner, name = link["owner"], link["name"]
        if link.get("kind") == "folder":
            links.check_serves(link, 0, time.time())
            if not self.catalog.tree.is_folder(owner, name):
                raise Gone("this link's folder was deleted")
            if path is None:
                return Target(token, link, owner, name, 0, listing="")
            full = f"{name}{SEPARATOR}{check_file_name(path)}"
            entry = self.catalog.file(owner, full)
            if entry is not None:
                return Target(token, link, owner, full, entry["size"])
            if self.catalog.tree.is_folder(owner, full):
                return Target(token, link, owner, full, 0, listing=path)
            raise NotFound(f"this link's folder has no file or folder {path!r}")
        if path is not None:
            raise InvalidRequest("this link is for a file, not a folder")
        entry = self.catalog.file(owner, name)
        if entry is None:
            raise Gone("this link's file was deleted")
        links.check_serves(link, entry["size"], time.time(), reserved=reserved)
        return Target(token, link, owner, name, entry["size"])

    def _folder(self, t: Target) -> dict[str, Any]:
        """A folder's listing: every file under it, named by its path in the link (what LOCATE and
        LINK_OPEN take as ``path``); ``path`` is the listed folder's own ("" the link's)."""
        start = len(t.link["name"]) + 1
        files = [
            {"name": f["name"][start:], "size": f["size"], "sha1": f["sha1"], "uploaded": f["uploaded"]}
            for f in self.catalog.list_files(t.owner, t.name + SEPARATOR)
        ]
        return {
            "kind": "folder",
            "name": t.name.rsplit(SEPARATOR, 1)[-1],
            "path": t.listing or "",
            "files": files,
            "link": links.describe(t.link, 0),
        }

    def _reserve(self, t: Target, nbytes: int, start: int = 0) -> None:
        """Take ``nbytes`` (one download, for an empty file) from the link's budget, journaled;
        ``start``: where the range begins (a resume gets a little slack, proxy.links.fits)."""
        if not links.fits(t.link, t.size, nbytes, start):
            raise Gone("this link's download limit was reached")
        self.catalog.use_link(t.token, nbytes, opens=1, size=t.size)

    def _shown(self, t: Target) -> dict[str, Any]:
        """The file as a link's holder sees it: its base name, size, SHA-1 and upload time; never
        its owner's user name or its other versions (the holder may have no account at all)."""
        described = self.catalog.describe(t.owner, t.name)
        return {"name": t.name.rsplit(SEPARATOR, 1)[-1], **{k: described[k] for k in _SHOWN}}

    def _open_file(self, t: Target, holder: str) -> tuple[dict[str, Any], Lease]:
        entry = self.catalog.file(t.owner, t.name)
        assert entry is not None
        info = self._shown(t)
        lease = self.leases.grant(t.owner, t.name, info, entry["chunks"], "link", holder, t.token)
        return info, lease

    def locate(self, req: Request) -> Reply:
        """LOCATE {token[, path]} (binary): a file link reserves a whole download (no refund), a
        folder link without a path answers its listing.  With ``peek``, a file link answers what
        the file is (its description and chunk list, no servers, tickets or lease) and reserves
        nothing: a client that already holds the file, or all of it in a partial, costs the link
        no download."""
        h = req.header
        if h.get("version") is not None:
            raise InvalidRequest("a link always serves the current version")
        address = client_key(req.peer[0])
        peek = bool(h.get("peek"))
        with self.catalog.lock:
            # a peek at a link whose budget is spent still answers: an interrupted download of it
            # goes on under its lease (LOCATE {lease}); expiry, revocation and deletion end it
            t = self._target(h["token"], h.get("path"), address, reserved=peek)
            if t.listing is not None:
                return Reply(self._folder(t))
            if peek:
                entry = self.catalog.file(t.owner, t.name)
                assert entry is not None
                info = self._shown(t)
                chunks = [{"id": c, "size": size} for c, size in entry["chunks"]]
                described = links.describe(t.link, t.size)
                return Reply({**info, "chunks": chunks, "kind": "file", "link": described})
            self._reserve(t, t.size)
            _, lease = self._open_file(t, f"address:{address}")
            described = links.describe(self.catalog.share(t.token) or t.link, t.size)
        return Reply({**self.located(lease), "kind": "file", "link": described})

    # -- the gateway's requests ----------------------------------------------------------------
    def gateway_hello(self, req: Request) -> Reply:
        url = req.header["url"].strip()
        if len(url) > MAX_URL or not URL_RE.match(url):
            raise InvalidRequest("the gateway URL must be http(s)://HOST[:PORT][/PATH]")
        if self.catalog.remember_gateway(url):
            log.info("links now name the gateway at %s", url)
        return Reply({})

    def link_open(self, req: Request) -> Reply:
        """A gateway opens a link for its client; ``range`` reserves that many bytes and grants a
        lease; ``check`` only says whether the link still serves (no throttle, no budget);
        ``describe`` (without a range: ``?info``) answers for a link whose budget is spent too, as
        a peek does, so that a client can learn the proxy behind it and resume under its lease."""
        h = req.header
        check = bool(h.get("check"))
        describe = bool(h.get("describe")) and h.get("range") is None
        client = h["client"]
        if len(client) > 64:
            raise InvalidRequest("client must be an address")
        span = _range(h.get("range"))
        with self.catalog.lock:
            t = self._target(
                h["token"], h.get("path"), None if check else client_key(client), reserved=check or describe
            )
            if t.listing is not None:
                return Reply(self._folder(t))
            if check:
                return Reply({"kind": "file", "grant": None, "link": links.describe(t.link, t.size)})
            if span is None:
                info = self._shown(t)
                reply = {**info, "chunks": [], "ticket": None, "lease": None, "kind": "file", "grant": None}
                return Reply({**reply, "link": links.describe(t.link, t.size)})
            start, end = span
            if end > t.size:
                raise InvalidRequest(f"the range ends past the file's {t.size} bytes")
            self._check_readable(t, start, end)
            self._reserve(t, end - start, start)
            _, lease = self._open_file(t, f"address:{client_key(client)}")
            grant = self.grants.add(t.token, end - start, lease.id)
            described = links.describe(self.catalog.share(t.token) or t.link, t.size)
        return Reply({**self.located(lease), "kind": "file", "grant": grant, "link": described})

    def _check_readable(self, t: Target, start: int, end: int) -> None:
        """Refuse a range some chunk of which is only on servers that are down (Unavailable, which
        the gateway answers 503 with Retry-After) before its 200 is sent and its budget reserved,
        rather than have the gateway cut the response short where that chunk begins."""
        entry = self.catalog.file(t.owner, t.name)
        assert entry is not None
        at = 0
        for chunk_id, size in entry["chunks"]:
            if at >= end:
                return
            if at + size > start and not self.readable(chunk_id):
                raise Unavailable("part of this file is only on storage servers that are down; try later")
            at += size

    def check_lease(self, lease: Lease) -> None:
        """A lease granted through a link is renewed only while the link still serves (revoked,
        expired or deleted: Gone, and the lease ends); its own download's budget does not end it."""
        if lease.token is None:
            return
        with self.catalog.lock:
            link = self.catalog.share(lease.token)
            entry = self.catalog.file(lease.owner, lease.name)
            try:
                if link is None or entry is None:
                    raise Gone("this link no longer serves its file")
                links.check_serves(link, entry["size"], time.time(), reserved=True)
            except Gone:
                self.leases.release(lease.id)
                raise

    def link_close(self, req: Request) -> Reply:
        """A gateway's transfer ended after ``sent`` bytes: the unsent rest goes back to the link."""
        grant = self.grants.pop(req.header["grant"])
        if grant is None:
            raise NotFound("unknown grant (it ended, or expired)")
        sent = max(0, min(req.header["sent"], grant.reserved))
        self.leases.release(grant.lease)
        self.catalog.use_link(grant.token, sent - grant.reserved)
        return Reply({})


def _range(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    if not (
        isinstance(value, list)
        and len(value) == 2
        and all(type(v) is int for v in value)
        and 0 <= value[0] <= value[1]
    ):
        raise InvalidRequest("range must be [start, end] with 0 <= start <= end")
    return value[0], value[1]
