"""The socket layer: sendfile (also past fd 1023) and its fallbacks, a shrinking source, send-side framing.

Real socket pairs; only the file being sent, and the kernel's sendfile/pread on it, are made to fail.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import resource
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from common.errors import (
    FileClusterError,
    InternalError,
    LocalProtocolError,
    RemoteProtocolError,
    SourceShrank,
)
from common.messages import Message, MsgType
from common.protocol import encode_message
from common.transport import HEAD_RECV_SIZE, RECV_SIZE, Connection


def test_big_sendfile_and_idle_checks_past_fd_1023(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 2048), hard), hard))
    fillers = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        a, b = socket.socketpair()
        assert a.fileno() > 1023
        a.settimeout(10)
        sender, receiver = Connection(a, peer="a"), Connection(b, peer="b")
        assert not sender.is_dropped()
        data = os.urandom(8 * 1024 * 1024)  # far more than a socket buffer: sendfile must wait
        source = tmp_path / "chunk"
        source.write_bytes(data)
        chunk_id = hashlib.sha256(data).hexdigest()
        got = hashlib.sha256()

        def read() -> None:
            message = receiver.receive()
            assert message.payload_len == len(data)
            for piece in receiver.payload():
                got.update(piece)

        reader = threading.Thread(target=read)
        reader.start()
        with open(source, "rb") as f:
            sender.send_head(MsgType.CHUNK_DATA, {"id": chunk_id, "size": len(data)}, len(data))
            sender.send_file(f, 0, len(data))
        reader.join(30)
        assert got.hexdigest() == chunk_id
        receiver.close()
        assert sender.is_dropped()  # the peer left: the idle connection is not reused
        sender.close()
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


DATA = bytes(range(251)) * (3 * RECV_SIZE // 251)  # ~3 MiB, more than a socket buffer holds


@pytest.fixture
def pair() -> Iterator[tuple[Connection, Connection]]:
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    sender, receiver = Connection(a, peer="sender"), Connection(b, peer="receiver")
    yield sender, receiver
    sender.close()
    receiver.close()


class Inbox:
    """Reads one frame on a thread (the sender may block until it is read): head, bytes, how it ended."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.message: Message | None = None
        self.data = bytearray()
        self.error: FileClusterError | None = None
        self._thread = threading.Thread(target=self._run, name="inbox")
        self._thread.start()

    def _run(self) -> None:
        try:
            self.message = self.conn.receive()
            for piece in self.conn.payload():
                self.data += piece
        except FileClusterError as exc:
            self.error = exc

    def wait(self) -> Inbox:
        self._thread.join(30)
        assert not self._thread.is_alive()
        return self


def send_chunk(sender: Connection, file: Any, offset: int, count: int) -> None:
    sender.send_head(MsgType.CHUNK_DATA, {"id": "c" * 64, "size": count}, count)
    sender.send_file(file, offset, count)


def count_calls(monkeypatch: pytest.MonkeyPatch, name: str, fail: int | None = None) -> list[int]:
    """Count calls to ``os.<name>``; with ``fail``, every call raises OSError(fail) instead."""
    calls: list[int] = []
    real: Callable[..., Any] = getattr(os, name)

    def wrapper(*args: Any) -> Any:
        calls.append(1)
        if fail is not None:
            raise OSError(fail, os.strerror(fail))
        return real(*args)

    monkeypatch.setattr(os, name, wrapper)
    return calls


