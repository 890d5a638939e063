"""The whole error family of filecluster, in one place.

Every error carries a short wire ``code``.  Errors travel between processes as
ERROR frames (``{"code": ..., "message": ...}``) and are turned back into the
same class on the other side by :func:`error_from_wire`, so a client can catch
``NotFound`` whether it happened locally or on the proxy.
"""

from __future__ import annotations

from typing import Any


class FileClusterError(Exception):
    """Base of every error filecluster raises on purpose."""

    code = "internal"

    def __init__(self, message: str, *, server: int | None = None, cause: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.server = server  # the storage server (behind the one answering) that failed, if known
        self.cause = cause  # that server's error code

    def __str__(self) -> str:
        return self.message


class InternalError(FileClusterError):
    """A bug or an unexpected fault on the other side."""

    code = "internal"


class ProtocolError(FileClusterError):
    """Bytes on the wire that do not follow docs/PROTOCOL.md."""

    code = "protocol"


class LocalProtocolError(ProtocolError):
    """We were about to send something the protocol does not allow."""


class SourceShrank(LocalProtocolError):
    """The file being sent as a payload got shorter than its frame announced."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""


NOT_TAKEN = "is not a request this server takes"  # a daemon asked what another kind of daemon answers


class NotAFrame(RemoteProtocolError):
    """What the peer sent does not even start like a filecluster frame (another protocol's port)."""


class InvalidRequest(FileClusterError):
    """A well-formed request with a bad value (a bad name, a bad size...)."""

    code = "bad_request"


class AuthError(FileClusterError):
    """Wrong user or password, or no valid session."""

    code = "auth"


class Forbidden(FileClusterError):
    """A request to a storage server without a valid ticket from the proxy (or with an expired one)."""

    code = "forbidden"


class Throttled(FileClusterError):
    """Too many failed attempts (logins, unknown share links) from one address: wait, then retry."""

    code = "throttled"


class NotFound(FileClusterError):
    """A file, link, user, chunk or local path that does not exist."""

    code = "not_found"


class Gone(FileClusterError):
    """A link that no longer serves: expired, revoked, its file deleted, or its download limit reached."""

    code = "gone"


class AlreadyExists(FileClusterError):
    """A name that is already taken (a user name, for instance)."""

    code = "exists"


class Conflict(FileClusterError):
    """The request no longer fits the state (an expired upload, a file that changed)."""

    code = "conflict"


class QuotaExceeded(FileClusterError):
    """An upload (or a restore) would take a user past their storage quota."""

    code = "quota_exceeded"


class Unavailable(FileClusterError):
    """A peer that cannot be reached, or not enough live storage servers."""

    code = "unavailable"


class ConnectionLost(Unavailable):
    """The connection itself failed (reset, closed, timed out), as opposed to an ERROR reply."""


class PeerClosed(ConnectionLost):
    """The peer closed the connection between frames."""


class PeerReset(ConnectionLost):
    """The peer reset the connection (it closed it with our bytes unread, or crashed)."""


class TooSlow(ConnectionLost):
    """The peer did not send a whole frame within its deadline, so the receiver closed the connection."""


class Busy(Unavailable):
    """A server refused a request for want of resources right now (its header budget): try again.

    On the wire it is ``unavailable``; the connection goes on."""


class ReplicationFailed(Unavailable):
    """A chunk could not be stored on every replica it was placed on."""

    code = "replication_failed"


class StorageServerFailed(Unavailable):
    """Client side: storage servers failed during a transfer; ``suspects`` are their ids.

    Never sent on the wire (its code is ``unavailable``); the uploader reports the suspects to the
    proxy in UPLOAD_ABORT and tries again with a fresh placement."""

    def __init__(self, message: str, suspects: list[int]) -> None:
        super().__init__(message)
        self.suspects = suspects


class InsufficientStorage(FileClusterError):
    """A storage server has no room for the chunk."""

    code = "insufficient_storage"


class CorruptData(FileClusterError):
    """Bytes whose hash does not match their id: distinct from an I/O fault so callers fall back."""

    code = "corrupt"


class StorageIOError(FileClusterError):
    """The disk under a storage server failed."""

    code = "io_error"


_BY_CODE: dict[str, type[FileClusterError]] = {
    cls.code: cls
    for cls in (
        InternalError,
        ProtocolError,
        InvalidRequest,
        AuthError,
        Forbidden,
        Throttled,
        NotFound,
        Gone,
        AlreadyExists,
        Conflict,
        QuotaExceeded,
        Unavailable,
        ReplicationFailed,
        InsufficientStorage,
        CorruptData,
        StorageIOError,
    )
}


def local_failure(exc: OSError) -> InvalidRequest:
    """A local file or folder that cannot be used (a permission, a full disk) as one line naming it:
    what a client says of any such failure no more particular message caught first."""
    where = f" {exc.filename}" if exc.filename is not None else ""
    return InvalidRequest(f"cannot use{where}: {exc.strerror or exc}")


def error_from_wire(
    code: str, message: str, server: int | None = None, cause: str | None = None
) -> FileClusterError:
    """Rebuild the error a peer reported; a peer's protocol error is remote to us."""
    if code == ProtocolError.code:
        return RemoteProtocolError(message, server=server, cause=cause)
    return _BY_CODE.get(code, InternalError)(message, server=server, cause=cause)


def error_to_wire(error: FileClusterError) -> dict[str, Any]:
    """An error as an ERROR header says it (and as PUT_CHUNKS says one chunk's failure)."""
    wire: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.server is not None:
        wire["server"] = error.server
    if error.cause is not None:
        wire["cause"] = error.cause
    return wire
