"""LOCATE_MANY and RELEASE_MANY: many downloads located, and their leases ended, in one request each.

LOCATE_MANY names up to MAX_LOCATE_MANY files: ``names`` (the sender's own files, with a session)
or ``paths`` inside the folder link ``token``.  Each is located exactly as a LOCATE of it alone
would be (the same handler, so the same authorisation, link throttle and budget, lease and
tickets), and answered in request order: its LOCATE reply (each chunk's copies named by server
id, the servers listed once at the top: see :func:`_compact`), or ``{"error": {"code", "message"}}``
if that LOCATE would have failed, so one missing file does not fail the others.  The reply stops
adding files once it describes MAX_LOCATE_MANY_CHUNKS chunks (it always answers one file at least):
the client asks again for the rest.  RELEASE_MANY ends up to MAX_LOCATE_MANY leases; like RELEASE,
knowing a lease's id is what allows ending it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from common.errors import AuthError, FileClusterError, InvalidRequest
from common.frame_server import Handler, Reply, Request
from common.limits import MAX_LOCATE_MANY, MAX_LOCATE_MANY_CHUNKS
from common.messages import MsgType
from proxy.leases import Leases


class LocateMany:
    def __init__(self, locate: Callable[[Request], Reply], leases: Leases) -> None:
        self.locate = locate  # the LOCATE handler, for each file
        self.leases = leases

    def handlers(self) -> Mapping[MsgType, Handler]:
        return {MsgType.LOCATE_MANY: self.locate_many, MsgType.RELEASE_MANY: self.release_many}

    def locate_many(self, req: Request) -> Reply:
        h = req.header
        names, paths, token = h.get("names"), h.get("paths"), h.get("token")
        if (names is None) == (paths is None):
            raise InvalidRequest("LOCATE_MANY takes names (with a session) or a token and paths")
        if names is not None:
            if token is not None:
                raise InvalidRequest("LOCATE_MANY takes names or a token, not both")
            if req.user is None:
                raise AuthError("not logged in (or the session ended); run: filecluster login USER")
            headers = [{"name": name} for name in _strings(names, "names")]
        else:
            if not token:
                raise InvalidRequest("LOCATE_MANY with paths needs the folder link's token")
            headers = [{"token": token, "path": path} for path in _strings(paths, "paths")]
        files: list[dict[str, Any]] = []
        chunks = 0
        for header in headers:
            try:
                found = dict(self.locate(dataclasses.replace(req, header=header)).header)
            except FileClusterError as exc:
                found = {"error": {"code": exc.code, "message": exc.message}}
            files.append(found)
            chunks += len(found.get("chunks") or ())
            if chunks >= MAX_LOCATE_MANY_CHUNKS:
                break
        return Reply(_compact(files))

    def release_many(self, req: Request) -> Reply:
        """Downloads ended: their leases go (an unknown or ended one is no error)."""
        for lease in _strings(req.header["leases"], "leases"):
            self.leases.release(lease)
        return Reply({})


def _compact(files: list[dict[str, Any]]) -> dict[str, Any]:
    """The reply, within the codec's nesting limit: each chunk names its copies' servers by id
    (``servers``) with the ticket MAC of each (``tickets``), and the servers are listed once, at
    the top (``servers``: their LOCATE form less the ticket)."""
    servers: dict[int, dict[str, Any]] = {}
    for found in files:
        compact = []
        for chunk in found.get("chunks") or ():
            for server in chunk["servers"]:
                servers.setdefault(server["id"], {k: v for k, v in server.items() if k != "ticket"})
            compact.append(
                {
                    "id": chunk["id"],
                    "size": chunk["size"],
                    "servers": [server["id"] for server in chunk["servers"]],
                    "tickets": [server["ticket"] for server in chunk["servers"]],
                }
            )
        if "chunks" in found:
            found["chunks"] = compact
    return {"servers": list(servers.values()), "files": files}


def _strings(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_LOCATE_MANY:
        raise InvalidRequest(f"{what} must be 1 to {MAX_LOCATE_MANY} strings")
    if not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"{what} must be 1 to {MAX_LOCATE_MANY} strings")
    return list(value)