@pytest.mark.parametrize("err", [errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP])
def test_a_file_system_without_sendfile_falls_back_to_pread(
    pair: tuple[Connection, Connection], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    sender, receiver = pair
    source = tmp_path / "source"
    source.write_bytes(DATA)
    sendfiles = count_calls(monkeypatch, "sendfile", fail=err)
    preads = count_calls(monkeypatch, "pread")
    offset, count = 1000, len(DATA) - 2000
    inbox = Inbox(receiver)
    with open(source, "rb") as f:
        send_chunk(sender, f, offset, count)
        assert f.tell() == 0  # read at explicit offsets: the file's position never moved
    assert inbox.wait().error is None
    assert inbox.data == DATA[offset : offset + count]
    assert len(sendfiles) == 1  # tried once, then never again for this file
    assert len(preads) >= count // RECV_SIZE
    sender.send(MsgType.PING, {})  # the frame ended exactly where it said: the connection goes on
    assert receiver.receive().type == MsgType.PING


class NoFileno:
    """A readable, seekable object with no fileno at all."""

    def __init__(self, data: bytes) -> None:
        self._file = io.BytesIO(data)
        self.seek, self.read = self._file.seek, self._file.read


@pytest.mark.parametrize("make", [io.BytesIO, NoFileno], ids=["BytesIO", "no-fileno"])
def test_a_file_without_a_descriptor_is_sent_by_seeking(
    pair: tuple[Connection, Connection], monkeypatch: pytest.MonkeyPatch, make: Callable[[bytes], Any]
) -> None:
    sender, receiver = pair
    count_calls(monkeypatch, "sendfile", fail=errno.EBADF)  # would fail the send if it were used
    count_calls(monkeypatch, "pread", fail=errno.EBADF)
    source = make(DATA)
    source.seek(12345)  # wherever it was left, the send reads at the offset it is given
    offset, count = 777, 2 * RECV_SIZE + 1
    inbox = Inbox(receiver)
    send_chunk(sender, source, offset, count)
    assert inbox.wait().error is None
    assert inbox.data == DATA[offset : offset + count]
    sender.send(MsgType.PING, {})
    assert receiver.receive().type == MsgType.PING


SOURCES = ["sendfile", "pread", "memory"]


def open_source(path: Path, how: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The file at ``path``, to be sent the way ``how`` says."""
    if how == "memory":
        return io.BytesIO(path.read_bytes())
    if how == "pread":
        count_calls(monkeypatch, "sendfile", fail=errno.EINVAL)
    return open(path, "rb")


@pytest.mark.parametrize("how", SOURCES)
def test_a_source_shorter_than_announced_raises_source_shrank_and_closes(
    pair: tuple[Connection, Connection], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    sender, receiver = pair
    have, announced = 200_000, 300_000
    path = tmp_path / "source"
    path.write_bytes(DATA[:have])
    inbox = Inbox(receiver)
    with (
        open_source(path, how, monkeypatch) as f,
        pytest.raises(SourceShrank, match=f"{have} of {announced}"),
    ):
        send_chunk(sender, f, 0, announced)
    assert sender.closed  # so the peer never waits for bytes that will not come
    assert isinstance(inbox.wait().error, RemoteProtocolError)  # a frame cut short, not a short chunk
    assert inbox.data == DATA[:have]


class ShrinkingBytesIO(io.BytesIO):
    """An in-memory file that loses all but 1000 bytes past its first block once that is read."""

    cut_at: int | None = None

    def read(self, size: int | None = -1, /) -> bytes:
        block = super().read(size)
        if self.cut_at is None:
            self.cut_at = self.tell() + 1000
            self.truncate(self.cut_at)
        return block


@pytest.mark.parametrize("how", SOURCES)
def test_a_source_truncated_while_it_is_sent_raises_source_shrank(
    pair: tuple[Connection, Connection], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """The file loses its tail once the first block has gone out (truncated mid-upload)."""
    sender, receiver = pair
    path = tmp_path / "source"
    path.write_bytes(DATA)
    cut_at: list[int] = []

    def cut(first_block: int) -> None:  # all but 1000 bytes past the first block are gone
        if not cut_at:
            cut_at.append(first_block + 1000)
            os.truncate(path, cut_at[0])

    real_sendfile, real_pread = os.sendfile, os.pread

    def sendfile(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        n = real_sendfile(out_fd, in_fd, offset, min(count, 65536))  # sendfile may send less
        cut(n)
        return n

    def pread(fd: int, size: int, offset: int) -> bytes:
        block = real_pread(fd, size, offset)
        cut(len(block))
        return block

    memory = ShrinkingBytesIO(DATA)
    source = memory if how == "memory" else open_source(path, how, monkeypatch)
    if how == "sendfile":
        monkeypatch.setattr(os, "sendfile", sendfile)
    monkeypatch.setattr(os, "pread", pread)
    inbox = Inbox(receiver)
    with source as f, pytest.raises(SourceShrank) as caught:
        send_chunk(sender, f, 0, len(DATA))
    left = memory.cut_at if how == "memory" else cut_at[0]
    assert left is not None and left < len(DATA)
    assert f"({left} of {len(DATA)} bytes)" in str(caught.value)
    assert sender.closed
    assert isinstance(inbox.wait().error, RemoteProtocolError)
    assert inbox.data == DATA[:left]


# -- send-side framing: the encoder counts every payload byte before it reaches the socket ---------


def pending(sock: socket.socket) -> bytes:
    """Every byte waiting in ``sock``'s receive buffer (up to an end of stream), without blocking."""
    sock.setblocking(False)
    got = bytearray()
    try:
        while data := sock.recv(65536):
            got += data
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(10)
    return bytes(got)


def test_payload_beyond_the_frame_is_refused_before_it_reaches_the_socket(
    pair: tuple[Connection, Connection], tmp_path: Path
) -> None:
    sender, receiver = pair
    head = Message(MsgType.CHUNK_DATA, {"id": "c" * 64, "size": 10}, 10)
    sender.send_head(head.type, head.header, 10)
    sender.send_piece(b"0123")
    with pytest.raises(LocalProtocolError, match="leaves room for 6"):
        sender.send_piece(b"456789X")
    source = tmp_path / "source"
    source.write_bytes(b"456789X")
    with open(source, "rb") as f, pytest.raises(LocalProtocolError, match="leaves room for 6"):
        sender.send_file(f, 0, 7)
    with pytest.raises(LocalProtocolError, match="while 6 payload bytes"):
        sender.send(MsgType.PING, {})  # a new frame while the last one still owes bytes
    with pytest.raises(LocalProtocolError, match="while 6 payload bytes"):
        sender.send_head(MsgType.CHUNK_DATA, {"id": "d" * 64, "size": 1}, 1)
    assert pending(receiver.sock) == encode_message(head) + b"0123"  # not a byte of the refused sends
    sender.send_piece(b"456789")
    sender.send(MsgType.PING, {})
    assert pending(receiver.sock) == b"456789" + encode_message(Message(MsgType.PING, {}))


def test_send_error_inside_a_payload_closes_instead_of_sending_an_error_frame(
    pair: tuple[Connection, Connection],
) -> None:
    sender, receiver = pair
    sender.send_error(InternalError("between frames"))  # nothing owed: a real ERROR frame
    with pytest.raises(InternalError, match="between frames"):
        receiver.expect_reply(MsgType.GET_CHUNK)
    sender.send_head(MsgType.CHUNK_DATA, {"id": "c" * 64, "size": 10}, 10)
    sender.send_piece(b"01234")
    sender.send_error(InternalError("the disk failed mid-send"))
    assert sender.closed
    inbox = Inbox(receiver).wait()
    assert inbox.message is not None and inbox.message.type == MsgType.CHUNK_DATA
    assert isinstance(inbox.error, RemoteProtocolError)  # cut short: no ERROR bytes read as payload
    assert inbox.data == b"01234"


def test_payload_into_reads_straight_into_the_buffer_and_leaves_the_next_frame(
    pair: tuple[Connection, Connection],
) -> None:
    sender, receiver = pair
    data = os.urandom(3 * 1024 * 1024)  # far more than arrives with the header: most is read directly

    def send() -> None:
        sender.send(MsgType.CHUNK_DATA, {"id": "c" * 64, "size": len(data)}, data)
        sender.send(MsgType.CHUNK_DATA, {"id": "d" * 64, "size": 5}, b"after")

    writer = threading.Thread(target=send)  # more than a socket buffer holds
    writer.start()
    buf = memoryview(bytearray(len(data)))
    while len(receiver.sock.recv(4096, socket.MSG_PEEK)) < 4096:  # payload bytes come with the header
        pass
    assert receiver.receive().payload_len == len(data)
    with pytest.raises(LocalProtocolError, match="where 3145728 are left"):
        receiver.payload_into(memoryview(bytearray(len(data) + 1)))
    receiver.payload_into(buf[:1000])  # in parts that add up to the payload
    receiver.payload_into(buf[1000:])
    assert bytes(buf) == data
    assert not receiver.in_payload
    with pytest.raises(LocalProtocolError, match="where 0 are left"):
        receiver.payload_into(buf[:1])
    following = receiver.receive()  # the next frame is whole, in step
    assert following.header["id"] == "d" * 64
    assert list(receiver.payload()) == [b"after"]
    writer.join(10)


def test_payload_into_a_connection_closed_mid_payload_is_a_protocol_error(
    pair: tuple[Connection, Connection],
) -> None:
    sender, receiver = pair
    sender.send_head(MsgType.CHUNK_DATA, {"id": "c" * 64, "size": 10}, 10)
    sender.send_piece(b"01234")
    sender.close()
    receiver.receive()
    with pytest.raises(RemoteProtocolError, match="closed in the middle"):
        receiver.payload_into(memoryview(bytearray(10)))


def test_payload_buffers_are_reused_bounded_and_never_mix_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    """Big payloads are read into kept buffers (no fresh 1 MiB a frame), at most KEPT_BUFFERS are
    kept, and frames read one after another, on one connection or several, each arrive intact."""
    from common import transport

    pool = transport._Buffers(2)
    monkeypatch.setattr(transport, "_BUFFERS", pool)
    kept: list[bool] = []  # per buffer taken: was it a kept one
    real_take = pool.take

    def take() -> bytearray:
        kept.append(bool(pool._free))
        return real_take()

    monkeypatch.setattr(pool, "take", take)
    pairs = [socket.socketpair() for _ in range(3)]
    frames = [[os.urandom(3 * RECV_SIZE // 2 + k) for k in range(4)] for _ in pairs]

    def send(sock: socket.socket, payloads: list[bytes]) -> None:
        conn = Connection(sock, peer="a")
        for payload in payloads:
            conn.send(
                MsgType.CHUNK_DATA, {"id": hashlib.sha256(payload).hexdigest(), "size": len(payload)}, payload
            )

    for a, b in pairs:
        a.settimeout(10)
        b.settimeout(10)
    senders = [
        threading.Thread(target=send, args=(a, f), daemon=True)
        for (a, _), f in zip(pairs, frames, strict=True)
    ]
    for t in senders:
        t.start()
    receivers = [Connection(b, peer="b") for _, b in pairs]
    for turn in range(4):  # all three frames under way at once, so each needs a buffer of its own
        pieces = []
        for conn, payloads in zip(receivers, frames, strict=True):
            assert conn.receive().payload_len == len(payloads[turn])
            body, first = conn.payload(), b""
            while len(first) < 2 * HEAD_RECV_SIZE:  # past what came with the header: in a buffer now
                first += bytes(next(body))
            pieces.append((body, first))
        for (body, first), payloads in zip(pieces, frames, strict=True):
            assert first + b"".join(bytes(piece) for piece in body) == payloads[turn]
    for t in senders:
        t.join(10)
    assert len(kept) <= 12  # a buffer for a frame at most (one whose start came with the last: maybe none)
    assert kept.count(True) >= 6  # three at once: 2 kept ones a turn at least, after the first
    assert len(pool._free) <= 2  # no more kept than the bound
    for a, b in pairs:
        a.close()
        b.close()


def test_the_kept_buffers_are_bounded_and_only_of_the_payload_size() -> None:
    from common import transport

    pool = transport._Buffers(2)
    taken = [pool.take() for _ in range(3)]
    assert all(len(buf) == RECV_SIZE for buf in taken)
    for buf in taken:
        pool.give_back(buf)
    pool.give_back(bytearray(10))  # not one of the pool's: never kept
    assert len(pool._free) == 2
    again = [pool.take(), pool.take()]
    assert all(any(buf is old for old in taken) for buf in again)
    assert all(buf is not again[0] for buf in [pool.take()])  # the pool is empty: a new one
