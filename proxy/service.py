"""What the proxy does with each request.  The socket side is common.frame_server.

Clients: HELLO, REGISTER, LOGIN, LOGOUT, WHOAMI, UPLOAD_BEGIN/COMMIT/ABORT,
LIST, SHARE, LOCATE, DELETE, STATUS.  Storage servers' SERVER_REGISTER and
HEARTBEAT are proxy.membership's.  The proxy never carries file data: it answers where chunks go
(placement) and where they are (locations), and records a file only once
every chunk of it is confirmed on the servers.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from common.admission import client_key
from common.cluster_auth import ClusterKey, aggregate, same_mac
from common.errors import (
    AlreadyExists,
    AuthError,
    Conflict,
    FileClusterError,
    Forbidden,
    InvalidRequest,
    NotFound,
    Unavailable,
)
from common.frame_server import Handler, Reply, Request
from common.hashing import EMPTY_SHA1, check_chunk_id, check_sha1
from common.limits import MAX_CHUNKS_PER_FILE, MAX_IDS_PER_REQUEST
from common.messages import Auth, MsgType
from common.names import check_file_name, check_password_rules, check_user_name
from proxy.admin import Admin
from proxy.auth import LinkThrottle, LoginThrottle, PasswordCheck, hash_password, new_token
from proxy.catalog import Catalog
from proxy.collector import Collector
from proxy.leases import Lease
from proxy.membership import Membership
from proxy.ownership import new_challenge, proven_chunks
from proxy.placement import ServerRef, place, rank
from proxy.registry import Registry
from proxy.repair import Repairer
from proxy.sessions import DEFAULT_IDLE, DEFAULT_MAX_AGE, SessionPolicy, Sessions
from proxy.uploads import PendingUpload, Uploads

log = logging.getLogger(__name__)

DEDUP_VERIFY_TIMEOUT = 10.0  # a holder slower than this to vouch for its copies: the client sends them
REPORT_WINDOW = 3600.0  # a GET ticket may report a bad copy up to this long after it expired
REPORTS_FREE = 64  # REPORT_BAD per client address before the throttle slows it


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
        self.admin = Admin(catalog, registry, self.repairer, self.status_figures)

    def handlers(self) -> Mapping[MsgType, Handler]:
        return {
            MsgType.HELLO: self.hello,
            MsgType.REGISTER: self.register,
            MsgType.LOGIN: self.login,
            MsgType.LOGOUT: self.logout,
            MsgType.WHOAMI: self.whoami,
            MsgType.UPLOAD_BEGIN: self.upload_begin,
            MsgType.UPLOAD_COMMIT: self.upload_commit,
            MsgType.UPLOAD_ABORT: self.upload_abort,
            MsgType.UPLOAD_PROVE: self.upload_prove,
            MsgType.UPLOAD_TICKETS: self.upload_tickets,
            MsgType.UPLOAD_REPLACE: self.upload_replace,
            MsgType.LIST: self.list_files,
            MsgType.SHARE: self.share,
            MsgType.LOCATE: self.locate,
            MsgType.DELETE: self.delete,
            MsgType.STATUS: self.status,
            MsgType.REPORT_BAD: self.report_bad,
            MsgType.RELEASE: self.release,
            MsgType.ADMIN: self.admin.handle,
            **self.members.handlers(),
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
            if self.catalog.user(user) is not None:
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
        self.throttle.attempt(address, user)
        if not self.passwords.matches(password, self.catalog.user(user)):
            raise AuthError("wrong user name or password")
        self.throttle.succeeded(address, user)
        return Reply({"user": user, "session": self.sessions.start(user)})

    def logout(self, req: Request) -> Reply:
        h = req.header
        self.sessions.end(h["session"])
        return Reply({})

    def whoami(self, req: Request) -> Reply:
        return Reply({"user": _principal(req)})

    # -- uploads -----------------------------------------------------------------------
    def _check_manifest(self, h: Mapping[str, Any]) -> list[list[Any]]:
        size, chunk_size, chunks = h["size"], h["chunk_size"], h["chunks"]
        if chunk_size != self.config.chunk_size:
            raise Conflict(
                f"the cluster's chunk size is {self.config.chunk_size}, not {chunk_size}; upload again"
            )
        if size < 0:
            raise InvalidRequest("a file size cannot be negative")
        if size > chunk_size * MAX_CHUNKS_PER_FILE:
            raise InvalidRequest(
                f"file too large: at most {chunk_size * MAX_CHUNKS_PER_FILE} bytes "
                f"({MAX_CHUNKS_PER_FILE} chunks of {chunk_size})"
            )
        if len(chunks) != math.ceil(size / chunk_size):
            raise InvalidRequest(f"a file of {size} bytes has {math.ceil(size / chunk_size)} chunks")
        clean = []
        for index, item in enumerate(chunks):
            if not (isinstance(item, list) and len(item) == 2 and type(item[1]) is int):
                raise InvalidRequest("each chunk is [id, size]")
            want = chunk_size if index < len(chunks) - 1 else size - chunk_size * index
            if item[1] != want:
                raise InvalidRequest(f"chunk {index} should be {want} bytes, not {item[1]}")
            clean.append([check_chunk_id(item[0]), item[1]])
        if size == 0 and h["sha1"] != EMPTY_SHA1:
            raise InvalidRequest("an empty file has the SHA-1 of no bytes")
        return clean

    def upload_begin(self, req: Request) -> Reply:
        """Record the manifest and answer with a proof-of-ownership challenge over every chunk.

        Nothing in the reply depends on what the cluster holds (proxy.ownership)."""
        h = req.header
        owner = _principal(req)
        name = check_file_name(h["name"], new=True)
        sha1 = check_sha1(h["sha1"])
        chunks = self._check_manifest(h)
        challenge = new_challenge(dict(chunks))
        upload = self.uploads.begin(owner, name, h["size"], sha1, chunks, challenge)
        return Reply({"upload_id": upload.id, "challenge": challenge.wire()})

    def upload_prove(self, req: Request) -> Reply:
        """Check the proofs; deduplicate only proven chunks; place every other one (with tickets)."""
        h = req.header
        upload = self.uploads.get(h["upload_id"], _principal(req))
        if upload.proven:
            raise Conflict("this upload was already proved; ask for fresh tickets with UPLOAD_TICKETS")
        proofs = h["proofs"]
        if len(proofs) != len(upload.challenge.ranges) or not all(isinstance(p, str) for p in proofs):
            raise InvalidRequest(f"expected {len(upload.challenge.ranges)} proofs, one per distinct chunk")
        sizes = dict(upload.chunks)
        up = [s.ref for s in self.registry.all() if self.registry.is_up(s)]
        holders = {}  # who checks each proof: the live servers with a copy (same size), in rank order
        for chunk_id, size in sizes.items():
            known = self.catalog.chunk(chunk_id)
            held = set(known["servers"]) if known is not None and known["size"] == size else set()
            ranked = rank(chunk_id, up)
            # content the cluster lacks is checked too, by the server that would hold it (it answers
            # "no copy"): the same round trip either way, so UPLOAD_PROVE takes as long for stored
            # content as for fresh, and its time does not tell what its reply does not
            asked = [s for s in ranked if s.id in held] or ranked[:1]
            if asked:
                holders[chunk_id] = asked
        proven = proven_chunks(upload.challenge, proofs, holders, self.storage)  # network: no lock held
        verified = self._verified_copies({c: holders[c] for c in proven if c in holders}, sizes)
        with self.collector.lock:
            live_ids = self.registry.live_ids()
            placement: dict[str, list[ServerRef]] = {}
            for chunk_id, size in sizes.items():
                if verified.get(chunk_id, set()) & set(self.catalog.chunk_servers(chunk_id)) & live_ids:
                    continue  # proven, verified and still stored on a live server: nothing to send
                targets = place(chunk_id, self.registry.live(need_bytes=size), self.config.replicas)
                if len(targets) < self.config.replicas:
                    raise Unavailable(
                        f"not enough storage servers up with free space: {len(targets)} of "
                        f"{self.config.replicas} needed; see: filecluster status"
                    )
                placement[chunk_id] = targets
            self.uploads.place(upload.id, placement)
        return Reply({"missing": self._missing(upload)})

    def _verified_copies(
        self, holders: Mapping[str, list[ServerRef]], sizes: Mapping[str, int]
    ) -> dict[str, set[int]]:
        """Which of the holders' copies are known good: each server confirms the copy's size and a
        verification within ``verify_age`` (or re-reads it now, quarantining a bad one).  Dedup
        builds only on these; a copy found bad or missing is forgotten, and repair replaces it."""
        by_server: defaultdict[ServerRef, list[str]] = defaultdict(list)
        for chunk_id, servers in holders.items():
            for server in servers:
                by_server[server].append(chunk_id)
        if not by_server:
            return {}

        def check(server: ServerRef) -> tuple[ServerRef, dict[str, int] | None, set[str]]:
            try:
                good, gone = self.storage.verify_chunks(
                    server, by_server[server], self.config.verify_age, timeout=DEDUP_VERIFY_TIMEOUT
                )
                return server, good, gone
            except FileClusterError as exc:
                log.warning("server %d could not confirm its copies for dedup: %s", server.id, exc)
                return server, None, set()

        verified: defaultdict[str, set[int]] = defaultdict(set)
        with ThreadPoolExecutor(min(16, len(by_server))) as pool:
            for server, good, gone in pool.map(check, list(by_server)):
                for chunk_id, size in (good or {}).items():
                    if sizes.get(chunk_id) == size:
                        verified[chunk_id].add(server.id)
                dropped = [c for c in gone if self.catalog.drop_location(c, server.id)]
                if dropped:
                    log.warning(
                        "server %d: %d copies bad or missing (found by dedup)", server.id, len(dropped)
                    )
                    self.repairer.wake()
        return dict(verified)

    def upload_tickets(self, req: Request) -> Reply:
        """Fresh tickets for what an upload still has to send (tickets expire in minutes)."""
        upload = self.uploads.get(req.header["upload_id"], _principal(req))
        if not upload.proven:
            raise Conflict("prove the upload first (UPLOAD_PROVE)")
        return Reply({"missing": self._missing(upload)})

    def _missing(self, upload: PendingUpload) -> list[dict[str, Any]]:
        sizes = dict(upload.chunks)
        return [
            {
                "id": chunk_id,
                "size": sizes[chunk_id],
                "servers": [s.wire() for s in targets],
                "ticket": self.key.put_ticket(
                    chunk_id, [s.wire() for s in targets], upload.holder, self.config.ticket_ttl
                ),
            }
            for chunk_id, targets in upload.placement.items()
        ]

    def upload_replace(self, req: Request) -> Reply:
        """New servers for chunks whose chain failed (a server down, hung, or out of space),
        avoiding the servers the client names; those that do not answer a ping are marked down."""
        h = req.header
        upload = self.uploads.get(h["upload_id"], _principal(req))
        if not upload.proven:
            raise Conflict("prove the upload first (UPLOAD_PROVE)")
        chunks, avoid = h["chunks"], h["avoid"]
        if len(chunks) > MAX_IDS_PER_REQUEST or len(avoid) > 64 or not all(type(a) is int for a in avoid):
            raise InvalidRequest("UPLOAD_REPLACE names at most 10000 chunks and 64 server ids")
        wanted = {check_chunk_id(c) for c in chunks}
        if not wanted <= set(upload.placement):
            raise InvalidRequest("UPLOAD_REPLACE names a chunk this upload does not send")
        self._check_servers(set(avoid))
        sizes = dict(upload.chunks)
        with self.collector.lock:
            for chunk_id in sorted(wanted):
                servers = [s for s in self.registry.live(need_bytes=sizes[chunk_id]) if s.id not in avoid]
                targets = place(chunk_id, servers, self.config.replicas)
                if len(targets) < self.config.replicas:
                    raise Unavailable(
                        f"not enough storage servers left for chunk {chunk_id[:12]}: {len(targets)} of "
                        f"{self.config.replicas} needed; see: filecluster status"
                    )
                upload.placement[chunk_id] = targets
        return Reply({"missing": [m for m in self._missing(upload) if m["id"] in wanted]})

    def _check_servers(self, suspects: set[int]) -> None:
        """Ping the servers a client could not use, at once; mark down those that do not answer."""
        states = [s for s in (self.registry.get(i) for i in suspects) if s is not None]
        if not states:
            return
        with ThreadPoolExecutor(min(16, len(states))) as pool:
            answers = list(pool.map(lambda s: self.storage.answers(s.ref), states))
        for state, answered in zip(states, answers, strict=True):
            if not answered:
                log.warning(
                    "client reports server %d failing, and it does not answer: marking it down", state.id
                )
                self.registry.mark_down(state.id)

    def upload_commit(self, req: Request) -> Reply:
        h = req.header
        owner = _principal(req)
        upload = self.uploads.get(h["upload_id"], owner)
        if not upload.proven:
            raise Conflict("prove the upload first (UPLOAD_PROVE)")
        self._check_receipts(upload, h.get("receipts") or [])
        # every placed copy came with its server's receipt (verified and fsynced there) and is pinned
        # by this upload, so the catalog records the placement as is: no network call here
        locations = {chunk_id: [s.id for s in servers] for chunk_id, servers in upload.placement.items()}
        with self.collector.lock:
            try:
                live_ids = self.registry.live_ids()
                for chunk_id, _ in upload.chunks:
                    if chunk_id not in locations and not set(self.catalog.chunk_servers(chunk_id)) & live_ids:
                        raise Conflict(f"chunk {chunk_id[:12]} no longer has a live copy; upload again")
            except (Conflict, Unavailable):
                self._abandon(upload.id)
                raise
            entry, freed = self.catalog.put_file(
                owner, upload.name, upload.size, upload.sha1, upload.chunks, locations
            )
            self.uploads.finish(upload.id)
        self.collector.queue_freed(freed)
        log.info("%s uploaded %s (%d bytes, %d chunks)", owner, upload.name, upload.size, len(upload.chunks))
        return Reply({"file": entry})

    def _check_receipts(self, upload: PendingUpload, receipts: list[Any]) -> None:
        """Every placed copy must come with the receipt of the server that got it from this upload.

        A copy that is merely present proves nothing: it may predate the upload, and whoever knows
        a chunk's hash could otherwise commit it without ever holding its bytes."""
        got: dict[int, str] = {}
        for item in receipts:
            if not (
                isinstance(item, list)
                and len(item) == 2
                and type(item[0]) is int
                and isinstance(item[1], str)
            ):
                raise InvalidRequest("receipts is a list of [server id, aggregate receipt]")
            got[item[0]] = item[1]
        want: defaultdict[int, list[str]] = defaultdict(list)
        for chunk_id, servers in upload.placement.items():
            for server in servers:
                want[server.id].append(self.key.receipt(chunk_id, server.id, upload.holder))
        for server_id, macs in want.items():
            if not same_mac(aggregate(macs), got.get(server_id, "")):
                self._abandon(upload.id)
                raise Conflict(
                    f"storage server {server_id} has no receipt for every chunk this upload "
                    "had to send; upload again"
                )

    def _abandon(self, upload_id: str) -> None:
        upload = self.uploads.finish(upload_id)
        if upload is not None:
            self.collector.queue_abandoned(upload)

    def upload_abort(self, req: Request) -> Reply:
        h = req.header
        owner = _principal(req)
        try:
            upload = self.uploads.get(h["upload_id"], owner)
            self._abandon(h["upload_id"])
            log.info("upload %s of %s by %s aborted", upload.id[:8], upload.name, owner)
        except (NotFound, Conflict):
            pass  # already gone; still check the servers the client could not reach
        suspects = h.get("unreachable") or []
        self._check_servers({i for i in suspects[:64] if type(i) is int})
        return Reply({})

    # -- files and links -------------------------------------------------------------------
    def list_files(self, req: Request) -> Reply:
        if req.header.get("all"):
            raise InvalidRequest("a listing shows only your own files")
        owner = _principal(req)
        files = self.catalog.list_files(owner)
        status = self.repairer.server_status()
        for item in files:
            entry = self.catalog.file(owner, item["name"])
            item["state"] = self._file_state(entry["chunks"] if entry else [], status)
        return Reply({"files": files})

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

    def _link(self, local: tuple[str, int], token: str) -> str:
        host, port = self.config.advertise or local
        if ":" in host:
            host = f"[{host}]"
        return f"filecluster://{host}:{port}/s/{token}"

    def share(self, req: Request) -> Reply:
        h = req.header
        owner = _principal(req)
        name = check_file_name(h["name"])
        with self.catalog.lock:
            if self.catalog.file(owner, name) is None:
                raise NotFound(f"you have no file named {name!r}")
            token = self.catalog.share_for(owner, name)
            if token is None:
                token = new_token()
                self.catalog.add_share(token, owner, name)
        return Reply({"token": token, "link": self._link(req.local, token)})

    def locate(self, req: Request) -> Reply:
        """Where a file's chunks are, with GET tickets, under a lease that keeps those chunks until
        the download ends (RELEASE) or the lease expires; LOCATE ``{lease}`` renews it."""
        h = req.header
        if h.get("lease"):
            address = client_key(req.peer[0])
            self.link_throttle.attempt(address)  # an unknown lease counts like an unknown link
            lease = self.leases.renew(h["lease"])
            self.link_throttle.found(address)
            return Reply(self._located(lease))
        with self.catalog.lock:
            if h.get("token"):
                owner, name = self._shared_file(h["token"], req.peer[0])
                who = "link"
            elif h.get("name") is not None:
                owner, name = _principal(req), check_file_name(h["name"])
                if self.catalog.file(owner, name) is None:
                    raise NotFound(f"you have no file named {name!r}")
                who = f"user:{owner}"
            else:
                raise InvalidRequest("LOCATE needs a token, a lease, or a session and a name")
            entry = self.catalog.file(owner, name)
            assert entry is not None
            holder = f"user:{req.user}" if req.user else f"address:{client_key(req.peer[0])}"
            lease = self.leases.grant(
                owner, name, self.catalog.describe(owner, name), entry["chunks"], who, holder
            )
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

    def _shared_file(self, token: str, peer: str) -> tuple[str, str]:
        """The (owner, name) a share token names; unknown tokens count against the address."""
        address = client_key(peer)
        self.link_throttle.attempt(address)
        share = self.catalog.share(token)
        if share is None:
            raise NotFound("unknown link (it may have been deleted)")
        self.link_throttle.found(address)
        return share["owner"], share["name"]

    def _sources(self, chunk_id: str, who: str, exp: int) -> list[dict[str, Any]]:
        """Where a chunk can be read, servers believed up first, each with its GET ticket's MAC."""
        states = [self.registry.get(i) for i in self.catalog.chunk_servers(chunk_id)]
        known = [s for s in states if s is not None]
        known.sort(key=lambda s: not self.registry.is_up(s))
        return [{**s.ref.wire(), "ticket": self.key.get_mac(chunk_id, s.id, who, exp)} for s in known]

    def delete(self, req: Request) -> Reply:
        h = req.header
        owner = _principal(req)
        name = check_file_name(h["name"])
        with self.catalog.lock:
            if self.catalog.file(owner, name) is None:
                raise NotFound(f"you have no file named {name!r}")
            freed = self.catalog.delete_file(owner, name)
        self.collector.queue_freed(freed)
        log.info("%s deleted %s (%d chunk(s) to free)", owner, name, len(freed))
        return Reply({"freed_chunks": len(freed)})

    def status(self, req: Request) -> Reply:
        return Reply(self.status_figures())

    def status_figures(self) -> dict[str, Any]:
        """Every known server, its state and figures (those up are asked for fresh ones right
        now, in parallel), and the chunks' health as of the last repair round."""
        states = self.registry.all()
        with ThreadPoolExecutor(max(1, min(16, len(states)))) as pool:
            fresh = list(
                pool.map(
                    lambda s: self.storage.ping(s.ref, timeout=1.0) if self.registry.is_up(s) else None,
                    states,
                )
            )
        needed = self.repairer.last_plan.draining_needed
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


def _principal(req: Request) -> str:
    """The session's user, which the door resolved (the message table says SESSION)."""
    if req.user is None:
        raise AuthError("not logged in (or the session ended); run: filecluster login USER")
    return req.user
