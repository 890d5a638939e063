"""Stand-ins for the client's unit tests: a storage server on a real socket that misbehaves as
told, and a proxy that answers from a table (no socket: the client only calls it)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

from common.cluster_auth import ClusterKey
from common.errors import FileClusterError, Forbidden, NotFound, RemoteProtocolError
from common.frame_server import serve_in_thread
from common.messages import MsgType
from common.transport import Connection
from servers.memory_store import MemoryChunkStore
from servers.storage_server import StorageService, make_storage_server


class FakeStorage:
    """Serves GET_CHUNK from ``chunks`` and takes PUT_CHUNK, on 127.0.0.1 at a port the OS picks.

    ``mode``: "good"; "hung" (accepts connections and never answers); "corrupt" (a byte flipped);
    "missing" (not_found); "short" (one byte less).  ``refused_macs``: tickets it calls expired.
    ``put_error``: what it answers every PUT_CHUNK with, after reading the payload."""

    def __init__(
        self,
        server_id: int,
        chunks: dict[str, bytes] | None = None,
        *,
        mode: str = "good",
        put_error: FileClusterError | None = None,
    ) -> None:
        self.id = server_id
        self.chunks = dict(chunks or {})
        self.mode = mode
        self.put_error = put_error
        self.refused_macs: set[str] = set()
        self.gets: list[tuple[str, dict[str, Any]]] = []  # (chunk id, ticket) of every GET
        self.puts: list[tuple[str, Any]] = []  # (chunk id, ticket) of every PUT
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def ref(self) -> dict[str, Any]:
        return {"id": self.id, "host": "127.0.0.1", "port": self.port}

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._socks.append(sock)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        if self.mode == "hung":
            self._stopped.wait()  # like a SIGSTOPped server: the kernel accepted, nobody answers
            return
        conn = Connection(sock)
        with contextlib.suppress(FileClusterError, OSError):
            while True:
                msg = conn.receive()
                if msg.type == MsgType.PUT_CHUNK:
                    conn.skip_payload()
                    with self._lock:
                        self.puts.append((msg.header["id"], msg.header.get("ticket")))
                    if self.put_error is not None:
                        conn.send_error(self.put_error)
                    else:
                        raw = hashlib.sha256(f"{msg.header['id']}@{self.id}".encode()).digest()[:16]
                        receipt = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
                        conn.send(MsgType.OK, {"receipts": [[self.id, receipt]]})
                elif msg.type == MsgType.GET_CHUNK:
                    self._get(conn, msg.header["id"], dict(msg.header.get("ticket") or {}))

    def _get(self, conn: Connection, chunk_id: str, ticket: dict[str, Any]) -> None:
        with self._lock:
            self.gets.append((chunk_id, ticket))
        if ticket.get("mac") in self.refused_macs:
            conn.send_error(Forbidden("the ticket expired"))
            return
        data = self.chunks.get(chunk_id)
        if data is None or self.mode == "missing":
            conn.send_error(NotFound(f"no chunk {chunk_id[:12]} here"))
            return
        if self.mode == "corrupt":
            data = bytes([data[0] ^ 1]) + data[1:]
        elif self.mode == "short":
            data = data[:-1]
        conn.send(MsgType.CHUNK_DATA, {"id": chunk_id, "size": len(data)}, data)

    def read(self) -> list[str]:
        """The ids of the chunks it was asked for."""
        with self._lock:
            return [chunk_id for chunk_id, _ in self.gets]

    def stop(self) -> None:
        self._stopped.set()
        self._listener.close()
        with self._lock:
            socks = list(self._socks)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


Handler = Callable[[dict[str, Any]], dict[str, Any]]


class FakeProxy:
    """Answers ``call`` from ``answers`` (message type -> handler of the header), recording every
    call; a type it has no answer for is a protocol error, as from a proxy that predates it."""

    def __init__(self, answers: dict[MsgType, Handler] | None = None) -> None:
        self.answers = dict(answers or {})
        self.calls: list[tuple[MsgType, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def call(
        self, msg_type: MsgType, header: dict[str, Any] | None = None, *, session: bool = False
    ) -> dict[str, Any]:
        header = dict(header or {})
        with self._lock:
            self.calls.append((msg_type, header))
        handler = self.answers.get(msg_type)
        if handler is None:
            raise RemoteProtocolError(f"{msg_type.name} is not a request this server takes")
        return handler(header)

    def sent(self, msg_type: MsgType) -> list[dict[str, Any]]:
        with self._lock:
            return [header for t, header in self.calls if t == msg_type]


@contextlib.contextmanager
def memory_storage_servers(
    key: ClusterKey, chunks: dict[str, bytes], ids: tuple[int, ...] = (1, 2)
) -> Iterator[dict[int, int]]:
    """Real storage servers (in-process, real sockets, chunks in memory), each holding ``chunks``:
    server id -> port.  Stopped on the way out."""
    running = []
    try:
        for i in ids:
            store = MemoryChunkStore()
            store.chunks.update(chunks)
            server = make_storage_server(StorageService(i, store, key), ("127.0.0.1", 0))
            serve_in_thread(server, f"storage-{i}")
            running.append(server)
        yield {i: server.port for i, server in zip(ids, running, strict=True)}
    finally:
        for server in running:
            server.stop()
