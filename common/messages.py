"""Message types and the header schema of each, as one table.

A message is a frame type plus a JSON header (a flat object) and an optional
binary payload.  ``SPECS`` says, for every type, which header fields it must
and may carry, their JSON types, and whether a payload is allowed.  A header
that does not fit its entry is a protocol error; an unknown type is one too.
``auth`` is the authorisation column: what a request must prove before any
handler sees it.  The frame server checks it once, at the door
(common.frame_server), so no handler checks credentials by hand.
``max_header`` is the most header bytes a frame of that type may declare; a
receiver refuses more from the 16-byte prefix alone, before buffering any of
it.  Replies have none of their own (``None``): the receiver's limit applies.
``REPLIES`` is the state table of a request/reply connection: which frame
types may answer a given request.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from common.errors import FileClusterError, LocalProtocolError, RemoteProtocolError, error_from_wire
from common.limits import (
    CREDENTIALS_HEADER,
    HEARTBEAT_HEADER,
    IDS_HEADER,
    LOCATE_MANY_HEADER,
    PROVE_CHUNKS_HEADER,
    PUT_CHUNK_HEADER,
    PUT_CHUNKS_HEADER,
    RELEASE_MANY_HEADER,
    SMALL_HEADER,
    UPLOAD_BEGIN_HEADER,
    UPLOAD_BEGIN_MANY_HEADER,
    UPLOAD_COMMIT_HEADER,
    UPLOAD_COMMIT_MANY_HEADER,
    UPLOAD_PROVE_HEADER,
    UPLOAD_PROVE_MANY_HEADER,
)


class MsgType(enum.IntEnum):
    # replies
    ERROR = 0x01
    OK = 0x02
    CHUNK_DATA = 0x03
    # client -> proxy
    HELLO = 0x10
    REGISTER = 0x11
    LOGIN = 0x12
    LOGOUT = 0x13
    WHOAMI = 0x14
    UPLOAD_BEGIN = 0x15
    UPLOAD_COMMIT = 0x16
    UPLOAD_ABORT = 0x17
    UPLOAD_PROVE = 0x1D
    UPLOAD_TICKETS = 0x1E
    UPLOAD_REPLACE = 0x1F
    LIST = 0x18
    SHARE = 0x19
    LOCATE = 0x1A
    DELETE = 0x1B
    STATUS = 0x1C
    REPORT_BAD = 0x40
    RELEASE = 0x41
    VERSIONS = 0x42
    RESTORE = 0x43
    MOVE = 0x44
    LINKS = 0x48
    UNSHARE = 0x49
    LOCATE_MANY = 0x4D
    RELEASE_MANY = 0x4E
    # many small files in one request each (proxy.upload_batch)
    UPLOAD_BEGIN_MANY = 0x4A
    UPLOAD_PROVE_MANY = 0x4B
    UPLOAD_COMMIT_MANY = 0x4C
    # HTTP gateway (holder of the cluster secret) -> proxy
    GATEWAY_HELLO = 0x45
    LINK_OPEN = 0x46
    LINK_CLOSE = 0x47
    # operator (holder of the cluster secret) -> proxy
    ADMIN = 0x50
    # storage server -> proxy
    SERVER_REGISTER = 0x20
    HEARTBEAT = 0x21
    INVENTORY = 0x22
    # anyone -> storage server
    PUT_CHUNK = 0x30
    GET_CHUNK = 0x31
    HAS_CHUNKS = 0x32
    DELETE_CHUNKS = 0x33
    PING = 0x34
    PROVE_CHUNKS = 0x35
    VERIFY_CHUNKS = 0x36
    REPLICATE = 0x37
    PUT_CHUNKS = 0x38


class Auth(enum.Enum):
    """Who may send a request; checked by the dispatcher before the handler runs."""

    NONE = "anyone"  # no credentials (replies; HELLO, REGISTER, LOGIN)
    SESSION = "a logged-in user"  # `session` must name a live session
    SESSION_IF_GIVEN = "a logged-in user, if a session is given"  # LOCATE: by link, or by name
    CLUSTER = "a holder of the cluster secret"  # `auth`: a fresh MAC with the cluster's message key
    TICKET = "a holder of a ticket from the proxy"  # `ticket`: signed by the proxy for this chunk


@dataclass(frozen=True)
class MessageSpec:
    required: Mapping[str, type | tuple[type, ...]] = field(default_factory=dict)
    optional: Mapping[str, type | tuple[type, ...]] = field(default_factory=dict)
    payload: bool = False
    open: bool = False  # replies: extra keys are allowed (results vary by request)
    auth: Auth = Auth.NONE
    max_header: int | None = SMALL_HEADER  # bytes; None: only the receiver's own limit


_SESSION = {"session": str}
_USER = Auth.SESSION
_SIGNED = {"auth": dict}  # checked at the door (common.cluster_auth), so optional in the schema

SPECS: dict[MsgType, MessageSpec] = {
    # `server`, `cause`: which storage server behind the one answering failed, and its error code
    MsgType.ERROR: MessageSpec(
        required={"code": str, "message": str}, optional={"server": int, "cause": str}, max_header=None
    ),
    MsgType.OK: MessageSpec(open=True, max_header=None),
    MsgType.CHUNK_DATA: MessageSpec(required={"id": str, "size": int}, payload=True, max_header=None),
    MsgType.HELLO: MessageSpec(optional={"client": str}),
    MsgType.REGISTER: MessageSpec(required={"user": str, "password": str}, max_header=CREDENTIALS_HEADER),
    MsgType.LOGIN: MessageSpec(required={"user": str, "password": str}, max_header=CREDENTIALS_HEADER),
    MsgType.LOGOUT: MessageSpec(auth=_USER, required=_SESSION),
    MsgType.WHOAMI: MessageSpec(auth=_USER, required=_SESSION),
    # sha1: required unless `streamed` (the chunks are the first batch; the sha1 comes with the
    # commit); `upload_id`: the next batch of a streamed upload (PROTOCOL.md §7.9)
    MsgType.UPLOAD_BEGIN: MessageSpec(
        auth=_USER,
        required={**_SESSION, "name": str, "size": int, "chunk_size": int, "chunks": list},
        optional={"sha1": str, "streamed": bool, "upload_id": str},
        max_header=UPLOAD_BEGIN_HEADER,
    ),
    MsgType.UPLOAD_COMMIT: MessageSpec(
        auth=_USER,
        required={**_SESSION, "upload_id": str},
        optional={"receipts": list, "sha1": str},
        max_header=UPLOAD_COMMIT_HEADER,
    ),
    MsgType.UPLOAD_ABORT: MessageSpec(
        auth=_USER, required={**_SESSION, "upload_id": str}, optional={"unreachable": list}
    ),
    MsgType.UPLOAD_PROVE: MessageSpec(
        auth=_USER, required={**_SESSION, "upload_id": str, "proofs": list}, max_header=UPLOAD_PROVE_HEADER
    ),
    MsgType.UPLOAD_TICKETS: MessageSpec(auth=_USER, required={**_SESSION, "upload_id": str}),
    # files: [{name, size, sha1, chunks}]; uploads: [[upload id, proofs or receipts]] (PROTOCOL.md §7.8)
    MsgType.UPLOAD_BEGIN_MANY: MessageSpec(
        auth=_USER,
        required={**_SESSION, "chunk_size": int, "files": list},
        max_header=UPLOAD_BEGIN_MANY_HEADER,
    ),
    MsgType.UPLOAD_PROVE_MANY: MessageSpec(
        auth=_USER, required={**_SESSION, "uploads": list}, max_header=UPLOAD_PROVE_MANY_HEADER
    ),
    MsgType.UPLOAD_COMMIT_MANY: MessageSpec(
        auth=_USER, required={**_SESSION, "uploads": list}, max_header=UPLOAD_COMMIT_MANY_HEADER
    ),
    # new servers for chunks whose chain failed, avoiding the servers that failed them
    MsgType.UPLOAD_REPLACE: MessageSpec(
        auth=_USER,
        required={**_SESSION, "upload_id": str, "chunks": list, "avoid": list},
        max_header=IDS_HEADER,
    ),
    # `all`: refused; `prefix`: only names that start with it (a plain string: "photos/" for a folder);
    # `limit` (1..10,000) and `after` (a name): one page, the names after `after`
    MsgType.LIST: MessageSpec(
        auth=_USER, required=_SESSION, optional={"all": bool, "prefix": str, "limit": int, "after": str}
    ),
    MsgType.VERSIONS: MessageSpec(auth=_USER, required={**_SESSION, "name": str}),
    MsgType.RESTORE: MessageSpec(auth=_USER, required={**_SESSION, "name": str, "version": int}),
    MsgType.MOVE: MessageSpec(auth=_USER, required={**_SESSION, "old": str, "new": str}),
    # expires: unix time; max_downloads: the link's budget is that many times the file's size
    MsgType.SHARE: MessageSpec(
        auth=_USER,
        required={**_SESSION, "name": str},
        optional={"expires": (int, float), "max_downloads": int, "folder": bool},
    ),
    MsgType.LINKS: MessageSpec(auth=_USER, required=_SESSION),
    # folder: the name was typed with a trailing "/": only a folder's links are revoked
    MsgType.UNSHARE: MessageSpec(auth=_USER, required={**_SESSION, "target": str}, optional={"folder": bool}),
    # path: a file inside a folder link (relative to the folder)
    MsgType.LOCATE: MessageSpec(
        auth=Auth.SESSION_IF_GIVEN,
        optional={
            **_SESSION,
            "name": str,
            "token": str,
            "lease": str,
            "version": int,
            "path": str,
            "peek": bool,
        },
    ),
    # many files at once: `names` (your own, with a session) or `paths` in the folder link `token`
    MsgType.LOCATE_MANY: MessageSpec(
        auth=Auth.SESSION_IF_GIVEN,
        optional={**_SESSION, "names": list, "token": str, "paths": list},
        max_header=LOCATE_MANY_HEADER,
    ),
    # the gateway: where it serves links (a heartbeat); a link opened for an HTTP client; its end
    MsgType.GATEWAY_HELLO: MessageSpec(auth=Auth.CLUSTER, required={"url": str}, optional=_SIGNED),
    MsgType.LINK_OPEN: MessageSpec(
        auth=Auth.CLUSTER,
        required={"token": str, "client": str},
        optional={**_SIGNED, "range": list, "path": str, "check": bool, "describe": bool},
    ),
    MsgType.LINK_CLOSE: MessageSpec(
        auth=Auth.CLUSTER, required={"grant": str, "sent": int}, optional=_SIGNED
    ),
    # a copy that failed the reader's check; the GET ticket for it is the credential
    MsgType.REPORT_BAD: MessageSpec(required={"id": str, "server": int, "ticket": dict, "problem": str}),
    MsgType.RELEASE: MessageSpec(required={"lease": str}),  # a download ended: its chunks may go
    MsgType.RELEASE_MANY: MessageSpec(required={"leases": list}, max_header=RELEASE_MANY_HEADER),
    MsgType.ADMIN: MessageSpec(
        auth=Auth.CLUSTER,
        required={"action": str},
        optional={**_SIGNED, "server": int, "user": str, "quota": int},
    ),
    MsgType.DELETE: MessageSpec(auth=_USER, required={**_SESSION, "name": str}, optional={"recursive": bool}),
    MsgType.STATUS: MessageSpec(auth=_USER, required=_SESSION),
    MsgType.SERVER_REGISTER: MessageSpec(
        auth=Auth.CLUSTER,
        required={
            "id": int,
            "host": str,
            "port": int,
            "capacity": int,
            "used": int,
            "chunks": int,
            "inventory_sha256": str,  # of the payload: the MAC covers the header, this the payload
        },
        optional={**_SIGNED, "cluster_id": str, "free": int, "disk": str},
        payload=True,
    ),
    MsgType.HEARTBEAT: MessageSpec(
        auth=Auth.CLUSTER,
        required={"id": int, "capacity": int, "used": int, "chunks": int},
        # free: disk bytes free; lost: ids of copies found bad (quarantined) or missing since the
        # last heartbeat (at most LOST_PER_HEARTBEAT); quarantined: count; scrub: progress figures
        optional={**_SIGNED, "free": int, "lost": list, "quarantined": int, "scrub": dict},
        max_header=HEARTBEAT_HEADER,
    ),
    MsgType.INVENTORY: MessageSpec(  # a periodic block report: every chunk id the server holds
        auth=Auth.CLUSTER,
        required={"id": int, "chunks": int, "inventory_sha256": str},
        optional=_SIGNED,
        payload=True,
    ),
    MsgType.PUT_CHUNK: MessageSpec(
        auth=Auth.TICKET,
        required={"id": str, "size": int},
        optional={"ticket": dict},
        payload=True,
        max_header=PUT_CHUNK_HEADER,
    ),
    MsgType.PUT_CHUNKS: MessageSpec(  # chunks: [{id, size, ticket}...], every ticket checked at the door
        auth=Auth.TICKET,
        required={"chunks": list},
        payload=True,
        max_header=PUT_CHUNKS_HEADER,
    ),
    MsgType.GET_CHUNK: MessageSpec(auth=Auth.TICKET, required={"id": str}, optional={"ticket": dict}),
    MsgType.HAS_CHUNKS: MessageSpec(
        auth=Auth.CLUSTER, required={"ids": list}, optional=_SIGNED, max_header=IDS_HEADER
    ),
    MsgType.DELETE_CHUNKS: MessageSpec(  # older_than: only copies last written/verified before it
        auth=Auth.CLUSTER,
        required={"ids": list},
        optional={**_SIGNED, "older_than": (int, float)},
        max_header=IDS_HEADER,
    ),
    MsgType.PING: MessageSpec(auth=Auth.CLUSTER, optional=_SIGNED),
    MsgType.PROVE_CHUNKS: MessageSpec(
        auth=Auth.CLUSTER,
        required={"nonce": str, "ranges": list},
        optional=_SIGNED,
        max_header=PROVE_CHUNKS_HEADER,
    ),
    MsgType.VERIFY_CHUNKS: MessageSpec(  # max_age: a copy verified this recently is not re-read
        auth=Auth.CLUSTER,
        required={"ids": list},
        optional={**_SIGNED, "max_age": (int, float)},
        max_header=IDS_HEADER,
    ),
    MsgType.REPLICATE: MessageSpec(  # fetch a chunk from one of `sources` (GET tickets included)
        auth=Auth.CLUSTER,
        required={"id": str, "size": int, "sources": list},
        optional=_SIGNED,
        max_header=PUT_CHUNK_HEADER,
    ),
}

_REQUEST_REPLY = frozenset({MsgType.ERROR, MsgType.OK})

# request type -> frame types that may answer it
REPLIES: dict[MsgType, frozenset[MsgType]] = {
    t: _REQUEST_REPLY for t in SPECS if t not in (MsgType.ERROR, MsgType.OK, MsgType.CHUNK_DATA)
}
REPLIES[MsgType.GET_CHUNK] = frozenset({MsgType.ERROR, MsgType.CHUNK_DATA})


def _type_name(expected: type | tuple[type, ...]) -> str:
    if isinstance(expected, tuple):
        return " or ".join(t.__name__ for t in expected)
    return expected.__name__


def _fits(value: Any, expected: type | tuple[type, ...]) -> bool:
    # bool is an int in Python but not in our schema
    if isinstance(value, bool) and expected is not bool:
        return False
    return isinstance(value, expected)


def check_header(msg_type: MsgType, header: Mapping[str, Any], payload_len: int) -> None:
    """Raise LocalProtocolError if ``header`` does not fit ``msg_type``."""
    error = LocalProtocolError
    spec = SPECS[msg_type]
    name = msg_type.name
    for key, expected in spec.required.items():
        if key not in header:
            raise error(f"{name} lacks header field {key!r}")
        if not _fits(header[key], expected):
            raise error(f"{name} field {key!r} must be {_type_name(expected)}")
    for key, value in header.items():
        if key in spec.required:
            continue
        if key in spec.optional:
            if value is not None and not _fits(value, spec.optional[key]):
                raise error(f"{name} field {key!r} must be {_type_name(spec.optional[key])}")
        elif not spec.open:
            raise error(f"{name} has unknown header field {key!r}")
    if payload_len and not spec.payload:
        raise error(f"{name} may not carry a payload")


@dataclass(frozen=True)
class Message:
    """The head of one frame: its type, its header, and how many payload bytes follow."""

    type: MsgType
    header: Mapping[str, Any]
    payload_len: int = 0

    def __post_init__(self) -> None:
        if self.payload_len < 0:
            raise LocalProtocolError("payload length cannot be negative")
        check_header(self.type, self.header, self.payload_len)


def put_results(answer: Mapping[str, Any], count: int) -> list[list[Any] | FileClusterError]:
    """A PUT_CHUNKS reply, checked: per chunk in order, its receipts (``[[server id, receipt]...]``,
    every server of the chain) or the error that chunk met (servers.put_many)."""
    results = answer.get("results")
    if not isinstance(results, list) or len(results) != count:
        raise RemoteProtocolError(f"a PUT_CHUNKS reply must give {count} results")
    parsed: list[list[Any] | FileClusterError] = []
    for result in results:
        if not isinstance(result, dict):
            raise RemoteProtocolError("a PUT_CHUNKS result must be an object")
        receipts = result.get("receipts")
        if set(result) == {"receipts"} and isinstance(receipts, list):
            if not all(
                isinstance(r, list) and len(r) == 2 and _fits(r[0], int) and isinstance(r[1], str)
                for r in receipts
            ):
                raise RemoteProtocolError("a PUT_CHUNKS receipt must be [server id, receipt]")
            parsed.append(receipts)
            continue
        code, message, server, cause = (result.get(k) for k in ("code", "message", "server", "cause"))
        if not (
            set(result) <= {"code", "message", "server", "cause"}
            and isinstance(code, str)
            and isinstance(message, str)
            and (server is None or _fits(server, int))
            and (cause is None or isinstance(cause, str))
        ):
            raise RemoteProtocolError("a PUT_CHUNKS result must be {receipts} or {code, message}")
        parsed.append(error_from_wire(code, message, server, cause))
    return parsed
