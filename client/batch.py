"""Many downloads at once in one process: located BATCH at a time (LOCATE_MANY), fetched by THREADS
threads over persistent connections (one pool: each thread keeps its own connection to each server;
one :class:`client.chunk_sources.Trouble`: a server that failed any download is tried last by all),
their leases ended BATCH at a time (RELEASE_MANY).

Small files (client.small_files.is_small: one chunk of at most 256 KiB) go to GROUPS threads a
located batch at a time, which download each batch as a group (client.small_files: requests
pipelined on each server's connection, one round of fsyncs).  Every other file, and every small
one a group hands back, is downloaded by client.download exactly as alone (verified, fsynced
before it is linked into place, resumable, routed around bad servers, bad copies reported), only
with the shared pool and its lease handed here for RELEASE_MANY.  Located files wait for a
thread; at most ROOM batches are located and not yet finished, so one download holds at most
ROOM x BATCH = 192 leases (the proxy keeps 256 a user).  Three, not two: while GROUPS threads work
on two batches the third is being located, so a thread that ends a group finds the next one ready
(measured with 1,000 files of 64 KiB: the group threads waited 63-70 ms in all between groups with
two, 1-15 ms with three).
Requests to the proxy go one at a time over its one connection (:class:`SharedProxy`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client import download as downloader
from client.chunk_sources import Trouble
from client.partial import PARTIAL_DIR, remove_if_empty
from client.pool import READ_TIMEOUT, ConnectionPool, ProxyCaller, SharedProxy
from client.small_files import SmallFiles, is_small
from common.config import read_timeout
from common.errors import FileClusterError, ProtocolError, error_from_wire
from common.messages import MsgType

BATCH = 64  # files per LOCATE_MANY, and leases per RELEASE_MANY (at most common.limits.MAX_LOCATE_MANY)
THREADS = 4  # files downloaded at once (more only adds contention for the GIL: measured 4 vs 8)
GROUPS = 2  # groups of small files downloaded at once (client.small_files)
ROOM = 3  # batches located and not yet finished


@dataclass(frozen=True)
class Wanted:
    name: str  # your file's name, or the path in the folder link
    save_as: str | None


Outcome = Callable[[Wanted, "downloader.DownloadResult | FileClusterError"], None]


class _Releases:
    """Leases of finished downloads, ended BATCH at a time."""

    def __init__(self, proxy: SharedProxy) -> None:
        self._proxy = proxy
        self._pending: list[str] = []
        self._lock = threading.Lock()

    def add(self, lease: str) -> None:
        with self._lock:
            self._pending.append(lease)
            if len(self._pending) < BATCH:
                return
            leases, self._pending = self._pending, []
        self._send(leases)

    def flush(self) -> None:
        with self._lock:
            leases, self._pending = self._pending, []
        if leases:
            self._send(leases)

    def _send(self, leases: list[str]) -> None:
        with contextlib.suppress(FileClusterError, OSError):  # best effort: a lease expires anyway
            self._proxy.call(MsgType.RELEASE_MANY, {"leases": leases})


def download_many(
    proxy: ProxyCaller,
    wanted: list[Wanted],
    out_dir: Path,
    outcome: Outcome,
    token: str | None = None,
    progress: Callable[[Wanted], downloader.Progress] | None = None,
) -> None:
    """Download ``wanted``: your own files by name, or with ``token`` the paths in that folder
    link; ``outcome`` hears of each file (its result or its error), from the downloading threads;
    ``progress`` gives the callback of each file downloaded alone (a group's files only finish)."""
    shared = SharedProxy(proxy)
    releases = _Releases(shared)
    room = threading.Semaphore(ROOM * BATCH)  # located and not yet finished
    swept: set[Path] = set()  # destination folders whose stale partials were swept (once each)

    def one(item: Wanted, info: dict[str, Any]) -> None:
        single = {"token": token, "path": item.name} if token else {"name": item.name}
        try:
            result: downloader.DownloadResult | FileClusterError = downloader.download(
                info,
                out_dir,
                progress(item) if progress is not None else None,
                relocate=lambda: shared.call(MsgType.LOCATE, single, session=token is None),
                proxy=shared,
                save_as=item.save_as,
                pool=pool,
                release=releases.add,
                swept=swept,
                trouble=trouble,
            )
        except FileClusterError as exc:
            result = exc
        finally:
            room.release()
        outcome(item, result)

    def finished(item: Wanted, result: downloader.DownloadResult | FileClusterError) -> None:
        room.release()
        outcome(item, result)

    def alone(item: Wanted, info: dict[str, Any]) -> None:
        if stopping.is_set():  # not downloaded after all: its lease ends with the others
            room.release()
            if isinstance(info.get("lease"), str):
                releases.add(info["lease"])
            return
        futures.append(workers.submit(one, item, info))

    def submit(located: list[tuple[Wanted, dict[str, Any]]]) -> None:
        group: list[tuple[Wanted, dict[str, Any]]] = []
        for item, info in located:
            if is_small(info):
                group.append((item, info))
            else:
                futures.append(workers.submit(one, item, info))
        if group:
            job = grouped.submit(small.download, group)
            job.add_done_callback(group_ended)
            futures.append(job)

    def group_ended(job: Future[None]) -> None:
        """A group that raised (a bug, or memory) never gave back the room of the files it did not
        finish: wake the feeder, which then stops, so the error surfaces instead of a hang."""
        if not job.cancelled() and job.exception() is not None:
            broken.set()
            room.release(ROOM * BATCH)

    pool = ConnectionPool(read_timeout(READ_TIMEOUT))
    trouble = Trouble()  # a server that failed one download is tried last by every other one
    small = SmallFiles(out_dir, pool, shared, swept, finished, alone, releases.add, trouble)
    stopping = threading.Event()
    broken = threading.Event()  # a group raised: locate nothing more
    futures: list[Future[None]] = []
    try:
        with pool, ThreadPoolExecutor(THREADS) as workers, ThreadPoolExecutor(GROUPS) as grouped:
            try:
                _feed(shared, wanted, token, room, outcome, submit, broken)
                for future in futures:  # a group may add the files it hands to client.download
                    future.result()
            except BaseException:  # Ctrl-C or SIGTERM: no new downloads, those under way broken off
                stopping.set()
                for future in futures:
                    future.cancel()
                pool.abort()
                raise
    finally:
        releases.flush()
        for folder in swept:  # the hidden partial folders the downloads left empty
            remove_if_empty(folder / PARTIAL_DIR)


def _feed(
    shared: SharedProxy,
    wanted: list[Wanted],
    token: str | None,
    room: threading.Semaphore,
    outcome: Outcome,
    submit: Callable[[list[tuple[Wanted, dict[str, Any]]]], None],
    broken: threading.Event,
) -> None:
    """Locate ``wanted`` BATCH at a time, the files located handed to ``submit`` a batch at a time,
    each that cannot be located to ``outcome``; waits for room (at most ROOM x BATCH located, not
    finished).  Stops as soon as ``broken`` is set."""
    start = 0
    while start < len(wanted):
        batch = wanted[start : start + BATCH]
        for _ in batch:
            room.acquire()
        if broken.is_set():
            return
        try:
            located = _locate(shared, batch, token)
        except FileClusterError as exc:  # the whole request failed: so does each file of it
            located = [exc] * len(batch)
        found: list[tuple[Wanted, dict[str, Any]]] = []
        for item, info in zip(batch, located, strict=False):
            if isinstance(info, FileClusterError):
                room.release()
                outcome(item, info)
            else:
                found.append((item, info))
        submit(found)
        for _ in batch[len(located) :]:
            room.release()  # not answered this time (the reply was full): asked again
        start += max(1, len(located))


def _locate(
    proxy: SharedProxy, batch: list[Wanted], token: str | None
) -> list[dict[str, Any] | FileClusterError]:
    """LOCATE_MANY for ``batch``: each file's LOCATE reply or error, in order (maybe fewer files)."""
    if token:
        reply = proxy.call(MsgType.LOCATE_MANY, {"token": token, "paths": [w.name for w in batch]})
    else:
        reply = proxy.call(MsgType.LOCATE_MANY, {"names": [w.name for w in batch]}, session=True)
    files = reply.get("files")
    if not isinstance(files, list) or not files:
        raise ProtocolError("the proxy's LOCATE_MANY reply lists no files")
    servers = {s["id"]: s for s in reply.get("servers") or ()}
    out: list[dict[str, Any] | FileClusterError] = []
    for found in files[: len(batch)]:
        error = found.get("error") if isinstance(found, dict) else None
        if isinstance(error, dict):
            out.append(error_from_wire(str(error.get("code")), str(error.get("message")), None, None))
        else:
            out.append(_expanded(found, servers))
    return out


def _expanded(found: dict[str, Any], servers: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    """A file of a LOCATE_MANY reply in the form of a LOCATE reply (each copy's server whole)."""
    try:
        chunks = [
            {
                "id": chunk["id"],
                "size": chunk["size"],
                "servers": [
                    {**servers[server], "ticket": ticket}
                    for server, ticket in zip(chunk["servers"], chunk["tickets"], strict=True)
                ],
            }
            for chunk in found["chunks"]
        ]
    except (KeyError, TypeError, ValueError):
        raise ProtocolError("the proxy's LOCATE_MANY reply names a server it does not list") from None
    return {**found, "chunks": chunks}
