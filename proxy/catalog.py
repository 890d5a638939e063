"""The catalog: users, sessions, files, chunk locations and share links.

Theory of operation
-------------------
The catalog is held in memory and made durable by a :class:`~proxy.journal.Journal`.  Every
change is a small *op* (a dict with an ``op`` name); :meth:`Catalog._change` journals it (fsync)
and only then applies it, under one lock, so what a reply reports is on disk.  Replay on start
applies the same ops through the same ``_apply`` code, so the state after a restart is the state
before it.

The state is kept compact, for catalogs of millions of files: the small part (``meta``: users,
sessions, links, servers) as plain dicts; files packed one ``bytes`` object each
(proxy.records, held by proxy.file_tree); chunks in a table of tuples (proxy.chunk_table).
:attr:`Catalog.state` shows the whole as one JSON-able dict, for tests and tools: building it
costs a pass over everything, so no request path uses it.

Files, their versions, folders and per-user usage are proxy.file_tree's
(:attr:`Catalog.tree`); the requests that change them are proxy.catalog_files'
(the catalog's base class).
Chunks are shared between files: each chunk's reference count (derived, never stored) counts how
many kept file versions use it.  A chunk whose count drops to zero stays in
the catalog, with its locations, until the collector has deleted it from the
servers and journaled ``chunk_del``; that is what lets an upload in flight
pin it.  Chunk *locations* are also soft state: a storage server's
registration tells the proxy exactly which chunks it holds, and
:meth:`reconcile_server` brings the catalog in line without journaling.

Every ``snapshot_every`` changes the state is written whole (proxy.snapshot).  A small catalog
(fewer than ``big_from`` chunks) is written as one JSON object (format 1, easy to read); a big one
in format 2.  From ``fork_from`` chunks on, a forked child writes it, so a snapshot never holds the
lock (and the change that made it due) for more than the fork (proxy.journal, "Snapshots in the
background"); a tiny catalog is written inline, where a fork would cost more than the writing.

Sessions are keyed by the SHA-256 of their token.  Their lifetimes are
proxy.sessions' business: a session's last use is journaled only now and
then (``session_touch``), and expired ones leave in batches (``session_expire``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import Any

from common.errors import InternalError
from proxy import records
from proxy import snapshot as snapshot_format
from proxy.catalog_files import FileChanges
from proxy.chunk_table import ChunkTable
from proxy.file_tree import Counted, Files, FileTree, upgrade
from proxy.journal import Journal

SNAPSHOT_EVERY = 1000
BIG_FROM = 50_000  # chunks from which snapshots are format 2
FORK_FROM = 1_000  # chunks from which snapshots are written by a forked child, off the request path
SNAPSHOT_TIMEOUT = 600.0  # seconds a snapshot child may take before it is killed (and tried again)
log = logging.getLogger(__name__)


def _empty_meta() -> dict[str, Any]:
    return {"cluster_id": "", "users": {}, "sessions": {}, "shares": {}, "servers": {}}


class Catalog(FileChanges):
    def __init__(
        self,
        folder: Path,
        *,
        snapshot_every: int = SNAPSHOT_EVERY,
        big_from: int = BIG_FROM,
        fork_from: int = FORK_FROM,
    ) -> None:
        self.lock = threading.RLock()
        self.snapshot_every = snapshot_every
        self.big_from = big_from
        self.fork_from = min(fork_from, big_from)  # a format 2 snapshot is always a child's
        self._snapshot_due = snapshot_every
        self._child_done = threading.Event()  # no snapshot child is running
        self._child_done.set()
        self.journal = Journal(folder)
        snapshot, entries = self.journal.load()
        self.meta = _empty_meta()
        self.chunks = ChunkTable()
        self.files: Files = {}
        counted = None
        if snapshot is not None:
            counted = self._load_snapshot(snapshot)
        # format 2 brings the derived figures as they were; else they are counted now
        self.tree = FileTree(self.files, self.meta["shares"], self.chunks, counted)
        self._user_sessions: defaultdict[str, set[str]] = defaultdict(set)  # derived: user -> hashes
        for token_hash, session in self.meta["sessions"].items():
            self._user_sessions[session["user"]].add(token_hash)
        # derived: a user name in lower case -> the account's name as registered (the first, if an
        # old catalog has names that differ only in case: each still logs in by its exact name)
        self._folded: dict[str, str] = {}
        for name in self.meta["users"]:
            self._folded.setdefault(name.lower(), name)
        for entry in entries:
            self._apply(entry)
        if not self.meta["cluster_id"]:
            self._change({"op": "init", "cluster_id": uuid.uuid4().hex})

    def _load_snapshot(self, snapshot: dict[str, Any]) -> Counted | None:
        if snapshot.get("version") == snapshot_format.FORMAT:
            self.meta.update(snapshot["meta"])
            self.files = snapshot["files"]
            self.chunks.load(snapshot["chunks"])
            return snapshot["usage"], snapshot["folders"]
        # format 1 (JSON objects): pack every file, tabulate every chunk; written anew at the next snapshot
        for key in ("seq", "version"):
            snapshot.pop(key, None)
        files = snapshot.pop("files", {})
        self.chunks.load_export(snapshot.pop("chunks", {}))
        self.meta.update(snapshot)
        self.files = {
            owner: {name: records.pack(upgrade(entry)) for name, entry in names.items()}
            for owner, names in files.items()
        }
        return None

    @property
    def cluster_id(self) -> str:
        return str(self.meta["cluster_id"])

    @property
    def state(self) -> dict[str, Any]:
        """The whole state as one JSON-able dict (files unpacked, chunks with their servers): a
        pass over everything, for tests and tools, never for a request."""
        with self.lock:
            files = {
                owner: {name: records.unpack(blob) for name, blob in names.items()}
                for owner, names in self.files.items()
            }
            return {**self.meta, "files": files, "chunks": self.chunks.export()}

    @property
    def refs(self) -> Counter[str]:
        """How many kept versions use each chunk (those used at all): a pass over every chunk."""
        with self.lock:
            return Counter(self.chunks.ref_counts())

    # -- durability ------------------------------------------------------------------
    def _change(self, op: dict[str, Any]) -> Any:
        with self.lock:
            entry = self.journal.append(op)
            result = self._apply(entry)
            if self.journal.entries_since_snapshot >= self._snapshot_due and self.journal.pending is None:
                self._snapshot_due_now()
            return result

    def _change_many(self, ops: list[dict[str, Any]]) -> list[Any]:
        """Journal several changes with one fsync (Journal.append_many), then apply each in order;
        their results, in order.  All or none are journaled."""
        if not ops:
            return []
        with self.lock:
            entries = self.journal.append_many(ops)
            results = [self._apply(entry) for entry in entries]
            if self.journal.entries_since_snapshot >= self._snapshot_due and self.journal.pending is None:
                self._snapshot_due_now()
            return results

    def _encode(self, seq: int) -> bytes:
        """The snapshot as of ``seq`` (called under the lock, or in a snapshot child)."""
        if len(self.chunks) >= self.big_from:
            state = {"meta": self.meta, "files": self.files, "chunks": self.chunks.dump()}
            return snapshot_format.encode(seq, {**state, **self.tree.counted()})
        return json.dumps({**self.state, "seq": seq}, separators=(",", ":"), ensure_ascii=False).encode()

    def _snapshot_due_now(self) -> None:
        try:
            if len(self.chunks) >= self.fork_from:
                pid = self.journal.start_snapshot(self._encode)
                self._child_done.clear()
                threading.Thread(
                    target=self._await_snapshot, args=(pid,), name="snapshot", daemon=True
                ).start()
            else:
                self.journal.snapshot(self._encode)
            self._snapshot_due = self.snapshot_every
        except OSError as exc:  # the change is durable in the journal; try again later
            log.warning("catalog snapshot failed (%s); will retry", exc)
            self._snapshot_due = self.journal.entries_since_snapshot + self.snapshot_every

    def _await_snapshot(self, pid: int) -> None:
        """Wait for a snapshot child (killed if it takes over ``SNAPSHOT_TIMEOUT`` s), then cut the
        journal (or, if it failed, try again later)."""
        try:
            deadline = time.monotonic() + SNAPSHOT_TIMEOUT
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                if time.monotonic() > deadline:
                    log.error("the catalog snapshot child %d hangs; killing it", pid)
                    os.kill(pid, signal.SIGKILL)
                    _, status = os.waitpid(pid, 0)
                    break
                time.sleep(0.02)
            written = os.waitstatus_to_exitcode(status) == 0
            with self.lock:
                try:
                    self.journal.finish_snapshot(written)
                except OSError as exc:
                    log.warning("catalog journal cut after a snapshot failed (%s); will retry", exc)
                    written = False
                if not written:
                    log.warning("catalog snapshot in the background failed; will retry")
                    self._snapshot_due = self.journal.entries_since_snapshot + self.snapshot_every
        finally:
            self._child_done.set()

    def wait_snapshot(self, timeout: float | None = None) -> bool:
        """Wait until no snapshot is being written in the background; False on timeout."""
        return self._child_done.wait(timeout)

    def snapshot(self) -> None:
        """Write the whole state now (after any snapshot in the background has ended)."""
        while True:
            self._child_done.wait()
            with self.lock:
                if self.journal.pending is None:
                    self.journal.snapshot(self._encode)
                    return

    def close(self) -> None:
        self._child_done.wait()
        with self.lock:
            self.journal.close()

    def _apply(self, entry: dict[str, Any]) -> Any:
        handler = getattr(self, f"_apply_{entry['op']}", None)
        if handler is None:
            raise InternalError(f"unknown catalog change {entry['op']!r}")
        return handler(entry)

    # -- ops: each applies one journaled change ------------------------------------------
    def _apply_init(self, e: dict[str, Any]) -> None:
        self.meta["cluster_id"] = e["cluster_id"]

    def _apply_user_add(self, e: dict[str, Any]) -> None:
        self.meta["users"][e["user"]] = {"salt": e["salt"], "hash": e["hash"], "created": e["created"]}
        self._folded.setdefault(e["user"].lower(), e["user"])

    def _apply_session_add(self, e: dict[str, Any]) -> None:
        self.meta["sessions"][e["token_hash"]] = {"user": e["user"], "created": e["created"]}
        self._user_sessions[e["user"]].add(e["token_hash"])

    def _apply_session_touch(self, e: dict[str, Any]) -> None:
        session = self.meta["sessions"].get(e["token_hash"])
        if session is not None:
            session["used"] = e["used"]

    def _apply_session_del(self, e: dict[str, Any]) -> None:
        self._forget_session(e["token_hash"])

    def _apply_session_expire(self, e: dict[str, Any]) -> None:
        for token_hash in e["token_hashes"]:
            self._forget_session(token_hash)

    def _forget_session(self, token_hash: str) -> None:
        session = self.meta["sessions"].pop(token_hash, None)
        if session is not None:
            mine = self._user_sessions[session["user"]]
            mine.discard(token_hash)
            if not mine:
                del self._user_sessions[session["user"]]

    def _apply_share_add(self, e: dict[str, Any]) -> None:
        self.tree.book.add(e)

    def _apply_link_use(self, e: dict[str, Any]) -> None:
        self.tree.book.use(e)

    def _apply_link_end(self, e: dict[str, Any]) -> None:
        self.tree.book.end(e)

    def _apply_gateway_seen(self, e: dict[str, Any]) -> None:
        self.meta["gateway_url"] = e["url"]

    def _apply_server_seen(self, e: dict[str, Any]) -> None:
        known = self.meta["servers"].setdefault(str(e["id"]), {})
        known.update(host=e["host"], port=e["port"])

    def _apply_server_drain(self, e: dict[str, Any]) -> None:
        known = self.meta["servers"].get(str(e["id"]))
        if known is not None:
            if e["draining"]:
                known["draining"] = True
            else:
                known.pop("draining", None)

    def _apply_server_forget(self, e: dict[str, Any]) -> None:
        self.meta["servers"].pop(str(e["id"]), None)
        self.chunks.forget_server(e["id"])

    def _apply_chunk_del(self, e: dict[str, Any]) -> None:
        for chunk_id in e["ids"]:
            self.chunks.drop(chunk_id)

    # -- changes -----------------------------------------------------------------------
    def add_user(self, user: str, salt: str, hashed: str) -> None:
        self._change({"op": "user_add", "user": user, "salt": salt, "hash": hashed, "created": time.time()})

    def add_session(self, token_hash: str, user: str, created: float | None = None) -> None:
        created = time.time() if created is None else created
        self._change({"op": "session_add", "token_hash": token_hash, "user": user, "created": created})

    def drop_session(self, token_hash: str) -> None:
        self._change({"op": "session_del", "token_hash": token_hash})

    def touch_session(self, token_hash: str, used: float, *, every: float) -> None:
        """Journal a session's last use, unless the journaled one is less than ``every`` s older."""
        with self.lock:
            session = self.meta["sessions"].get(token_hash)
            if session is not None and used - session.get("used", session["created"]) >= every:
                self._change({"op": "session_touch", "token_hash": token_hash, "used": used})

    def expire_sessions(self, token_hashes: list[str]) -> None:
        """End many sessions with one journal entry."""
        if token_hashes:
            self._change({"op": "session_expire", "token_hashes": token_hashes})

    def add_share(
        self,
        token: str,
        owner: str,
        name: str,
        *,
        kind: str = "file",
        expires: float | None = None,
        max_downloads: int | None = None,
    ) -> None:
        """A new link (proxy.links); a file or folder may have any number."""
        op: dict[str, Any] = {"op": "share_add", "token": token, "owner": owner, "name": name}
        op.update(created=time.time(), kind=kind, expires=expires, max_downloads=max_downloads)
        self._change(op)

    def use_link(self, token: str, nbytes: int, opens: int = 0, size: int | None = None) -> None:
        """Journal bytes reserved by a download of a link (negative: refunded) and downloads begun;
        ``size``: of the file a file link's reservation is for (proxy.links.served)."""
        if nbytes or opens:
            op: dict[str, Any] = {"op": "link_use", "token": token, "bytes": nbytes, "opens": opens}
            if size is not None:
                op["size"] = size
            self._change(op)

    def end_links(self, owner: str, tokens: list[str], why: str = "revoked") -> None:
        """Revoke links (they stay as tombstones, answering Gone)."""
        if tokens:
            self._change(
                {"op": "link_end", "owner": owner, "tokens": tokens, "state": why, "at": time.time()}
            )

    @property
    def gateway_url(self) -> str | None:
        """Where the most recent gateway serves links (GATEWAY_HELLO), kept across restarts."""
        url = self.meta.get("gateway_url")
        return url if isinstance(url, str) else None

    def remember_gateway(self, url: str) -> bool:
        """Keep the URL a gateway serves links at (journaled only when it changes); whether it did."""
        with self.lock:
            if self.gateway_url == url:
                return False
            self._change({"op": "gateway_seen", "url": url})
            return True

    def remember_server(self, server_id: int, host: str, port: int) -> None:
        """Keep a storage server's address, so locations resolve right after a proxy restart."""
        with self.lock:
            known = self.meta["servers"].get(str(server_id)) or {}
            if (known.get("host"), known.get("port")) != (host, port):
                self._change({"op": "server_seen", "id": server_id, "host": host, "port": port})

    def set_draining(self, server_id: int, draining: bool) -> bool:
        """Journal a server's decommissioning flag; False if the catalog does not know the server."""
        with self.lock:
            known = self.meta["servers"].get(str(server_id))
            if known is None:
                return False
            if bool(known.get("draining")) != draining:
                self._change({"op": "server_drain", "id": server_id, "draining": draining})
            return True

    def forget_server(self, server_id: int) -> None:
        """Remove a server for good: its address, its flags and every copy it was listed with."""
        self._change({"op": "server_forget", "id": server_id})

    def known_servers(self) -> dict[int, tuple[str, int]]:
        with self.lock:
            return {int(i): (s["host"], s["port"]) for i, s in self.meta["servers"].items()}

    def draining_servers(self) -> set[int]:
        with self.lock:
            return {int(i) for i, s in self.meta["servers"].items() if s.get("draining")}

    def drop_chunks(self, ids: list[str]) -> None:
        if ids:
            self._change({"op": "chunk_del", "ids": ids})

    # -- soft state: where chunks are --------------------------------------------------------
    def add_location(self, chunk_id: str, server_id: int) -> bool:
        """Record a copy (made by repair, or found in an inventory); False if the chunk is unknown."""
        with self.lock:
            return self.chunks.add_server(chunk_id, server_id)

    def drop_location(self, chunk_id: str, server_id: int) -> bool:
        """Forget a copy (found bad or missing, or removed as an extra); True if it was listed."""
        with self.lock:
            return self.chunks.drop_server(chunk_id, server_id)

    def chunk_table(
        self, on: Collection[tuple[int, ...]] | None = None
    ) -> Iterator[tuple[str, int, list[int], bool]]:
        """Every chunk (``on``: only those a file uses listed on one of these sets of servers): (id,
        size, the servers listed with a copy, whether a file uses it), read in batches under the
        lock (proxy.chunk_table), for repair planning outside it."""
        rows = self.chunks.scan(self.lock) if on is None else self.chunks.referenced_on(on, self.lock)
        for chunk_id, size, servers, refs in rows:
            yield chunk_id, size, list(servers), refs > 0

    def chunk_census(self) -> dict[tuple[int, ...], int]:
        """How many chunks files use are listed on each set of servers (proxy.chunk_table)."""
        return self.chunks.census(self.lock)

    def listed_but_absent(self, server_id: int, present: set[str]) -> list[str]:
        """Chunks the catalog places on a server that its inventory does not list."""
        return [
            chunk_id for chunk_id in self.chunks.on_server(server_id, self.lock) if chunk_id not in present
        ]

    def reconcile_server(self, server_id: int, present: set[str], gone: set[str]) -> list[str]:
        """Add the server to the chunks it holds, drop it from those confirmed ``gone``; returns
        the ids it holds that the catalog lacks.  Only confirmed absences are dropped: a chunk
        stored after the server read its inventory must keep its new location."""
        with self.lock:
            unknown = [c for c in present if not self.chunks.add_server(c, server_id)]
            for chunk_id in gone:
                self.chunks.drop_server(chunk_id, server_id)
            return sorted(unknown)

    # -- queries -------------------------------------------------------------------------
    def user(self, user: str) -> dict[str, Any] | None:
        record: dict[str, Any] | None = self.meta["users"].get(user)
        return record

    def account_name(self, user: str) -> str | None:
        """The account ``user`` names, whatever the case it is typed in: its exact name if there is
        one, else the one that differs only in case; None if there is none."""
        return user if user in self.meta["users"] else self._folded.get(user.lower())

    def session_user(self, token_hash: str) -> str | None:
        session = self.meta["sessions"].get(token_hash)
        return session["user"] if session else None

    def session(self, token_hash: str) -> dict[str, Any] | None:
        """A session's record: ``user``, ``created`` and, once journaled, ``used`` (Unix times)."""
        session: dict[str, Any] | None = self.meta["sessions"].get(token_hash)
        return session

    def sessions(self) -> list[tuple[str, dict[str, Any]]]:
        """Every session (token hash, a copy of its record)."""
        with self.lock:
            return [(h, dict(s)) for h, s in self.meta["sessions"].items()]

    def sessions_of(self, user: str) -> dict[str, dict[str, Any]]:
        with self.lock:
            return {h: dict(self.meta["sessions"][h]) for h in self._user_sessions.get(user, ())}

    def share(self, token: str) -> dict[str, Any] | None:
        """A link's record (proxy.links), ended ones included, or None."""
        return self.tree.book.get(token)

    def share_for(self, owner: str, name: str) -> str | None:
        """One live link of a file (the smallest token), or None."""
        tokens = self.tree.book.live(owner, name)
        return tokens[0] if tokens else None

    def links_of(self, owner: str) -> list[tuple[str, dict[str, Any]]]:
        """An owner's links (tokens and copies of their records), newest first."""
        with self.lock:
            return [(t, dict(link)) for t, link in self.tree.book.of_owner(owner)]

    def chunk(self, chunk_id: str) -> dict[str, Any] | None:
        """A chunk's ``{size, servers}`` (a copy), or None."""
        with self.lock:
            return self.chunks.get(chunk_id)

    def unreferenced(self, ids: Iterable[str] | None = None) -> list[str]:
        """Chunks in the catalog that no file uses (the collector's work list); without ``ids``,
        a pass over every chunk (once, at start)."""
        with self.lock:
            if ids is None:
                return sorted(self.chunks.unreferenced())
            return sorted(c for c in ids if c in self.chunks and not self.chunks.refs(c))

    def chunk_servers(self, chunk_id: str) -> list[int]:
        with self.lock:
            return self.chunks.servers(chunk_id)
