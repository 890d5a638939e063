"""Share links: the catalog's record of each, and what each may still serve.

Theory of operation
-------------------
``state["shares"][token]`` is a link: ``owner``, ``name`` (a file, or a folder: a name with files
under ``name/``), ``created``, and, for links made since links could be limited, ``kind``
("file" or "folder"), ``expires`` (Unix time or None), ``max_downloads`` (None: unlimited),
``served`` (body bytes handed out so far), ``opens`` (downloads started: what counts for an
empty file) and, once it ended, ``ended`` ("revoked" or "deleted") with ``ended_at``.  A link
from before limits existed (``{owner, name, created}``) reads as an active, unlimited file link.

A link's budget is ``max_downloads × size`` body bytes.  A download *reserves* the bytes it is
about to send (LINK_OPEN with a range; a binary LOCATE reserves the whole file): the reservation
is journaled into ``served`` before the reply, so two concurrent downloads cannot both pass a
limit, and a crash never gives bytes back.  LINK_CLOSE refunds what was not sent.  A grant that
is never closed (the gateway died) is not refunded: it stays counted as served (conservative).
``downloads`` = ``served // size`` (for an empty file: ``opens``).  A file link also records the
``size`` its ``served`` bytes counted (with each reservation): when its file is updated to one of
another size, each download of the old one counts as one of the new (:func:`served`).

Ended links stay as tombstones, so they answer Gone (410) rather than NotFound (404), for
:data:`TOMBSTONE_DAYS` days and at most :data:`TOMBSTONES_PER_USER` per user (the oldest go
first); expired links go the same way that long after they expired.  Pruning happens when a
journaled op touches the owner's links, with the op's own time, so replay prunes the same.

Derived, never stored, rebuilt at load: ``by_name`` ((owner, name) -> live tokens, for deletes
and moves), ``by_owner`` (owner -> every token of theirs, oldest first, for LINKS and pruning)
and ``folder_links`` (owner -> their live folder links, for deletes: a delete looks at those, not
at every link of the owner's).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from common.errors import Gone
from common.names import SEPARATOR

TOMBSTONE_DAYS = 30
TOMBSTONE_SECONDS = TOMBSTONE_DAYS * 86400.0
TOMBSTONES_PER_USER = 1000
STATES = ("active", "expired", "revoked", "exhausted", "deleted")
OVER = ("expired", "revoked", "deleted")  # the states a link never leaves (exhausted may: a new size)


def downloads(link: dict[str, Any], size: int) -> int:
    """Whole downloads served: bytes served // size (an empty file: downloads started)."""
    if size <= 0:
        return int(link.get("opens", 0))
    return served(link, size) // size


def served(link: dict[str, Any], size: int) -> int:
    """The bytes a file link has served, counted in downloads of its file as it is now (``size``).

    ``served`` counts bytes of the file the link served then (``size`` in the link, recorded with
    each reservation): once the link's name holds another version of another size, each download
    of the old one (begun past the probe slack) counts as one whole download of the new one, so a
    link of 3 downloads has as many left after its file is updated, whatever the new size."""
    total = int(link.get("served", 0))
    counted = int(link.get("size") or 0)  # 0: none recorded (a link from before sizes were)
    if counted in (0, size) or size <= 0 or link.get("kind") == "folder":
        return total
    whole, rest = divmod(total, counted)
    return (whole + (1 if rest > probe_slack(counted, link.get("max_downloads")) else 0)) * size


