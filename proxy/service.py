"""What the proxy does with each request.  The socket side is common.frame_server.

Clients: HELLO, REGISTER, LOGIN, LOGOUT, WHOAMI, LIST, LOCATE (with its
lease), RELEASE, REPORT_BAD, DELETE, STATUS; LOCATE_MANY and RELEASE_MANY (many
files at once) are proxy.locate_many's, the UPLOAD_* requests
proxy.upload_handlers', VERSIONS, RESTORE and MOVE proxy.file_handlers', and
SHARE, LINKS, UNSHARE, LOCATE by token and the gateway's GATEWAY_HELLO, LINK_OPEN
and LINK_CLOSE proxy.link_handlers'.
Storage servers' SERVER_REGISTER, HEARTBEAT and INVENTORY are proxy.membership's;
the operator's ADMIN is proxy.admin's.  The proxy never carries file data: it
answers where chunks go (placement) and where they are (locations), and records
a file only once every chunk of it is stored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from common.admission import client_key
from common.cluster_auth import ClusterKey, same_mac
from common.errors import (
    AlreadyExists,
    AuthError,
    Forbidden,
    InvalidRequest,
    NotFound,
)
from common.frame_server import Handler, Reply, Request
from common.hashing import check_chunk_id
from common.messages import Auth, MsgType
from common.names import check_file_name, check_password_rules, check_prefix, check_user_name
from proxy.admin import Admin
from proxy.auth import LinkThrottle, LoginThrottle, PasswordCheck, hash_password
from proxy.catalog import Catalog
from proxy.collector import Collector
from proxy.file_handlers import FileHandlers
from proxy.file_tree import DEFAULT_KEEP_VERSIONS
from proxy.leases import Lease
from proxy.link_handlers import LinkHandlers
from proxy.locate_many import LocateMany
from proxy.membership import Membership
from proxy.registry import Registry
from proxy.repair import Repairer
from proxy.sessions import DEFAULT_IDLE, DEFAULT_MAX_AGE, SessionPolicy, Sessions
from proxy.upload_batch import BatchUploadHandlers
from proxy.upload_handlers import principal
from proxy.uploads import Uploads

log = logging.getLogger(__name__)

REPORT_WINDOW = 3600.0  # a GET ticket may report a bad copy up to this long after it expired
REPORTS_FREE = 64  # REPORT_BAD per client address before the throttle slows it
LIST_PAGE_MAX = 10_000  # files in one LIST reply when the client pages (client.listing asks 1,000)
DEFAULT_QUOTA = 10 * 1024**3  # bytes a user may keep, every kept version counted, unless the admin says


@dataclass(frozen=True)
class ProxyConfig:
    chunk_size: int
    replicas: int
    heartbeat: float
    advertise: tuple[str, int] | None = None
    ticket_ttl: float = 600.0  # seconds a ticket for a chunk stays valid
    session_idle: float = DEFAULT_IDLE  # seconds without a request before a session ends
    session_max: float = DEFAULT_MAX_AGE  # seconds after LOGIN before a session ends, however busy
    verify_age: float = 3600.0  # dedup trusts a copy its server verified this recently, else re-reads it
    keep_versions: int = DEFAULT_KEEP_VERSIONS  # versions kept per file, the current one included
    default_quota: int | None = DEFAULT_QUOTA  # bytes per user unless set for them; None: unlimited
    link_url: str | None = None  # http(s)://HOST:PORT where links are served (else: the gateway's word)


class ProxyService:
    def __init__(
        self,
        catalog: Catalog,
        registry: Registry,
        uploads: Uploads,
        collector: Collector,
        config: ProxyConfig,
        key: ClusterKey,
        repairer: Repairer | None = None,
    ) -> None:
        self.catalog = catalog
        self.registry = registry
        self.uploads = uploads
        self.collector = collector
        self.config = config
        self.key = key  # signs tickets
        self.storage = collector.storage
        self.leases = collector.leases
        self.repairer = repairer or Repairer(
            catalog, registry, self.storage, key, config.replicas, leases=self.leases
        )
        # every report counts: 64 per address, then each must wait (1 s, 2 s, ... up to 60 s)
        self.report_throttle = LinkThrottle(free=REPORTS_FREE, what="bad copies reported")
        self.throttle = LoginThrottle()
        self.link_throttle = LinkThrottle()
        self.passwords = PasswordCheck()
        self.sessions = Sessions(catalog, SessionPolicy(config.session_idle, config.session_max))
        self.members = Membership(
            catalog, registry, collector, heartbeat=config.heartbeat, on_change=self.repairer.wake
        )
        self.admin = Admin(catalog, registry, self.repairer, self.status_figures, config.default_quota)
        self.file_handlers = FileHandlers(catalog, collector, config)
        self.links = LinkHandlers(
            catalog,
            self.leases,
            self.link_throttle,
            self._located,
            config.advertise,
            config.link_url,
            readable=self._readable,
        )
        self.upload_handlers = BatchUploadHandlers(
            catalog, registry, uploads, collector, config, key, self.repairer
        )

    def handlers(self) -> Mapping[MsgType, Handler]:
        return {
            MsgType.HELLO: self.hello,
            MsgType.REGISTER: self.register,
            MsgType.LOGIN: self.login,
            MsgType.LOGOUT: self.logout,
            MsgType.WHOAMI: self.whoami,
            MsgType.UPLOAD_BEGIN: self.upload_handlers.upload_begin,
            MsgType.UPLOAD_COMMIT: self.upload_handlers.upload_commit,
            MsgType.UPLOAD_ABORT: self.upload_handlers.upload_abort,
            MsgType.UPLOAD_PROVE: self.upload_handlers.upload_prove,
            MsgType.UPLOAD_TICKETS: self.upload_handlers.upload_tickets,
            MsgType.UPLOAD_REPLACE: self.upload_handlers.upload_replace,
            MsgType.UPLOAD_BEGIN_MANY: self.upload_handlers.upload_begin_many,
            MsgType.UPLOAD_PROVE_MANY: self.upload_handlers.upload_prove_many,
            MsgType.UPLOAD_COMMIT_MANY: self.upload_handlers.upload_commit_many,
            MsgType.LIST: self.list_files,
            MsgType.LOCATE: self.locate,
            MsgType.DELETE: self.delete,
            MsgType.VERSIONS: self.file_handlers.versions,
            MsgType.RESTORE: self.file_handlers.restore,
            MsgType.MOVE: self.file_handlers.move,
            MsgType.STATUS: self.status,
            MsgType.REPORT_BAD: self.report_bad,
            MsgType.RELEASE: self.release,
            MsgType.ADMIN: self.admin.handle,
            **self.members.handlers(),
            **self.links.handlers(),
            **LocateMany(self.locate, self.leases).handlers(),
        }

    def authenticate(self, need: Auth, req: Request) -> str | None:
        """The door (called by the frame server before any handler): the session's user."""
        token = req.header.get("session")
        if need is Auth.SESSION_IF_GIVEN and not token:
            return None
        user = self.sessions.user_of(token) if isinstance(token, str) and token else None
        if user is None:
            raise AuthError("not logged in (or the session ended); run: filecluster login USER")
        return user

    # -- accounts --------------------------------------------------------------------
    def hello(self, req: Request) -> Reply:
        return Reply(
            {
                "chunk_size": self.config.chunk_size,
                "replicas": self.config.replicas,
            }
        )

    def register(self, req: Request) -> Reply:
        h = req.header
        user = check_user_name(h["user"])
        password = check_password_rules(h["password"], new=True)
        salt, hashed = hash_password(password)
        with self.catalog.lock:
            if self.catalog.account_name(user) is not None:  # "Ana" is taken once "ana" is
                raise AlreadyExists(f"the user name {user!r} is taken")
            self.catalog.add_user(user, salt, hashed)
        log.info("new user %s", user)
        return Reply({"user": user})

    def login(self, req: Request) -> Reply:
        """Validated before anything is counted; one scrypt check whether or not the user exists;
        throttled per address and per (address, user), never per user alone (proxy.auth)."""
        h = req.header
        user = check_user_name(h["user"])
        password = check_password_rules(h["password"], new=False)
        address = client_key(req.peer[0])
        user = self.catalog.account_name(user) or user  # "ANA" logs in as ana (one throttle for both)
        attempt = self.throttle.attempt(address, user)
        if not self.passwords.matches(password, self.catalog.user(user)):
            raise AuthError("wrong user name or password")
        self.throttle.succeeded(address, user, attempt)
        return Reply({"user": user, "session": self.sessions.start(user)})

    def logout(self, req: Request) -> Reply:
        h = req.header
        self.sessions.end(h["session"])
        return Reply({})

    def whoami(self, req: Request) -> Reply:
        """The user, the bytes their kept versions take, their quota (null: unlimited), their files."""
        user = principal(req)
        usage, files = self.catalog.usage(user)
        quota = self.catalog.quota_of(user, self.config.default_quota)
        return Reply({"user": user, "usage": usage, "quota": quota, "files": files})

    # -- files and links -------------------------------------------------------------------
    def list_files(self, req: Request) -> Reply:
        """The caller's files, by name: with ``limit``, a page of at most that many after the name
        ``after``, and ``more`` if others follow (the client asks again from the last name)."""
        h = req.header
        if h.get("all"):
            raise InvalidRequest("a listing shows only your own files")
        owner = principal(req)
        limit = h.get("limit")
        if limit is not None and not 1 <= limit <= LIST_PAGE_MAX:
            raise InvalidRequest(f"a LIST limit must be 1 to {LIST_PAGE_MAX}")
        after = check_prefix(h.get("after") or "")
        files, more = self.catalog.list_page(owner, check_prefix(h.get("prefix") or ""), after, limit)
        self.registry.wait_for_rejoin()  # just after a restart: the servers' states as they are
        status = self.repairer.server_status()
        for item in files:
            entry = self.catalog.file(owner, item["name"])
            item["state"] = self._file_state(entry["chunks"] if entry else [], status)
        return Reply({"files": files, "more": more} if limit is not None else {"files": files})

    def _file_state(self, chunks: list[list[Any]], status: dict[int, str]) -> str:
        """``ok``; ``degraded`` (a chunk short of copies: repair is on it); ``unavailable`` (a chunk
        only on servers that are down for now); ``lost`` (a chunk with no copy anywhere)."""
        worst = 0
        for chunk_id, _ in chunks:
            states = [status.get(s) for s in self.catalog.chunk_servers(chunk_id)]
            if not any(states):
                return "lost"
            live = sum(1 for st in states if st in ("good", "readable"))
            if not live:
                worst = max(worst, 2)
            elif states.count("good") < self.config.replicas:
                worst = max(worst, 1)
        return ("ok", "degraded", "unavailable")[worst]

    def locate(self, req: Request) -> Reply:
        """Where a file's chunks are, with GET tickets, under a lease that keeps those chunks until
        the download ends (RELEASE) or the lease expires; LOCATE ``{lease}`` renews it."""
        h = req.header
        version = h.get("version")
        if h.get("lease"):
            address = client_key(req.peer[0])
            attempt = self.link_throttle.attempt(address)  # an unknown lease counts like an unknown link
            lease = self.leases.renew(h["lease"])
            self.link_throttle.found(address, attempt)
            self.links.check_lease(lease)  # a link's lease: only while the link still serves
            return Reply(self._located(lease))
        if h.get("token"):
            return self.links.locate(req)
        with self.catalog.lock:
            if h.get("name") is not None:
                owner, name = principal(req), check_file_name(h["name"])
                if self.catalog.file(owner, name) is None:
                    raise NotFound(f"you have no file named {name!r}")
                who = f"user:{owner}"
            else:
                raise InvalidRequest("LOCATE needs a token, a lease, or a session and a name")
            if version is None:
                entry = self.catalog.file(owner, name)
            else:
                entry = self.catalog.version(owner, name, version)
            if entry is None:
                raise NotFound(f"{name!r} has no version {version} (see its versions)")
            holder = f"user:{req.user}"
            info = self.catalog.describe(owner, name, version)
            lease = self.leases.grant(owner, name, info, entry["chunks"], who, holder)
        return Reply(self._located(lease))

    def _located(self, lease: Lease) -> dict[str, Any]:
        exp = int(self.key.clock() + self.config.ticket_ttl)
        chunks = [{"id": c, "size": s, "servers": self._sources(c, lease.who, exp)} for c, s in lease.chunks]
        return {**lease.info, "chunks": chunks, "ticket": {"exp": exp, "who": lease.who}, "lease": lease.id}

    def release(self, req: Request) -> Reply:
        """A download ended: its lease goes, and with it the hold on its chunks."""
        self.leases.release(req.header["lease"])
        return Reply({})

    def report_bad(self, req: Request) -> Reply:
        """A reader found a copy bad (wrong bytes, wrong size) or missing.  The GET ticket it used
        for that copy is its credential; the copy's server checks it (proxy.repair) before the
        proxy forgets it, so a report can never make the cluster drop a good copy."""
        h = req.header
        chunk_id, server_id, ticket = check_chunk_id(h["id"]), h["server"], h["ticket"]
        if h["problem"] not in ("corrupt", "missing", "short"):
            raise InvalidRequest("problem must be corrupt, missing or short")
        self.report_throttle.attempt(client_key(req.peer[0]))  # each costs a server a re-read
        exp, who, mac = ticket.get("exp"), ticket.get("who"), ticket.get("mac")
        if not (type(exp) is int and isinstance(who, str) and isinstance(mac, str)):
            raise Forbidden("malformed ticket")
        if not same_mac(self.key.get_mac(chunk_id, server_id, who, exp), mac):
            raise Forbidden("the ticket does not match this copy")
        if exp < self.key.clock() - REPORT_WINDOW:
            raise Forbidden("the ticket is too old to report with")
        if self.repairer.report(chunk_id, server_id):
            log.info(
                "a reader reports the copy of %s on server %d %s", chunk_id[:12], server_id, h["problem"]
            )
        return Reply({})

    def _readable(self, chunk_id: str) -> bool:
        """Whether a server that may be up holds a copy of the chunk: one believed up, or one not
        heard from since this proxy started (right after a restart it may well be up)."""
        for server in self.catalog.chunk_servers(chunk_id):
            state = self.registry.get(server)
            if state is not None and (self.registry.is_up(state) or not state.registered):
                return True
        return False

    def _sources(self, chunk_id: str, who: str, exp: int) -> list[dict[str, Any]]:
        """Where a chunk can be read, servers believed up first, each with its GET ticket's MAC."""
        states = [self.registry.get(i) for i in self.catalog.chunk_servers(chunk_id)]
        known = [s for s in states if s is not None]
        known.sort(key=lambda s: not self.registry.is_up(s))
        return [{**s.ref.wire(), "ticket": self.key.get_mac(chunk_id, s.id, who, exp)} for s in known]

    def delete(self, req: Request) -> Reply:
        """A file (every version, every link); with ``recursive``, also everything under the folder
        of that name: one journal entry, at the cost of a scan of the user's own names."""
        h = req.header
        owner = principal(req)
        name = check_file_name(h["name"])
        deleted, freed = self.catalog.delete_files(owner, name, recursive=bool(h.get("recursive")))
        self.collector.queue_freed(freed)
        log.info("%s deleted %s (%d file(s), %d chunk(s) to free)", owner, name, deleted, len(freed))
        return Reply({"deleted": deleted, "freed_chunks": len(freed)})

    def status(self, req: Request) -> Reply:
        return Reply(self.status_figures())

    def status_figures(self) -> dict[str, Any]:
        """Every known server, its state and figures (those up are asked for fresh ones right
        now, in parallel), and the chunks' health as of the last repair round."""
        self.registry.wait_for_rejoin()
        states = self.registry.all()
        with ThreadPoolExecutor(max(1, min(16, len(states)))) as pool:
            fresh = list(
                pool.map(
                    lambda s: self.storage.ping(s.ref, timeout=1.0) if self.registry.is_up(s) else None,
                    states,
                )
            )
        needed = self.repairer.fresh_plan().draining_needed
        now = time.monotonic()
        servers = []
        for s, live in zip(states, fresh, strict=True):
            state = self.registry.state_name(s)
            if live is None and state in ("up", "draining"):
                state = "down"  # it heartbeats, but did not answer just now
            if state == "draining" and needed.get(s.id) == 0:
                state = "drained"
            servers.append(
                {
                    "id": s.id,
                    "host": s.host,
                    "port": s.port,
                    "up": live is not None,
                    "state": state,
                    "chunks": live["chunks"] if live else s.chunks,
                    "used": live["used"] if live else s.used,
                    "capacity": s.capacity,
                    "free": live.get("free", s.free) if live else s.free,
                    "disk": s.disk,
                    "last_seen": round(now - s.last_seen, 1) if s.registered else None,
                    "quarantined": live.get("quarantined", s.quarantined) if live else s.quarantined,
                    "scrub": s.scrub,
                }
            )
        return {
            "servers": servers,
            "replicas": self.config.replicas,
            "chunk_size": self.config.chunk_size,
            "health": self.repairer.health(),
        }