def probe_slack(size: int, limit: int | None = 1) -> int:
    """Bytes requests may take past a link's budget, in all (see fits): for each download the link
    allows, 1/64 of the file (at least a byte, at most PROBE_SLACK), so that each may come with a
    probe first."""
    return min(PROBE_SLACK, max(1, size // 64)) * max(1, limit or 1)


def state(link: dict[str, Any], size: int, now: float) -> str:
    """One of :data:`STATES`: an ended link says why; else expired, then exhausted, else active."""
    ended = link.get("ended")
    if ended:
        return str(ended)
    expires = link.get("expires")
    if expires is not None and expires <= now:
        return "expired"
    limit = link.get("max_downloads")
    if limit is not None and downloads(link, size) >= limit:
        return "exhausted"
    return "active"


_WHY = {
    "expired": "this link has expired",
    "revoked": "this link was revoked by its owner",
    "deleted": "this link's {kind} was deleted",
    "exhausted": "this link's download limit was reached",
}


def check_serves(link: dict[str, Any], size: int, now: float, *, reserved: bool = False) -> None:
    """Raise Gone unless the link is active.  ``reserved``: asked for a download under way, whose
    bytes were reserved when it opened, so the budget it used up itself does not end it (a link of
    one download is exhausted by that download's own reservation); expiry, revocation and deletion
    still do."""
    current = state(link, size, now)
    if current != "active" and not (reserved and current == "exhausted"):
        raise Gone(_WHY[current].format(kind=link.get("kind", "file")))


RESUME_SLACK = 16 * 1024 * 1024  # bytes a resumed range may go over a link's budget, in all
PROBE_SLACK = 1024 * 1024  # bytes a probe may go over it, at most, for each download it allows


def fits(link: dict[str, Any], size: int, nbytes: int, start: int = 0) -> bool:
    """Whether reserving ``nbytes`` more (one more download, for an empty file) stays in budget.

    A range that starts past byte 0 (a resume: ``curl -C -``, a browser) may go over the budget by
    up to min(start, RESUME_SLACK) bytes: what an interrupted transfer counted as sent includes what
    sat in the kernels' buffers when it broke, which the client never got.  So a link of one
    download can be resumed.  Any range may go over by up to 1/64 of the file (at least a byte, at
    most PROBE_SLACK) for each download the link allows, in all: a download manager or a browser
    that first asks for a byte or a few KiB (``Range: bytes=0-0``) before each download must not
    leave the link unable to serve those downloads; at 1/64 of the file a download, a link is not
    worth many more downloads than it allows.  The most a link can leak is 1/64 of its budget and
    16 MiB more."""
    limit: int | None = link.get("max_downloads")
    if limit is None:
        return True
    if size <= 0:
        return int(link.get("opens", 0)) + 1 <= limit
    slack = max(min(start, RESUME_SLACK), probe_slack(size, limit))
    return served(link, size) + nbytes <= limit * size + slack


def describe(link: dict[str, Any], size: int) -> dict[str, Any]:
    """The ``link`` object of LOCATE/LINK_OPEN replies."""
    return {
        "created": link["created"],
        "expires": link.get("expires"),
        "max_downloads": link.get("max_downloads"),
        "downloads": downloads(link, size),
    }


class LinkBook:
    """The links in ``state["shares"]``, their indexes, and the journaled ops that change them."""

    def __init__(self, shares: dict[str, dict[str, Any]]) -> None:
        self.shares = shares
        self.by_name: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
        self.by_owner: defaultdict[str, dict[str, None]] = defaultdict(dict)
        self.folder_links: defaultdict[str, set[str]] = defaultdict(set)
        for token, link in sorted(shares.items(), key=lambda item: item[1]["created"]):
            self._index(token, link)

    def _index(self, token: str, link: dict[str, Any]) -> None:
        self.by_owner[link["owner"]][token] = None
        if not link.get("ended"):
            self.by_name[(link["owner"], link["name"])].add(token)
            if link.get("kind") == "folder":
                self.folder_links[link["owner"]].add(token)

    def _unindex_folder(self, owner: str, token: str) -> None:
        mine = self.folder_links.get(owner)
        if mine is not None:
            mine.discard(token)
            if not mine:
                del self.folder_links[owner]

    # -- queries -------------------------------------------------------------------------------
    def get(self, token: str) -> dict[str, Any] | None:
        return self.shares.get(token)

    def of_owner(self, owner: str) -> list[tuple[str, dict[str, Any]]]:
        """An owner's links, newest first."""
        return [(t, self.shares[t]) for t in reversed(self.by_owner.get(owner, {}))]

    def live(self, owner: str, name: str) -> list[str]:
        """The tokens of the links of ``name`` that have not ended (sorted)."""
        return sorted(self.by_name.get((owner, name), ()))

    # -- ops (journaled by the catalog, applied under its lock) ---------------------------------
    def add(self, e: dict[str, Any]) -> None:
        """``share_add``: a new link (ops from before limits carry only owner, name, created)."""
        link: dict[str, Any] = {"owner": e["owner"], "name": e["name"], "created": e["created"]}
        for key in ("kind", "expires", "max_downloads"):
            if e.get(key) is not None:
                link[key] = e[key]
        self.shares[e["token"]] = link
        self._index(e["token"], link)
        self.prune(e["owner"], e["created"])

    def use(self, e: dict[str, Any]) -> None:
        """``link_use``: bytes reserved (or, negative, refunded) and downloads started."""
        link = self.shares.get(e["token"])
        if link is not None:
            size = e.get("size")
            if size is not None:  # a reservation: served is counted in this size from now on
                link["served"], link["size"] = served(link, size), size
            link["served"] = max(0, int(link.get("served", 0)) + e.get("bytes", 0))
            link["opens"] = max(0, int(link.get("opens", 0)) + e.get("opens", 0))

    def end(self, e: dict[str, Any]) -> None:
        """``link_end``: links revoked or deleted; they stay as tombstones."""
        for token in e["tokens"]:
            self._end(token, e["state"], e["at"])
        self.prune(e["owner"], e["at"])

    def _end(self, token: str, why: str, at: float) -> None:
        link = self.shares.get(token)
        if link is None or link.get("ended"):
            return
        link["ended"], link["ended_at"] = why, at
        self._unindex_folder(link["owner"], token)
        key = (link["owner"], link["name"])
        mine = self.by_name.get(key)
        if mine is not None:
            mine.discard(token)
            if not mine:
                del self.by_name[key]

    def rename(self, owner: str, old: str, new: str) -> None:
        """A file or folder moved: its live links (and those of folders inside it) follow."""
        start = old + SEPARATOR
        for token in list(self.by_owner.get(owner, {})):
            link = self.shares[token]
            name = link["name"]
            if name == old or name.startswith(start):
                renamed = new + name[len(old) :]
                if not link.get("ended"):
                    self.by_name[(owner, name)].discard(token)
                    if not self.by_name[(owner, name)]:
                        del self.by_name[(owner, name)]
                    self.by_name[(owner, renamed)].add(token)
                link["name"] = renamed

    def end_gone(self, owner: str, names: list[str], exists: Any, at: float) -> None:
        """Files went: end their links, and folder links whose folder no longer ``exists(name)``."""
        for name in names:
            for token in list(self.by_name.get((owner, name), ())):
                self._end(token, "deleted", at)
        for token in sorted(self.folder_links.get(owner, ())):
            link = self.shares[token]
            if not exists(link["name"]):
                self._end(token, "deleted", at)
        self.prune(owner, at)

    def prune(self, owner: str, now: float) -> None:
        """Forget an owner's tombstones (and long-expired links) older than the keeping time, and
        the oldest tombstones beyond the per-user cap."""
        mine = self.by_owner.get(owner)
        if not mine:
            return
        cutoff = now - TOMBSTONE_SECONDS
        ended: list[tuple[float, str]] = []
        for token in list(mine):
            link = self.shares[token]
            expires = link.get("expires")
            if link.get("ended"):
                if link.get("ended_at", 0.0) < cutoff:
                    self._forget(token)
                else:
                    ended.append((link.get("ended_at", 0.0), token))
            elif expires is not None and expires < cutoff:
                self._forget(token)
        ended.sort()
        for _, token in ended[: max(0, len(ended) - TOMBSTONES_PER_USER)]:
            self._forget(token)

    def _forget(self, token: str) -> None:
        link = self.shares.pop(token)
        owner = link["owner"]
        self._unindex_folder(owner, token)
        self.by_owner[owner].pop(token, None)
        if not self.by_owner[owner]:
            del self.by_owner[owner]
        key = (owner, link["name"])
        if key in self.by_name:
            self.by_name[key].discard(token)
            if not self.by_name[key]:
                del self.by_name[key]
